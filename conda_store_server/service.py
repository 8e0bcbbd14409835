"""Domain operations on namespaces, environments and builds.

Routes and workers call these with an open session; each function either completes its change
or raises a CondaStoreError before anything is written, so bad input changes nothing.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, joinedload, object_session, selectinload

from conda_store_server.build.keys import (
    artifact_key,
    build_key,
    build_path,
    environment_path,
    identity_of,
)
from conda_store_server.db.models import (
    Build,
    BuildArtifact,
    BuildArtifactType,
    BuildStatus,
    Environment,
    Namespace,
    Specification,
    utcnow,
)
from conda_store_server.db.session import QUEUED_BUILDS
from conda_store_server.exception import (
    CondaStoreError,
    ConflictError,
    NotFoundError,
    SpecificationError,
)
from conda_store_server.fetch_policy import check_specification_urls
from conda_store_server.quotas import check_new_environment, check_storage
from conda_store_server.settings import get_settings
from conda_store_server.specification import (
    CondaSpecification,
    LockfileSpecification,
    specification_hash,
    validate_name,
)

if TYPE_CHECKING:
    from conda_store_server.app import CondaStore

T = TypeVar("T")

ACTIVE_STATUSES = (BuildStatus.QUEUED, BuildStatus.BUILDING)
DELETABLE_STATUSES = (BuildStatus.COMPLETED, BuildStatus.FAILED, BuildStatus.CANCELED)


# ------------------------------------------------------------------------------ lookups
def check_name(kind: str, name: str) -> str:
    return validate_name(name, f"{kind} name")


def get_namespace(session: Session, name: str) -> Namespace:
    namespace = session.scalar(
        select(Namespace).where(Namespace.name == name, Namespace.deleted_on.is_(None))
    )
    if namespace is None:
        raise NotFoundError("namespace does not exist")
    return namespace


def get_environment(session: Session, namespace: str, name: str) -> Environment:
    environment = session.scalar(
        select(Environment)
        .join(Namespace)
        .where(
            Namespace.name == namespace,
            Environment.name == name,
            Environment.deleted_on.is_(None),
            Namespace.deleted_on.is_(None),
        )
    )
    if environment is None:
        raise NotFoundError("environment does not exist")
    return environment


def get_build(session: Session, build_id: int) -> Build:
    build = session.scalar(
        select(Build)
        .where(Build.id == build_id)
        .options(  # one join for what a build has one of, one query for its artifacts
            joinedload(Build.specification),
            joinedload(Build.environment).joinedload(Environment.namespace),
            selectinload(Build.build_artifacts),
        )
    )
    if build is None:
        raise NotFoundError("build id does not exist")
    return build


def ensure_namespace(session: Session, name: str) -> Namespace:
    """The namespace, created (or revived after a delete) when missing, even by 30 requests at once."""
    check_name("namespace", name)
    namespace = insert_once(session, Namespace, {"name": name, "metadata_": {}}, ("name",))
    if namespace.deleted_on is not None:
        namespace.deleted_on = None
    return namespace


def ensure_default_namespace(conda_store: CondaStore) -> None:
    """The original creates it at start; its UI lists `default` in every sidebar."""
    with conda_store.session() as session:
        ensure_namespace(session, conda_store.default_namespace)


def insert_once(session: Session, model: type[T], values: dict[str, Any], unique: tuple[str, ...]) -> T:
    """The row of `model` whose `unique` columns have these values, inserted when missing.

    Concurrent requests creating the same row race between a lookup and an insert. An insert
    that does nothing on conflict waits for the winner's commit (its unique index makes it) and
    then leaves its row alone, so every request gets that row and none fails. No savepoint:
    SQLite's driver opens no transaction for one, and its release would commit the request's
    earlier work.
    """
    key = {column: values[column] for column in unique}
    row = session.scalars(select(model).filter_by(**key)).one_or_none()
    if row is not None:
        return row
    dialect_insert = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(dialect_insert(model).values(**values).on_conflict_do_nothing(index_elements=list(unique)))
    return session.scalars(select(model).filter_by(**key)).one()


# ------------------------------------------------------------------------------ creation
def prepare_specification(
    session: Session,
    conda_store: CondaStore,
    namespace: str,
    specification: CondaSpecification | LockfileSpecification,
) -> CondaSpecification | LockfileSpecification:
    """Apply the deployment's policy, then refuse URLs a worker must not fetch.

    Lockfiles get no package policy (like the original), but their package URLs must lie in
    the channels the policy allows. The URL rules run after the `validate_specification`
    hook, whatever it is, so a custom hook cannot lift them.
    """
    settings = get_settings(session, conda_store, namespace, specification.name)
    policy = settings.specification_policy()
    if isinstance(specification, LockfileSpecification):
        check_specification_urls(specification, policy)
        return specification
    try:
        validated = conda_store.call_validate_specification(namespace, specification, settings)
    except ValueError as error:
        raise SpecificationError(str(error)) from error
    if not isinstance(validated, CondaSpecification):
        validated = CondaSpecification.model_validate(validated)
    check_specification_urls(validated, policy)
    return validated


def ensure_specification(
    session: Session, specification: CondaSpecification | LockfileSpecification
) -> Specification:
    """Specifications are shared by content hash; concurrent inserts of one hash are tolerated."""
    values = {
        "name": specification.name,
        "spec": specification.model_dump(mode="json"),
        "sha256": specification_hash(specification),
        "is_lockfile": isinstance(specification, LockfileSpecification),
    }
    return insert_once(session, Specification, values, ("sha256",))


def ensure_environment(session: Session, namespace: Namespace, name: str) -> Environment:
    """The environment row, created when missing (concurrent creators tolerated) or revived
    without a current build when it was deleted."""
    environment = insert_once(
        session,
        Environment,
        {"namespace_id": namespace.id, "name": name, "description": ""},
        ("namespace_id", "name"),
    )
    if environment.deleted_on is not None:
        environment.deleted_on = None
        environment.current_build_id = None
    return environment


def register_environment(
    session: Session,
    conda_store: CondaStore,
    namespace_name: str,
    specification: CondaSpecification | LockfileSpecification,
    force: bool = True,
) -> Build | None:
    """Create (or update) an environment from a specification and queue its build.

    With force=False a specification equal to that of the environment's latest build queues
    nothing (watch_paths uses this so that unchanged files are not rebuilt).
    """
    check_name("namespace", namespace_name)
    check_name("environment", specification.name)
    conda_store.call_validate_action(namespace_name, "environment:create")
    specification = prepare_specification(session, conda_store, namespace_name, specification)

    if not force:
        latest_sha256 = session.scalar(
            select(Specification.sha256)
            .join(Build, Build.specification_id == Specification.id)
            .join(Environment, Build.environment_id == Environment.id)
            .join(Namespace)
            .where(
                Namespace.name == namespace_name,
                Environment.name == specification.name,
                Environment.deleted_on.is_(None),
                Build.deleted_on.is_(None),
            )
            .order_by(Build.id.desc())
            .limit(1)
        )
        if latest_sha256 == specification_hash(specification):
            return None

    check_new_environment(session, conda_store, namespace_name, specification.name)
    check_storage(session, conda_store, namespace_name)
    namespace = ensure_namespace(session, namespace_name)
    specification_row = ensure_specification(session, specification)
    environment = ensure_environment(session, namespace, specification.name)
    if specification.description:
        environment.description = specification.description
    session.flush()
    return create_build(session, conda_store, environment, specification_row)


def create_build(
    session: Session,
    conda_store: CondaStore,
    environment: Environment,
    specification: Specification,
) -> Build:
    build = Build(
        environment=environment,
        specification=specification,
        status=BuildStatus.QUEUED,
        build_key_version=conda_store.build_key_version,
        scheduled_on=utcnow(),
    )
    session.add(build)
    session.flush()
    identity = identity_of(build)
    if identity.version == 3:
        build.hash = build_key(identity)
    session.add(
        BuildArtifact(
            build=build,
            artifact_type=BuildArtifactType.LOGS,
            key=artifact_key("logs", build_key(identity)),
        )
    )
    session.flush()
    session.info.setdefault(QUEUED_BUILDS, []).append(build.id)
    return build


def rebuild(session: Session, conda_store: CondaStore, build_id: int) -> Build:
    previous = get_build(session, build_id)
    environment = previous.environment
    if environment.deleted_on is not None:
        raise CondaStoreError(f"build {build_id} belongs to a deleted environment")
    conda_store.call_validate_action(environment.namespace.name, "environment::update")
    check_storage(session, conda_store, environment.namespace.name)
    return create_build(session, conda_store, environment, previous.specification)


# ------------------------------------------------------------------------------ current build
def prefix_of(conda_store: CondaStore, build: Build) -> str:
    return build_path(
        identity_of(build),
        conda_store.store_directory,
        conda_store.build_directory,
        build.environment.name,
    )


def link_current_build(conda_store: CondaStore, environment: Environment, build: Build) -> None:
    """Point environment_directory at the build's prefix, atomically (v3 keys have no link)."""
    identity = identity_of(build)
    if identity.version == 3:
        return
    link = environment_path(
        identity, conda_store.store_directory, conda_store.environment_directory, environment.name
    )
    os.makedirs(os.path.dirname(link), exist_ok=True)
    temporary = f"{link}.{os.getpid()}.tmp"
    if os.path.lexists(temporary):
        os.unlink(temporary)
    os.symlink(prefix_of(conda_store, build), temporary)
    os.replace(temporary, link)


