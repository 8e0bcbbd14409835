"""The docker registry v2 read side at `/v2/` (OCI distribution spec: pull, HEAD, tags/list).

Thin on purpose: lookups live in `conda_store_server.images.lookup`; this module finds the
caller, checks permissions, and turns answers and `RegistryError`s into registry responses.
Database work runs in the thread pool; the only waiting (images on demand) is `asyncio.sleep`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
import urllib.parse
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from conda_store_server import service
from conda_store_server.app import CondaStore
from conda_store_server.db.models import Namespace
from conda_store_server.exception import CondaStoreError, http_status
from conda_store_server.images import lookup
from conda_store_server.images.lookup import DYNAMIC_NAMESPACE, RegistryError
from conda_store_server.server.auth import Authentication, AuthenticationToken, Permissions
from conda_store_server.server.dependencies import Caller
from conda_store_server.specification import validate_name

__all__ = ["DYNAMIC_POLL_SECONDS", "DYNAMIC_WAIT_SECONDS", "registry_router"]

API_VERSION = {"Docker-Distribution-Api-Version": "registry/2.0"}
CHALLENGE = {"Www-Authenticate": 'Basic realm="conda-store"'}
#: How long a pull of an image on demand waits for its build; tests shorten it.
DYNAMIC_WAIT_SECONDS = 600.0
DYNAMIC_POLL_SECONDS = 2.0
_ROUTE_METHODS = ["GET", "HEAD"]
_WRITE_METHODS = ["POST", "PUT", "PATCH", "DELETE"]


def registry_router() -> APIRouter:
    """The `/v2/` routes, mounted at the root (registry clients do not know `url_prefix`)."""
    router = APIRouter()
    router.add_api_route("/v2/", base, methods=_ROUTE_METHODS, include_in_schema=False)
    router.add_api_route("/v2", base, methods=_ROUTE_METHODS, include_in_schema=False)
    router.add_api_route("/v2/{path:path}", dispatch, methods=_ROUTE_METHODS, include_in_schema=False)
    router.add_api_route("/v2/{path:path}", read_only, methods=_WRITE_METHODS, include_in_schema=False)
    return router


# ------------------------------------------------------------------------------ responses
def error_response(error: RegistryError) -> JSONResponse:
    headers = dict(API_VERSION)
    if error.code == "UNAUTHORIZED":
        headers.update(CHALLENGE)
    body = {"errors": [{"code": error.code, "message": error.message, "detail": error.detail}]}
    return JSONResponse(body, status_code=error.status, headers=headers)


def unauthorized(message: str) -> RegistryError:
    return RegistryError("UNAUTHORIZED", 401, message)


def _json(body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, indent=2).encode(),
        media_type="application/json",
        headers={**API_VERSION, **(headers or {})},
    )


# ------------------------------------------------------------------------------ the caller
def entity_of(request: Request, authentication: Authentication) -> AuthenticationToken | None:
    """As the API finds the caller, except that credentials that were sent and do not verify
    are a 401 (a registry client then knows its login is wrong), not an anonymous caller."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                password = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                raise unauthorized("malformed Basic credentials") from None
            entity = authentication.authentication.decrypt_token(password) if password else None
        elif scheme.lower() == "bearer":
            entity = authentication.authentication.decrypt_token(value.strip())
        else:
            raise unauthorized(f"unsupported authorization scheme {scheme[:20]!r}: use Basic or Bearer")
        if entity is None:
            raise unauthorized("invalid token: log in with any user name and an API token as the password")
        return entity
    cookie = request.cookies.get(authentication.cookie_name)
    if cookie is not None:
        entity = authentication.authentication.decrypt_token(cookie)
        if entity is None:
            raise unauthorized("invalid or expired session cookie")
        return entity
    return None


def require(caller: Caller, arn: str, permission: Permissions) -> None:
    """Anonymous callers are challenged (they may log in); authenticated ones are denied."""
    if caller.can(arn, permission):
        return
    if not caller.authenticated:
        raise unauthorized(f"authentication required: {permission.value} on {arn}")
    raise RegistryError("DENIED", 403, f"requested access to {arn} is denied ({permission.value})")


def _store(request: Request) -> CondaStore:
    return request.app.state.conda_store


def _authentication(request: Request) -> Authentication:
    return request.app.state.authentication


# ------------------------------------------------------------------------------ routes
async def base(request: Request) -> Response:
    """`GET /v2/`: the version check clients (and `docker login`) start with.

    Anonymous callers always get the challenge: clients (skopeo, docker) send their
    credentials only to a registry whose version check asked for them, and clients without
    credentials go on anonymously, so public images still pull without `docker login`."""
    try:
        if entity_of(request, _authentication(request)) is None:
            raise unauthorized("authentication required")
    except RegistryError as error:
        return error_response(error)
    return _json({})


