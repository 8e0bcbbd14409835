"""The image step of a build: an OCI image (or an index of one per platform) in storage.

Runs in the build's process after the build is COMPLETED, like the other artifacts: a failure
here is logged and recorded for `GET /api/v1/build/{id}/docker/`, and the environment stays
usable. Layers are written once per distinct content (`docker/layers/<key>.json` remembers the
digest of each unit's layer), blobs once per digest (`docker/blobs/<digest>`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rattler

from conda_store_server.build import pip
from conda_store_server.build.pip_solve import python_platform, python_version
from conda_store_server.exception import BuildFailure
from conda_store_server.images import contents
from conda_store_server.images.base import BaseImage, pull_base_image
from conda_store_server.images.layers import Layer, write_layer
from conda_store_server.images.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    blob_key,
    canonical_json,
    failure_key,
    sha256_digest,
)
from conda_store_server.images.reference import container_platform

if TYPE_CHECKING:
    from conda_store_server.storage import Storage

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LABEL_PREFIX = "org.conda-store"


def image_failure(storage: Storage, build_key: str) -> str | None:
    """Why the build has no image, when its image step failed (the docker route says it)."""
    try:
        return storage.get(failure_key(build_key)).decode()
    except Exception:  # noqa: BLE001 - no failure recorded
        return None


def _layer_index_key(unit_key: str) -> str:
    return f"docker/layers/{unit_key}.json"


@dataclass
class ImageRequest:
    """What the image of one build needs, read from the database before the slow work."""

    build_id: int
    build_key: str
    namespace: str
    environment: str
    built_prefix: str
    lockfile_sha256: str
    base_reference: str
    image_prefix: str
    max_layers: int
    records_by_platform: dict[str, list[rattler.RepoDataRecord]]
    host_platform: str
    base_credentials: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    # the lockfile's pip packages of the platforms other than the worker's, and how uv gets them
    pip_by_platform: dict[str, list[pip.PipPackage]] = field(default_factory=dict)
    pip_options: pip.PipOptions | None = None
    uv_cache: str = ""


@dataclass
class Image:
    """The stored image: its top-level document (manifest or index) and every digest it uses."""

    content: bytes
    media_type: str
    digest: str
    blobs: set[str]
    bytes_written: int
    platforms: list[str]


class ImageFailure(Exception):
    """The image cannot be made; the message says why, for the build's log and docker route."""


