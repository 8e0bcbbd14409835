"""Pulling a base image into storage: the manifest for one platform, its config and layers.

Blobs are content-addressed (`docker/blobs/sha256:<hex>`), so a layer already in storage is
never fetched again: re-pulling a base costs one manifest request (two for an index). The last
resolution of each (reference, platform) is remembered, so builds keep working from storage
when the registry is down (Docker Hub outages and rate limits are common).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conda_store_server.images.oci import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, blob_key
from conda_store_server.images.reference import DOCKER_HUB, ImageReference, parse_reference
from conda_store_server.images.registry_client import RegistryClient, RegistryError

if TYPE_CHECKING:
    from conda_store_server.storage import Storage

__all__ = ["BaseImage", "Descriptor", "pull_base_image", "MANIFEST_TYPES", "INDEX_TYPES"]

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
#: Layer media types an OCI manifest may carry, with Docker's names mapped to OCI's (same bytes).
LAYER_TYPES = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar": "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HUB_HOSTS = {"docker.io", "index.docker.io", DOCKER_HUB}


@dataclass(frozen=True)
class Descriptor:
    """A layer of the base image as the new image's manifest lists it."""

    media_type: str
    digest: str
    size: int

    def as_descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass
class BaseImage:
    reference: str
    manifest_digest: str
    config: dict[str, Any]
    layers: list[Descriptor] = field(default_factory=list)
    from_cache: bool = False


def cache_key(reference: ImageReference, platform: tuple[str, str]) -> str:
    text = f"{reference}\n{platform[0]}/{platform[1]}"
    return f"docker/base/{hashlib.sha256(text.encode()).hexdigest()}.json"


def _host(url: str) -> str:
    netloc = urllib.parse.urlsplit(url if "://" in url else f"//{url}").netloc.rpartition("@")[2].lower()
    return DOCKER_HUB if netloc in _HUB_HOSTS else netloc


def _credentials_for(
    reference: ImageReference, credentials: dict[str, tuple[str | None, str | None]] | None
) -> tuple[str | None, str | None]:
    wanted = _host(reference.registry)
    for url, pair in (credentials or {}).items():
        if _host(url) == wanted:
            return pair
    return None, None


def _platform_name(entry: dict[str, Any]) -> str:
    parts = (entry.get("os"), entry.get("architecture"), entry.get("variant"))
    return "/".join(part for part in parts if part)


def pull_base_image(
    storage: Storage,
    reference: str,
    platform: tuple[str, str],
    credentials: dict[str, tuple[str | None, str | None]] | None = None,
    *,
    scratch: Path | None = None,
) -> BaseImage:
    """The base image `reference` for `platform` (os, architecture), its blobs in storage.

    `credentials` maps registry URLs to (username, password); the one for the reference's
    host is used. `scratch` holds layers while they download (default: the system's temp).
    """
    parsed = parse_reference(reference)
    username, password = _credentials_for(parsed, credentials)
    try:
        with RegistryClient(parsed.url, username, password) as client:
            image, config_digest = _pull(client, storage, parsed, reference, platform, scratch)
    except RegistryError as error:
        cached = _from_cache(storage, parsed, reference, platform) if error.transient else None
        if cached is not None:
            return cached
        raise RegistryError(
            f"cannot pull base image {reference} from {parsed.url}: {error}", error.status
        ) from error
    storage.set(
        cache_key(parsed, platform),
        json.dumps(
            {
                "reference": str(parsed),
                "platform": list(platform),
                "manifest_digest": image.manifest_digest,
                "config_digest": config_digest,
                "layers": [layer.as_descriptor() for layer in image.layers],
            },
            sort_keys=True,
        ).encode(),
        "application/json",
    )
    return image


