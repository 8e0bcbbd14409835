"""One build, start to finish: solve → lockfile → install → record → COMPLETED → artifacts.

`pip:` dependencies are resolved and installed after the conda packages, for the environment's
own python (`conda_store_server.build.pip`); the lockfile of such a build is stored once it
holds them too.

Runs inside the supervised child process (see `conda_store_server.worker.supervisor`). Every
status change is conditional on the build still being BUILDING, so a cancel or a recovery that
already decided the outcome is never overwritten.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rattler
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conda_store_server import discarded_prefixes
from conda_store_server.build import artifacts, install, lockfile, pip, pip_solve, solve
from conda_store_server.build.keys import artifact_key, build_key, identity_of
from conda_store_server.build.logs import BuildLog, LogShipper, spool_path
from conda_store_server.build.permissions import apply_ownership
from conda_store_server.db.models import (
    Build,
    BuildArtifact,
    BuildArtifactType,
    BuildStatus,
    CondaChannel,
    CondaPackage,
    CondaPackageBuild,
    Environment,
    build_conda_package_build,
    utcnow,
)
from conda_store_server.disk_usage import record_build_storage
from conda_store_server.exception import BuildFailure, CondaStoreError, SpecificationError
from conda_store_server.fetch_policy import (
    Resolver,
    check_channels,
    check_lockfile_urls,
    check_package_urls,
    check_pip_index_urls,
    check_resolved_pip_urls,
)
from conda_store_server.images.step import make_image
from conda_store_server.prefix_files import CondaFiles
from conda_store_server.redact import mask_credentials
from conda_store_server.retention import apply_retention_after_build, archived_lockfile
from conda_store_server.service import get_build, link_current_build, prefix_of, run_post_update_hook
from conda_store_server.settings import Settings, get_settings
from conda_store_server.specification import SpecificationPolicy, normalize_channel

if TYPE_CHECKING:
    from conda_store_server.app import CondaStore

logger = logging.getLogger(__name__)


@dataclass
class BuildPlan:
    """Everything the build needs, read once so no ORM object crosses the slow steps."""

    build_id: int
    environment_name: str
    namespace: str
    key: str
    prefix: str
    spec: dict[str, Any]
    is_lockfile: bool
    settings: Settings
    specification_sha256: str
    #: an archived build installed again from its stored lockfile (`conda_store_server.retention`)
    restoring: bool = False
    #: whether the environment moves to this build when it completes (a restore: if asked)
    becomes_current: bool = True
    #: a restore's pip files came from the administrator's indexes, as the build resolved them
    #: (`_pip_install` trusts those): only its conda URLs are checked again
    pip_from_configured_indexes: bool = False
    #: the worker that claimed the build: the status is changed only while the claim is its own
    worker_id: str | None = None


def run_build(conda_store: CondaStore, build_id: int) -> BuildStatus:
    """Run a claimed (BUILDING) build; return its final status. Never raises for build errors.

    The log's lines go to the build's spool file, from which its supervisor ships them to
    storage (`conda_store_server.build.logs`).
    """
    log = BuildLog(spool_path(conda_store.store_directory, build_id))
    try:
        return _run_build(conda_store, build_id, log)
    finally:
        log.close()


def _run_build(conda_store: CondaStore, build_id: int, log: BuildLog) -> BuildStatus:
    with conda_store.session() as session:
        build = get_build(session, build_id)
        try:
            plan = _plan(session, conda_store, build)
        except CondaStoreError as error:
            log.write(error.message)
            _finish(session, build_id, BuildStatus.FAILED, error.message, build.worker_id)
            return BuildStatus.FAILED

    started = time.monotonic()
    log.write(
        f"starting build {build_id} of conda environment {plan.namespace}/"
        f"{plan.environment_name} at {utcnow().isoformat()} UTC"
    )
    try:
        _build(conda_store, plan, log)
    except BuildFailure as failure:
        reason = mask_credentials(failure.reason)
        log.write(f"build failed: {reason}")
        ship_log(conda_store, plan)
        _mark_failed(conda_store, plan, reason)
        return BuildStatus.FAILED
    except Exception as error:
        log.write(mask_credentials(traceback.format_exc()))
        ship_log(conda_store, plan)
        _mark_failed(conda_store, plan, mask_credentials(f"internal error: {error!r}"))
        return BuildStatus.FAILED
    log.write(f"build {build_id} finished in {time.monotonic() - started:.2f} s")
    return BuildStatus.COMPLETED


def _plan(session: Session, conda_store: CondaStore, build: Build) -> BuildPlan:
    environment = build.environment
    restoring = build.archived_on is not None
    spec = {"lockfile": archived_lockfile(conda_store, build)} if restoring else build.specification.spec
    return BuildPlan(
        build_id=build.id,
        environment_name=environment.name,
        namespace=environment.namespace.name,
        key=build_key(identity_of(build)),
        prefix=prefix_of(conda_store, build),
        spec=dict(spec),
        is_lockfile=restoring or build.specification.is_lockfile,
        settings=get_settings(session, conda_store, environment.namespace.name, environment.name),
        specification_sha256=build.specification.sha256,
        restoring=restoring,
        becomes_current=not restoring or build.current_after_restore,
        pip_from_configured_indexes=restoring and _resolved_from_configured_indexes(conda_store, build),
        worker_id=build.worker_id,
    )


def _resolved_from_configured_indexes(conda_store: CondaStore, build: Build) -> bool:
    """The build resolved its pip entries from the deployment's indexes alone (no sources of its own)."""
    if build.specification.is_lockfile:
        return False
    entries = _pip_entries(build.specification.spec)
    options = pip.pip_options(entries, conda_store.pypi_index_url, conda_store.pypi_extra_index_urls)
    return not options.names_sources


