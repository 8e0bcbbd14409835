"""`CondaStore`: every `c.CondaStore.*` option of the seed configuration, and the service facade.

The traits are the deployment's policy and layout; the facade lazily builds what they describe
(database engine, storage) so that importing or configuring touches no disk or network.
"""

from __future__ import annotations

import functools
import os
import posixpath
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import platformdirs
from traitlets import (
    Bool,
    Enum,
    Float,
    Integer,
    List,
    TraitError,
    Type,
    Unicode,
    Union,
    default,
    observe,
    validate,
)
from traitlets import (
    Callable as CallableTrait,
)
from traitlets.config import LoggingConfigurable

from conda_store_server.exception import CondaStoreError
from conda_store_server.lifecycle_settings import check_lifecycle_value

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from conda_store_server.storage import Storage

ARTIFACT_TYPES = ("LOCKFILE", "YAML", "CONDA_PACK", "DOCKER_MANIFEST", "CONSTRUCTOR_INSTALLER")
KEPT_ARTIFACT_TYPES = (
    "LOGS",
    "LOCKFILE",
    "YAML",
    "CONDA_PACK",
    "DOCKER_MANIFEST",
    "DIRECTORY",
    "CONSTRUCTOR_INSTALLER",
    "DOCKER_BLOB",
    "CONTAINER_REGISTRY",
)
SUPPORTED_CONDA_COMMANDS = ("rattler", "py-rattler")


def conda_store_dir() -> str:
    """Where state lives by default (as the original: the platform's user data directory)."""
    return str(platformdirs.user_data_path("conda-store"))


def host_platform() -> str:
    import rattler

    return str(rattler.Subdir.current())


def conda_store_validate_specification(
    conda_store: CondaStore, namespace: str, specification: Any, settings: Any
) -> Any:
    """Default `validate_specification`: the layered channel and package policy (upstream §5.3)."""
    from conda_store_server.specification import apply_policy

    return apply_policy(specification, settings.specification_policy())


def conda_store_validate_action(conda_store: CondaStore, namespace: str, action: str) -> None:
    """Default `validate_action`: refuse to create or update environments when the disk is full."""
    import shutil

    os.makedirs(conda_store.store_directory, exist_ok=True)
    free = shutil.disk_usage(conda_store.store_directory).free
    if action in ("environment:create", "environment::update") and free < conda_store.storage_threshold:
        raise CondaStoreError(
            f"`CondaStore.storage_threshold` reached. Action {action} prevented due to "
            f"insufficient storage space ({free} bytes free, {conda_store.storage_threshold} required)"
        )


