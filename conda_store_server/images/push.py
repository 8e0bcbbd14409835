"""Pushing a stored image to a registry: the blobs it lacks, the manifests, then the tag.

Blobs are checked with HEAD first, so pushing a second build of an environment sends only its
new layers. Registries fail transiently (timeouts, 5xx, rate limits): each step is retried a
bounded number of times with a short backoff, every failed attempt logged with the registry
named and its credentials masked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from conda_store_server.images.oci import blob_key, sha256_digest
from conda_store_server.images.registry_client import RegistryClient, RegistryError
from conda_store_server.redact import mask_credentials

if TYPE_CHECKING:
    from conda_store_server.storage import Storage

__all__ = ["push_image"]

INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
T = TypeVar("T")


def push_image(
    client: RegistryClient,
    repository: str,
    tag: str,
    storage: Storage,
    manifest_key_or_bytes: str | bytes,
    *,
    attempts: int = 3,
    log: Callable[[str], None],
    backoff: float = 0.5,
) -> str:
    """Push the image whose top-level manifest (or index) is `manifest_key_or_bytes` (its
    bytes, or its storage key) to `repository:tag`; returns the digest the tag points to."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    if isinstance(manifest_key_or_bytes, bytes):
        content = manifest_key_or_bytes
    else:
        content = storage.get(manifest_key_or_bytes)
    where = f"{mask_credentials(client.url)}/{repository}"

    def attempt(what: str, action: Callable[[], T]) -> T:
        for number in range(1, attempts + 1):
            try:
                return action()
            except RegistryError as error:
                message = mask_credentials(str(error))
                log(f"push to {where}: {what} failed (attempt {number} of {attempts}): {message}")
                if number == attempts or not error.transient:
                    raise RegistryError(
                        f"cannot push {what} to {where} after {number} attempt(s): {message}", error.status
                    ) from error
                time.sleep(backoff * 2 ** (number - 1))
        raise AssertionError("unreachable")

    document, media_type = _document(content, "the image's top-level manifest")
    if media_type in INDEX_TYPES:
        for entry in document.get("manifests") or []:
            manifest = _blob_bytes(storage, entry["digest"])
            child, child_type = _document(manifest, f"the manifest {entry['digest']}")
            _push_blobs(client, repository, storage, child, attempt)
            attempt(
                f"manifest {entry['digest']}",
                lambda m=manifest, t=child_type, d=entry["digest"]: client.put_manifest(repository, d, m, t),
            )
    else:
        _push_blobs(client, repository, storage, document, attempt)
    digest = attempt(f"manifest {tag}", lambda: client.put_manifest(repository, tag, content, media_type))
    log(f"push to {where}: {tag} is {digest}")
    return digest


def _document(content: bytes, what: str) -> tuple[dict[str, Any], str]:
    try:
        document = json.loads(content)
        media_type = document["mediaType"]
    except (ValueError, TypeError, KeyError) as error:
        raise RegistryError(f"{what} is not a manifest with a mediaType: {error}") from error
    if media_type not in INDEX_TYPES + MANIFEST_TYPES:
        raise RegistryError(f"{what} has media type {media_type!r}, which is neither a manifest nor an index")
    return document, media_type


def _push_blobs(
    client: RegistryClient,
    repository: str,
    storage: Storage,
    manifest: dict[str, Any],
    attempt: Callable[[str, Callable[[], Any]], Any],
) -> None:
    for descriptor in [manifest.get("config") or {}, *(manifest.get("layers") or [])]:
        digest = descriptor.get("digest", "")
        if attempt(f"check of blob {digest}", lambda d=digest: client.has_blob(repository, d)):
            continue
        source = _blob_source(storage, digest)
        attempt(f"blob {digest}", lambda d=digest, s=source: client.upload_blob(repository, d, s))


def _blob_source(storage: Storage, digest: str) -> Path | bytes:
    """The file behind the blob when storage is local (streamed), else its bytes."""
    key = blob_key(digest)
    path = storage.local_path(key)
    if path is not None and Path(path).is_file():
        return Path(path)
    return _blob_bytes(storage, digest)


def _blob_bytes(storage: Storage, digest: str) -> bytes:
    key = blob_key(digest)
    if not storage.exists(key):
        raise RegistryError(f"the image's blob {digest} is not in storage ({key})")
    content = storage.get(key)
    if sha256_digest(content) != digest:
        raise RegistryError(f"the stored blob {key} does not match its digest")
    return content