def _build(conda_store: CondaStore, plan: BuildPlan, log: BuildLog) -> None:
    host = str(rattler.Subdir.current())
    solve_started = time.monotonic()
    lock, channels = _lock(conda_store, plan, log)
    pip_entries = [] if plan.is_lockfile else _pip_entries(plan.spec)
    # stored (while rattler installs: its threads leave this interpreter idle) even when this
    # worker cannot install it; complete only once pip has resolved, when there is pip
    stores_lockfile = not pip_entries and not plan.restoring
    try:
        records_by_platform = _records_by_platform(lock, host)
    except BuildFailure:
        if stores_lockfile:
            _store_lockfile(conda_store, plan, lock)
        raise
    records = records_by_platform[host]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockfile") as beside_install:
        storing = beside_install.submit(_store_lockfile, conda_store, plan, lock) if stores_lockfile else None
        conda_files = _install_conda(conda_store, plan, records, log)
    lock_bytes = storing.result() if storing is not None else None
    locked_pip = [pip.PipPackage.from_lock_entry(entry) for entry in lockfile.pip_packages(lock, host)]

    if pip_entries:
        budget = pip.SolveBudget(plan.settings.conda_max_solve_time, solve_started)
        locked_pip = _pip_install(conda_store, plan, pip_entries, budget, log)
        lock = lockfile.with_pip_packages(lock, host, locked_pip)
        by_package = pip.distributions_by_conda_package(plan.prefix)
        for platform, other in sorted(records_by_platform.items()):
            if platform != host:
                packages = _pip_lock(conda_store, plan, pip_entries, other, platform, by_package, budget, log)
                lock = lockfile.with_pip_packages(lock, platform, packages)
        lock_bytes = _store_lockfile(conda_store, plan, lock)
    elif locked_pip:
        _pip_install_locked(conda_store, plan, locked_pip, log)

    files = apply_ownership(
        plan.prefix, plan.settings.default_uid, plan.settings.default_gid, plan.settings.default_permissions
    )
    with conda_store.session() as session:
        _record_packages(session, plan.build_id, plan.prefix, records)
        size = record_build_storage(session, plan.build_id, plan.prefix, files, conda_files)
    _complete(conda_store, plan, size, log)
    # a git package has no version an index could find: it is pinned to its commit instead
    pins = [p.requirement if p.is_git else f"{p.name}=={p.version}" for p in locked_pip]
    _make_artifacts(conda_store, plan, channels, pins, lock_bytes, records_by_platform, log)
    apply_retention_after_build(conda_store, plan.build_id)


