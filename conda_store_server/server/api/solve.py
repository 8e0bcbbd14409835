"""GET /api/v1/specification/: solve without building, and show what would change.

The solve runs in the request (rattler's solve is async and works off the event loop's thread),
bounded by conda_max_solve_time, with the same policy as a build. Given an environment, the
answer also says what would change against its current build, so users see a change before
they build it.

Each solved package carries the columns of upstream's `conda_package_build` rows (the official
client's `conda-store solve` prints `channel_id`): the ids are those of the rows the database
already has for that channel, package and build (from an earlier build or channel indexing),
and null when it has none; a solve writes nothing.

`pip=` entries (requirements and pip options, as in a specification's `pip:` list) are resolved
with uv for the solve's python, without building (`conda_store_server.build.pip_solve`), and
listed under `pip`, beside `solve` (in `data` and at the top level). Pip packages are in no
package table: the diff reads those of the current build from its LOCKFILE artifact. In
`changes`, pip entries carry `"manager": "pip"`; entries without it are conda packages, as
before pip was solved.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import rattler
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pydantic import ValidationError
from sqlalchemy import select

from conda_store_server import service
from conda_store_server.build import lockfile, pip_solve, solve
from conda_store_server.build.pip import SolveBudget
from conda_store_server.build.pipeline import PACKAGE_BUILD_KEY, package_build_values
from conda_store_server.db.models import (
    Build,
    BuildArtifactType,
    CondaChannel,
    CondaPackage,
    CondaPackageBuild,
    build_conda_package_build,
)
from conda_store_server.exception import BuildFailure, CondaStoreError, ConflictError, NotFoundError
from conda_store_server.fetch_policy import check_channels
from conda_store_server.redact import mask_credentials
from conda_store_server.server.auth import Permissions
from conda_store_server.server.dependencies import Caller, CallerDependency
from conda_store_server.settings import get_settings
from conda_store_server.specification import (
    CondaSpecification,
    SpecificationPolicy,
    normalize_channel,
    validation_message,
)

router = APIRouter(prefix="/api/v1")
SOLVE_NAME = "conda-store-solve"


@dataclass(frozen=True)
class _Current:
    """The current build's packages, name -> version: conda's from the package tables, pip's
    from its lockfile."""

    conda: dict[str, str]
    pip: dict[str, str]


@dataclass(frozen=True)
class _Checked:
    """A solve request after the policy and the URL rules: what to solve, and against what."""

    channels: list[str]
    conda: list[str]
    pip: list[str]
    policy: SpecificationPolicy
    current: _Current | None


def _policy_checked(
    conda_store: Any, namespace: str, name: str, channels: list[str], conda: list[str], pip_entries: list[str]
) -> _Checked:
    """The request as the policy makes it (pip entries included, so they pass the
    specification's checks and URL rules), and the current build's packages when the
    environment has one."""
    dependencies: list[Any] = [*conda, {"pip": pip_entries}] if pip_entries else list(conda)
    with conda_store.session() as session:
        try:
            specification = CondaSpecification.model_validate(
                {"name": name, "channels": channels, "dependencies": dependencies}
            )
        except ValidationError as error:  # malformed package specs, pip entries or channels
            raise CondaStoreError(mask_credentials(validation_message(error))) from error
        validated = service.prepare_specification(session, conda_store, namespace, specification)
        settings = get_settings(session, conda_store, namespace, name)
        policy = settings.specification_policy()
        given = validated.channels or settings.conda_default_channels
        # the server fetches the channels' metadata itself here: host names are resolved, as a
        # worker does before a build, so a name pointing at 127.0.0.1 is refused too
        check_channels(given, policy, functools.cache(solve.resolve_host))
        resolved = [normalize_channel(c, settings.conda_channel_alias) for c in given]
        current_conda, lockfile_key, current_build = None, None, None
        try:
            environment = service.get_environment(session, namespace, name)
        except NotFoundError:
            environment = None
        if environment is not None and environment.current_build_id is not None:
            current_build = environment.current_build_id
            rows = session.execute(
                select(CondaPackage.name, CondaPackage.version)
                .join(CondaPackageBuild, CondaPackageBuild.package_id == CondaPackage.id)
                .join(
                    build_conda_package_build,
                    build_conda_package_build.c.conda_package_build_id == CondaPackageBuild.id,
                )
                .where(build_conda_package_build.c.build_id == current_build)
            )
            current_conda = dict(rows.all())
            build = session.get(Build, current_build)
            lockfile_key = next(
                (a.key for a in build.build_artifacts if a.artifact_type == BuildArtifactType.LOCKFILE), None
            )
    current = None
    if current_conda is not None:
        where = f"build {current_build} (the current build of {namespace}/{name})"
        current = _Current(current_conda, _locked_pip(conda_store, lockfile_key, where))
    return _Checked(resolved, validated.conda_dependencies(), validated.pip_dependencies(), policy, current)


def _locked_pip(conda_store: Any, key: str | None, where: str) -> dict[str, str]:
    """name -> version of the pip packages in the lockfile at `key` (for this host).

    The lockfile is their only record, so without it the diff cannot be told: a 409 rather
    than a diff that would call every pip package added.
    """
    if key is None or not conda_store.storage.exists(key):
        raise ConflictError(
            f"{where} has no LOCKFILE artifact, where its pip packages are recorded, so what "
            "would change cannot be told; rebuild the environment, or solve without environment="
        )
    try:
        lock = json.loads(conda_store.storage.get(key))
        entries = lockfile.pip_packages(lock, str(rattler.Subdir.current()))
        return {canonicalize_name(str(e["name"])): str(e["version"]) for e in entries}
    except (ValueError, AttributeError, KeyError, TypeError) as error:
        raise ConflictError(
            f"the LOCKFILE artifact of {where} is unreadable, so what would change "
            "cannot be told; rebuild the environment, or solve without environment="
        ) from error


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


def _conda_order(old: str, new: str) -> int | None:
    """-1, 0 or 1 as conda orders the versions."""
    older, newer = rattler.Version(old), rattler.Version(new)
    return (newer > older) - (newer < older)


def _pip_order(old: str, new: str) -> int | None:
    """-1, 0 or 1 as pip orders the versions; None when an uploaded lockfile's version is not
    PEP 440 (the package is then shown as removed and added)."""
    try:
        older, newer = Version(old), Version(new)
    except InvalidVersion:
        return 0 if old == new else None
    return (newer > older) - (newer < older)


def changes(
    current: dict[str, str],
    solved: dict[str, str],
    order: Callable[[str, str], int | None] = _conda_order,
    **tag: str,
) -> dict[str, list[dict[str, str]]]:
    """What the solve adds, removes, upgrades and downgrades against `current` (name ->
    version); `tag` is added to every entry (the manager of pip packages)."""
    orders = {name: order(current[name], solved[name]) for name in set(current) & set(solved)}
    unordered = {name for name, result in orders.items() if result is None}
    moved = sorted(name for name, result in orders.items() if result)
    return {
        "added": [
            {"name": n, "version": solved[n], **tag} for n in sorted(set(solved) - set(current) | unordered)
        ],
        "removed": [
            {"name": n, "version": current[n], **tag} for n in sorted(set(current) - set(solved) | unordered)
        ],
        "upgraded": [{"name": n, "from": current[n], "to": solved[n], **tag} for n in moved if orders[n] > 0],
        "downgraded": [
            {"name": n, "from": current[n], "to": solved[n], **tag} for n in moved if orders[n] < 0
        ],
    }


@router.get("/specification/")
async def api_solve_specification(
    request: Request,
    channel: list[str] = Query([], description="Channels (repeatable); default: the deployment's"),
    channels: list[str] = Query([], description="Alias of channel (the official client sends it)"),
    conda: list[str] = Query([], description="Package specs (repeatable), e.g. python>=3.11"),
    pip: list[str] = Query(
        [],
        description="Pip requirements and options (repeatable), as in a specification's pip list, "
        "e.g. flask>=3 or --index-url URL; resolved with uv for the solved python",
    ),
    namespace: str | None = Query(None, max_length=255, description="Namespace (default: yours)"),
    environment: str | None = Query(
        None, max_length=255, description="Compare against this environment's current build"
    ),
    format: str | None = Query(None, description="Ignored, as upstream"),
    caller: Caller = CallerDependency,
) -> dict[str, Any]:
    conda_store = request.app.state.conda_store
    if not conda:
        raise HTTPException(400, "give at least one package to solve: ?conda=python")
    namespace = namespace or caller.primary_namespace
    name = environment or SOLVE_NAME
    service.check_name("namespace", namespace)
    service.check_name("environment", name)
    await run_in_threadpool(caller.require, f"{namespace}/{name}", Permissions.ENVIRONMENT_SOLVE)
    checked = await run_in_threadpool(
        _policy_checked, conda_store, namespace, name, channel + channels, conda, pip
    )
    host = str(rattler.Subdir.current())
    budget = SolveBudget(conda_store.conda_max_solve_time, time.monotonic())
    try:
        solved = await solve.solve(
            checked.channels, checked.conda, [host], conda_store.repodata_cache_directory, budget.limit
        )
        pip_packages = await run_in_threadpool(
            pip_solve.resolve, conda_store, checked.pip, solved[host], host, checked.policy, budget
        )
    except BuildFailure as failure:
        raise CondaStoreError(mask_credentials(failure.reason)) from failure
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
    pip_listed = [{"name": p.name, "version": p.version, "url": p.url} for p in pip_packages]
    data: dict[str, Any] = {
        "solve": packages,
        "pip": pip_listed,
        "platform": host,
        "channels": checked.channels,
    }
    if checked.current is not None:
        data["changes"] = changes(checked.current.conda, {p["name"]: p["version"] for p in packages})
        pip_changes = changes(
            checked.current.pip, {p.name: p.version for p in pip_packages}, _pip_order, manager="pip"
        )
        for kind, entries in pip_changes.items():
            data["changes"][kind] += entries
    # `solve` at the top level too, where the official client reads it, and `pip` beside it
    return {"status": "ok", "data": data, "message": None, "solve": packages, "pip": pip_listed}
