"""/api/v1: the routes of upstream-api §2.4 that creating, building and fetching need.

Handlers are plain `def`: FastAPI runs them in its thread pool, so database, disk and storage
work never blocks the event loop.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from conda_store_server import __version__, pixi_lock, retention, service
from conda_store_server.app import CondaStore
from conda_store_server.build.keys import build_key, identity_of
from conda_store_server.db.models import BuildArtifactType, Namespace
from conda_store_server.exception import NotFoundError
from conda_store_server.images.builder import image_failure
from conda_store_server.server.api.listing import DEPRECATION_HEADERS
from conda_store_server.server.api.logs import log_response
from conda_store_server.server.auth import Permissions
from conda_store_server.server.dependencies import (
    BuildId,
    Caller,
    CallerDependency,
    SessionDependency,
    StoreDependency,
)
from conda_store_server.server.response_cache import cached_page
from conda_store_server.server.schema import (
    Build,
    Environment,
    EnvironmentUpdate,
    SpecificationRequest,
)
from conda_store_server.specification import parse_lockfile_specification, parse_specification

router = APIRouter(prefix="/api/v1")

ARTIFACT_ROUTES: dict[str, tuple[BuildArtifactType, str]] = {
    "logs": (BuildArtifactType.LOGS, "text/plain; charset=utf-8"),
    "yaml": (BuildArtifactType.YAML, "text/yaml; charset=utf-8"),
    "lockfile": (BuildArtifactType.LOCKFILE, "application/json"),
    "archive": (BuildArtifactType.CONDA_PACK, "application/gzip"),
    "installer": (BuildArtifactType.CONSTRUCTOR_INSTALLER, "application/octet-stream"),
}


def ok(data: Any = None, message: str | None = None) -> dict[str, Any]:
    return {"status": "ok", "data": data, "message": message}


def environment_arn(build_or_environment: Any) -> str:
    environment = getattr(build_or_environment, "environment", build_or_environment)
    return f"{environment.namespace.name}/{environment.name}"


# ------------------------------------------------------------------------------ status
@router.get("/")
def api_status() -> dict[str, Any]:
    return ok({"version": __version__})


@router.get("/permission/")
def api_permission(caller: Caller = CallerDependency) -> dict[str, Any]:
    authorization = caller.authentication.authorization
    bindings = caller.bindings
    return ok(
        {
            "authenticated": caller.authenticated,
            "primary_namespace": caller.primary_namespace,
            "entity_permissions": {
                arn: sorted(authorization.permissions_of_roles(roles)) for arn, roles in bindings.items()
            },
            "entity_roles": {arn: sorted(roles) for arn, roles in bindings.items()},
            "expiration": caller.entity.exp.strftime("%Y-%m-%dT%H:%M:%SZ") if caller.entity else None,
        }
    )


# ------------------------------------------------------------------------------ specification
@router.post("/specification/")
def api_post_specification(
    body: SpecificationRequest,
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> dict[str, Any]:
    namespace = body.namespace or caller.primary_namespace
    if body.is_lockfile:
        text = body.specification
        # a pixi lockfile is built as the conda-lock v1 lockfile of its chosen environment, so
        # it meets the same validation and URL rules as a conda-lock upload
        converted = pixi_lock.conda_lock_from_pixi(text, body.lockfile_environment)
        if converted is not None:
            text = json.dumps(converted, separators=(",", ":"))
        elif body.lockfile_environment is not None:
            raise HTTPException(400, "lockfile_environment applies to pixi lockfiles only; remove it")
        specification = parse_lockfile_specification(
            text, body.environment_name, body.environment_description
        )
    elif body.lockfile_environment is not None:
        raise HTTPException(400, "lockfile_environment applies to pixi lockfiles (is_lockfile: true)")
    else:
        specification = parse_specification(body.specification)
    service.check_name("namespace", namespace)
    caller.require(f"{namespace}/{specification.name}", Permissions.ENVIRONMENT_CREATE)
    exists = (
        session.query(Namespace.id)
        .filter(Namespace.name == namespace, Namespace.deleted_on.is_(None))
        .first()
    )
    if exists is None:
        caller.require(namespace, Permissions.NAMESPACE_CREATE)
    build = service.register_environment(session, conda_store, namespace, specification)
    assert build is not None
    return ok({"build_id": build.id})


# ------------------------------------------------------------------------------ environments
@router.get("/environment/{namespace}/{name}/")
def api_get_environment(
    namespace: str,
    name: str,
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
) -> dict[str, Any]:
    caller.require(f"{namespace}/{name}", Permissions.ENVIRONMENT_READ)
    environment = service.get_environment(session, namespace, name)
    return ok(Environment.of(environment).model_dump(mode="json"))


@router.put("/environment/{namespace}/{name}/")
def api_update_environment(
    namespace: str,
    name: str,
    body: EnvironmentUpdate,
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> dict[str, Any]:
    caller.require(f"{namespace}/{name}", Permissions.ENVIRONMENT_UPDATE)
    try:
        environment = service.get_environment(session, namespace, name)
    except NotFoundError as error:
        raise service.CondaStoreError(
            f"environment namespace={namespace} name={name} does not exist"
        ) from error
    message = None
    if body.build_id is not None:
        message = retention.set_current_or_restore(session, conda_store, environment, body.build_id)
    if body.description is not None:
        environment.description = body.description
    return {"status": "ok", "message": message}


@router.delete("/environment/{namespace}/{name}/")
def api_delete_environment(
    namespace: str,
    name: str,
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> dict[str, Any]:
    caller.require(f"{namespace}/{name}", Permissions.ENVIRONMENT_DELETE)
    service.delete_environment(session, conda_store, namespace, name)
    return {"status": "ok", "message": None}


@router.delete("/namespace/{namespace}/")
def api_delete_namespace(
    namespace: str,
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> dict[str, Any]:
    caller.require(namespace, Permissions.NAMESPACE_DELETE)
    service.delete_namespace(session, conda_store, namespace)
    return {"status": "ok", "message": None}


def _current_build_id(session: Session, caller: Caller, namespace: str, name: str) -> int:
    caller.require(f"{namespace}/{name}", Permissions.ENVIRONMENT_READ)
    environment = service.get_environment(session, namespace, name)
    if environment.current_build_id is None:
        raise HTTPException(404, f"environment {namespace}/{name} has no completed build yet")
    return environment.current_build_id


@router.get("/environment/{namespace}/{name}/lockfile/")
@router.get("/environment/{namespace}/{name}/conda-lock.yml")
@router.get("/environment/{namespace}/{name}/conda-lock.yaml")
def api_environment_lockfile(
    namespace: str,
    name: str,
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> Response:
    build_id = _current_build_id(session, caller, namespace, name)
    return _artifact_response(session, caller, conda_store, build_id, "lockfile")


# ------------------------------------------------------------------------------ builds
def _readable_build(session: Session, caller: Caller, build_id: int, *permissions: Permissions) -> Any:
    """Builds are looked up first (404), then authorized on their environment (as upstream)."""
    build = service.get_build(session, build_id)
    caller.require(environment_arn(build), *(permissions or (Permissions.ENVIRONMENT_READ,)))
    return build


@router.get("/build/{build_id}/")
@cached_page  # clients poll it while the build runs: kept between the database's changes
def api_get_build(
    build_id: BuildId, caller: Caller = CallerDependency, session: Session = SessionDependency
) -> dict[str, Any]:
    build = _readable_build(session, caller, build_id)
    return ok(Build.of(build).model_dump(mode="json"))


@router.put("/build/{build_id}/")
def api_rebuild(
    build_id: BuildId,
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> dict[str, Any]:
    _readable_build(session, caller, build_id, Permissions.ENVIRONMENT_UPDATE)
    build = service.rebuild(session, conda_store, build_id)
    return ok({"build_id": build.id}, "rebuild triggered")


@router.post("/build/{build_id}/restore/")
def api_restore_build(
    build_id: BuildId,
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> dict[str, Any]:
    """Rebuild an archived build from its lockfile into its own prefix (ours)."""
    _readable_build(session, caller, build_id, Permissions.ENVIRONMENT_UPDATE)
    build = retention.restore_build(session, conda_store, build_id)
    return ok({"build_id": build.id}, f"build {build_id} queued to be restored from its lockfile")


@router.put("/build/{build_id}/cancel/")
def api_cancel_build(
    build_id: BuildId, caller: Caller = CallerDependency, session: Session = SessionDependency
) -> dict[str, Any]:
    _readable_build(session, caller, build_id, Permissions.BUILD_CANCEL)
    return {"status": "ok", "message": service.cancel_build(session, build_id)}


@router.delete("/build/{build_id}/")
def api_delete_build(
    build_id: BuildId,
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> dict[str, Any]:
    _readable_build(session, caller, build_id, Permissions.BUILD_DELETE)
    service.delete_build(session, conda_store, build_id)
    return {"status": "ok", "message": None}


def _artifact_response(
    session: Session, caller: Caller, conda_store: CondaStore, build_id: int, kind: str
) -> Response:
    build = _readable_build(session, caller, build_id)
    artifact_type, media_type = ARTIFACT_ROUTES[kind]
    artifact = next((a for a in build.build_artifacts if a.artifact_type == artifact_type), None)
    if artifact is None:
        if kind == "installer":  # upstream's message and status
            raise HTTPException(400, f"Build {build_id} doesn't have an installer")
        raise HTTPException(404, f"build {build_id} has no {artifact_type.value} artifact")
    if artifact_type == BuildArtifactType.LOGS:  # readable while it grows, also on S3
        return log_response(conda_store, artifact.key)
    url = conda_store.storage.get_url(artifact.key)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    path = conda_store.storage.local_path(artifact.key)
    if path is None or not path.is_file():
        raise HTTPException(404, f"the {artifact_type.value} artifact of build {build_id} is gone")
    return FileResponse(path, media_type=media_type, filename=path.name)


ARTIFACT_PATHS: dict[str, tuple[str, ...]] = {
    "logs": ("logs/",),
    "yaml": ("yaml/",),
    "lockfile": ("lockfile/", "conda-lock.yml", "conda-lock.yaml"),
    "archive": ("archive/",),
    "installer": ("installer/",),
}


def _artifact_route(kind: str) -> Any:
    def route(
        build_id: BuildId,
        caller: Caller = CallerDependency,
        session: Session = SessionDependency,
        conda_store: CondaStore = StoreDependency,
    ) -> Response:
        return _artifact_response(session, caller, conda_store, build_id, kind)

    route.__name__ = f"api_build_{kind}"
    return route


for _kind, _paths in ARTIFACT_PATHS.items():
    for _path in _paths:
        router.add_api_route(
            f"/build/{{build_id}}/{_path}", _artifact_route(_kind), methods=["GET"], response_class=Response
        )


@router.get("/build/{build_id}/pixi.lock", response_class=PlainTextResponse)
def api_build_pixi_lock(
    build_id: BuildId,
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> PlainTextResponse:
    """The build's lockfile in pixi's format (version 7), for pixi users.

    Converted on request from the conda-lock v1 LOCKFILE artifact, which stays the one stored
    truth; the answer builds the same environment when uploaded back (is_lockfile).
    """
    build = _readable_build(session, caller, build_id)
    kind = BuildArtifactType.LOCKFILE
    artifact = next((a for a in build.build_artifacts if a.artifact_type == kind), None)
    if artifact is None:
        raise HTTPException(404, f"build {build_id} has no {kind.value} artifact")
    if not conda_store.storage.exists(artifact.key):
        raise HTTPException(404, f"the {kind.value} artifact of build {build_id} is gone")
    try:
        lock = json.loads(conda_store.storage.get(artifact.key))
    except ValueError as error:
        raise HTTPException(409, f"the {kind.value} artifact of build {build_id} is unreadable") from error
    return PlainTextResponse(
        pixi_lock.pixi_from_conda_lock(lock),
        media_type="text/yaml; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="pixi.lock"'},
    )


@router.get("/build/{build_id}/docker/", response_class=PlainTextResponse, deprecated=True)
def api_build_docker(
    build_id: BuildId,
    request: Request,
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
) -> PlainTextResponse:
    """The image reference of a build's container image (deprecated upstream, kept for clients)."""
    build = _readable_build(session, caller, build_id)
    if not any(a.artifact_type == BuildArtifactType.DOCKER_MANIFEST for a in build.build_artifacts):
        why = image_failure(request.app.state.conda_store.storage, build_key(identity_of(build)))
        reason = f": {why}" if why else ""
        raise HTTPException(400, f"Build {build_id} doesn't have a docker manifest{reason}")
    environment = build.environment
    registry = request.app.state.server.registry_external_url
    reference = f"{registry}/{environment.namespace.name}/{environment.name}:{build_key(identity_of(build))}"
    return PlainTextResponse(reference, headers=DEPRECATION_HEADERS)
