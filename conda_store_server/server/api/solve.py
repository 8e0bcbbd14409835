"""GET /api/v1/specification/: solve without building, and show what would change.

The solve runs in the request (rattler's solve is async and works off the event loop's thread),
bounded by conda_max_solve_time, with the same policy as a build. Given an environment, the
answer also says what would change against its current build, so users see a change before
they build it.
"""

from __future__ import annotations

import functools
from typing import Any

import rattler
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from conda_store_server import service
from conda_store_server.build import solve
from conda_store_server.db.models import CondaPackage, CondaPackageBuild, build_conda_package_build
from conda_store_server.exception import BuildFailure, CondaStoreError, NotFoundError
from conda_store_server.fetch_policy import check_channels
from conda_store_server.server.auth import Permissions
from conda_store_server.server.dependencies import Caller, CallerDependency
from conda_store_server.settings import get_settings
from conda_store_server.specification import CondaSpecification, normalize_channel

router = APIRouter(prefix="/api/v1")
SOLVE_NAME = "conda-store-solve"


def _policy_checked(
    conda_store: Any, namespace: str, name: str, channels: list[str], conda: list[str]
) -> tuple[CondaSpecification, list[str], list[str], dict[str, str] | None]:
    """The specification after the policy, its channels, the host platform, and the current
    build's packages ({name: version}) when the environment exists."""
    with conda_store.session() as session:
        specification = CondaSpecification.model_validate(
            {"name": name, "channels": channels, "dependencies": conda}
        )
        validated = service.prepare_specification(session, conda_store, namespace, specification)
        settings = get_settings(session, conda_store, namespace, name)
        given = validated.channels or settings.conda_default_channels
        # the server fetches the channels' metadata itself here: host names are resolved, as a
        # worker does before a build, so a name pointing at 127.0.0.1 is refused too
        check_channels(given, settings.specification_policy(), functools.cache(solve.resolve_host))
        resolved = [normalize_channel(c, settings.conda_channel_alias) for c in given]
        current = None
        try:
            environment = service.get_environment(session, namespace, name)
        except NotFoundError:
            environment = None
        if environment is not None and environment.current_build_id is not None:
            rows = session.execute(
                select(CondaPackage.name, CondaPackage.version)
                .join(CondaPackageBuild, CondaPackageBuild.package_id == CondaPackage.id)
                .join(
                    build_conda_package_build,
                    build_conda_package_build.c.conda_package_build_id == CondaPackageBuild.id,
                )
                .where(build_conda_package_build.c.build_id == environment.current_build_id)
            )
            current = dict(rows.all())
        specs = [d for d in validated.dependencies if isinstance(d, str)]
        return validated, resolved, specs, current


def changes(current: dict[str, str], solved: dict[str, str]) -> dict[str, Any]:
    def compare(name: str) -> int:
        old, new = rattler.Version(current[name]), rattler.Version(solved[name])
        return (new > old) - (new < old)

    common = sorted(set(current) & set(solved))
    return {
        "added": [{"name": n, "version": solved[n]} for n in sorted(set(solved) - set(current))],
        "removed": [{"name": n, "version": current[n]} for n in sorted(set(current) - set(solved))],
        "upgraded": [{"name": n, "from": current[n], "to": solved[n]} for n in common if compare(n) > 0],
        "downgraded": [{"name": n, "from": current[n], "to": solved[n]} for n in common if compare(n) < 0],
    }


@router.get("/specification/")
async def api_solve_specification(
    request: Request,
    channel: list[str] = Query([], description="Channels (repeatable); default: the deployment's"),
    channels: list[str] = Query([], description="Alias of channel (the official client sends it)"),
    conda: list[str] = Query([], description="Package specs (repeatable), e.g. python>=3.11"),
    pip: list[str] = Query([], description="Not supported yet: a 400"),
    namespace: str | None = Query(None, max_length=255, description="Namespace (default: yours)"),
    environment: str | None = Query(
        None, max_length=255, description="Compare against this environment's current build"
    ),
    format: str | None = Query(None, description="Ignored, as upstream"),
    caller: Caller = CallerDependency,
) -> dict[str, Any]:
    conda_store = request.app.state.conda_store
    if pip:
        raise HTTPException(400, f"pip dependencies {pip} are not supported yet; solve conda packages only")
    if not conda:
        raise HTTPException(400, "give at least one package to solve: ?conda=python")
    namespace = namespace or caller.primary_namespace
    name = environment or SOLVE_NAME
    service.check_name("namespace", namespace)
    service.check_name("environment", name)
    await run_in_threadpool(caller.require, f"{namespace}/{name}", Permissions.ENVIRONMENT_SOLVE)
    try:
        _, resolved, specs, current = await run_in_threadpool(
            _policy_checked, conda_store, namespace, name, channel + channels, conda
        )
    except ValueError as error:  # pydantic: malformed package specs or channels
        raise CondaStoreError(str(error)) from error
    host = str(rattler.Subdir.current())
    try:
        solved = await solve.solve(
            resolved, specs, [host], conda_store.repodata_cache_directory, conda_store.conda_max_solve_time
        )
    except BuildFailure as failure:
        raise CondaStoreError(str(failure)) from failure
    records = sorted(solved[host], key=lambda r: r.name.normalized)
    packages = [
        {
            "name": r.name.normalized,
            "version": str(r.version),
            "build": str(r.build),
            "channel": str(r.channel).rstrip("/") if r.channel else None,
            "subdir": r.subdir,
            "size": r.size,
            "sha256": r.sha256.hex() if r.sha256 else None,
        }
        for r in records
    ]
    data: dict[str, Any] = {"solve": packages, "platform": host, "channels": resolved}
    if current is not None:
        data["changes"] = changes(current, {p["name"]: p["version"] for p in packages})
    # `solve` at the top level too: the official client reads it there
    return {"status": "ok", "data": data, "message": None, "solve": packages}
