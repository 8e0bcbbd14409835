"""GET/PUT /api/v1/setting/[{ns}/[{env}/]]: the layered policy (upstream-api §5.1)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body
from sqlalchemy.orm import Session

from conda_store_server import settings
from conda_store_server.app import CondaStore
from conda_store_server.limits import MAX_SETTINGS_BYTES, check_json_size, check_setting_items
from conda_store_server.server.auth import Permissions
from conda_store_server.server.dependencies import (
    Caller,
    CallerDependency,
    SessionDependency,
    StoreDependency,
)

router = APIRouter(prefix="/api/v1")


def _arn(namespace: str | None, environment: str | None) -> str:
    return "/".join(part for part in (namespace, environment) if part is not None)


def _level(namespace: str | None, environment: str | None) -> str:
    if environment is not None:
        return f"environment {namespace}/{environment}"
    return f"namespace {namespace}" if namespace is not None else "global"


def read_settings(
    caller: Caller, session: Session, conda_store: CondaStore, namespace: str | None, environment: str | None
) -> dict[str, Any]:
    caller.require(_arn(namespace, environment), Permissions.SETTING_READ)
    merged = settings.get_settings(session, conda_store, namespace, environment)
    return {"status": "ok", "data": merged.model_dump(mode="json"), "message": None}


def write_settings(
    caller: Caller,
    session: Session,
    conda_store: CondaStore,
    data: dict[str, Any],
    namespace: str | None,
    environment: str | None,
) -> dict[str, Any]:
    caller.require(_arn(namespace, environment), Permissions.SETTING_UPDATE)
    check_json_size(data, "the settings update", MAX_SETTINGS_BYTES)
    check_setting_items(data)
    settings.set_settings(session, conda_store, data, namespace, environment)
    message = f"{_level(namespace, environment)} setting keys {sorted(data)} updated"
    return {"status": "ok", "data": None, "message": message}


@router.get("/setting/")
def api_get_global_settings(
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> dict[str, Any]:
    return read_settings(caller, session, conda_store, None, None)


@router.get("/setting/{namespace}/")
def api_get_namespace_settings(
    namespace: str,
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> dict[str, Any]:
    return read_settings(caller, session, conda_store, namespace, None)


@router.get("/setting/{namespace}/{environment}/")
def api_get_environment_settings(
    namespace: str,
    environment: str,
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> dict[str, Any]:
    return read_settings(caller, session, conda_store, namespace, environment)


@router.put("/setting/")
def api_put_global_settings(
    data: dict[str, Any] = Body(...),
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> dict[str, Any]:
    return write_settings(caller, session, conda_store, data, None, None)


@router.put("/setting/{namespace}/")
def api_put_namespace_settings(
    namespace: str,
    data: dict[str, Any] = Body(...),
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> dict[str, Any]:
    return write_settings(caller, session, conda_store, data, namespace, None)


@router.put("/setting/{namespace}/{environment}/")
def api_put_environment_settings(
    namespace: str,
    environment: str,
    data: dict[str, Any] = Body(...),
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> dict[str, Any]:
    return write_settings(caller, session, conda_store, data, namespace, environment)