class CondaStore(LoggingConfigurable):
    # ----------------------------------------------------------------- storage and layout
    storage_class = Type(
        default_value="conda_store_server.storage.LocalStorage",
        klass="conda_store_server.storage.Storage",
        allow_none=False,
        config=True,
        help="Storage backend for build artifacts (lockfiles, logs, archives, images). "
        "`conda_store_server.storage.LocalStorage` (default) or "
        "`conda_store_server.storage.S3Storage`.",
    )
    store_directory = Unicode(
        config=True,
        help="Directory in which environments are built and the shared package cache lives. "
        "Default: `<user data dir>/conda-store/state`, e.g. `~/.local/share/conda-store/state`.",
    )
    build_directory = Unicode(
        "{store_directory}/{namespace}",
        config=True,
        help="Template of the directory that holds an environment's builds. Keys: "
        "`store_directory`, `namespace`, `name`. The build prefix is `<this>/<build key>`.",
    )
    environment_directory = Unicode(
        "{store_directory}/{namespace}/envs/{name}",
        config=True,
        help="Template of the symlink that points at an environment's current build. Keys: "
        "`store_directory`, `namespace`, `name`. Not used with build_key_version 3.",
    )
    build_key_version = Integer(
        2,
        config=True,
        help="Build key format: 1 (long, legacy), 2 (short, default: "
        "`<sha256[:8]>-<epoch>-<id>-<name>`) or 3 (32-char hash, no symlink).",
    )
    win_extended_length_prefix = Bool(
        False,
        config=True,
        help="Windows only: prefix build paths with `\\\\?\\`. No effect elsewhere.",
    )

    # ----------------------------------------------------------------- policy callables
    validate_specification = CallableTrait(
        conda_store_validate_specification,
        config=True,
        help="Callable `(conda_store, namespace, specification, settings)` that validates and may "
        "modify a specification before it is built; raise ValueError with a message to reject it. "
        "The default applies the conda/pypi default, required and included package rules and the "
        "allowed channels. A callable with the original's signature "
        "`(conda_store, namespace, specification)` is accepted too.",
    )
    validate_action = CallableTrait(
        conda_store_validate_action,
        config=True,
        help="Callable `(conda_store, namespace, action)` that may veto an action by raising "
        "CondaStoreError. The default enforces `storage_threshold`.",
    )

    # ----------------------------------------------------------------- conda
    conda_command = Unicode(
        "mamba",
        config=True,
        help="Accepted for compatibility with the original. Environments are solved and installed "
        "by py-rattler in process whatever this names; a value other than rattler is reported "
        "once at start-up.",
    )
    conda_flags = Unicode(
        "--strict-channel-priority",
        config=True,
        help="Accepted for compatibility. Channel priority is always strict with py-rattler.",
    )
    conda_solve_platforms = List(
        Unicode(),
        config=True,
        help="Platforms to solve environments for; the lockfile covers each. Must include the "
        "platform the workers run on. Default: that platform only, e.g. ['linux-64'].",
    )
    conda_channel_alias = Unicode(
        "https://conda.anaconda.org",
        config=True,
        help="URL prepended to channel names that are not URLs, e.g. `conda-forge` -> "
        "`https://conda.anaconda.org/conda-forge`.",
    )
    conda_platforms = List(
        Unicode(),
        config=True,
        help="Platforms whose repodata is fetched and indexed. Default: the host platform and noarch.",
    )
    conda_default_channels = List(
        Unicode(),
        ["conda-forge"],
        config=True,
        help="Channels used when a specification lists none.",
    )
    conda_allowed_channels = List(
        Unicode(),
        [],
        config=True,
        help="Channels a specification may use (names or URLs, compared after the channel alias "
        "is applied). Empty: any channel under conda_channel_alias or on a public http(s) host; "
        "file:// URLs and loopback, link-local or private hosts only when configured here, in "
        "conda_default_channels or in conda_indexed_channels.",
    )
    conda_indexed_channels = List(
        Unicode(),
        ["main", "conda-forge", "https://repo.anaconda.com/pkgs/main"],
        config=True,
        help="Channels whose package lists are indexed into the database (package search).",
    )
    conda_default_packages = List(
        Unicode(),
        [],
        config=True,
        help="Conda packages used when a specification has no dependencies at all.",
    )
    conda_required_packages = List(
        Unicode(),
        [],
        config=True,
        help="Conda packages every specification must list; a specification without them is "
        "rejected with a message naming them (they are not added).",
    )
    conda_included_packages = List(
        Unicode(),
        [],
        config=True,
        help="Conda packages added to every specification that does not already list them.",
    )
    conda_max_solve_time = Integer(
        5 * 60,
        config=True,
        help="Seconds a solve may take before the build fails with that reason.",
    )

    # ----------------------------------------------------------------- pypi
    pypi_default_packages = List(
        Unicode(),
        [],
        config=True,
        help="PyPI packages used when a specification has no pip dependencies.",
    )
    pypi_required_packages = List(
        Unicode(),
        [],
        config=True,
        help="PyPI packages every specification must list (rejected, not added, when missing).",
    )
    pypi_included_packages = List(
        Unicode(),
        [],
        config=True,
        help="PyPI packages added to every specification that does not already list them.",
    )

    pypi_index_url = Unicode(
        "https://pypi.org/simple",
        config=True,
        help="The PyPI index (PEP 503 simple API) that builds install pip packages from, unless a "
        "specification names its own `--index-url`. Credentials for a private index may be given "
        "here (`https://user:password@pypi.example.org/simple`): they stay on the workers, and are "
        "masked (****) in logs, lockfiles, exports and answers.",
    )
    pypi_extra_index_urls = List(
        Unicode(),
        [],
        config=True,
        help="Further indexes that builds search beside pypi_index_url (uv's `--extra-index-url`), "
        "e.g. ['https://user:password@pypi.internal/simple']. Credentials as for pypi_index_url.",
    )
    pypi_allowed_indexes = List(
        Unicode(),
        [],
        config=True,
        help="URL prefixes a specification may name in `--index-url`, `--extra-index-url`, "
        "`--find-links` or a direct reference (`name @ URL`). Empty: any public http(s) index. "
        "Whatever this says, file:// URLs and loopback, link-local (169.254.0.0/16) or private "
        "addresses are refused unless listed here explicitly.",
    )

    # ----------------------------------------------------------------- limits
    storage_threshold = Integer(
        5 * 1024**3,
        config=True,
        help="Bytes of free space in store_directory below which environment creation and "
        "updates are refused. Default 5 GiB.",
    )
    storage_thresold = Integer(
        config=True,
        help="The original's spelling of storage_threshold; setting it sets storage_threshold.",
    )
    build_timeout = Integer(
        60 * 60,
        config=True,
        help="Wall-clock seconds a build may run (solve, install and artifacts) before it is "
        "killed and marked FAILED with that reason.",
    )

    # ----------------------------------------------------------------- database and queue
    database_url = Unicode(
        config=True,
        help="SQLAlchemy URL of the database, e.g. `postgresql+psycopg2://user@host/db`. Default: "
        "SQLite at `<user data dir>/conda-store/conda-store.sqlite`, or at "
        "`<store_directory>/.conda-store.sqlite` when store_directory is configured.",
    )
    upgrade_db = Bool(
        True,
        config=True,
        help="Upgrade the database schema at start. When false and the schema is old, start-up "
        "stops and says to run `conda-store-server --CondaStore.upgrade_db=True` once.",
    )
    redis_url = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Redis URL, e.g. `redis://localhost:6379/0`; when set it is the Celery broker and "
        "result backend unless those are set.",
    )
    celery_broker_url = Unicode(
        config=True,
        help="Celery broker URL. Default: redis_url when set, else `sqla+<database_url>`.",
    )
    celery_results_backend = Unicode(
        config=True,
        help="Celery result backend URL. Default: redis_url when set, else `db+<database_url>`.",
    )

    # ----------------------------------------------------------------- artifacts
    build_artifacts = List(
        Enum(ARTIFACT_TYPES),
        ["LOCKFILE", "YAML", "CONDA_PACK"],
        config=True,
        help="Artifacts to produce for each build. LOCKFILE is always produced. Choices: "
        f"{', '.join(ARTIFACT_TYPES)}.",
    )
    build_artifacts_kept_on_deletion = List(
        Enum(KEPT_ARTIFACT_TYPES),
        ["LOGS", "LOCKFILE", "YAML"],
        config=True,
        help="Artifacts kept when a build is deleted; everything else (including the installed "
        "prefix, DIRECTORY) is removed.",
    )

    # ----------------------------------------------------------------- storage lifecycle
    build_retention_count = Integer(
        None,
        allow_none=True,
        config=True,
        help="Completed builds kept live per environment, newest first: older ones are archived "
        "(prefix and heavy artifacts removed; specification, lockfile, YAML and logs kept, "
        "restorable). The current build and the newest completed build are always kept. At least "
        "1; None keeps every build. Also a namespace or environment setting. Example: 5.",
    )
    build_retention_days = Float(
        None,
        allow_none=True,
        config=True,
        help="Days after which a completed build is archived (see build_retention_count; the "
        "current and the newest completed build are always kept). Greater than 0; None keeps "
        "builds whatever their age. Also a namespace or environment setting. Example: 30.",
    )
    max_environments = Integer(
        None,
        allow_none=True,
        config=True,
        help="Environments a namespace may hold; creating one more is refused with a 409 naming "
        "the limit and the count. None: no limit. Also a namespace setting. Example: 50.",
    )
    max_storage_bytes = Integer(
        None,
        allow_none=True,
        config=True,
        help="Bytes the live build prefixes of a namespace may occupy (hard links counted once); "
        "a submission or restore once it is reached is refused with a 409 naming the limit and "
        "the usage. None: no limit. Also a namespace setting. Example: 50 * 1024**3.",
    )

    package_cache_max_bytes = Integer(
        None,
        allow_none=True,
        config=True,
        help="Bytes the shared conda package cache may keep of packages no live build uses, as a "
        "warm cache for rebuilds and restores: beyond it the least recently used go first. "
        "Packages a live prefix or a running build uses are never removed, even over the bound. "
        "None (default): every unused package is removed at each collection. Example: 20 * 1024**3.",
    )
    package_cache_gc_interval = Integer(
        3600,
        config=True,
        help="Seconds between collections of the package caches (conda packages, uv's cache, image "
        "blobs no live build uses); one worker of the deployment runs each. 0 disables them.",
    )

    # ----------------------------------------------------------------- namespaces and ownership
    default_namespace = Unicode(
        "default",
        config=True,
        help="Namespace of anonymous callers and of environments created without one.",
    )
    filesystem_namespace = Unicode(
        "filesystem",
        config=True,
        help="Namespace of environments picked up from CondaStoreWorker.watch_paths.",
    )
    default_uid = Integer(
        None,
        allow_none=True,
        config=True,
        help="uid given to every file of a built environment. Default: the worker's uid.",
    )
    default_gid = Integer(
        None,
        allow_none=True,
        config=True,
        help="gid given to every file of a built environment. Default: the worker's gid.",
    )
    default_permissions = Unicode(
        "775",
        allow_none=True,
        config=True,
        help="Octal mode given to every directory and file of a built environment, e.g. '755' "
        "(files keep no execute bit they did not have: '775' makes them 664 or 775). Files "
        "hard-linked from the shared package cache get it too, as every environment does. None "
        "leaves modes as installed.",
    )
    default_docker_base_image = Union(
        [Unicode(), CallableTrait()],
        default_value="registry-1.docker.io/library/debian:sid-slim",
        config=True,
        help="Base image of container images built from environments (glibc-based), or a callable "
        "taking the build and returning one.",
    )
    container_image_prefix = Unicode(
        "/opt/conda",
        config=True,
        help="Where every environment lives inside its container image, e.g. '/opt/conda'. One path "
        "for all images lets images share their packages' layers (conda environments cannot be "
        "moved, so files that embed the prefix are written for this path). PATH starts with its "
        "bin and CONDA_PREFIX names it.",
    )
    container_image_max_layers = Integer(
        100,
        config=True,
        help="Most layers an image may have, base image included. Each package gets a layer of "
        "its own while they fit; beyond that, packages share layers by a stable rule.",
    )
    serialize_builds = Bool(True, config=True, help="DEPRECATED: no longer has any effect.")
    post_update_environment_build_hook = CallableTrait(
        None,
        allow_none=True,
        config=True,
        help="Callable `(conda_store, environment)` run after an environment's current build "
        "changes (a build completed, or a rollback). Its errors are logged, never fatal.",
    )
    lock_backend = Unicode(
        "conda-lock",
        config=True,
        help="Accepted for compatibility. Lockfiles are written in conda-lock v1 format by "
        "py-rattler's solve.",
    )
    container_registry_class = Unicode(
        None, allow_none=True, config=True, help="DEPRECATED: no longer has any effect."
    )

    # ================================================================= defaults and validation
    @default("store_directory")
    def _default_store_directory(self) -> str:
        return os.path.join(conda_store_dir(), "state")

    @default("database_url")
    def _default_database_url(self) -> str:
        """A configured store_directory holds its own database: two stores never share one."""
        if self.store_directory == self._default_store_directory():
            return f"sqlite:///{os.path.join(conda_store_dir(), 'conda-store.sqlite')}"
        return f"sqlite:///{os.path.join(self.store_directory, '.conda-store.sqlite')}"

    @default("celery_broker_url")
    def _default_celery_broker_url(self) -> str:
        return self.redis_url or f"sqla+{self.database_url}"

    @default("celery_results_backend")
    def _default_celery_results_backend(self) -> str:
        return self.redis_url or f"db+{self.database_url}"

    @default("conda_solve_platforms")
    def _default_conda_solve_platforms(self) -> list[str]:
        return [host_platform()]

    @default("conda_platforms")
    def _default_conda_platforms(self) -> list[str]:
        return [host_platform(), "noarch"]

    @default("default_uid")
    def _default_uid(self) -> int | None:
        return os.getuid() if hasattr(os, "getuid") else None

    @default("default_gid")
    def _default_gid(self) -> int | None:
        return os.getgid() if hasattr(os, "getgid") else None

    @default("storage_thresold")
    def _default_storage_thresold(self) -> int:
        return self.storage_threshold

    @observe("storage_thresold")
    def _storage_thresold_sets_threshold(self, change: dict[str, Any]) -> None:
        self.storage_threshold = change["new"]

    _conda_command_set = Bool(False, help="Whether conda_command was set (by configuration or a caller).")

    @observe("conda_command")
    def _note_conda_command_set(self, change: dict[str, Any]) -> None:
        self._conda_command_set = True

    @validate("build_key_version")
    def _check_build_key_version(self, proposal: dict[str, Any]) -> int:
        if proposal["value"] not in (1, 2, 3):
            raise TraitError(
                f"c.CondaStore.build_key_version: invalid build key version "
                f"{proposal['value']}, expected: (1, 2, 3)"
            )
        return proposal["value"]

    @validate("build_retention_count", "build_retention_days", "max_environments", "max_storage_bytes")
    def _check_lifecycle_limits(self, proposal: dict[str, Any]) -> int | float | None:
        try:
            return check_lifecycle_value(proposal["trait"].name, proposal["value"])
        except ValueError as error:
            raise TraitError(f"c.CondaStore.{error}") from error

    @validate("package_cache_max_bytes", "package_cache_gc_interval")
    def _check_package_cache_numbers(self, proposal: dict[str, Any]) -> int | None:
        if proposal["value"] is not None and proposal["value"] < 0:
            raise TraitError(f"c.CondaStore.{proposal['trait'].name} must be 0 or more")
        return proposal["value"]

    @validate("default_permissions")
    def _check_default_permissions(self, proposal: dict[str, Any]) -> str | None:
        value = proposal["value"]
        if value is not None:
            try:
                mode = int(value, 8)
            except ValueError:
                mode = -1
            if not 0 <= mode <= 0o7777:
                raise TraitError(
                    f"c.CondaStore.default_permissions: {value!r} is not an octal mode such as '775'"
                )
        return value

    @validate("container_image_prefix")
    def _check_container_image_prefix(self, proposal: dict[str, Any]) -> str:
        value = proposal["value"]
        normalized = posixpath.normpath(value) if value else ""
        # prefix placeholders in packages are 255 bytes; a longer prefix cannot replace them
        if not normalized.startswith("/") or normalized == "/" or len(normalized) > 200 or any(
            character.isspace() or character == ":" for character in normalized
        ):
            raise TraitError(
                f"c.CondaStore.container_image_prefix: {value!r} must be an absolute path below / "
                "without spaces or ':' and at most 200 characters, such as '/opt/conda'"
            )
        return normalized

    @validate("container_image_max_layers")
    def _check_container_image_max_layers(self, proposal: dict[str, Any]) -> int:
        if not 2 <= proposal["value"] <= 127:
            raise TraitError(
                "c.CondaStore.container_image_max_layers must be between 2 and 127 (the most "
                "layers an overlay filesystem mounts)"
            )
        return proposal["value"]

    @validate("conda_max_solve_time", "build_timeout")
    def _check_positive_seconds(self, proposal: dict[str, Any]) -> int:
        if proposal["value"] <= 0:
            raise TraitError(f"c.CondaStore.{proposal['trait'].name} must be a positive number of seconds")
        return proposal["value"]

    # ================================================================= facade
    def report_conda_command(self) -> None:
        """Say once, at start-up, that a configured conda command is not what builds run.

        Only when somebody set it: the default is the original's ("mamba"), set by nobody.
        """
        if self._conda_command_set and self.conda_command not in SUPPORTED_CONDA_COMMANDS:
            self.log.warning(
                "CondaStore.conda_command=%r is accepted for compatibility but not used: "
                "environments are solved and installed by py-rattler in process.",
                self.conda_command,
            )

    @functools.cached_property
    def engine(self) -> Engine:
        from conda_store_server.db.session import create_database_engine

        return create_database_engine(self.database_url)

    @functools.cached_property
    def session_factory(self) -> sessionmaker[Session]:
        from sqlalchemy import event

        from conda_store_server.db.session import create_session_factory

        factory = create_session_factory(self.engine)
        event.listen(factory, "after_commit", self._dispatch_committed_builds)
        event.listen(factory, "after_soft_rollback", _forget_queued_builds)
        return factory

    def _dispatch_committed_builds(self, session: Session) -> None:
        """A build is announced to the workers only once it is committed, so they can claim it."""
        from conda_store_server.db.session import QUEUED_BUILDS

        build_ids = session.info.pop(QUEUED_BUILDS, None)
        if build_ids:
            from conda_store_server.worker.queue import dispatch_builds

            dispatch_builds(self, build_ids)

    @functools.cached_property
    def celery_app(self) -> Celery:
        from conda_store_server.worker.queue import make_celery

        return make_celery(self)

    def session(self) -> Any:
        """A context-managed unit of work (commit on success, rollback on error)."""
        from conda_store_server.db.session import session_scope

        return session_scope(self.session_factory)

    @functools.cached_property
    def storage(self) -> Storage:
        return self.storage_class(parent=self, log=self.log)

    @property
    def package_cache_directory(self) -> str:
        """Shared package cache, inside store_directory so installs can hard-link from it."""
        return os.path.join(self.store_directory, ".pkgs")

    @property
    def uv_cache_directory(self) -> str:
        """uv's cache, shared by every build of the store (uv locks it for concurrent use)."""
        return os.path.join(self.store_directory, ".uv-cache")

    @property
    def pip_interpreter_cache_directory(self) -> str:
        """What environments' pythons said about themselves (`build.interpreter_cache`)."""
        return os.path.join(self.store_directory, ".pip-interpreters")

    @property
    def repodata_cache_directory(self) -> str:
        return os.path.join(self.store_directory, ".repodata")

    def ensure_database(self) -> None:
        """Apply migrations (upgrade_db) or check the schema is current; say what to run if not."""
        from conda_store_server.db.session import (
            refresh_query_statistics,
            schema_is_current,
            upgrade_database,
        )

        if self.upgrade_db:
            upgrade_database(self.engine)
        elif not schema_is_current(self.engine):
            raise CondaStoreError(
                "The database schema is not up to date. Run `conda-store-server "
                "--CondaStore.upgrade_db=True` once (or set c.CondaStore.upgrade_db = True)."
            )
        refresh_query_statistics(self.engine)

    def call_validate_specification(self, namespace: str, specification: Any, settings: Any) -> Any:
        return _call_flexible(self.validate_specification, self, namespace, specification, settings)

    def call_validate_action(self, namespace: str, action: str) -> None:
        self.validate_action(self, namespace, action)


def _forget_queued_builds(session: Session, previous_transaction: Any) -> None:
    """Builds of a rolled-back transaction never existed; a savepoint's rollback keeps the rest."""
    if previous_transaction.parent is None:
        from conda_store_server.db.session import QUEUED_BUILDS

        session.info.pop(QUEUED_BUILDS, None)


def _call_flexible(func: Callable[..., Any], *args: Any) -> Any:
    """Call a configured validator with our 4 arguments, or the original's 3 (without settings)."""
    import inspect

    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return func(*args)
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_varargs = any(p.kind == p.VAR_POSITIONAL for p in parameters)
    if not takes_varargs and len(positional) < len(args):
        return func(*args[: len(positional)])
    return func(*args)