def _records_by_platform(lock: dict[str, Any], host: str) -> dict[str, list[rattler.RepoDataRecord]]:
    """What is installed is read from the lockfile, so that it is what the lockfile says."""
    records_by_platform = lockfile.from_conda_lock(lock)
    if host not in records_by_platform:
        raise BuildFailure(
            f"The lockfile does not cover this worker's platform {host} (it covers "
            f"{sorted(records_by_platform)}); add {host} to conda_solve_platforms, or lock an "
            f"uploaded lockfile for {host} too"
        )
    return records_by_platform


def _install_conda(
    conda_store: CondaStore, plan: BuildPlan, records: list[rattler.RepoDataRecord], log: BuildLog
) -> CondaFiles:
    """Install the conda packages into a new prefix; the paths each installed package holds."""
    if os.path.lexists(plan.prefix):
        shutil.rmtree(plan.prefix)
    os.makedirs(os.path.dirname(plan.prefix), exist_ok=True)
    log.write(f"installing {len(records)} packages into {plan.prefix}")
    for record in sorted(records, key=lambda r: r.name.normalized):
        log.write(f"  {record.name.normalized} {record.version} {record.build}  {record.url}")
    started = time.monotonic()
    conda_files = asyncio.run(install.install(records, plan.prefix, conda_store.package_cache_directory))
    log.write(f"installed in {time.monotonic() - started:.2f} s")
    return conda_files


def _store_lockfile(conda_store: CondaStore, plan: BuildPlan, lock: dict[str, Any]) -> bytes:
    """Store the build's lockfile; the bytes stored, for the steps after it that need them."""
    content = json.dumps(lock, indent=4).encode()
    _store_artifact(
        conda_store,
        plan.build_id,
        BuildArtifactType.LOCKFILE,
        artifact_key("lockfile", plan.key),
        content,
        "application/json",
    )
    return content


def _pip_entries(spec: dict[str, Any]) -> list[str]:
    """The entries (requirements and options) of every `{"pip": [...]}` dependency."""
    return [
        entry
        for dependency in spec.get("dependencies", [])
        if isinstance(dependency, dict)
        for entry in dependency.get("pip", [])
    ]


def _pip_install(
    conda_store: CondaStore, plan: BuildPlan, entries: list[str], budget: pip.SolveBudget, log: BuildLog
) -> list[pip.PipPackage]:
    """Resolve the specification's pip entries for the environment's python and install them."""
    options = pip.pip_options(entries, conda_store.pypi_index_url, conda_store.pypi_extra_index_urls)
    indexes = [options.index_url, *options.extra_index_urls, *options.find_links]
    log.write(mask_credentials(f"resolving pip requirements {list(options.requirements)} from {indexes}"))
    started = time.monotonic()
    interpreter = pip.inspect_interpreter(
        plan.prefix, budget.remaining(), conda_store.pip_interpreter_cache_directory
    )
    with artifacts.temporary_directory(conda_store.store_directory) as scratch:
        packages = pip.resolve(interpreter, options, conda_store.uv_cache_directory, scratch, budget, log)
        log.write(f"resolved in {time.monotonic() - started:.2f} s")
        if options.names_sources:  # files of an index the administrator did not choose
            _check_urls(check_resolved_pip_urls, [package.url for package in packages], plan.settings)
        _log_pip_packages(packages, log)
        pip.install(interpreter, packages, options, conda_store.uv_cache_directory, scratch, log)
    pip.check_installed_files(plan.prefix, interpreter, packages)
    return pip.with_dependencies(interpreter, packages, options.requirements)


def _pip_lock(
    conda_store: CondaStore,
    plan: BuildPlan,
    entries: list[str],
    records: list[rattler.RepoDataRecord],
    platform: str,
    by_package: dict[tuple[str, str], dict[str, str]],
    budget: pip.SolveBudget,
    log: BuildLog,
) -> list[pip.PipPackage]:
    """The pip part of the lock for a platform other than the worker's: resolved for that
    platform's python as a solve does it (`pip_solve`), never installed, so a worker of that
    platform installs the same files from the lockfile. `by_package` holds the distributions
    each conda package installed here: the same package and version provides them there too."""
    provided = {
        name: version
        for record in records
        for name, version in by_package.get((record.name.normalized, str(record.version)), {}).items()
    }
    log.write(f"resolving pip requirements for {platform} (locked, not installed here)")
    try:
        packages = pip_solve.resolve(
            conda_store, entries, records, platform, plan.settings.specification_policy(), budget, provided
        )
    except SpecificationError as error:
        raise BuildFailure(error.message) from error
    except BuildFailure as failure:
        raise BuildFailure(f"pip requirements for {platform}: {failure.reason}") from failure
    for package in packages:
        log.write(mask_credentials(f"  {platform}: {package.name} {package.version}  {package.url}"))
    return packages


