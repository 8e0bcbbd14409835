"""Export an environment with its history as a bundle, and import one (`conda_store_server.bundle`)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from conda_store_server import service
from conda_store_server.app import CondaStore
from conda_store_server.bundle import BundleError, environment_bundle, import_bundle, parse_bundle
from conda_store_server.limits import MAX_BODY_BYTES
from conda_store_server.server.auth import Permissions
from conda_store_server.server.dependencies import (
    Caller,
    CallerDependency,
    SessionDependency,
    StoreDependency,
)

router = APIRouter(prefix="/api/v1")

#: The largest bundle an import accepts: the request body limit, also for bodies sent without a
#: length (chunked), which the request guard cannot see in advance. Larger deployments move
#: with `python -m conda_store_server.backup`, which has no such limit.
MAX_BUNDLE_BYTES = MAX_BODY_BYTES


async def bundle_body(request: Request) -> Any:
    """The body as JSON, read up to the limit; parsed in the thread pool (it may be megabytes)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BUNDLE_BYTES:
            raise HTTPException(413, f"the bundle is larger than the limit of {MAX_BUNDLE_BYTES} bytes")
        chunks.append(chunk)
    if not size:
        raise HTTPException(400, "the request has no body: send the bundle (JSON) as the body")
    try:
        return await run_in_threadpool(json.loads, b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as error:
        raise HTTPException(400, f"the bundle is not JSON: {error}") from error


@router.get("/environment/{namespace}/{name}/export/")
def api_export_environment(
    namespace: str,
    name: str,
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> JSONResponse:
    """The environment, every build's specification, lockfile, status, timestamps and logs."""
    caller.require(f"{namespace}/{name}", Permissions.ENVIRONMENT_READ)
    environment = service.get_environment(session, namespace, name)
    return JSONResponse(
        environment_bundle(conda_store, environment),
        headers={"Content-Disposition": f'attachment; filename="{namespace}-{name}.bundle.json"'},
    )


@router.post("/environment/import/")
def api_import_environment(
    document: Any = Depends(bundle_body),
    namespace: str | None = Query(None, description="Import into this namespace instead of the bundle's"),
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> dict[str, Any]:
    """Recreate the environment with its history: builds archived (restorable from their
    lockfiles), the current build rebuilt from its lockfile. All or nothing."""
    bundle = parse_bundle(document)
    if bundle.kind != "environment":
        raise BundleError(
            "this is a deployment backup: restore it with `python -m conda_store_server.backup restore`"
        )

    def authorize(target: str, environment: str, namespace_exists: bool) -> None:
        caller.require(f"{target}/{environment}", Permissions.ENVIRONMENT_CREATE)
        if not namespace_exists:
            caller.require(target, Permissions.NAMESPACE_CREATE)

    imported = import_bundle(session, conda_store, bundle, namespace, authorize)
    return {
        "status": "ok",
        "data": {
            "environments": [
                {
                    "namespace": item.namespace,
                    "name": item.name,
                    "build_ids": {str(old): new for old, new in item.build_ids.items()},
                    "restoring_build_id": item.rebuilding,
                }
                for item in imported
            ]
        },
        "message": None,
    }
