"""The namespaces page: those the caller may see, and a form to create one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from conda_store_server.db.models import Environment, Namespace
from conda_store_server.server.admin.access import FormCaller, SignedIn, granted_somewhere
from conda_store_server.server.admin.errors import PageFailure, failure_of
from conda_store_server.server.admin.rendering import page_url, render
from conda_store_server.server.admin.route import AdminRoute
from conda_store_server.server.api import namespaces
from conda_store_server.server.auth import Permissions
from conda_store_server.server.dependencies import Caller, SessionDependency
from conda_store_server.server.pagination import visible_filter

router = APIRouter(route_class=AdminRoute, include_in_schema=False)

NAMESPACES_SHOWN = 1000


def namespaces_page(
    request: Request,
    caller: Caller,
    session: Session,
    name: str = "",
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    """The namespaces GET /api/v1/namespace/ lists to the caller, with their environments'
    count as the environment list would show them."""
    visible = visible_filter(caller.bindings, Namespace.name)
    listed_environments = visible_filter(caller.bindings, Namespace.name, Environment.name)
    counts = (
        select(Environment.namespace_id, func.count().label("environments"))
        .join(Namespace, Namespace.id == Environment.namespace_id)
        .where(Environment.deleted_on.is_(None), listed_environments)
        .group_by(Environment.namespace_id)
        .subquery()
    )
    rows = session.execute(
        select(Namespace.name, func.coalesce(counts.c.environments, 0))
        .outerjoin(counts, counts.c.namespace_id == Namespace.id)
        .where(Namespace.deleted_on.is_(None), visible)
        .order_by(Namespace.name)
        .limit(NAMESPACES_SHOWN)
    ).all()
    context = {
        "title": "Namespaces",
        "namespaces": [
            {
                "name": name,
                "environments": count,
                "can_read_settings": caller.can(name, Permissions.SETTING_READ),
            }
            for name, count in rows
        ],
        "can_create": granted_somewhere(caller, Permissions.NAMESPACE_CREATE),
        "name": name,
        "error": error,
    }
    return render(request, caller, "namespace.html", context, status_code)


@router.get("/admin/namespace/")
def namespace_list(
    request: Request, caller: Caller = SignedIn, session: Session = SessionDependency
) -> Response:
    return namespaces_page(request, caller, session)


@router.post("/admin/namespace/")
def create_namespace(
    request: Request,
    name: Annotated[str, Form(max_length=255)] = "",
    caller: Caller = FormCaller,
    session: Session = SessionDependency,
) -> Response:
    """As POST /api/v1/namespace/{name}/."""
    try:
        namespaces.api_create_namespace(name, caller=caller, session=session)
    except PageFailure as error:
        session.rollback()
        status_code, message = failure_of(error)
        return namespaces_page(request, caller, session, name, message, status_code)
    return RedirectResponse(page_url(request, "namespace", done="namespace"), status_code=303)