def _pip_install_locked(
    conda_store: CondaStore, plan: BuildPlan, packages: list[pip.PipPackage], log: BuildLog
) -> None:
    """Install a lockfile's pip files as they are; conda's distributions stay as conda put them."""
    options = pip.PipOptions(
        requirements=(),
        index_url=conda_store.pypi_index_url,
        extra_index_urls=tuple(conda_store.pypi_extra_index_urls),
    )
    interpreter = pip.inspect_interpreter(
        plan.prefix, pip.INSPECT_SECONDS, conda_store.pip_interpreter_cache_directory
    )
    conda = pip.conda_distributions(interpreter)
    clashes = [f"{p.name} {p.version} (conda: {conda[p.name]})" for p in packages if p.name in conda]
    if clashes:
        raise BuildFailure(
            f"The lockfile installs {', '.join(clashes)} with pip over the conda package of the "
            "same name; remove those pip entries or the conda packages from the lockfile"
        )
    _log_pip_packages(packages, log)
    with artifacts.temporary_directory(conda_store.store_directory) as scratch:
        pip.install(interpreter, packages, options, conda_store.uv_cache_directory, scratch, log)
    pip.check_installed_files(plan.prefix, interpreter, packages)


def _log_pip_packages(packages: list[pip.PipPackage], log: BuildLog) -> None:
    log.write(f"installing {len(packages)} pip packages")
    for package in packages:
        log.write(mask_credentials(f"  {package.name} {package.version}  {package.url}"))


def _check_urls(
    check: Callable[[Any, SpecificationPolicy, Resolver | None], None], values: Any, settings: Settings
) -> None:
    """Apply one URL rule of the specification module again, now resolving host names.

    The server checked the specification without DNS, and perhaps under an older version or
    other settings; this runs before anything is fetched, and a refusal fails the build with
    the same message the server would give.
    """
    resolve = functools.cache(solve.resolve_host)  # solved packages share a few hosts
    try:
        check(values, settings.specification_policy(), resolve)
    except SpecificationError as error:
        raise BuildFailure(error.message) from error


def _lock(conda_store: CondaStore, plan: BuildPlan, log: BuildLog) -> tuple[dict[str, Any], list[str]]:
    if plan.is_lockfile:
        lock = {**plan.spec["lockfile"], "version": 1}
        checked = lock
        if plan.pip_from_configured_indexes:
            checked = {**lock, "package": [p for p in lock.get("package", []) if p.get("manager") != "pip"]}
        _check_urls(check_lockfile_urls, checked, plan.settings)
        channels = [
            c["url"] if isinstance(c, dict) else c for c in lock.get("metadata", {}).get("channels", [])
        ]
        log.write("using the submitted lockfile; no solve needed")
        return lock, channels

    settings = plan.settings
    _check_urls(check_pip_index_urls, _pip_entries(plan.spec), settings)
    given = plan.spec.get("channels") or settings.conda_default_channels
    _check_urls(check_channels, given, settings)
    channels = [normalize_channel(c, settings.conda_channel_alias) for c in given]
    specs = [d for d in plan.spec.get("dependencies", []) if isinstance(d, str)]
    log.write(f"solving {specs} from {channels} for {settings.conda_solve_platforms}")
    started = time.monotonic()
    records_by_platform = asyncio.run(
        solve.solve(
            channels,
            specs,
            settings.conda_solve_platforms,
            conda_store.repodata_cache_directory,
            settings.conda_max_solve_time,
        )
    )
    log.write(f"solved in {time.monotonic() - started:.2f} s")
    # A channel's repodata may place its packages anywhere (`base_url`): check before download.
    solved = sorted(
        {(_channel_of(record), record.url) for records in records_by_platform.values() for record in records}
    )
    _check_urls(check_package_urls, solved, settings)
    return lockfile.to_conda_lock(records_by_platform, channels, plan.specification_sha256), channels


