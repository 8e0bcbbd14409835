"""GET /api/v1/usage/: environments, builds and bytes per namespace the caller may see."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from conda_store_server.db.models import Build, Environment, Namespace
from conda_store_server.disk_usage import NamespaceBytes, namespace_bytes
from conda_store_server.server.dependencies import Caller, CallerDependency, SessionDependency
from conda_store_server.server.pagination import visible_filter

router = APIRouter(prefix="/api/v1")


@router.get("/usage/")
def api_usage(caller: Caller = CallerDependency, session: Session = SessionDependency) -> dict[str, Any]:
    rows = session.execute(
        select(
            Namespace.name,
            func.count(distinct(Environment.id)),
            func.count(Build.id),
            func.coalesce(func.sum(Build.size), 0),
        )
        .join(Environment, Environment.namespace_id == Namespace.id)
        .join(Build, Build.environment_id == Environment.id)
        .where(
            Namespace.deleted_on.is_(None),
            Environment.deleted_on.is_(None),
            Build.deleted_on.is_(None),
            visible_filter(caller.bindings, Namespace.name, Environment.name),
        )
        .group_by(Namespace.name)
        .order_by(Namespace.name)
    )
    # bytes on disk (ours): measured once per build, hard links counted once per namespace
    visible = visible_filter(caller.bindings, Namespace.name, Environment.name)
    on_disk = namespace_bytes(session, where=visible)
    data = {
        name: {
            "num_environments": environments,
            "num_builds": builds,
            "storage": int(storage),
            "bytes_on_disk": on_disk.get(name, NamespaceBytes()).live,
            "archived_bytes": on_disk.get(name, NamespaceBytes()).archived,
        }
        for name, environments, builds, storage in rows
    }
    return {"status": "ok", "data": data, "message": None}
