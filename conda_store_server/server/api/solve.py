"""GET /api/v1/specification/: solve without building, and show what would change.

The solve runs in the request (rattler's solve is async and works off the event loop's thread),
bounded by conda_max_solve_time, with the same policy as a build. Given an environment, the
answer also says what would change against its current build, so users see a change before
they build it.

Each solved package carries the columns of upstream's `conda_package_build` rows (the official
client's `conda-store solve` prints `channel_id`): the ids are those of the rows the database
already has for that channel, package and build (from an earlier build or channel indexing),
and null when it has none; a solve writes nothing.
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
from conda_store_server.build.pipeline import PACKAGE_BUILD_KEY, package_build_values
from conda_store_server.db.models import (
    CondaChannel,
    CondaPackage,
    CondaPackageBuild,
    build_conda_package_build,
)
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


def _channel_name(record: rattler.RepoDataRecord) -> str | None:
    """The channel as the package tables name it: the build pipeline names a record's channel
    the same way (it falls back to the URL only for records without one, which a solve never
    returns)."""
    return str(record.channel).rstrip("/") if record.channel else None


def _known_ids(
    conda_store: Any, records: list[rattler.RepoDataRecord]
) -> list[tuple[int | None, int | None, int | None]]:
    """(channel_id, package_id, id) of each record's rows in the package tables, None where
    there is no row: three queries, whatever the number of packages."""
    names = {name for name in map(_channel_name, records) if name is not None}
    with conda_store.session() as session:
        channel_rows = select(CondaChannel.name, CondaChannel.id).where(CondaChannel.name.in_(names))
        channels: dict[str | None, int] = dict(session.execute(channel_rows).all())
        package_rows = select(
            CondaPackage.channel_id, CondaPackage.name, CondaPackage.version, CondaPackage.id
        ).where(
            CondaPackage.channel_id.in_(channels.values()),
            CondaPackage.name.in_({r.name.normalized for r in records}),
        )
        packages = {tuple(row[:3]): row[3] for row in session.execute(package_rows)}
        key_columns = [getattr(CondaPackageBuild, column) for column in PACKAGE_BUILD_KEY]
        build_rows = select(*key_columns, CondaPackageBuild.id).where(
            CondaPackageBuild.package_id.in_(packages.values())
        )
        builds = {tuple(row[:-1]): row[-1] for row in session.execute(build_rows)}
    ids: list[tuple[int | None, int | None, int | None]] = []
    for record in records:
        channel_id = channels.get(_channel_name(record))
        package_id = packages.get((channel_id, record.name.normalized, str(record.version)))
        build_id = None
        if channel_id is not None and package_id is not None:
            values = package_build_values(record, channel_id, package_id)  # the row's natural key
            build_id = builds.get(tuple(values[column] for column in PACKAGE_BUILD_KEY))
        ids.append((channel_id, package_id, build_id))
    return ids


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
    ids = await run_in_threadpool(_known_ids, conda_store, records)
    packages = [
        {
            "id": build_id,
            "package_id": package_id,
            "channel_id": channel_id,
            "name": r.name.normalized,
            "version": str(r.version),
            "build": str(r.build),
            "build_number": r.build_number,
            "channel": _channel_name(r),
            "subdir": r.subdir,
            "size": r.size,
            "md5": r.md5.hex() if r.md5 else None,
            "sha256": r.sha256.hex() if r.sha256 else None,
            "depends": list(r.depends),
            "constrains": list(r.constrains),
            "timestamp": int(r.timestamp.timestamp() * 1000) if r.timestamp else None,
        }
        for r, (channel_id, package_id, build_id) in zip(records, ids, strict=True)
    ]
    data: dict[str, Any] = {"solve": packages, "platform": host, "channels": resolved}
    if current is not None:
        data["changes"] = changes(current, {p["name"]: p["version"] for p in packages})
    # `solve` at the top level too: the official client reads it there
    return {"status": "ok", "data": data, "message": None, "solve": packages}
