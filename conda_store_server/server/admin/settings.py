"""The settings pages (global, namespace, environment): the merged settings, and an edit form
where the caller may update them (GET and PUT /api/v1/setting/[{ns}/[{env}/]])."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from conda_store_server.app import CondaStore
from conda_store_server.exception import CondaStoreError
from conda_store_server.limits import MAX_SETTINGS_BYTES
from conda_store_server.server.admin.access import FormCaller, SignedIn
from conda_store_server.server.admin.errors import PageFailure, failure_of
from conda_store_server.server.admin.rendering import page_url, render
from conda_store_server.server.admin.route import AdminRoute
from conda_store_server.server.api import settings as settings_api
from conda_store_server.server.auth import Permissions
from conda_store_server.server.dependencies import Caller, SessionDependency, StoreDependency
from conda_store_server.settings import GLOBAL_ONLY_KEYS

router = APIRouter(route_class=AdminRoute, include_in_schema=False)

ChangesField = Annotated[str, Form(max_length=MAX_SETTINGS_BYTES)]


def _segments(namespace: str | None, environment: str | None) -> list[str]:
    return [part for part in (namespace, environment) if part is not None]


def settings_page(
    request: Request,
    caller: Caller,
    session: Session,
    conda_store: CondaStore,
    namespace: str | None,
    environment: str | None,
    changes: str = "",
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    """The merged settings at one level, as GET /api/v1/setting/... answers (403 without
    setting::read there)."""
    data = settings_api.read_settings(caller, session, conda_store, namespace, environment)["data"]
    arn = "/".join(_segments(namespace, environment))
    level = "global" if namespace is None else ("namespace" if environment is None else "environment")
    context = {
        "title": f"Settings: {arn or 'global'}",
        "level": level,
        "namespace": namespace,
        "environment": environment,
        "settings": [
            {"key": key, "value": json.dumps(value), "global_only": key in GLOBAL_ONLY_KEYS}
            for key, value in data.items()
        ],
        "can_update": caller.can(arn, Permissions.SETTING_UPDATE),
        "changes": changes,
        "error": error,
    }
    return render(request, caller, "setting.html", context, status_code)


def parse_changes(text: str) -> dict[str, Any]:
    """The form's JSON object of setting keys to values."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise CondaStoreError(f"the changes are not JSON: {error}") from error
    if not isinstance(value, dict) or not value:
        raise CondaStoreError(
            'the changes must be a JSON object of setting keys to values, e.g. {"conda_allowed_channels": []}'
        )
    return value


def update_settings(
    request: Request,
    caller: Caller,
    session: Session,
    conda_store: CondaStore,
    namespace: str | None,
    environment: str | None,
    changes: str,
) -> Response:
    """As PUT /api/v1/setting/...; the page again, with the API's message when refused."""
    try:
        data = parse_changes(changes)
        settings_api.write_settings(caller, session, conda_store, data, namespace, environment)
    except PageFailure as failure:
        session.rollback()
        status_code, message = failure_of(failure)
        return settings_page(
            request, caller, session, conda_store, namespace, environment, changes, message, status_code
        )
    target = page_url(request, "setting", *_segments(namespace, environment), done="settings")
    return RedirectResponse(target, status_code=303)


@router.get("/admin/setting/")
def global_settings(
    request: Request,
    caller: Caller = SignedIn,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> Response:
    return settings_page(request, caller, session, conda_store, None, None)


@router.get("/admin/setting/{namespace}/")
def namespace_settings(
    request: Request,
    namespace: str,
    caller: Caller = SignedIn,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> Response:
    return settings_page(request, caller, session, conda_store, namespace, None)


@router.get("/admin/setting/{namespace}/{environment}/")
def environment_settings(
    request: Request,
    namespace: str,
    environment: str,
    caller: Caller = SignedIn,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> Response:
    return settings_page(request, caller, session, conda_store, namespace, environment)


@router.post("/admin/setting/")
def update_global_settings(
    request: Request,
    changes: ChangesField = "",
    caller: Caller = FormCaller,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> Response:
    return update_settings(request, caller, session, conda_store, None, None, changes)


@router.post("/admin/setting/{namespace}/")
def update_namespace_settings(
    request: Request,
    namespace: str,
    changes: ChangesField = "",
    caller: Caller = FormCaller,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> Response:
    return update_settings(request, caller, session, conda_store, namespace, None, changes)


@router.post("/admin/setting/{namespace}/{environment}/")
def update_environment_settings(
    request: Request,
    namespace: str,
    environment: str,
    changes: ChangesField = "",
    caller: Caller = FormCaller,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> Response:
    return update_settings(request, caller, session, conda_store, namespace, environment, changes)
