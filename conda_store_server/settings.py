"""Layered settings: deployment defaults (traits) < global < namespace < environment overrides.

Overrides live in the `keyvaluestore` table under the prefixes `setting`, `setting/{ns}` and
`setting/{ns}/{env}`. Every read builds a fresh object from the traits, so an override read for
one namespace can never leak into another read (the original's bug, upstream-api §10.3 item 5).

A few CondaStore options shape the policy without being settings (`DEPLOYMENT_ONLY_KEYS`): they
may hold credentials, so no answer shows them and no request changes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from conda_store_server.db.models import KeyValueStore
from conda_store_server.exception import CondaStoreError
from conda_store_server.lifecycle_settings import LIFECYCLE_KEYS, NAMESPACE_LIMIT_KEYS, check_lifecycle_value

if TYPE_CHECKING:
    from conda_store_server.app import CondaStore
    from conda_store_server.specification import SpecificationPolicy

GLOBAL_ONLY_KEYS = frozenset(
    {
        "default_namespace",
        "filesystem_namespace",
        "default_uid",
        "default_gid",
        "default_permissions",
        "storage_threshold",
        "conda_command",
        "conda_platforms",
        "conda_max_solve_time",
        "conda_indexed_channels",
        "build_artifacts_kept_on_deletion",
    }
)
#: CondaStore options the URL rules need (`SpecificationPolicy`) that are not settings: an index
#: URL may hold a password, and `GET /api/v1/setting/` answers every setting to its readers.
DEPLOYMENT_ONLY_KEYS = ("pypi_index_url", "pypi_extra_index_urls", "pypi_allowed_indexes")


class Settings(BaseModel):
    """The effective policy for one (namespace, environment); all keys of upstream-api §5.1."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    default_namespace: str
    filesystem_namespace: str
    default_uid: int | None
    default_gid: int | None
    default_permissions: str | None
    storage_threshold: int
    conda_command: str
    conda_platforms: list[str]
    conda_max_solve_time: int
    conda_indexed_channels: list[str]
    build_artifacts_kept_on_deletion: list[str]
    conda_solve_platforms: list[str]
    conda_channel_alias: str
    conda_default_channels: list[str]
    conda_allowed_channels: list[str]
    conda_default_packages: list[str]
    conda_required_packages: list[str]
    conda_included_packages: list[str]
    pypi_default_packages: list[str]
    pypi_required_packages: list[str]
    pypi_included_packages: list[str]
    build_artifacts: list[str]
    # the storage lifecycle (`conda_store_server.lifecycle_settings` checks their values)
    build_retention_count: int | None = None
    build_retention_days: float | None = None
    max_environments: int | None = None
    max_storage_bytes: int | None = None

    #: The DEPLOYMENT_ONLY_KEYS of the CondaStore read by `get_settings`: a private attribute,
    #: so it is not a field, never dumped and never validated as a setting.
    _deployment_only: dict[str, Any] = PrivateAttr(default_factory=dict)

    def specification_policy(self) -> SpecificationPolicy:
        """The settings that shape and check specifications, for the pure policy functions.

        The indexed channels are carried along because the URL rules trust every channel the
        administrator configured, not only the default and allowed ones; the deployment's
        index options (read by `get_settings`) because they are trusted pip URLs and
        `pypi_allowed_indexes` limits the others. Raises SpecificationError naming a setting
        whose entries are invalid.
        """
        from conda_store_server.specification import SpecificationPolicy

        return SpecificationPolicy(
            conda_channel_alias=self.conda_channel_alias,
            conda_default_channels=tuple(self.conda_default_channels),
            conda_allowed_channels=tuple(self.conda_allowed_channels),
            conda_indexed_channels=tuple(self.conda_indexed_channels),
            conda_default_packages=tuple(self.conda_default_packages),
            conda_required_packages=tuple(self.conda_required_packages),
            conda_included_packages=tuple(self.conda_included_packages),
            pypi_default_packages=tuple(self.pypi_default_packages),
            pypi_required_packages=tuple(self.pypi_required_packages),
            pypi_included_packages=tuple(self.pypi_included_packages),
            **self._deployment_only,
        )


