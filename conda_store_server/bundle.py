"""Bundles: environments with their whole build history, as one versioned JSON document.

One format serves the export of an environment (`GET /api/v1/environment/{ns}/{env}/export/`),
its import into another deployment (`POST /api/v1/environment/import/`) and the backup of a
whole deployment (`python -m conda_store_server.backup`). It carries what cannot be rebuilt
(specifications, lockfiles, statuses, timestamps, logs, and for a deployment its namespaces,
role mappings and settings) and nothing that can (prefixes, archives, images, package rows):
imported builds arrive archived, restorable from their lockfiles, and the environment's
current build is rebuilt from its lockfile. The format is documented in docs/bundle.md.

An import is checked whole before anything is written and runs in the caller's transaction:
a bad or partial bundle, a name taken, a policy the target refuses, is an error that creates
nothing.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select

from conda_store_server import __version__
from conda_store_server.build.keys import artifact_key, build_key, identity_of
from conda_store_server.db.models import (
    Build,
    BuildArtifact,
    BuildArtifactType,
    BuildStatus,
    Environment,
    KeyValueStore,
    Namespace,
    NamespaceRoleMapping,
    NamespaceRoleMappingV2,
    utcnow,
)
from conda_store_server.exception import CondaStoreError, ConflictError, SpecificationError
from conda_store_server.quotas import check_new_environment
from conda_store_server.retention import restore_build
from conda_store_server.service import (
    check_name,
    ensure_environment,
    ensure_namespace,
    ensure_specification,
    insert_once,
    prepare_specification,
)
from conda_store_server.specification import (
    CondaSpecification,
    LockfileSpecification,
    parse_lockfile_specification,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from conda_store_server.app import CondaStore

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "Bundle",
    "BundleError",
    "ImportedEnvironment",
    "deployment_bundle",
    "environment_bundle",
    "import_bundle",
    "parse_bundle",
]

BUNDLE_FORMAT = "conda-store-bundle"
BUNDLE_VERSION = 1
SETTING_PREFIX = "setting"


class BundleError(CondaStoreError):
    """A bundle that cannot be imported as it is (a 400 naming the part to fix)."""


# ------------------------------------------------------------------ the format
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _naive_utc(value: datetime.datetime | None) -> datetime.datetime | None:
    if value is not None and value.tzinfo is not None:
        return value.astimezone(datetime.UTC).replace(tzinfo=None)
    return value


class BundleSpecification(_Strict):
    name: str
    spec: dict[str, Any]
    is_lockfile: bool = False


class BundleBuild(_Strict):
    id: int = Field(description="The build's id where it was exported; unique in its environment")
    status: Literal["QUEUED", "BUILDING", "COMPLETED", "FAILED", "CANCELED"]
    status_info: str | None = None
    scheduled_on: datetime.datetime
    started_on: datetime.datetime | None = None
    ended_on: datetime.datetime | None = None
    archived_on: datetime.datetime | None = None
    size: int = Field(0, ge=0)
    specification: BundleSpecification
    lockfile: dict[str, Any] | None = None
    logs: str | None = None

    _utc = field_validator("scheduled_on", "started_on", "ended_on", "archived_on")(_naive_utc)


class BundleEnvironment(_Strict):
    namespace: str
    name: str
    description: str = ""
    current_build_id: int | None = None
    builds: list[BundleBuild]


class BundleRoleMapping(_Strict):
    entity: str
    role: str


class BundleRoleMappingV2(_Strict):
    other_namespace: str
    role: str


class BundleNamespace(_Strict):
    name: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    role_mappings: list[BundleRoleMapping] = Field(default_factory=list)
    role_mappings_v2: list[BundleRoleMappingV2] = Field(default_factory=list)


class BundleSetting(_Strict):
    prefix: str
    key: str
    value: Any


class Bundle(_Strict):
    format: Literal["conda-store-bundle"]
    version: Literal[1]
    kind: Literal["environment", "deployment"]
    exported_on: datetime.datetime
    conda_store_version: str
    namespaces: list[BundleNamespace] = Field(default_factory=list)
    settings: list[BundleSetting] = Field(default_factory=list)
    environments: list[BundleEnvironment]


# ------------------------------------------------------------------ export
def _read_lockfile(conda_store: CondaStore, build: Build) -> dict[str, Any] | None:
    for artifact in build.build_artifacts:
        if artifact.artifact_type == BuildArtifactType.LOCKFILE:
            try:
                document = json.loads(conda_store.storage.get(artifact.key))
            except Exception:  # noqa: BLE001 - a lockfile gone from storage is exported as missing
                return None
            return document if isinstance(document, dict) else None
    return None


def _read_logs(conda_store: CondaStore, build: Build) -> str | None:
    for artifact in build.build_artifacts:
        if artifact.artifact_type == BuildArtifactType.LOGS:
            try:
                return conda_store.storage.read_log(artifact.key).data.decode("utf-8", "replace")
            except Exception:  # noqa: BLE001 - a build that never started has no log yet
                return None
    return None


def _build_document(conda_store: CondaStore, build: Build) -> dict[str, Any]:
    return {
        "id": build.id,
        "status": build.status.value,
        "status_info": build.status_info,
        "scheduled_on": build.scheduled_on.isoformat(),
        "started_on": build.started_on.isoformat() if build.started_on else None,
        "ended_on": build.ended_on.isoformat() if build.ended_on else None,
        "archived_on": build.archived_on.isoformat() if build.archived_on else None,
        "size": build.size or 0,
        "specification": {
            "name": build.specification.name,
            "spec": build.specification.spec,
            "is_lockfile": bool(build.specification.is_lockfile),
        },
        "lockfile": _read_lockfile(conda_store, build),
        "logs": _read_logs(conda_store, build),
    }


def _environment_document(conda_store: CondaStore, environment: Environment) -> dict[str, Any]:
    """Deleted builds are gone for their users: they are not part of the history exported."""
    return {
        "namespace": environment.namespace.name,
        "name": environment.name,
        "description": environment.description or "",
        "current_build_id": environment.current_build_id,
        "builds": [
            _build_document(conda_store, build) for build in environment.builds if build.deleted_on is None
        ],
    }


def _envelope(kind: str) -> dict[str, Any]:
    return {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "kind": kind,
        "exported_on": utcnow().isoformat(),
        "conda_store_version": __version__,
    }


def environment_bundle(conda_store: CondaStore, environment: Environment) -> dict[str, Any]:
    return {**_envelope("environment"), "environments": [_environment_document(conda_store, environment)]}


def deployment_bundle(session: Session, conda_store: CondaStore) -> dict[str, Any]:
    """Every live namespace (metadata, role mappings), every setting, every live environment."""
    namespaces = session.scalars(
        select(Namespace).where(Namespace.deleted_on.is_(None)).order_by(Namespace.name)
    ).all()
    live = {namespace.id for namespace in namespaces}
    v2 = session.scalars(select(NamespaceRoleMappingV2).order_by(NamespaceRoleMappingV2.id)).all()
    settings = session.scalars(
        select(KeyValueStore)
        .where(
            (KeyValueStore.prefix == SETTING_PREFIX) | KeyValueStore.prefix.startswith(f"{SETTING_PREFIX}/")
        )
        .order_by(KeyValueStore.prefix, KeyValueStore.key)
    ).all()
    environments = session.scalars(
        select(Environment)
        .where(Environment.deleted_on.is_(None), Environment.namespace_id.in_(live))
        .order_by(Environment.namespace_id, Environment.name)
    ).all()
    return {
        **_envelope("deployment"),
        "namespaces": [
            {
                "name": namespace.name,
                "metadata": namespace.metadata_ or {},
                "role_mappings": [{"entity": m.entity, "role": m.role} for m in namespace.role_mappings],
                "role_mappings_v2": [
                    {"other_namespace": m.other_namespace.name, "role": m.role}
                    for m in v2
                    if m.namespace_id == namespace.id and m.other_namespace_id in live
                ],
            }
            for namespace in namespaces
        ],
        "settings": [{"prefix": row.prefix, "key": row.key, "value": row.value} for row in settings],
        "environments": [_environment_document(conda_store, environment) for environment in environments],
    }


# ------------------------------------------------------------------ parsing and checking
def _error_text(error: ValidationError) -> str:
    lines = []
    for item in error.errors()[:20]:
        where = ".".join(str(part) for part in item["loc"]) or "bundle"
        lines.append(f"{where}: {item['msg']}")
    return "; ".join(lines)


def parse_bundle(document: Any) -> Bundle:
    """The bundle, checked whole: shape, version, names, and that every build can be imported."""
    if not isinstance(document, dict):
        raise BundleError("a bundle is a JSON object (see docs/bundle.md)")
    if document.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"not a bundle: `format` must be {BUNDLE_FORMAT!r}")
    if document.get("version") != BUNDLE_VERSION:
        raise BundleError(
            f"bundle version {document.get('version')!r} is not supported; this server reads version "
            f"{BUNDLE_VERSION}"
        )
    try:
        bundle = Bundle.model_validate(document)
    except ValidationError as error:
        raise BundleError(f"invalid bundle: {_error_text(error)}") from error
    if not bundle.environments and bundle.kind == "environment":
        raise BundleError("the bundle holds no environment")
    seen: set[tuple[str, str]] = set()
    for environment in bundle.environments:
        _check_environment(environment)
        if (environment.namespace, environment.name) in seen:
            raise BundleError(f"environment {environment.namespace}/{environment.name} appears twice")
        seen.add((environment.namespace, environment.name))
    for namespace in bundle.namespaces:
        _checked_name("namespace", namespace.name)
    return bundle


def _checked_name(kind: str, name: str) -> str:
    try:
        return check_name(kind, name)
    except CondaStoreError as error:
        raise BundleError(f"bundle: {error}") from error


def _check_environment(environment: BundleEnvironment) -> None:
    where = f"environment {environment.namespace}/{environment.name}"
    _checked_name("namespace", environment.namespace)
    _checked_name("environment", environment.name)
    ids = [build.id for build in environment.builds]
    if len(set(ids)) != len(ids):
        raise BundleError(f"{where}: build ids repeat")
    for build in environment.builds:
        _bundle_specification(build, environment.name, where)
        if build.lockfile is not None:
            _bundle_lockfile(build, environment.name, where)
    if environment.current_build_id is not None:
        current = next((b for b in environment.builds if b.id == environment.current_build_id), None)
        if current is None:
            raise BundleError(
                f"{where}: current_build_id {environment.current_build_id} is not among its builds"
            )
        if current.status != "COMPLETED" or current.lockfile is None:
            raise BundleError(
                f"{where}: its current build {current.id} must be COMPLETED and have its lockfile "
                "(it is rebuilt from it)"
            )


def _bundle_specification(
    build: BundleBuild, name: str, where: str
) -> CondaSpecification | LockfileSpecification:
    model = LockfileSpecification if build.specification.is_lockfile else CondaSpecification
    try:
        specification = model.model_validate({**build.specification.spec, "name": name})
    except (ValidationError, ValueError, TypeError, KeyError) as error:
        detail = _error_text(error) if isinstance(error, ValidationError) else str(error)
        raise BundleError(f"{where}: build {build.id} has an invalid specification: {detail}") from error
    return specification


def _bundle_lockfile(build: BundleBuild, name: str, where: str) -> LockfileSpecification:
    try:
        return parse_lockfile_specification(json.dumps(build.lockfile), name, None)
    except SpecificationError as error:
        raise BundleError(f"{where}: build {build.id} has an invalid lockfile: {error}") from error


# ------------------------------------------------------------------ import
@dataclass
class ImportedEnvironment:
    namespace: str
    name: str
    build_ids: dict[int, int]  # bundle build id -> new build id
    rebuilding: int | None  # the new id of the build restored to become current


Authorize = Callable[[str, str, bool], None]  # (namespace, environment, namespace exists)


def import_bundle(
    session: Session,
    conda_store: CondaStore,
    bundle: Bundle,
    namespace: str | None = None,
    authorize: Authorize | None = None,
) -> list[ImportedEnvironment]:
    """Recreate the bundle's environments (into `namespace` when given) in the session's
    transaction; storage is written last and removed again if a write fails, so an error
    leaves nothing behind once the caller rolls back."""
    if namespace is not None:
        _checked_name("namespace", namespace)
        if bundle.kind == "deployment":
            raise BundleError(
                "a deployment bundle keeps its namespaces: restore it without a target namespace"
            )
    targets = [(namespace or environment.namespace, environment) for environment in bundle.environments]
    if len({(target, environment.name) for target, environment in targets}) != len(targets):
        raise BundleError("two environments of the bundle would have the same name in the target namespace")
    for target, environment in targets:
        if authorize is not None:
            exists = session.scalar(
                select(Namespace.id).where(Namespace.name == target, Namespace.deleted_on.is_(None))
            )
            authorize(target, environment.name, exists is not None)
    writes: list[tuple[str, bytes, bool]] = []
    if bundle.kind == "deployment":
        _import_namespaces(session, bundle)
        _import_settings(session, bundle)
    imported = [_import_environment(session, conda_store, target, e, writes) for target, e in targets]
    _write_storage(conda_store, writes)
    return imported


def _import_namespaces(session: Session, bundle: Bundle) -> None:
    rows = {entry.name: ensure_namespace(session, entry.name) for entry in bundle.namespaces}
    for entry in bundle.namespaces:
        row = rows[entry.name]
        row.metadata_ = entry.metadata
        present = {(mapping.entity, mapping.role) for mapping in row.role_mappings}
        for mapping in entry.role_mappings:
            if (mapping.entity, mapping.role) not in present:
                session.add(NamespaceRoleMapping(namespace=row, entity=mapping.entity, role=mapping.role))
                present.add((mapping.entity, mapping.role))
        for mapping in entry.role_mappings_v2:
            other = rows.get(mapping.other_namespace) or ensure_namespace(session, mapping.other_namespace)
            insert_once(
                session,
                NamespaceRoleMappingV2,
                {"namespace_id": row.id, "other_namespace_id": other.id, "role": mapping.role},
                ("namespace_id", "other_namespace_id"),
            ).role = mapping.role
    session.flush()


def _import_settings(session: Session, bundle: Bundle) -> None:
    for setting in bundle.settings:
        if setting.prefix != SETTING_PREFIX and not setting.prefix.startswith(f"{SETTING_PREFIX}/"):
            raise BundleError(f"setting {setting.prefix}/{setting.key}: only settings can be restored")
        row = insert_once(
            session,
            KeyValueStore,
            {"prefix": setting.prefix, "key": setting.key, "value": setting.value},
            ("prefix", "key"),
        )
        row.value = setting.value
    session.flush()


def _environment_row(session: Session, namespace: str, name: str) -> Environment | None:
    return session.scalar(
        select(Environment)
        .join(Namespace, Namespace.id == Environment.namespace_id)
        .where(Namespace.name == namespace, Environment.name == name)
    )


def _import_environment(
    session: Session,
    conda_store: CondaStore,
    namespace: str,
    entry: BundleEnvironment,
    writes: list[tuple[str, bytes, bool]],
) -> ImportedEnvironment:
    where = f"environment {namespace}/{entry.name}"
    existing = _environment_row(session, namespace, entry.name)
    if existing is not None and existing.deleted_on is None:
        raise ConflictError(
            f"{where} already exists; delete it first or import the bundle into another namespace"
        )
    check_new_environment(session, conda_store, namespace, entry.name)
    conda_store.call_validate_action(namespace, "environment:create")
    # the target's policy applies to every build: a restore or a rebuild uses what is stored
    checked = []
    for build in sorted(entry.builds, key=lambda b: b.id):
        specification = _bundle_specification(build, entry.name, where)
        try:
            specification = prepare_specification(session, conda_store, namespace, specification)
            if build.lockfile is not None:
                prepare_specification(
                    session, conda_store, namespace, _bundle_lockfile(build, entry.name, where)
                )
        except SpecificationError as error:
            raise BundleError(f"{where}: build {build.id} is refused by this deployment: {error}") from error
        checked.append((build, specification))

    environment = ensure_environment(session, ensure_namespace(session, namespace), entry.name)
    environment.description = entry.description
    session.flush()

    now = utcnow()
    ids: dict[int, int] = {}
    for build, specification in checked:
        row = _import_build(session, conda_store, environment, build, specification, now, writes)
        ids[build.id] = row.id
    session.flush()
    rebuilding = None
    if entry.current_build_id is not None:
        rebuilding = ids[entry.current_build_id]
        restore_build(session, conda_store, rebuilding, make_current=True)
    return ImportedEnvironment(namespace, entry.name, ids, rebuilding)


def _import_build(
    session: Session,
    conda_store: CondaStore,
    environment: Environment,
    entry: BundleBuild,
    specification: CondaSpecification | LockfileSpecification,
    now: datetime.datetime,
    writes: list[tuple[str, bytes, bool]],
) -> Build:
    """A build as it ended where it was exported: finished, and archived when it had completed
    (it has no prefix here). One that had not finished is imported CANCELED, saying so."""
    status = BuildStatus(entry.status)
    status_info = entry.status_info
    ended_on = entry.ended_on
    if not status.is_final:
        status_info = f"it was {status.value} when it was exported; it never finished"
        status, ended_on = BuildStatus.CANCELED, ended_on or now
    build = Build(
        environment=environment,
        specification=ensure_specification(session, specification),
        status=status,
        status_info=status_info,
        size=0,
        scheduled_on=entry.scheduled_on,
        started_on=entry.started_on,
        ended_on=ended_on,
        archived_on=(entry.archived_on or now) if status == BuildStatus.COMPLETED else None,
        build_key_version=conda_store.build_key_version,
    )
    session.add(build)
    session.flush()
    identity = identity_of(build)
    key = build_key(identity)
    if identity.version == 3:
        build.hash = key
    logs_key = artifact_key("logs", key)
    session.add(BuildArtifact(build=build, artifact_type=BuildArtifactType.LOGS, key=logs_key))
    writes.append((logs_key, (entry.logs or "").encode(), True))
    if entry.lockfile is not None:
        lockfile_key = artifact_key("lockfile", key)
        session.add(BuildArtifact(build=build, artifact_type=BuildArtifactType.LOCKFILE, key=lockfile_key))
        writes.append((lockfile_key, json.dumps(entry.lockfile, indent=2).encode(), False))
    return build


def _write_storage(conda_store: CondaStore, writes: list[tuple[str, bytes, bool]]) -> None:
    storage = conda_store.storage
    written: list[str] = []
    try:
        for key, content, is_log in writes:
            if is_log:  # through the log interface, so every storage serves it as a finished log
                storage.append(key, content)
                storage.seal_log(key)
            else:
                storage.set(key, content, "application/json")
            written.append(key)
    except Exception:
        for key in written:
            try:
                storage.delete(key)
            except Exception:  # noqa: BLE001 - the original error is the one to report
                conda_store.log.warning("could not remove %s after a failed import", key)
        raise