def run_post_update_hook(conda_store: CondaStore, environment: Environment) -> None:
    hook = conda_store.post_update_environment_build_hook
    if hook is None:
        return
    try:
        hook(conda_store, environment)
    except Exception:
        conda_store.log.exception(
            "post_update_environment_build_hook failed for %s/%s",
            environment.namespace.name,
            environment.name,
        )


def set_current_build(
    session: Session, conda_store: CondaStore, environment: Environment, build_id: int
) -> None:
    build = session.get(Build, build_id)
    if build is None:
        raise CondaStoreError(f"build id={build_id} does not exist")
    if build.environment_id != environment.id:
        raise CondaStoreError(
            f"build id={build_id} belongs to another environment than "
            f"{environment.namespace.name}/{environment.name}"
        )
    if build.status != BuildStatus.COMPLETED or build.deleted_on is not None:
        raise CondaStoreError("cannot update environment to build id since not completed")
    conda_store.call_validate_action(environment.namespace.name, "environment::update")
    environment.current_build_id = build.id
    session.flush()
    link_current_build(conda_store, environment, build)
    run_post_update_hook(conda_store, environment)


# ------------------------------------------------------------------------------ cancel
def cancel_build(session: Session, build_id: int) -> str:
    """Queued builds are canceled at once; running ones are killed by their supervisor within seconds."""
    build = get_build(session, build_id)
    now = utcnow()
    result = session.execute(
        update(Build)
        .where(Build.id == build_id, Build.status == BuildStatus.QUEUED)
        .values(
            status=BuildStatus.CANCELED,
            ended_on=now,
            cancel_requested_on=now,
            status_info="canceled before it started",
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount:
        return f"build {build_id} canceled"
    result = session.execute(
        update(Build)
        .where(Build.id == build_id, Build.status == BuildStatus.BUILDING)
        .values(cancel_requested_on=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount:
        return f"build {build_id} canceled"
    session.refresh(build)
    raise ConflictError(
        f"build {build_id} is {build.status.value}: only queued or building builds can be canceled"
    )


# ------------------------------------------------------------------------------ deletion
def purge_build_files(conda_store: CondaStore, build: Build, keep: set[str]) -> None:
    """Remove a deleted build's prefix and every artifact whose type is not kept."""
    for artifact in list(build.build_artifacts):
        if artifact.artifact_type.value in keep:
            continue
        if artifact.artifact_type == BuildArtifactType.DIRECTORY:
            remove_prefix(conda_store, artifact.key)
        elif artifact.artifact_type == BuildArtifactType.DOCKER_BLOB:
            if not _blob_shared(build, artifact.key):  # images share layers: keep those still used
                conda_store.storage.delete(artifact.key)
        else:
            conda_store.storage.delete(artifact.key)
        build.build_artifacts.remove(artifact)
    if "DIRECTORY" not in keep:
        try:
            remove_prefix(conda_store, prefix_of(conda_store, build))
        except CondaStoreError:
            pass
        build.size = 0


def _blob_shared(build: Build, key: str) -> bool:
    session = object_session(build)
    return session is not None and (
        session.scalar(
            select(BuildArtifact.id)
            .where(BuildArtifact.key == key, BuildArtifact.build_id != build.id)
            .limit(1)
        )
        is not None
    )


def remove_prefix(conda_store: CondaStore, prefix: str) -> None:
    store = os.path.realpath(conda_store.store_directory)
    target = os.path.realpath(prefix)
    if target.startswith(store + os.sep) and os.path.isdir(target):
        shutil.rmtree(target, ignore_errors=True)


def kept_artifacts(session: Session, conda_store: CondaStore) -> set[str]:
    return set(get_settings(session, conda_store).build_artifacts_kept_on_deletion)


def delete_build(session: Session, conda_store: CondaStore, build_id: int) -> None:
    build = get_build(session, build_id)
    if build.status not in DELETABLE_STATUSES:
        raise CondaStoreError("cannot delete build since not finished building")
    if build.environment.current_build_id == build.id and build.environment.deleted_on is None:
        raise CondaStoreError(
            f"build {build_id} is the current build of {build.environment.namespace.name}/"
            f"{build.environment.name}; make another build current before deleting it"
        )
    if build.deleted_on is None:
        build.deleted_on = utcnow()
    purge_build_files(conda_store, build, kept_artifacts(session, conda_store))


def _delete_environment_builds(
    session: Session, conda_store: CondaStore, environment: Environment, keep: set[str]
) -> None:
    """Running builds are asked to stop; their supervisor purges them once the process is gone."""
    now = utcnow()
    environment.deleted_on = now
    environment.current_build_id = None
    for build in environment.builds:
        build.deleted_on = build.deleted_on or now
        if build.status == BuildStatus.QUEUED:
            build.status, build.ended_on = BuildStatus.CANCELED, now
            build.status_info = "canceled: its environment was deleted"
        if build.status == BuildStatus.BUILDING:
            build.cancel_requested_on = now
        else:
            purge_build_files(conda_store, build, keep)
    if environment.builds:
        identity = identity_of(environment.builds[0])
        if identity.version != 3:
            link = environment_path(
                identity,
                conda_store.store_directory,
                conda_store.environment_directory,
                environment.name,
            )
            if os.path.islink(link):
                os.unlink(link)


def delete_environment(session: Session, conda_store: CondaStore, namespace: str, name: str) -> None:
    try:
        environment = get_environment(session, namespace, name)
    except NotFoundError as error:
        raise CondaStoreError(f"environment namespace={namespace} name={name} does not exist") from error
    _delete_environment_builds(session, conda_store, environment, kept_artifacts(session, conda_store))


def delete_namespace(session: Session, conda_store: CondaStore, name: str) -> None:
    namespace = get_namespace(session, name)
    keep = kept_artifacts(session, conda_store)
    for environment in namespace.environments:
        if environment.deleted_on is None:
            _delete_environment_builds(session, conda_store, environment, keep)
    namespace.deleted_on = utcnow()
