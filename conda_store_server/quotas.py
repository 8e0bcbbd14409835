"""Namespace quotas: `max_environments` and `max_storage_bytes`, checked before anything is written.

Both are layered settings (global or per namespace). A refusal is a 409 Conflict: the request is
valid and the caller may make it, but it conflicts with the namespace's current state, and the
same request succeeds once that changes (an environment deleted, builds archived, the limit
raised). 403 would say the caller lacks a permission, 413 that the request body is too large.

Storage is compared before the build exists (its size is known only once installed): a
namespace may go over its limit by one build, and then takes no more until it is back under.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from conda_store_server.db.models import Environment, Namespace
from conda_store_server.disk_usage import namespace_bytes
from conda_store_server.exception import ConflictError
from conda_store_server.settings import get_settings

if TYPE_CHECKING:
    from conda_store_server.app import CondaStore

__all__ = ["QuotaExceededError", "check_new_environment", "check_storage"]


class QuotaExceededError(ConflictError):
    """A submission over a namespace limit (a 409 naming the limit and the usage)."""


def _live_environments(session: Session, namespace: str) -> int:
    return (
        session.scalar(
            select(func.count(Environment.id))
            .join(Namespace, Namespace.id == Environment.namespace_id)
            .where(
                Namespace.name == namespace, Namespace.deleted_on.is_(None), Environment.deleted_on.is_(None)
            )
        )
        or 0
    )


def _environment_exists(session: Session, namespace: str, name: str) -> bool:
    return (
        session.scalar(
            select(Environment.id)
            .join(Namespace, Namespace.id == Environment.namespace_id)
            .where(
                Namespace.name == namespace,
                Namespace.deleted_on.is_(None),
                Environment.name == name,
                Environment.deleted_on.is_(None),
            )
        )
        is not None
    )


def check_new_environment(session: Session, conda_store: CondaStore, namespace: str, name: str) -> None:
    """Refuse a submission that would create one environment more than `max_environments`."""
    limit = get_settings(session, conda_store, namespace).max_environments
    if limit is None or _environment_exists(session, namespace, name):
        return
    count = _live_environments(session, namespace)
    if count >= limit:
        raise QuotaExceededError(
            f"namespace {namespace} is at its limit max_environments={limit} (it holds {count} "
            f"environments): environment {name} cannot be created; delete an environment or "
            "raise the namespace's max_environments setting"
        )


def check_storage(session: Session, conda_store: CondaStore, namespace: str) -> None:
    """Refuse a new build in a namespace whose live prefixes already reach `max_storage_bytes`."""
    limit = get_settings(session, conda_store, namespace).max_storage_bytes
    if limit is None:
        return
    used = namespace_bytes(session, namespace).get(namespace)
    live = used.live if used is not None else 0
    if live >= limit:
        raise QuotaExceededError(
            f"namespace {namespace} is at its limit max_storage_bytes={limit} (its live builds use "
            f"{live} bytes on disk, hard links counted once): no build can be added; delete or "
            "archive builds, or raise the namespace's max_storage_bytes setting"
        )
