"""GET /api/v1/usage/: environments, builds and bytes per namespace the caller may see."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from conda_store_server.db.models import Build, Environment, Namespace
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
    data = {
        name: {"num_environments": environments, "num_builds": builds, "storage": int(storage)}
        for name, environments, builds, storage in rows
    }
    return {"status": "ok", "data": data, "message": None}
