"""JSON shapes of the API (upstream-api §2.3): what the official client and UI read."""

from __future__ import annotations

import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from conda_store_server.db import models
from conda_store_server.limits import MAX_DESCRIPTION_CHARACTERS
from conda_store_server.specification import MAX_LOCKFILE_BYTES

T = TypeVar("T")


class Envelope(BaseModel, Generic[T]):
    status: str = "ok"
    data: T | None = None
    message: str | None = None


class Namespace(BaseModel):
    id: int
    name: str
    metadata_: dict[str, Any] | None = None
    role_mappings: list[dict[str, Any]] = []

    @classmethod
    def of(cls, namespace: models.Namespace) -> Namespace:
        return cls(
            id=namespace.id,
            name=namespace.name,
            metadata_=namespace.metadata_,
            role_mappings=[{"id": m.id, "entity": m.entity, "role": m.role} for m in namespace.role_mappings],
        )


class Specification(BaseModel):
    id: int
    name: str
    spec: dict[str, Any]
    sha256: str
    created_on: datetime.datetime

    @field_serializer("created_on")
    def _naive(self, value: datetime.datetime) -> str:
        return value.isoformat()


class BuildArtifact(BaseModel):
    id: int
    artifact_type: str
    key: str


class Build(BaseModel):
    model_config = ConfigDict(ser_json_timedelta="iso8601")

    id: int
    environment_id: int
    specification: Specification | None = None
    packages: list[Any] | None = None
    status: str
    status_info: str | None = None
    size: int
    scheduled_on: datetime.datetime
    started_on: datetime.datetime | None = None
    ended_on: datetime.datetime | None = None
    build_artifacts: list[BuildArtifact] | None = None
    # ours: an archived build has no prefix nor heavy artifacts until restored
    archived: bool = False
    archived_on: datetime.datetime | None = None

    @classmethod
    def of(cls, build: models.Build, detail: bool = True) -> Build:
        """Without `detail` (a list's item) the specification and artifacts are left out and not
        even read: loading them lazily would cost a query per build of a page."""
        return cls(
            id=build.id,
            environment_id=build.environment_id,
            specification=_specification(build.specification) if detail else None,
            status=build.status.value,
            status_info=build.status_info,
            size=build.size or 0,
            scheduled_on=build.scheduled_on,
            started_on=build.started_on,
            ended_on=build.ended_on,
            build_artifacts=[
                BuildArtifact(id=a.id, artifact_type=a.artifact_type.value, key=_public_key(a))
                for a in build.build_artifacts
            ]
            if detail
            else None,
            archived=build.archived_on is not None,
            archived_on=build.archived_on,
        )


def _specification(specification: models.Specification) -> Specification:
    return Specification(
        id=specification.id,
        name=specification.name,
        spec=specification.spec,
        sha256=specification.sha256,
        created_on=specification.created_on,
    )


def _public_key(artifact: models.BuildArtifact) -> str:
    """A DIRECTORY artifact's key is the build path, as upstream shows it."""
    return artifact.key


class Environment(BaseModel):
    id: int
    namespace: Namespace
    name: str
    current_build_id: int | None = None
    current_build: Build | None = None
    description: str = ""

    @classmethod
    def of(cls, environment: models.Environment) -> Environment:
        return cls(
            id=environment.id,
            namespace=Namespace.of(environment.namespace),
            name=environment.name,
            current_build_id=reported_current_build_id(environment),
            description=environment.description or "",
        )


def reported_current_build_id(environment: models.Environment) -> int | None:
    """Until a build completes, the newest build stands in as the current one.

    The official client's `conda-store wait ns/env` waits for the environment's current build:
    right after the first submission there is none, and it would fail at once. The environment
    directory is still linked only to a completed build.
    """
    if environment.current_build_id is not None:
        return environment.current_build_id
    return max((build.id for build in environment.builds if build.deleted_on is None), default=None)


class SpecificationRequest(BaseModel):
    """Body of POST /api/v1/specification/ (unknown keys are ignored, as upstream).

    `lockfile_environment` is ours: a pixi lockfile can lock several environments, and the
    request says which one to build (upstream clients never send it).
    """

    specification: str = Field("", max_length=MAX_LOCKFILE_BYTES)
    namespace: str | None = None
    is_lockfile: bool = False
    environment_name: str = ""
    environment_description: str = Field("", max_length=MAX_DESCRIPTION_CHARACTERS)
    lockfile_environment: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="With is_lockfile and a pixi lockfile: the environment to build (default: `default`)",
    )


class EnvironmentUpdate(BaseModel):
    build_id: int | None = Field(None, ge=0, le=2**31 - 1)
    description: str | None = Field(None, max_length=MAX_DESCRIPTION_CHARACTERS)


class Login(BaseModel):
    username: str = Field(max_length=255)
    password: str = Field("", max_length=1024)
