"""SQLAlchemy 2 models: the tables and columns of conda-store's schema (upstream-api §3).

Columns we add beyond upstream (build supervision, cancel, interruptions) are nullable or have a
server default, so that a database created by the original keeps working after `alembic upgrade`.
"""

from __future__ import annotations

import datetime
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    Table,
    Text,
    Unicode,
    UnicodeText,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime.datetime:
    """Naive UTC: the API emits timestamps without an offset and the UI appends `Z` itself."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class BuildStatus(enum.Enum):
    QUEUED = "QUEUED"
    BUILDING = "BUILDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({BuildStatus.COMPLETED, BuildStatus.FAILED, BuildStatus.CANCELED})
#: ended without an environment: what such a build installed is discarded (`discarded_prefixes`)
UNFINISHED_STATUSES = frozenset({BuildStatus.FAILED, BuildStatus.CANCELED})


class BuildArtifactType(enum.Enum):
    DIRECTORY = "DIRECTORY"
    LOCKFILE = "LOCKFILE"
    LOGS = "LOGS"
    YAML = "YAML"
    CONDA_PACK = "CONDA_PACK"
    DOCKER_BLOB = "DOCKER_BLOB"
    DOCKER_MANIFEST = "DOCKER_MANIFEST"
    CONTAINER_REGISTRY = "CONTAINER_REGISTRY"
    CONSTRUCTOR_INSTALLER = "CONSTRUCTOR_INSTALLER"


class Namespace(Base):
    __tablename__ = "namespace"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Unicode(255), unique=True)
    deleted_on: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=dict)

    environments: Mapped[list[Environment]] = relationship(back_populates="namespace")
    role_mappings: Mapped[list[NamespaceRoleMapping]] = relationship(
        back_populates="namespace", cascade="all, delete-orphan"
    )


class NamespaceRoleMapping(Base):
    """v1 role mapping: members of `namespace` get `role` on resources matching `entity`."""

    __tablename__ = "namespace_role_mapping"

    id: Mapped[int] = mapped_column(primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespace.id"))
    entity: Mapped[str] = mapped_column(Unicode(255))
    role: Mapped[str] = mapped_column(Unicode(255))

    namespace: Mapped[Namespace] = relationship(back_populates="role_mappings")


class NamespaceRoleMappingV2(Base):
    """v2 role mapping: entities whose primary namespace is `other_namespace` get `role` on it."""

    __tablename__ = "namespace_role_mapping_v2"
    __table_args__ = (UniqueConstraint("namespace_id", "other_namespace_id", name="_uc"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespace.id"))
    other_namespace_id: Mapped[int] = mapped_column(ForeignKey("namespace.id"))
    role: Mapped[str] = mapped_column(Unicode(255))

    namespace: Mapped[Namespace] = relationship(foreign_keys=[namespace_id])
    other_namespace: Mapped[Namespace] = relationship(foreign_keys=[other_namespace_id])


class Specification(Base):
    __tablename__ = "specification"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Unicode(255))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    sha256: Mapped[str] = mapped_column(Unicode(255), unique=True)
    created_on: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    is_lockfile: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")


build_conda_package_build = Table(
    "build_conda_package_build",
    Base.metadata,
    Column("build_id", ForeignKey("build.id", ondelete="CASCADE"), primary_key=True),
    Column(
        "conda_package_build_id",
        ForeignKey("conda_package_build.id", ondelete="CASCADE"),
        primary_key=True,
    ),
)

solve_conda_package_build = Table(
    "solve_conda_package_build",
    Base.metadata,
    Column("solve_id", ForeignKey("solve.id", ondelete="CASCADE"), primary_key=True),
    Column(
        "conda_package_build_id",
        ForeignKey("conda_package_build.id", ondelete="CASCADE"),
        primary_key=True,
    ),
)


class Solve(Base):
    __tablename__ = "solve"

    id: Mapped[int] = mapped_column(primary_key=True)
    specification_id: Mapped[int] = mapped_column(ForeignKey("specification.id"))
    scheduled_on: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    started_on: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    ended_on: Mapped[datetime.datetime | None] = mapped_column(DateTime)

    specification: Mapped[Specification] = relationship()
    package_builds: Mapped[list[CondaPackageBuild]] = relationship(secondary=solve_conda_package_build)


class Build(Base):
    __tablename__ = "build"

    id: Mapped[int] = mapped_column(primary_key=True)
    specification_id: Mapped[int] = mapped_column(ForeignKey("specification.id"))
    environment_id: Mapped[int] = mapped_column(ForeignKey("environment.id"))
    status: Mapped[BuildStatus] = mapped_column(
        Enum(BuildStatus, name="buildstatus"), default=BuildStatus.QUEUED
    )
    status_info: Mapped[str | None] = mapped_column(UnicodeText)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    scheduled_on: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    started_on: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    ended_on: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    deleted_on: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    hash: Mapped[str | None] = mapped_column(Unicode(32))
    build_key_version: Mapped[int] = mapped_column(Integer, server_default="1")

    # Supervision (ours): who runs the build, when it last proved to be alive, cancel requests.
    worker_id: Mapped[str | None] = mapped_column(Unicode(255))
    heartbeat_on: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    cancel_requested_on: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    # How often a worker's stop or death gave the build back to the queue: bounded, so that a
    # build which itself brings its workers down ends FAILED. The server default fills the rows
    # of a database created by the original, and of any writer that does not know the column.
    interruptions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Storage lifecycle (ours, `conda_store_server.retention`): when the build lost its prefix
    # and heavy artifacts (null: live), and whether the environment moves to it once a restore
    # from its lockfile completes (a rollback to an archived build).
    archived_on: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    current_after_restore: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")

    specification: Mapped[Specification] = relationship()
    environment: Mapped[Environment] = relationship(back_populates="builds", foreign_keys=[environment_id])
    build_artifacts: Mapped[list[BuildArtifact]] = relationship(
        back_populates="build", cascade="all, delete-orphan", order_by="BuildArtifact.id"
    )
    package_builds: Mapped[list[CondaPackageBuild]] = relationship(secondary=build_conda_package_build)
    storage_groups: Mapped[list[BuildStorageGroup]] = relationship(cascade="all, delete-orphan")


class BuildStorageGroup(Base):
    """Bytes of one build's prefix, by group of files that are stored once (ours).

    A group is either the files only this prefix holds (`private:<build id>`) or the hard-linked
    files of one package, keyed by a digest of their inodes: builds linking the same cached
    files share a key, so a namespace's bytes are the sum over its distinct keys (hard links
    counted once) without walking a prefix (`conda_store_server.disk_usage`).
    """

    __tablename__ = "build_storage_group"

    build_id: Mapped[int] = mapped_column(ForeignKey("build.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(Unicode(64), primary_key=True)
    bytes: Mapped[int] = mapped_column(BigInteger)


class BuildArtifact(Base):
    __tablename__ = "build_artifact"
    # The registry finds which builds reference a blob by its key (`docker/blobs/<digest>`).
    __table_args__ = (Index("ix_build_artifact_key", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    build_id: Mapped[int] = mapped_column(ForeignKey("build.id"))
    artifact_type: Mapped[BuildArtifactType] = mapped_column(
        Enum(BuildArtifactType, name="buildartifacttype")
    )
    key: Mapped[str] = mapped_column(Unicode(255))

    build: Mapped[Build] = relationship(back_populates="build_artifacts")


class Environment(Base):
    __tablename__ = "environment"
    __table_args__ = (
        UniqueConstraint("namespace_id", "name", name="_namespace_name_uc"),
        # Environment lists count and page live environments by namespace and name: this index
        # alone answers both (no table rows read to count, no sort per page).
        Index(
            "ix_environment_live_by_name",
            "namespace_id",
            "name",
            "id",
            sqlite_where=text("deleted_on IS NULL"),
            postgresql_where=text("deleted_on IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespace.id"))
    name: Mapped[str] = mapped_column(Unicode(255))
    current_build_id: Mapped[int | None] = mapped_column(
        ForeignKey("build.id", use_alter=True, name="fk_environment_current_build_id")
    )
    deleted_on: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    description: Mapped[str | None] = mapped_column(UnicodeText)

    namespace: Mapped[Namespace] = relationship(back_populates="environments")
    current_build: Mapped[Build | None] = relationship(foreign_keys=[current_build_id], post_update=True)
    builds: Mapped[list[Build]] = relationship(
        back_populates="environment",
        foreign_keys=[Build.environment_id],
        cascade="all, delete-orphan",
        order_by="Build.id",
    )


class CondaChannel(Base):
    __tablename__ = "conda_channel"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Unicode(255), unique=True)
    last_update: Mapped[datetime.datetime | None] = mapped_column(DateTime)


class CondaPackage(Base):
    __tablename__ = "conda_package"
    __table_args__ = (UniqueConstraint("channel_id", "name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("conda_channel.id"), index=True)
    license: Mapped[str | None] = mapped_column(Text)
    license_family: Mapped[str | None] = mapped_column(Unicode(64))
    name: Mapped[str] = mapped_column(Unicode(255), index=True)
    version: Mapped[str] = mapped_column(Unicode(64), index=True)
    summary: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)

    channel: Mapped[CondaChannel] = relationship()
    builds: Mapped[list[CondaPackageBuild]] = relationship(back_populates="package")


class CondaPackageBuild(Base):
    __tablename__ = "conda_package_build"
    __table_args__ = (
        UniqueConstraint("channel_id", "package_id", "subdir", "build", "build_number", "sha256"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    package_id: Mapped[int] = mapped_column(ForeignKey("conda_package.id"))
    channel_id: Mapped[int] = mapped_column(ForeignKey("conda_channel.id"))
    build: Mapped[str] = mapped_column(Unicode(64), index=True)
    build_number: Mapped[int] = mapped_column(Integer)
    constrains: Mapped[list[str] | None] = mapped_column(JSON)
    depends: Mapped[list[str]] = mapped_column(JSON)
    md5: Mapped[str] = mapped_column(Unicode(255))
    sha256: Mapped[str] = mapped_column(Unicode(64))
    size: Mapped[int] = mapped_column(BigInteger)
    subdir: Mapped[str | None] = mapped_column(Unicode(64))
    timestamp: Mapped[int | None] = mapped_column(BigInteger)

    package: Mapped[CondaPackage] = relationship(back_populates="builds")
    channel: Mapped[CondaChannel] = relationship()


class CondaStoreConfiguration(Base):
    __tablename__ = "conda_store_configuration"

    id: Mapped[int] = mapped_column(primary_key=True)
    disk_usage: Mapped[int] = mapped_column(BigInteger, default=0)
    free_storage: Mapped[int] = mapped_column(BigInteger, default=0)
    total_storage: Mapped[int] = mapped_column(BigInteger, default=0)


class KeyValueStore(Base):
    __tablename__ = "keyvaluestore"
    __table_args__ = (UniqueConstraint("prefix", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    prefix: Mapped[str] = mapped_column(Unicode(255))
    key: Mapped[str] = mapped_column(Unicode(255))
    value: Mapped[Any] = mapped_column(JSON)


class Worker(Base):
    __tablename__ = "worker"

    id: Mapped[int] = mapped_column(primary_key=True)
    initialized: Mapped[bool] = mapped_column(Boolean, default=False)


class PeriodicTask(Base):
    """When each scheduled task may next run (ours): the claim that makes it run once."""

    __tablename__ = "periodic_task"

    name: Mapped[str] = mapped_column(Unicode(64), primary_key=True)
    next_run_at: Mapped[datetime.datetime] = mapped_column(DateTime)