async def read_only(request: Request, path: str) -> Response:
    return error_response(
        RegistryError("UNSUPPORTED", 405, f"{request.method} is not supported: this registry is read-only")
    )


async def dispatch(request: Request, path: str) -> Response:
    """Names have any number of parts (images on demand), so the path is split here."""
    try:
        return await _dispatch(request, path)
    except RegistryError as error:
        return error_response(error)
    except CondaStoreError as error:  # a policy refusal of an image on demand, a bad name
        status = http_status(error)
        code = "NAME_UNKNOWN" if status == 404 else "DENIED" if status == 403 else "NAME_INVALID"
        return error_response(RegistryError(code, 400 if status not in (403, 404) else status, error.message))


async def _dispatch(request: Request, path: str) -> Response:
    parts = path.strip("/").split("/")
    if len(parts) >= 3 and parts[-2] == "manifests":
        kind, name, reference = "manifest", parts[:-2], lookup.parse_reference(parts[-1])
    elif len(parts) >= 3 and parts[-2] == "blobs":
        kind, name, reference = "blob", parts[:-2], lookup.parse_digest(parts[-1])
    elif len(parts) >= 3 and parts[-2:] == ["tags", "list"]:
        kind, name, reference = "tags", parts[:-2], ""
    else:
        raise RegistryError(
            "UNSUPPORTED",
            405,
            f"/v2/{path[:200]} is not a registry route: use /v2/<namespace>/<environment>/"
            "manifests/<reference>, .../blobs/<digest> or .../tags/list",
        )
    entity = entity_of(request, _authentication(request))
    if name[0] == DYNAMIC_NAMESPACE:
        specs = lookup.parse_dynamic_specs(name[1:])
        if kind == "manifest":
            return await _dynamic_manifest(request, entity, specs, reference)
        namespace, environment = DYNAMIC_NAMESPACE, lookup.dynamic_environment_name(specs)
    elif len(name) != 2:
        raise RegistryError(
            "NAME_INVALID",
            400,
            f"invalid repository name {'/'.join(name)[:200]!r}: expected <namespace>/<environment>",
        )
    else:
        namespace, environment = name
    for value, field in ((namespace, "namespace name"), (environment, "environment name")):
        try:
            validate_name(value, field)
        except CondaStoreError as error:
            raise RegistryError("NAME_INVALID", 400, error.message) from None
    if kind == "manifest":
        return await _manifest(request, entity, namespace, environment, reference)
    if kind == "blob":
        return await _blob(request, entity, namespace, environment, reference)
    return await _tags(request, entity, namespace, environment)


def _caller(request: Request, entity: AuthenticationToken | None, session: Any) -> Caller:
    store = _store(request)
    return Caller(entity, _authentication(request), store.default_namespace, session)


def _readable_environment(
    request: Request, entity: AuthenticationToken | None, session: Any, namespace: str, name: str
) -> Any:
    """Permission first: whether an environment exists is not told to those who may not read it."""
    require(_caller(request, entity, session), f"{namespace}/{name}", Permissions.ENVIRONMENT_READ)
    return lookup.find_environment(session, namespace, name)


def _manifest_response(request: Request, manifest: lookup.Manifest) -> Response:
    headers = {
        **API_VERSION,
        "Docker-Content-Digest": manifest.digest,
        "Content-Length": str(len(manifest.content)),
    }
    body = b"" if request.method == "HEAD" else manifest.content
    return Response(body, media_type=manifest.media_type, headers=headers)


async def _manifest(
    request: Request, entity: AuthenticationToken | None, namespace: str, name: str, reference: str
) -> Response:
    store = _store(request)

    def find() -> lookup.Manifest:
        with store.session() as session:
            environment = _readable_environment(request, entity, session, namespace, name)
            if reference.startswith("sha256:"):
                key = lookup.digest_manifest_key(session, environment, reference)
            else:
                key = lookup.tag_manifest_key(session, environment, reference)
        manifest = lookup.read_manifest(store, key, reference)
        if reference.startswith("sha256:") and manifest.digest != reference:
            raise lookup.manifest_unknown(reference, f"the stored object at {key} does not match its digest")
        return manifest

    return _manifest_response(request, await run_in_threadpool(find))