def _store_artifact(
    conda_store: CondaStore,
    build_id: int,
    artifact_type: BuildArtifactType,
    key: str,
    content: bytes,
    content_type: str,
) -> None:
    conda_store.storage.set(key, content, content_type)
    _add_artifact_row(conda_store, build_id, artifact_type, key)


def _add_artifact_row(
    conda_store: CondaStore, build_id: int, artifact_type: BuildArtifactType, key: str
) -> None:
    with conda_store.session() as session:
        exists = session.scalar(
            select(BuildArtifact.id).where(
                BuildArtifact.build_id == build_id, BuildArtifact.artifact_type == artifact_type
            )
        )
        if exists is None:
            session.add(BuildArtifact(build_id=build_id, artifact_type=artifact_type, key=key))


def _channel_of(record: rattler.RepoDataRecord) -> str:
    if record.channel:
        return str(record.channel).rstrip("/")
    return record.url.rsplit("/", 2)[0]


def _about(prefix: str, record: rattler.RepoDataRecord) -> dict[str, Any]:
    """The package's `info/about.json` (summary, description, license), or {} if unreadable.

    rattler does not copy `info/` into the prefix; the conda-meta record names the extracted
    package in the shared cache, which has it.
    """
    meta = Path(prefix, "conda-meta", f"{record.name.normalized}-{record.version}-{record.build}.json")
    try:
        extracted = json.loads(meta.read_text()).get("extracted_package_dir")
        return json.loads(Path(extracted, "info", "about.json").read_text()) if extracted else {}
    except (OSError, ValueError):
        return {}


def package_build_values(record: rattler.RepoDataRecord, channel_id: int, package_id: int) -> dict[str, Any]:
    """A CondaPackageBuild row of a record (shared by builds and channel indexing: one row each)."""
    return {
        "channel_id": channel_id,
        "package_id": package_id,
        "subdir": record.subdir,
        "build": str(record.build),
        "build_number": record.build_number,
        "sha256": record.sha256.hex() if record.sha256 else "",
        "depends": list(record.depends),
        "constrains": list(record.constrains),
        "md5": record.md5.hex() if record.md5 else "",
        "size": record.size or 0,
        "timestamp": int(record.timestamp.timestamp() * 1000) if record.timestamp else None,
    }


CHANNEL_KEY = ("name",)
PACKAGE_KEY = ("channel_id", "name", "version")
PACKAGE_BUILD_KEY = ("channel_id", "package_id", "subdir", "build", "build_number", "sha256")


def existing_or_created(
    session: Session,
    model: type,
    natural_key: tuple[str, ...],
    existing: dict[tuple, Any],
    wanted: dict[tuple, dict[str, Any]],
) -> dict[tuple, Any]:
    """Rows for every key: those found by one query, the rest inserted in one savepoint.

    Another build may insert the same rows at the same moment; then the batch is rolled back
    and each missing row is fetched or inserted on its own.
    """
    missing = {key: values for key, values in wanted.items() if key not in existing}
    if not missing:
        return existing
    try:
        with session.begin_nested():
            created = {key: model(**values) for key, values in missing.items()}
            session.add_all(created.values())
        return {**existing, **created}
    except IntegrityError:
        pass
    rows = dict(existing)
    for key, values in missing.items():
        lookup = {name: values[name] for name in natural_key}
        row = session.scalar(select(model).filter_by(**lookup))
        if row is None:
            try:
                with session.begin_nested():
                    row = model(**values)
                    session.add(row)
            except IntegrityError:
                row = session.scalars(select(model).filter_by(**lookup)).one()
        rows[key] = row
    return rows


def fill_missing(
    rows: dict[tuple, Any], wanted: dict[tuple, dict[str, Any]], columns: tuple[str, ...]
) -> None:
    """Set the `columns` that are null on existing rows from the values now known.

    A package row made by channel indexing (or by a build before summaries were read) has no
    summary; the next build or index run that knows it fills it in, without overwriting.
    """
    for key, values in wanted.items():
        row = rows[key]
        for column in columns:
            if getattr(row, column) is None and values.get(column) is not None:
                setattr(row, column, values[column])