class ImageWriter:
    """Writes the image of one build into `storage`, reusing every layer it already holds."""

    def __init__(
        self,
        storage: Storage,
        package_cache: str,
        scratch: Path,
        log: Callable[[str], None],
    ) -> None:
        self.storage = storage
        self.package_cache = package_cache
        self.scratch = scratch
        self.log = log
        self.bytes_written = 0

    def write(self, request: ImageRequest) -> Image:
        platforms = self._platforms(request)
        manifests: list[tuple[str, tuple[str, str], bytes]] = []
        blobs: set[str] = set()
        for subdir in platforms:
            started = time.monotonic()
            content, used = self._platform_image(request, subdir)
            blobs |= used
            manifests.append((subdir, container_platform(subdir), content))  # type: ignore[arg-type]
            self.log(
                f"image for {subdir} written in {time.monotonic() - started:.2f} s ({sha256_digest(content)})"
            )
        if len(manifests) == 1:
            content = manifests[0][2]
            media_type = OCI_MANIFEST
        else:
            content = canonical_json(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_INDEX,
                    "manifests": [
                        {
                            "mediaType": OCI_MANIFEST,
                            "digest": sha256_digest(manifest),
                            "size": len(manifest),
                            "platform": _platform_field(platform),
                        }
                        for _subdir, platform, manifest in manifests
                    ],
                }
            )
            media_type = OCI_INDEX
            self._store_bytes(content, media_type)
        digest = sha256_digest(content)
        blobs.add(digest)
        return Image(content, media_type, digest, blobs, self.bytes_written, platforms)

    # ------------------------------------------------------------------ per platform
    def _platforms(self, request: ImageRequest) -> list[str]:
        """The worker's platform first, then every other locked platform that has a container
        equivalent (made by extracting its packages: nothing of it runs here)."""
        if container_platform(request.host_platform) is None:
            raise ImageFailure(f"images are made for Linux platforms; this worker is {request.host_platform}")
        others = sorted(
            subdir
            for subdir in request.records_by_platform
            if subdir != request.host_platform and container_platform(subdir) is not None
        )
        return [request.host_platform, *others]

    def _platform_image(self, request: ImageRequest, subdir: str) -> tuple[bytes, set[str]]:
        operating_system, architecture = container_platform(subdir)  # type: ignore[misc]
        base = self._base(request, (operating_system, architecture))
        prefix = self.scratch / subdir / "prefix"
        asyncio.run(self._install(request.records_by_platform[subdir], prefix, subdir, request.image_prefix))
        records = contents.conda_records(prefix)
        units = contents.conda_units(records, prefix, request.image_prefix)
        conda_owned = contents.owned_by_conda(records)
        if subdir == request.host_platform:  # its pip packages are installed in the build's prefix
            units += contents.pip_units(Path(request.built_prefix), request.image_prefix, conda_owned)
        elif request.pip_by_platform.get(subdir):
            helper = self._lay_out_pip(request, subdir, prefix)
            units += contents.pip_units(prefix, request.image_prefix, conda_owned, also_rewritten=helper)
        budget = request.max_layers - len(base.layers) - 1
        if budget < 1:
            raise ImageFailure(
                f"the base image {request.base_reference} has {len(base.layers)} layers, which leaves "
                f"none of the {request.max_layers} allowed (container_image_max_layers) for the environment"
            )
        groups = contents.group_units(units, budget)
        groups.append([contents.environment_unit(prefix, request.image_prefix)])
        layers = self._layers(groups)

        config = self._config(request, base, subdir, layers, groups)
        config_bytes = canonical_json(config)
        config_digest = self._store_bytes(config_bytes, OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
            "layers": [layer.as_descriptor() for layer in base.layers] + [layer for layer, _ in layers],
        }
        content = canonical_json(manifest)
        used = {config_digest, self._store_bytes(content, OCI_MANIFEST)}
        used |= {layer.digest for layer in base.layers}
        used |= {descriptor["digest"] for descriptor, _ in layers}
        return content, used

    def _base(self, request: ImageRequest, platform: tuple[str, str]) -> BaseImage:
        try:
            base = pull_base_image(
                self.storage, request.base_reference, platform, request.base_credentials, scratch=self.scratch
            )
        except Exception as error:  # noqa: BLE001 - the reason is the user's to read
            raise ImageFailure(f"cannot use the base image: {error}") from error
        source = "from the cache (its registry did not answer)" if base.from_cache else "from its registry"
        self.log(
            f"base image {request.base_reference} for {'/'.join(platform)}: {base.manifest_digest} {source}"
        )
        return base

    def _lay_out_pip(self, request: ImageRequest, subdir: str, prefix: Path) -> str:
        """Another platform's pip wheels, unpacked into its image prefix; the interpreter uv was
        shown (the build's own python, of the same X.Y) is returned for the shebangs' rewrite."""
        try:
            version = python_version(request.records_by_platform[subdir])
            host_version = python_version(request.records_by_platform[request.host_platform])
            if (version.major, version.minor) != (host_version.major, host_version.minor):
                raise BuildFailure(
                    f"the {subdir} image's python is {version} and the worker's environment has "
                    f"python {host_version}: pip packages are laid out with an interpreter of the "
                    "same version, so the image needs the same python version on every platform"
                )
            target = pip.PlatformTarget(
                subdir=subdir,
                prefix=str(prefix),
                python_version=str(version),
                python_platform=python_platform(subdir),
                helper_python=str(
                    Path(request.built_prefix, "bin", f"python{version.major}.{version.minor}")
                ),
            )
            scratch = self.scratch / subdir / "pip"
            scratch.mkdir(parents=True)
            assert request.pip_options is not None
            pip.install_for_platform(
                request.pip_by_platform[subdir],
                target,
                request.pip_options,
                request.uv_cache,
                str(scratch),
                self.log,
            )
        except BuildFailure as failure:
            raise ImageFailure(f"pip packages of {subdir}: {failure.reason}") from failure
        return request.built_prefix

    async def _install(
        self, records: list[rattler.RepoDataRecord], prefix: Path, subdir: str, image_prefix: str
    ) -> None:
        """The environment as it must be inside the image: every prefix placeholder replaced by
        the image's prefix, for the platform's own packages."""
        await rattler.install(
            records,
            prefix,
            cache_dir=Path(self.package_cache),
            platform=rattler.Subdir(subdir),
            execute_link_scripts=False,
            show_progress=False,
            alternative_target_prefix=image_prefix,
        )
        Path(prefix, "CACHEDIR.TAG").unlink(missing_ok=True)

    # ------------------------------------------------------------------ layers
    def _layers(self, groups: list[list[contents.Unit]]) -> list[tuple[dict[str, Any], str]]:
        """(descriptor, diff_id) per group, in order; gzip runs on every core (zlib releases the
        GIL), and a group whose layer exists already is not read at all."""
        with ThreadPoolExecutor(max_workers=max(os.cpu_count() or 1, 1)) as pool:
            return list(pool.map(self._layer, groups))

    def _layer(self, group: list[contents.Unit]) -> tuple[dict[str, Any], str]:
        key = (
            group[0].key
            if len(group) == 1
            else hashlib.sha256("".join(u.key for u in group).encode()).hexdigest()
        )
        index_key = _layer_index_key(key)
        known = self._known_layer(index_key)
        if known is not None:
            return known
        destination = self.scratch / f"layer-{key}.tar.gz"
        layer: Layer = write_layer((file for unit in group for file in unit.files), destination)
        try:
            self._store_file(layer.digest, layer.path, layer.size)
        finally:
            destination.unlink(missing_ok=True)
        entry = {"descriptor": layer.descriptor(), "diff_id": layer.diff_id}
        self.storage.set(index_key, canonical_json(entry), "application/json")
        return entry["descriptor"], layer.diff_id  # type: ignore[return-value]

    def _known_layer(self, index_key: str) -> tuple[dict[str, Any], str] | None:
        try:
            entry = json.loads(self.storage.get(index_key))
        except Exception:  # noqa: BLE001 - not written yet (or unreadable): write the layer
            return None
        descriptor = entry["descriptor"]
        if not self.storage.exists(blob_key(descriptor["digest"])):
            return None
        return descriptor, entry["diff_id"]

    def _store_file(self, digest: str, path: Path, size: int) -> None:
        key = blob_key(digest)
        if not self.storage.exists(key):
            self.storage.fset(key, path, "application/octet-stream")
            self.bytes_written += size

    def _store_bytes(self, content: bytes, media_type: str) -> str:
        """Store a document as the blob of its digest (once), and return the digest."""
        digest = sha256_digest(content)
        if not self.storage.exists(blob_key(digest)):
            self.storage.set(blob_key(digest), content, media_type)
            self.bytes_written += len(content)
        return digest

    # ------------------------------------------------------------------ config
    def _config(
        self,
        request: ImageRequest,
        base: BaseImage,
        subdir: str,
        layers: list[tuple[dict[str, Any], str]],
        groups: list[list[contents.Unit]],
    ) -> dict[str, Any]:
        operating_system, architecture = container_platform(subdir)  # type: ignore[misc]
        base_config = base.config
        runtime = dict(base_config.get("config") or {})
        environment = [
            entry for entry in runtime.get("Env") or [] if not entry.startswith(("PATH=", "CONDA_PREFIX="))
        ]
        base_path = next(
            (entry.split("=", 1)[1] for entry in runtime.get("Env") or [] if entry.startswith("PATH=")),
            DEFAULT_PATH,
        )
        runtime["Env"] = [
            f"PATH={request.image_prefix}/bin:{base_path}",
            f"CONDA_PREFIX={request.image_prefix}",
            *environment,
        ]
        runtime["Labels"] = {
            **(runtime.get("Labels") or {}),
            f"{LABEL_PREFIX}.namespace": request.namespace,
            f"{LABEL_PREFIX}.environment": request.environment,
            f"{LABEL_PREFIX}.build-id": str(request.build_id),
            f"{LABEL_PREFIX}.build-key": request.build_key,
            f"{LABEL_PREFIX}.lockfile-sha256": request.lockfile_sha256,
            f"{LABEL_PREFIX}.platform": subdir,
        }
        history = list(base_config.get("history") or [])
        history += [
            {
                "created_by": "conda-store: " + ", ".join(unit.name for unit in group),
                "comment": "conda-store layer",
            }
            for group in groups
        ]
        config: dict[str, Any] = {
            "architecture": architecture,
            "os": operating_system,
            "config": runtime,
            "rootfs": {
                "type": "layers",
                "diff_ids": list((base_config.get("rootfs") or {}).get("diff_ids") or [])
                + [d for _, d in layers],
            },
            "history": history,
        }
        if architecture == "arm64":
            config["variant"] = "v8"
        return config


def _platform_field(platform: tuple[str, str]) -> dict[str, str]:
    operating_system, architecture = platform
    field_ = {"os": operating_system, "architecture": architecture}
    if architecture == "arm64":
        field_["variant"] = "v8"
    return field_