async def _blob(
    request: Request, entity: AuthenticationToken | None, namespace: str, name: str, digest: str
) -> Response:
    store = _store(request)

    def find() -> str:
        with store.session() as session:
            environment = _readable_environment(request, entity, session, namespace, name)
            if not lookup.environment_has_blob(session, environment, digest, manifests=False):
                raise lookup.blob_unknown(digest, f"no live build of {namespace}/{name} references {digest}")
        return lookup.blob_key(digest)

    key = await run_in_threadpool(find)
    storage = store.storage
    url = await run_in_threadpool(storage.get_url, key)
    if url is not None:
        return RedirectResponse(
            url, status_code=307, headers={**API_VERSION, "Docker-Content-Digest": digest}
        )
    path = storage.local_path(key)
    if path is None or not await run_in_threadpool(path.is_file):
        raise lookup.blob_unknown(digest, f"the blob's object {key} is missing from storage")
    return FileResponse(
        path,
        media_type="application/octet-stream",
        headers={**API_VERSION, "Docker-Content-Digest": digest},
    )


async def _tags(request: Request, entity: AuthenticationToken | None, namespace: str, name: str) -> Response:
    n_text, last = request.query_params.get("n"), request.query_params.get("last")
    n: int | None = None
    if n_text is not None:
        if not n_text.isdigit() or len(n_text) > 9:
            raise RegistryError(
                "PAGINATION_NUMBER_INVALID", 400, f"n must be a non-negative integer, not {n_text[:20]!r}"
            )
        n = int(n_text)
    store = _store(request)

    def find() -> list[str]:
        with store.session() as session:
            environment = _readable_environment(request, entity, session, namespace, name)
            return lookup.list_tags(session, environment)

    tags, more = lookup.page_of_tags(await run_in_threadpool(find), n, last)
    headers = {}
    repository = f"{namespace}/{name}"
    if more and tags:
        query = urllib.parse.urlencode({"n": len(tags), "last": tags[-1]})
        headers["Link"] = f'</v2/{repository}/tags/list?{query}>; rel="next"'
    return _json({"name": repository, "tags": tags}, headers)


# ------------------------------------------------------------------------------ images on demand
def _dynamic_build(request: Request, entity: AuthenticationToken | None, specs: list[str]) -> int:
    """The build of the dynamic environment of these specs: reused when one exists (reading it
    needs read permission), else created (which needs what POST /api/v1/specification/ needs)."""
    store = _store(request)
    specification = lookup.dynamic_specification(specs)
    arn = f"{DYNAMIC_NAMESPACE}/{specification.name}"
    with store.session() as session:
        caller = _caller(request, entity, session)
        try:
            environment = lookup.find_environment(session, DYNAMIC_NAMESPACE, specification.name)
        except RegistryError:
            environment = None
        build = lookup.reusable_build(session, environment) if environment is not None else None
        if build is not None:
            require(caller, arn, Permissions.ENVIRONMENT_READ)
            return build.id
        require(caller, arn, Permissions.ENVIRONMENT_CREATE)
        namespace_exists = session.scalar(
            select(Namespace.id).where(Namespace.name == DYNAMIC_NAMESPACE, Namespace.deleted_on.is_(None))
        )
        if namespace_exists is None:
            require(caller, DYNAMIC_NAMESPACE, Permissions.NAMESPACE_CREATE)
        lookup.ensure_image_artifacts(session, store, DYNAMIC_NAMESPACE, specification.name)
        created = service.register_environment(session, store, DYNAMIC_NAMESPACE, specification)
        assert created is not None  # force=True always queues a build
        return created.id


async def _dynamic_manifest(
    request: Request, entity: AuthenticationToken | None, specs: list[str], reference: str
) -> Response:
    store = _store(request)
    build_id = await run_in_threadpool(_dynamic_build, request, entity, specs)
    deadline = time.monotonic() + DYNAMIC_WAIT_SECONDS
    while True:
        state = await run_in_threadpool(lookup.build_state, store, build_id)
        if state.manifest_key is not None:
            break
        if state.status.is_final:
            detail = f"build {build_id} is {state.status.value}: {state.status_info or 'see its log'}"
            if state.status.value == "COMPLETED":
                detail = (
                    f"build {build_id} has no image (DOCKER_MANIFEST is not in build_artifacts, or "
                    "the image step failed: see its log)"
                )
            raise lookup.manifest_unknown(reference, detail)
        if time.monotonic() >= deadline:
            raise lookup.manifest_unknown(
                reference,
                f"build {build_id} is still {state.status.value.lower()} after "
                f"{DYNAMIC_WAIT_SECONDS:g} s; retry the pull later",
            )
        await asyncio.sleep(DYNAMIC_POLL_SECONDS)
    if reference.startswith("sha256:"):
        name = lookup.dynamic_environment_name(specs)
        return await _manifest(request, entity, DYNAMIC_NAMESPACE, name, reference)
    # any tag names the build just waited for: the one these specs stand for
    manifest = await run_in_threadpool(lookup.read_manifest, store, state.manifest_key, reference)
    return _manifest_response(request, manifest)
