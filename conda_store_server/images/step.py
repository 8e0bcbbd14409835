"""The build pipeline's image step: request, write, record, push; never fails the build."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rattler
from sqlalchemy import select

from conda_store_server.build import lockfile, pip
from conda_store_server.build.artifacts import temporary_directory
from conda_store_server.build.keys import artifact_key
from conda_store_server.db.models import BuildArtifact, BuildArtifactType
from conda_store_server.images.builder import Image, ImageFailure, ImageRequest, ImageWriter
from conda_store_server.images.oci import blob_key, failure_key, manifest_key
from conda_store_server.images.push import push_image
from conda_store_server.images.registry_client import RegistryClient
from conda_store_server.package_gc import cache_lease
from conda_store_server.redact import mask_credentials
from conda_store_server.registry import ContainerRegistry
from conda_store_server.service import get_build

if TYPE_CHECKING:
    from conda_store_server.app import CondaStore
    from conda_store_server.db.models import Build


@dataclass
class PushTarget:
    """One configured registry and the name and tag this build's image gets there."""

    url: str
    username: str | None
    password: str | None
    repository: str
    tag: str


def configured_registries(conda_store: CondaStore) -> tuple[ContainerRegistry, list[Any]]:
    """The push options, and the registry objects of `container_registries`, one per URL."""
    configuration = ContainerRegistry(parent=conda_store)
    return configuration, [factory(url) for url, factory in configuration.container_registries.items()]


def _base_reference(conda_store: CondaStore, build: Build) -> str:
    base = conda_store.default_docker_base_image
    return base(build) if callable(base) else base


def _credentials(registries: list[Any]) -> dict[str, tuple[str | None, str | None]]:
    return {
        registry.url: (getattr(registry, "username", None), getattr(registry, "password", None))
        for registry in registries
    }


def _push_targets(configuration: ContainerRegistry, registries: list[Any], build: Build) -> list[PushTarget]:
    return [
        PushTarget(
            url=registry.url,
            username=getattr(registry, "username", None),
            password=getattr(registry, "password", None),
            repository=configuration.container_registry_image_name(registry, build),
            tag=configuration.container_registry_image_tag(registry, build),
        )
        for registry in registries
    ]


def make_image(
    conda_store: CondaStore,
    build_id: int,
    build_key: str,
    prefix: str,
    lock_bytes: bytes | None,
    records_by_platform: dict[str, list[rattler.RepoDataRecord]],
    log: Callable[[str], None],
) -> Image | None:
    """Write the build's image and push it; a failure is logged and kept for the docker route.

    `lock_bytes` is the build's stored lockfile, as the pipeline just wrote it (read from storage
    when None)."""
    started = time.monotonic()
    try:
        configuration, registries = configured_registries(conda_store)
        if lock_bytes is None:
            lock_bytes = conda_store.storage.get(artifact_key("lockfile", build_key))
        host_platform = str(rattler.Subdir.current())
        with conda_store.session() as session:
            build = get_build(session, build_id)
            environment = build.environment
            request = ImageRequest(
                build_id=build_id,
                build_key=build_key,
                namespace=environment.namespace.name,
                environment=environment.name,
                built_prefix=prefix,
                lockfile_sha256=hashlib.sha256(lock_bytes).hexdigest(),
                base_reference=_base_reference(conda_store, build),
                image_prefix=conda_store.container_image_prefix,
                max_layers=conda_store.container_image_max_layers,
                records_by_platform=records_by_platform,
                host_platform=host_platform,
                base_credentials=_credentials(registries),
                pip_by_platform=_foreign_pip_packages(
                    json.loads(lock_bytes), records_by_platform, host_platform
                ),
                pip_options=pip.PipOptions(
                    requirements=(),
                    index_url=conda_store.pypi_index_url,
                    extra_index_urls=tuple(conda_store.pypi_extra_index_urls),
                ),
                uv_cache=conda_store.uv_cache_directory,
            )
            targets = _push_targets(configuration, registries, build)
        # the lease keeps the package collector from the cache and the blobs until they are recorded
        with cache_lease(conda_store.package_cache_directory):
            with temporary_directory(conda_store.store_directory) as scratch:
                writer = ImageWriter(
                    conda_store.storage, conda_store.package_cache_directory, Path(scratch), log
                )
                image = writer.write(request)
            conda_store.storage.set(manifest_key(build_key), image.content, image.media_type)
            _record(conda_store, build_id, build_key, image)
    except ImageFailure as failure:
        _failed(conda_store, build_key, str(failure), log)
        return None
    except Exception as error:  # noqa: BLE001 - the environment is built; only its image failed
        _failed(conda_store, build_key, f"internal error: {error!r}", log)
        return None
    log(
        f"container image stored in {time.monotonic() - started:.2f} s: {image.digest} "
        f"({', '.join(image.platforms)}; {image.bytes_written} new bytes)"
    )
    for target in targets:
        _push(conda_store, target, image, log)
    return image


def _foreign_pip_packages(
    lock: dict[str, Any], records_by_platform: dict[str, list[rattler.RepoDataRecord]], host_platform: str
) -> dict[str, list[pip.PipPackage]]:
    """The lock's pip packages of every platform but the worker's (whose are in the prefix)."""
    return {
        platform: [pip.PipPackage.from_lock_entry(entry) for entry in lockfile.pip_packages(lock, platform)]
        for platform in records_by_platform
        if platform != host_platform
    }


def _failed(conda_store: CondaStore, build_key: str, reason: str, log: Callable[[str], None]) -> None:
    reason = mask_credentials(reason)
    log(f"container image failed: {reason}")
    try:
        conda_store.storage.set(failure_key(build_key), reason.encode(), "text/plain")
    except Exception:  # noqa: BLE001 - the log has it
        pass


def _record(conda_store: CondaStore, build_id: int, build_key: str, image: Image) -> None:
    with conda_store.session() as session:
        existing = set(
            session.scalars(
                select(BuildArtifact.key).where(
                    BuildArtifact.build_id == build_id,
                    BuildArtifact.artifact_type.in_(
                        (BuildArtifactType.DOCKER_BLOB, BuildArtifactType.DOCKER_MANIFEST)
                    ),
                )
            )
        )
        for digest in sorted(image.blobs):
            if blob_key(digest) not in existing:
                session.add(
                    BuildArtifact(
                        build_id=build_id, artifact_type=BuildArtifactType.DOCKER_BLOB, key=blob_key(digest)
                    )
                )
        if manifest_key(build_key) not in existing:  # an image made again keeps its one row
            session.add(
                BuildArtifact(
                    build_id=build_id,
                    artifact_type=BuildArtifactType.DOCKER_MANIFEST,
                    key=manifest_key(build_key),
                )
            )


def _push(conda_store: CondaStore, target: PushTarget, image: Image, log: Callable[[str], None]) -> None:
    where = f"{mask_credentials(target.url)}/{target.repository}:{target.tag}"
    try:
        with RegistryClient(target.url, target.username, target.password) as client:
            digest = push_image(
                client, target.repository, target.tag, conda_store.storage, image.content, log=log
            )
    except Exception as error:  # noqa: BLE001 - a registry's refusal does not undo the image
        log(f"push to {where} failed: {mask_credentials(str(error))}")
        return
    log(f"pushed to {where} ({digest})")
