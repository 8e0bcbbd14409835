"""The create page: a specification (YAML) and a namespace, a solve preview, then the build.

Preview and create call the API's handlers (GET and POST /api/v1/specification/), so the same
policy, permissions and messages apply; a refused form comes back with the text as typed.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from conda_store_server.app import CondaStore
from conda_store_server.db.models import Namespace
from conda_store_server.exception import CondaStoreError
from conda_store_server.server.admin.access import FormCaller, SignedIn
from conda_store_server.server.admin.errors import PageFailure, failure_of
from conda_store_server.server.admin.rendering import page_url, render
from conda_store_server.server.admin.route import AdminRoute
from conda_store_server.server.api import solve, v1
from conda_store_server.server.dependencies import Caller, SessionDependency, StoreDependency
from conda_store_server.server.pagination import visible_filter
from conda_store_server.server.schema import SpecificationRequest
from conda_store_server.specification import MAX_LOCKFILE_BYTES, parse_specification

router = APIRouter(route_class=AdminRoute, include_in_schema=False)

#: Namespaces offered as suggestions in the form (any other name may be typed).
NAMESPACES_SUGGESTED = 500
NamespaceField = Annotated[str, Form(max_length=255)]
SpecificationField = Annotated[str, Form(max_length=MAX_LOCKFILE_BYTES)]


def visible_namespaces(session: Session, caller: Caller) -> list[str]:
    """The namespaces GET /api/v1/namespace/ would list to the caller."""
    return list(
        session.scalars(
            select(Namespace.name)
            .where(Namespace.deleted_on.is_(None), visible_filter(caller.bindings, Namespace.name))
            .order_by(Namespace.name)
            .limit(NAMESPACES_SUGGESTED)
        )
    )


def form_page(
    request: Request,
    caller: Caller,
    session: Session,
    namespace: str,
    specification: str,
    error: str | None = None,
    status_code: int = 200,
    preview: dict[str, Any] | None = None,
    editing: bool = False,
) -> Response:
    """The form again; `editing`: a new version of an existing environment (its edit page)."""
    context = {
        "title": f"Edit {namespace}" if editing else "Create an environment",
        "editing": editing,
        "namespace_fixed": editing,
        "submit_label": "Build this version" if editing else "Create",
        "namespace": namespace or caller.primary_namespace,
        "namespaces": visible_namespaces(session, caller),
        "specification": specification,
        "error": error,
        "preview": preview,
    }
    return render(request, caller, "create.html", context, status_code)


@router.get("/admin/create/")
def create_page(
    request: Request,
    namespace: str | None = Query(None, max_length=255),
    caller: Caller = SignedIn,
    session: Session = SessionDependency,
) -> Response:
    return form_page(request, caller, session, namespace or "", "")


@router.post("/admin/create/")
def create_environment(
    request: Request,
    namespace: NamespaceField = "",
    specification: SpecificationField = "",
    caller: Caller = FormCaller,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> Response:
    """Build the specification, as POST /api/v1/specification/; then its build's page."""
    try:
        body = SpecificationRequest(specification=specification, namespace=namespace or None)
        answer = v1.api_post_specification(body, caller=caller, session=session, conda_store=conda_store)
    except PageFailure as error:
        session.rollback()  # nothing of a refused request is kept
        status_code, message = failure_of(error)
        return form_page(request, caller, session, namespace, specification, message, status_code)
    return RedirectResponse(page_url(request, "build", answer["data"]["build_id"]), status_code=303)


@router.post("/admin/create/preview/")
async def preview_environment(
    request: Request,
    namespace: NamespaceField = "",
    specification: SpecificationField = "",
    editing: Annotated[bool, Form()] = False,
    caller: Caller = FormCaller,
    session: Session = SessionDependency,
) -> Response:
    """What the specification solves to (and what would change against the environment's
    current build), as GET /api/v1/specification/ answers; nothing is built or written."""
    preview, error, status_code = None, None, 200
    try:
        parsed = await run_in_threadpool(parse_specification, specification)
        if not parsed.conda_dependencies():
            raise CondaStoreError(
                "the specification lists no conda packages: a preview solves its dependencies"
            )
        answer = await solve.api_solve_specification(
            request,
            channel=list(parsed.channels),
            channels=[],
            conda=parsed.conda_dependencies(),
            pip=parsed.pip_dependencies(),
            namespace=namespace or None,
            environment=parsed.name,
            format=None,
            caller=caller,
        )
        preview = answer["data"]
    except PageFailure as failure:
        status_code, error = failure_of(failure)
    return await run_in_threadpool(
        form_page, request, caller, session, namespace, specification, error, status_code, preview, editing
    )
