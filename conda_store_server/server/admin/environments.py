"""Pages of environments: the list (with search), one environment, its edit form, and its
actions (roll back, delete), each through the API handler that does the same."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from conda_store_server import service
from conda_store_server.app import CondaStore
from conda_store_server.db.models import Build, BuildStatus, Environment, Namespace
from conda_store_server.server.admin.access import FormCaller, SignedIn
from conda_store_server.server.admin.artifacts import artifact_links
from conda_store_server.server.admin.rendering import page_url, prefix_of, render
from conda_store_server.server.admin.route import AdminRoute
from conda_store_server.server.api import v1
from conda_store_server.server.api.listing import EnvironmentFilters, environment_query
from conda_store_server.server.auth import Permissions
from conda_store_server.server.dependencies import MAX_ID, Caller, SessionDependency, StoreDependency
from conda_store_server.server.pagination import count_of
from conda_store_server.server.schema import EnvironmentUpdate

router = APIRouter(route_class=AdminRoute, include_in_schema=False)

PAGE_SIZE = 50
#: The newest builds an environment's page lists.
BUILDS_SHOWN = 200


@router.get("/admin/")
def environments_page(
    request: Request,
    search: str | None = Query(None, max_length=255, description="Substring of the namespace or name"),
    namespace: str | None = Query(None, max_length=255),
    page: int = Query(1, ge=1, le=1_000_000),
    caller: Caller = SignedIn,
    session: Session = SessionDependency,
) -> Response:
    """The environments the API would list to the caller, as GET /api/v1/environment/ does."""
    for field, value in (("search", search), ("namespace", namespace)):
        if value and any(unicodedata.category(character) == "Cc" for character in value):
            # PostgreSQL refuses a NUL in a query: a 400 that says so, not a 500
            raise HTTPException(400, f"query parameter {field} must not contain control characters")
    query = environment_query(caller, EnvironmentFilters(search=search or None, namespace=namespace or None))
    total = count_of(session, query)
    rows = session.execute(
        query.order_by(Namespace.name, Environment.name, Environment.id)
        .offset((page - 1) * PAGE_SIZE)
        .limit(PAGE_SIZE)
    ).all()
    build_ids = [row.current_build_id for row in rows if row.current_build_id is not None]
    statuses = dict(session.execute(select(Build.id, Build.status).where(Build.id.in_(build_ids))).all())
    environments = [
        {
            "namespace": row.namespace_name,
            "name": row.name,
            "description": row.description,
            "build_id": row.current_build_id,
            "status": statuses[row.current_build_id].value if row.current_build_id in statuses else None,
        }
        for row in rows
    ]
    pages = max(1, -(-total // PAGE_SIZE))
    context = {
        "title": "Environments",
        "environments": environments,
        "search": search or "",
        "namespace": namespace or "",
        "page": page,
        "pages": pages,
        "total": total,
    }
    return render(request, caller, "home.html", context)


def _readable_environment(session: Session, caller: Caller, namespace: str, name: str) -> Environment:
    """As GET /api/v1/environment/{ns}/{name}/: permission first, then existence."""
    caller.require(f"{namespace}/{name}", Permissions.ENVIRONMENT_READ)
    return service.get_environment(session, namespace, name)


@router.get("/admin/environment/{namespace}/{name}/")
def environment_page(
    request: Request,
    namespace: str,
    name: str,
    caller: Caller = SignedIn,
    session: Session = SessionDependency,
) -> Response:
    environment = _readable_environment(session, caller, namespace, name)
    builds = list(
        session.scalars(
            select(Build)
            .where(Build.environment_id == environment.id, Build.deleted_on.is_(None))
            .options(selectinload(Build.build_artifacts))
            .order_by(Build.id.desc())
            .limit(BUILDS_SHOWN)
        )
    )
    current = next((build for build in builds if build.id == environment.current_build_id), None)
    if current is None and environment.current_build_id is not None:
        current = service.get_build(session, environment.current_build_id)
    arn = f"{namespace}/{name}"
    context = {
        "title": arn,
        "environment": environment,
        "namespace": namespace,
        "builds": builds,
        "current": current,
        "links": artifact_links(prefix_of(request), current) if current is not None else [],
        "can_update": caller.can(arn, Permissions.ENVIRONMENT_UPDATE),
        "can_edit": caller.can(arn, Permissions.ENVIRONMENT_CREATE),
        "can_delete": caller.can(arn, Permissions.ENVIRONMENT_DELETE),
        "can_cancel": caller.can(arn, Permissions.BUILD_CANCEL),
        "can_read_settings": caller.can(arn, Permissions.SETTING_READ),
        "completed": BuildStatus.COMPLETED,
        "active": (BuildStatus.QUEUED, BuildStatus.BUILDING),
    }
    return render(request, caller, "environment.html", context)


def specification_text(spec: dict[str, Any]) -> str:
    """A stored specification as the YAML a user would write (keys in their order)."""
    return yaml.safe_dump(spec, sort_keys=False, default_flow_style=False, allow_unicode=True)


@router.get("/admin/environment/{namespace}/{name}/edit/")
def edit_page(
    request: Request,
    namespace: str,
    name: str,
    caller: Caller = SignedIn,
    session: Session = SessionDependency,
) -> Response:
    """A new version of the specification: submitted as a new environment version would be
    (POST /api/v1/specification/ needs environment:create on the environment)."""
    caller.require(f"{namespace}/{name}", Permissions.ENVIRONMENT_READ, Permissions.ENVIRONMENT_CREATE)
    environment = service.get_environment(session, namespace, name)
    build_id = environment.current_build_id or session.scalar(
        select(Build.id)
        .where(Build.environment_id == environment.id, Build.deleted_on.is_(None))
        .order_by(Build.id.desc())
        .limit(1)
    )
    build = service.get_build(session, build_id) if build_id is not None else None
    lockfile = build is not None and build.specification.is_lockfile
    text = specification_text(build.specification.spec) if build is not None and not lockfile else ""
    context = {
        "title": f"Edit {namespace}/{name}",
        "environment": environment,
        "namespace": namespace,
        "specification": text,
        "from_build": build,
        "lockfile": lockfile,
        "namespaces": [],
        "error": None,
        "preview": None,
    }
    return render(request, caller, "edit.html", context)


@router.post("/admin/environment/{namespace}/{name}/current/")
def set_current_build(
    namespace: str,
    name: str,
    build_id: Annotated[int, Form(ge=0, le=MAX_ID)],
    request: Request,
    caller: Caller = FormCaller,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> Response:
    """Roll back (or forward) to a completed build, as PUT /api/v1/environment/{ns}/{name}/."""
    body = EnvironmentUpdate(build_id=build_id)
    v1.api_update_environment(namespace, name, body, caller=caller, session=session, conda_store=conda_store)
    target = page_url(request, "environment", namespace, name, done="current")
    return RedirectResponse(target, status_code=303)


@router.post("/admin/environment/{namespace}/{name}/delete/")
def delete_environment(
    namespace: str,
    name: str,
    request: Request,
    caller: Caller = FormCaller,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> Response:
    v1.api_delete_environment(namespace, name, caller=caller, session=session, conda_store=conda_store)
    return RedirectResponse(page_url(request, done="deleted"), status_code=303)