def _record_packages(
    session: Session, build_id: int, prefix: str, records: list[rattler.RepoDataRecord]
) -> None:
    """The build's package rows, with a query per table rather than per package."""
    channel_name = {id(record): _channel_of(record) for record in records}  # rattler's str() is slow
    channel_names = set(channel_name.values())
    channels = existing_or_created(
        session,
        CondaChannel,
        CHANNEL_KEY,
        {
            (c.name,): c
            for c in session.scalars(select(CondaChannel).where(CondaChannel.name.in_(channel_names)))
        },
        {(name,): {"name": name} for name in channel_names},
    )
    channel_of = {id(record): channels[(channel_name[id(record)],)] for record in records}

    def package_key(record: rattler.RepoDataRecord) -> tuple:
        return (channel_of[id(record)].id, record.name.normalized, str(record.version))

    found = {
        (p.channel_id, p.name, p.version): p
        for p in session.scalars(
            select(CondaPackage).where(
                CondaPackage.name.in_({record.name.normalized for record in records}),
                CondaPackage.channel_id.in_({channel.id for channel in channels.values()}),
            )
        )
    }
    wanted_packages: dict[tuple, dict[str, Any]] = {}
    for record in records:
        key = package_key(record)
        row = found.get(key)
        # about.json (two file reads a package) only for a row to create or without a summary
        # yet: channel indexing makes rows without one, and fill_missing completes them
        about = {} if row is not None and row.summary is not None else _about(prefix, record)
        wanted_packages[key] = {
            "channel_id": key[0],
            "name": key[1],
            "version": key[2],
            "license": record.license or about.get("license"),
            "license_family": record.license_family,
            "summary": about.get("summary"),
            "description": about.get("description"),
        }
    packages = existing_or_created(session, CondaPackage, PACKAGE_KEY, found, wanted_packages)
    fill_missing(packages, wanted_packages, ("license", "summary", "description"))

    def build_values(record: rattler.RepoDataRecord) -> dict[str, Any]:
        return package_build_values(record, channel_of[id(record)].id, packages[package_key(record)].id)

    wanted_builds = {}
    for record in records:
        values = build_values(record)
        wanted_builds[tuple(values[name] for name in PACKAGE_BUILD_KEY)] = values
    # keys and ids only: loading a hundred whole rows (their depends lists) cost more than the rest
    key_columns = [getattr(CondaPackageBuild, name) for name in PACKAGE_BUILD_KEY]
    ids = {
        tuple(row[:-1]): row[-1]
        for row in session.execute(
            select(*key_columns, CondaPackageBuild.id).where(
                CondaPackageBuild.sha256.in_({values["sha256"] for values in wanted_builds.values()})
            )
        )
    }
    missing = {key: values for key, values in wanted_builds.items() if key not in ids}
    if missing:
        created = existing_or_created(session, CondaPackageBuild, PACKAGE_BUILD_KEY, {}, missing)
        session.flush()
        ids.update((key, row.id) for key, row in created.items())
    # the build's set of package builds, replaced as a whole (a restore records them again)
    session.execute(delete(build_conda_package_build).where(build_conda_package_build.c.build_id == build_id))
    if wanted_builds:
        session.execute(
            insert(build_conda_package_build),
            [{"build_id": build_id, "conda_package_build_id": ids[key]} for key in wanted_builds],
        )


def ship_log(conda_store: CondaStore, plan: BuildPlan) -> None:
    """Hand the log written so far to storage before the build is seen to end: whoever reads it
    after the status changes finds every line before the change. Its supervisor ships the rest
    (a storage failure here leaves the lines to it)."""
    try:
        LogShipper(conda_store.storage, conda_store.store_directory).ship(
            plan.build_id, artifact_key("logs", plan.key)
        )
    except Exception:  # noqa: BLE001 - the supervisor ships them later; the build's outcome stands
        logger.exception("the log of build %s could not be shipped before it ended", plan.build_id)


