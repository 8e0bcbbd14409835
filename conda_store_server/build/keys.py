"""Build keys and the paths derived from them (upstream-api §4.6, §4.7).

Each build formats its key with the version stored in its own row, so changing
`build_key_version` never renames existing builds.
"""

from __future__ import annotations

import calendar
import hashlib
import os
from dataclasses import dataclass

from conda_store_server.exception import BuildPathError

MAX_PREFIX_LENGTH = 255


@dataclass(frozen=True)
class BuildIdentity:
    """What a key is made of, detached from the ORM so workers and the API compute it alike."""

    id: int
    version: int
    specification_sha256: str
    specification_name: str
    namespace: str
    scheduled_on_epoch: int
    scheduled_on_text: str  # "%Y%m%d-%H%M%S-%f", for v1 keys


def identity_of(build: object) -> BuildIdentity:
    """Build the identity from an ORM `Build` (with specification and environment loaded)."""
    scheduled = build.scheduled_on  # type: ignore[attr-defined]
    return BuildIdentity(
        id=build.id,  # type: ignore[attr-defined]
        version=build.build_key_version,  # type: ignore[attr-defined]
        specification_sha256=build.specification.sha256,  # type: ignore[attr-defined]
        specification_name=build.specification.name,  # type: ignore[attr-defined]
        namespace=build.environment.namespace.name,  # type: ignore[attr-defined]
        scheduled_on_epoch=calendar.timegm(scheduled.utctimetuple()),
        scheduled_on_text=scheduled.strftime("%Y%m%d-%H%M%S-%f"),
    )


def build_key(identity: BuildIdentity) -> str:
    if identity.version == 1:
        return (
            f"{identity.specification_sha256}-{identity.scheduled_on_text}-"
            f"{identity.id}-{identity.specification_name}"
        )
    if identity.version == 2:
        return (
            f"{identity.specification_sha256[:8]}-{identity.scheduled_on_epoch}-"
            f"{identity.id}-{identity.specification_name}"
        )
    if identity.version == 3:
        material = (
            f"{identity.namespace}{identity.specification_sha256}{identity.scheduled_on_epoch}{identity.id}"
        )
        return hashlib.sha256(material.encode()).hexdigest()[:32]
    raise ValueError(f"unknown build key version {identity.version}")


def build_id_from_key(key: str) -> int | None:
    """The build id inside a v1/v2 key; None for v3 keys, which must be looked up by hash."""
    if "-" not in key:
        return None
    parts = key.split("-")
    index = 2 if len(key) > 8 and key[8] == "-" else 4
    try:
        return int(parts[index])
    except (IndexError, ValueError):
        return None


def build_path(
    identity: BuildIdentity, store_directory: str, build_directory: str, environment_name: str
) -> str:
    """Absolute prefix of the build; refuses paths conda packages cannot be relocated into."""
    namespace = "" if identity.version == 3 else identity.namespace
    parent = build_directory.format(
        store_directory=store_directory, namespace=namespace, name=environment_name
    )
    path = os.path.abspath(os.path.join(parent, build_key(identity)))
    if len(path) > MAX_PREFIX_LENGTH:
        raise BuildPathError(
            f"build_path too long: must be <= {MAX_PREFIX_LENGTH} characters "
            f"(it is {len(path)}: {path}); use a shorter environment or namespace name, "
            "a shorter CondaStore.store_directory, or CondaStore.build_key_version = 3"
        )
    return path


def environment_path(
    identity: BuildIdentity, store_directory: str, environment_directory: str, environment_name: str
) -> str:
    return os.path.abspath(
        environment_directory.format(
            store_directory=store_directory, namespace=identity.namespace, name=environment_name
        )
    )


def artifact_key(kind: str, key: str) -> str:
    """Storage keys of a build's artifacts, as the original names them."""
    suffix = {"logs": ".log", "lockfile": ".yml", "yaml": ".yml", "archive": ".tar.gz"}[kind]
    return f"{kind}/{key}{suffix}"