SETTING_KEYS = frozenset(Settings.model_fields)


def deployment_defaults(conda_store: CondaStore) -> dict[str, Any]:
    return {key: _copy(getattr(conda_store, key)) for key in SETTING_KEYS}


def setting_prefix(namespace: str | None = None, environment: str | None = None) -> str:
    if environment is not None and namespace is None:
        raise CondaStoreError(
            f"Environment {environment} is set without a namespace. Please specify a namespace."
        )
    parts = ["setting", namespace, environment]
    return "/".join(part for part in parts if part is not None)


def _overrides(session: Session, prefix: str) -> dict[str, Any]:
    rows = session.execute(
        select(KeyValueStore.key, KeyValueStore.value).where(KeyValueStore.prefix == prefix)
    )
    return {key: value for key, value in rows}


def get_settings(
    session: Session,
    conda_store: CondaStore,
    namespace: str | None = None,
    environment: str | None = None,
) -> Settings:
    """The effective settings of a (namespace, environment), with the deployment-only options
    attached for `Settings.specification_policy` (so a policy built anywhere from these
    settings, in the server or a worker, applies the deployment's index rules)."""
    values = deployment_defaults(conda_store)
    values.update(_known(_overrides(session, setting_prefix())))
    if namespace is not None:
        values.update(_scoped(_overrides(session, setting_prefix(namespace))))
        if environment is not None:
            values.update(_scoped(_overrides(session, setting_prefix(namespace, environment))))
    settings = Settings(**values)
    settings._deployment_only = {key: _copy(getattr(conda_store, key)) for key in DEPLOYMENT_ONLY_KEYS}
    return settings


def set_settings(
    session: Session,
    conda_store: CondaStore,
    data: dict[str, Any],
    namespace: str | None = None,
    environment: str | None = None,
) -> None:
    """Validate every key and value first, then store them: a bad request changes nothing.

    Package and channel entries are checked as the policy checks them (`SpecificationPolicy`),
    so a bad entry is refused here, naming the setting, rather than failing every later
    submission in its namespace.
    """
    deployment_only = sorted(set(data) & set(DEPLOYMENT_ONLY_KEYS))
    if deployment_only:
        raise CondaStoreError(
            f"Setting {deployment_only[0]} is a deployment option (CondaStore.{deployment_only[0]} in "
            "the configuration file) and cannot be set through the API"
        )
    unknown = set(data) - SETTING_KEYS
    if unknown:
        raise CondaStoreError(f"Invalid setting keys {sorted(unknown)}")
    if namespace is not None:
        global_only = sorted(set(data) & GLOBAL_ONLY_KEYS)
        if global_only:
            raise CondaStoreError(
                f"Setting {global_only[0]} is a global setting and cannot be set within a "
                "namespace or environment"
            )
    if environment is not None:
        namespace_limits = sorted(set(data) & NAMESPACE_LIMIT_KEYS)
        if namespace_limits:
            raise CondaStoreError(
                f"Setting {namespace_limits[0]} is a limit of a whole namespace: set it on the "
                f"namespace {namespace} (or globally), not on one environment"
            )
    for key in sorted(set(data) & LIFECYCLE_KEYS):
        try:
            check_lifecycle_value(key, data[key])
        except ValueError as error:
            raise CondaStoreError(f"Invalid setting {error}") from error
    candidate = deployment_defaults(conda_store) | data
    try:
        Settings(**candidate).specification_policy()
    except ValidationError as error:
        raise CondaStoreError(str(error)) from error

    prefix = setting_prefix(namespace, environment)
    existing = {
        row.key: row for row in session.scalars(select(KeyValueStore).where(KeyValueStore.prefix == prefix))
    }
    for key, value in data.items():
        if key in existing:
            existing[key].value = value
        else:
            session.add(KeyValueStore(prefix=prefix, key=key, value=value))


def _known(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if key in SETTING_KEYS}


def _scoped(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in _known(values).items() if key not in GLOBAL_ONLY_KEYS}


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value