def _pull(
    client: RegistryClient,
    storage: Storage,
    parsed: ImageReference,
    reference: str,
    platform: tuple[str, str],
    scratch: Path | None,
) -> tuple[BaseImage, str]:
    repository = parsed.repository
    manifest = client.get_manifest(repository, parsed.reference, [*INDEX_TYPES, *MANIFEST_TYPES])
    document = _json(manifest.content, f"the manifest of {reference}")
    media_type = manifest.media_type or document.get("mediaType", "")
    if media_type in INDEX_TYPES:
        entry = _select(document, platform, reference)
        manifest = client.get_manifest(repository, entry["digest"], list(MANIFEST_TYPES))
        document = _json(manifest.content, f"the {_platform_name(entry['platform'])} manifest of {reference}")
        media_type = manifest.media_type or document.get("mediaType", "")
    if media_type not in MANIFEST_TYPES:
        raise RegistryError(
            f"registry {client.url}, repository {repository}: {reference} is a {media_type or 'untyped'} "
            f"document, not an image manifest ({', '.join(MANIFEST_TYPES + INDEX_TYPES)})"
        )
    config_digest = (document.get("config") or {}).get("digest", "")
    for digest in [config_digest, *(layer.get("digest", "") for layer in document.get("layers") or [])]:
        if not _DIGEST.fullmatch(str(digest)):
            raise RegistryError(
                f"registry {client.url}, repository {repository}: the manifest of {reference} names "
                f"{digest!r}, not a sha256 digest"
            )
    _fetch(client, storage, repository, config_digest, scratch)
    config = _json(storage.get(blob_key(config_digest)), f"the image config of {reference}")
    found = (config.get("os"), config.get("architecture"))
    if found != tuple(platform):
        raise RegistryError(
            f"registry {client.url}, repository {repository}: {reference} is an image for "
            f"{found[0]}/{found[1]}, not for the {platform[0]}/{platform[1]} asked for"
        )
    layers = []
    for layer in document.get("layers") or []:
        layer_type = LAYER_TYPES.get(layer.get("mediaType", ""))
        if layer_type is None:
            raise RegistryError(
                f"registry {client.url}, repository {repository}: {reference} has a layer of "
                f"unsupported media type {layer.get('mediaType')!r}"
            )
        _fetch(client, storage, repository, layer["digest"], scratch)
        layers.append(Descriptor(layer_type, layer["digest"], int(layer["size"])))
    return BaseImage(reference, manifest.digest, config, layers), config_digest


def _select(index: dict[str, Any], platform: tuple[str, str], reference: str) -> dict[str, Any]:
    entries = [entry for entry in index.get("manifests") or [] if isinstance(entry.get("platform"), dict)]
    matching = [
        entry
        for entry in entries
        if (entry["platform"].get("os"), entry["platform"].get("architecture")) == tuple(platform)
    ]
    if platform[1] == "arm64":  # prefer v8, the variant conda's linux-aarch64 targets
        matching.sort(key=lambda entry: entry["platform"].get("variant") not in (None, "v8"))
    if not matching:
        available = ", ".join(sorted({_platform_name(entry["platform"]) for entry in entries})) or "none"
        raise RegistryError(
            f"the base image {reference} has no {platform[0]}/{platform[1]} image; its platforms: {available}"
        )
    return matching[0]


def _fetch(
    client: RegistryClient, storage: Storage, repository: str, digest: str, scratch: Path | None
) -> None:
    """Download a blob into storage unless storage has it (through a file: layers are large)."""
    key = blob_key(digest)
    if storage.exists(key):
        return
    if scratch is not None:
        Path(scratch).mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=scratch, prefix="blob-")
    os.close(fd)
    try:
        client.fetch_blob(repository, digest, Path(temporary))
        storage.fset(key, temporary, "application/octet-stream")
    finally:
        Path(temporary).unlink(missing_ok=True)


def _json(content: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(content)
    except ValueError as error:
        raise RegistryError(f"{what} is not JSON: {error}") from error
    if not isinstance(document, dict):
        raise RegistryError(f"{what} is not a JSON object")
    return document


def _from_cache(
    storage: Storage, parsed: ImageReference, reference: str, platform: tuple[str, str]
) -> BaseImage | None:
    """The last resolution, when it and every blob it names are in storage."""
    key = cache_key(parsed, platform)
    try:
        if not storage.exists(key):
            return None
        record = json.loads(storage.get(key))
        layers = [
            Descriptor(layer["mediaType"], layer["digest"], int(layer["size"])) for layer in record["layers"]
        ]
        digests = [record["config_digest"], *(layer.digest for layer in layers)]
        if not all(storage.exists(blob_key(digest)) for digest in digests):
            return None
        config = json.loads(storage.get(blob_key(record["config_digest"])))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return BaseImage(reference, record["manifest_digest"], config, layers, from_cache=True)
