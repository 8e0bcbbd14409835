"""Build retention: archive completed builds past their environment's limits, restore them.

An archived build loses its prefix and its heavy artifacts (conda-pack archive, image manifest
and the blobs no other build uses, installer) and keeps its specification, lockfile, YAML, logs
and rows; `Build.archived_on` says when. A restore queues the same build row again: the worker
installs it from its stored lockfile, without solving, into its own build key, supervised and
cancelable as any build (`conda_store_server.build.pipeline`).

Never archived: the environment's current build, builds not finished, the newest completed
build (by completion time, so a build just restored is not archived again at once), deleted
builds. FAILED and CANCELED builds are left alone: they have no artifacts worth freeing and
their logs are why they are kept.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from conda_store_server.db.models import (
    FINAL_STATUSES,
    Build,
    BuildArtifactType,
    BuildStatus,
    Environment,
    Namespace,
    utcnow,
)
from conda_store_server.db.session import QUEUED_BUILDS
from conda_store_server.exception import ConflictError
from conda_store_server.quotas import check_storage
from conda_store_server.service import get_build, purge_build_files, set_current_build
from conda_store_server.settings import get_settings

if TYPE_CHECKING:
    from conda_store_server.app import CondaStore

__all__ = [
    "ARCHIVE_KEEPS",
    "apply_retention",
    "apply_retention_after_build",
    "apply_retention_everywhere",
    "archive_build",
    "archived_lockfile",
    "restore_build",
    "set_current_or_restore",
]

log = logging.getLogger(__name__)

#: Artifact types an archived build keeps (an image pushed to an external registry is not ours
#: to delete: its row stays).
ARCHIVE_KEEPS = frozenset({"LOCKFILE", "YAML", "LOGS", "CONTAINER_REGISTRY"})


def archive_build(session: Session, conda_store: CondaStore, build_id: int) -> None:
    """Archive one completed, live, non-current build; ConflictError (409) saying why not.

    The mark is committed (the session's transaction with it) before any file is removed, so a
    concurrent archive or restore of the same build finds it taken, and a failure at any point
    leaves at worst an archived build whose files are still there (a restore replaces them),
    never a live build without its prefix.
    """
    build = get_build(session, build_id)
    environment = build.environment
    if build.status != BuildStatus.COMPLETED:
        raise ConflictError(
            f"build {build_id} is {build.status.value}: only completed builds can be archived"
        )
    if build.deleted_on is not None:
        raise ConflictError(f"build {build_id} is deleted: there is nothing to archive")
    if build.archived_on is not None:
        raise ConflictError(f"build {build_id} is already archived (since {build.archived_on.isoformat()})")
    if environment.current_build_id == build.id:
        raise ConflictError(
            f"build {build_id} is the current build of {environment.namespace.name}/"
            f"{environment.name}; make another build current before archiving it"
        )
    now = utcnow()
    marked = session.execute(
        update(Build)
        .where(
            Build.id == build_id,
            Build.status == BuildStatus.COMPLETED,
            Build.archived_on.is_(None),
            Build.deleted_on.is_(None),
            ~exists().where(Environment.current_build_id == Build.id),
        )
        .values(archived_on=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not marked:
        raise ConflictError(f"build {build_id} changed while it was being archived; try again")
    build.archived_on = now
    session.commit()
    purge_build_files(conda_store, build, set(ARCHIVE_KEEPS))


def archived_lockfile(conda_store: CondaStore, build: Build) -> dict[str, Any]:
    """The stored conda-lock document an archived build is restored from."""
    keys = [a.key for a in build.build_artifacts if a.artifact_type == BuildArtifactType.LOCKFILE]
    if not keys:
        raise ConflictError(f"build {build.id} has no stored lockfile: it cannot be restored")
    try:
        lock = json.loads(conda_store.storage.get(keys[0]))
    except Exception as error:  # noqa: BLE001 - each storage raises its own errors
        raise ConflictError(f"the lockfile of build {build.id} cannot be read ({error!r})") from error
    if not isinstance(lock, dict):
        raise ConflictError(f"the stored lockfile of build {build.id} is not a conda-lock document")
    return lock


def restore_build(
    session: Session, conda_store: CondaStore, build_id: int, make_current: bool = False
) -> Build:
    """Queue an archived build to be installed again from its lockfile into its own prefix.

    With `make_current` the environment moves to it once the restore completes (a rollback);
    otherwise it stays where it is. Refused (409) for a build that is not archived, is being
    restored, is deleted, or would take its namespace over `max_storage_bytes`.

    `scheduled_on` is left as it was: it is part of the build key (the prefix and artifact
    paths), which a restore must reproduce.
    """
    build = get_build(session, build_id)
    environment = build.environment
    namespace = environment.namespace.name
    if build.archived_on is None:
        raise ConflictError(f"build {build_id} is not archived: only archived builds can be restored")
    if build.status not in FINAL_STATUSES:
        raise ConflictError(f"build {build_id} is already being restored ({build.status.value})")
    if build.deleted_on is not None or environment.deleted_on is not None:
        raise ConflictError(f"build {build_id} is deleted: it cannot be restored")
    if not any(a.artifact_type == BuildArtifactType.LOCKFILE for a in build.build_artifacts):
        raise ConflictError(f"build {build_id} has no stored lockfile: it cannot be restored")
    conda_store.call_validate_action(namespace, "environment::update")
    check_storage(session, conda_store, namespace)
    queued = session.execute(
        update(Build)
        .where(
            Build.id == build_id,
            Build.archived_on.is_not(None),
            Build.status.in_(FINAL_STATUSES),
            Build.deleted_on.is_(None),
        )
        .values(
            status=BuildStatus.QUEUED,
            status_info=None,
            started_on=None,
            ended_on=None,
            worker_id=None,
            heartbeat_on=None,
            cancel_requested_on=None,
            interruptions=0,
            current_after_restore=make_current,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    if not queued:
        raise ConflictError(f"build {build_id} changed while its restore was requested; try again")
    session.refresh(build)
    session.info.setdefault(QUEUED_BUILDS, []).append(build.id)
    return build


def set_current_or_restore(
    session: Session, conda_store: CondaStore, environment: Environment, build_id: int
) -> str | None:
    """Make a build current; an archived one is restored first and becomes current once its
    restore completes (the answer says so: the environment is unchanged until then)."""
    build = session.get(Build, build_id)
    if build is None or build.environment_id != environment.id or build.archived_on is None:
        set_current_build(session, conda_store, environment, build_id)  # its checks and errors
        return None
    if build.status in FINAL_STATUSES:
        restore_build(session, conda_store, build_id, make_current=True)
    else:
        conda_store.call_validate_action(environment.namespace.name, "environment::update")
        build.current_after_restore = True
    return (
        f"build {build_id} is archived: it is being restored from its lockfile and becomes the "
        "current build when the restore completes"
    )


def _to_archive(
    builds: list[Build], current_build_id: int | None, count: int | None, days: float | None
) -> list[Build]:
    """The builds past the limits, from completed live builds ordered newest first."""
    cutoff = utcnow() - datetime.timedelta(days=days) if days is not None else None
    chosen = []
    for position, build in enumerate(builds):
        if position == 0 or build.id == current_build_id or build.archived_on is not None:
            continue
        too_many = count is not None and position >= count
        too_old = cutoff is not None and build.ended_on is not None and build.ended_on < cutoff
        if too_many or too_old:
            chosen.append(build)
    return chosen


def apply_retention(session: Session, conda_store: CondaStore, environment_id: int) -> list[int]:
    """Archive what the environment's effective retention settings no longer keep; their ids."""
    environment = session.get(Environment, environment_id)
    if environment is None or environment.deleted_on is not None:
        return []
    settings = get_settings(session, conda_store, environment.namespace.name, environment.name)
    count, days = settings.build_retention_count, settings.build_retention_days
    if count is None and days is None:
        return []
    builds = list(
        session.scalars(
            select(Build)
            .where(
                Build.environment_id == environment_id,
                Build.status == BuildStatus.COMPLETED,
                Build.deleted_on.is_(None),
            )
            .order_by(Build.ended_on.desc(), Build.id.desc())
        )
    )
    archived = []
    for build in _to_archive(builds, environment.current_build_id, count, days):
        try:
            archive_build(session, conda_store, build.id)
        except ConflictError as error:  # it changed meanwhile (deleted, made current): skipped
            log.info("build %s not archived: %s", build.id, error.message)
            continue
        archived.append(build.id)
    if archived:
        log.info(
            "archived builds %s of %s/%s (retention: count=%s, days=%s)",
            archived,
            environment.namespace.name,
            environment.name,
            count,
            days,
        )
    return archived


def apply_retention_after_build(conda_store: CondaStore, build_id: int) -> None:
    """The retention of the build's environment, right after it completed; never fails the build."""
    try:
        with conda_store.session() as session:
            environment_id = session.scalar(select(Build.environment_id).where(Build.id == build_id))
            if environment_id is not None:
                apply_retention(session, conda_store, environment_id)
    except Exception:
        log.exception("retention after build %s failed; the periodic pass will apply it", build_id)


def apply_retention_everywhere(conda_store: CondaStore) -> list[int]:
    """The periodic pass: every environment that has an archivable build, one transaction each.

    Only environments with two or more live completed builds can lose one, so those are found
    by one query and the settings are read for them alone.
    """
    with conda_store.session() as session:
        candidates = list(
            session.scalars(
                select(Build.environment_id)
                .join(Environment, Environment.id == Build.environment_id)
                .join(Namespace, Namespace.id == Environment.namespace_id)
                .where(
                    Build.status == BuildStatus.COMPLETED,
                    Build.deleted_on.is_(None),
                    Build.archived_on.is_(None),
                    Environment.deleted_on.is_(None),
                    Namespace.deleted_on.is_(None),
                )
                .group_by(Build.environment_id)
                .having(func.count(Build.id) >= 2)
                .order_by(Build.environment_id)
            )
        )
    archived: list[int] = []
    for environment_id in candidates:
        try:
            with conda_store.session() as session:
                archived += apply_retention(session, conda_store, environment_id)
        except Exception:
            log.exception("retention of environment %s failed", environment_id)
    return archived