def _complete(conda_store: CondaStore, plan: BuildPlan, size: int, log: BuildLog) -> None:
    """COMPLETED, and the environment's current build: the last build to complete wins."""
    ship_log(conda_store, plan)
    with conda_store.session() as session:
        result = session.execute(
            update(Build)
            .where(*_still_ours(plan.build_id, plan.worker_id))
            .values(
                status=BuildStatus.COMPLETED,
                ended_on=utcnow(),
                size=size,
                status_info=None,
                archived_on=None,
                current_after_restore=False,
            )
            .execution_options(synchronize_session=False)
        )
        if not result.rowcount:
            raise BuildFailure("the build was canceled or recovered while it ran")
        session.add(
            BuildArtifact(build_id=plan.build_id, artifact_type=BuildArtifactType.DIRECTORY, key=plan.prefix)
        )
        build = get_build(session, plan.build_id)
        environment: Environment = build.environment
        if environment.deleted_on is None and build.deleted_on is None and plan.becomes_current:
            environment.current_build_id = build.id
            session.flush()
            link_current_build(conda_store, environment, build)
            run_post_update_hook(conda_store, environment)
    restored = "restored from its lockfile and " if plan.restoring else ""
    now = "it is now the current build" if plan.becomes_current else "the current build is unchanged"
    log.write(f"build {plan.build_id} {restored}COMPLETED ({size} bytes); {now}")


def _make_artifacts(
    conda_store: CondaStore,
    plan: BuildPlan,
    channels: list[str],
    pip_pins: list[str],
    lock_bytes: bytes | None,
    records_by_platform: dict[str, list[rattler.RepoDataRecord]],
    log: BuildLog,
) -> None:
    """Artifacts after COMPLETED (as the original): a failure here is logged, the env stays usable.

    `lock_bytes` is the lockfile this build stored (None when it stored none: a restore)."""
    wanted = plan.settings.build_artifacts
    if "YAML" in wanted:
        content = artifacts.export_yaml(plan.environment_name, plan.prefix, channels, pip_pins)
        _store_artifact(
            conda_store,
            plan.build_id,
            BuildArtifactType.YAML,
            artifact_key("yaml", plan.key),
            content.encode(),
            "text/yaml",
        )
        log.write("YAML export stored")
    if "CONDA_PACK" in wanted:
        started = time.monotonic()
        try:
            with artifacts.temporary_directory(conda_store.store_directory) as scratch:
                archive = artifacts.conda_pack_archive(plan.prefix, scratch)
                conda_store.storage.fset(artifact_key("archive", plan.key), archive, "application/gzip")
            _add_artifact_row(
                conda_store, plan.build_id, BuildArtifactType.CONDA_PACK, artifact_key("archive", plan.key)
            )
            log.write(f"conda-pack archive stored in {time.monotonic() - started:.2f} s")
        except Exception as error:
            log.write(f"conda-pack archive failed: {error}")
    if "DOCKER_MANIFEST" in wanted:
        make_image(
            conda_store, plan.build_id, plan.key, plan.prefix, lock_bytes, records_by_platform, log.write
        )
    if "CONSTRUCTOR_INSTALLER" in wanted:
        log.write("CONSTRUCTOR_INSTALLER artifacts are not built by this server yet; skipped")


def _finish(
    session: Session, build_id: int, status: BuildStatus, reason: str | None, worker_id: str | None
) -> bool:
    result = session.execute(
        update(Build)
        .where(*_still_ours(build_id, worker_id))
        .values(status=status, ended_on=utcnow(), status_info=reason)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)


def _still_ours(build_id: int, worker_id: str | None) -> tuple[Any, ...]:
    """BUILDING under the claim this process runs for: not canceled, nor recovered and claimed
    by another worker (whose process would be installing into the same prefix)."""
    return (
        Build.id == build_id,
        Build.status == BuildStatus.BUILDING,
        Build.worker_id.is_not_distinct_from(worker_id),
    )


def _mark_failed(conda_store: CondaStore, plan: BuildPlan, reason: str) -> None:
    """FAILED, and what the build installed moved out of the way before that commits
    (`discarded_prefixes`), then deleted."""
    discarded = None
    with conda_store.session() as session:
        if _finish(session, plan.build_id, BuildStatus.FAILED, reason, plan.worker_id):
            discarded = discarded_prefixes.discard(conda_store.store_directory, plan.prefix)
    discarded_prefixes.delete(discarded)
