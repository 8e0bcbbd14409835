"""The names images are made of: OCI and Docker media types, digests, and the storage keys.

Every module of `images/` (and the /v2/ routes) writes or reads these; one definition keeps the
builder, the puller, the pusher and the registry routes agreeing on them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def sha256_digest(content: bytes) -> str:
    return f"sha256:{hashlib.sha256(content).hexdigest()}"


def canonical_json(document: dict[str, Any]) -> bytes:
    """One serialisation for one document, so equal images have equal digests."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def blob_key(digest: str) -> str:
    """Every blob (layer, config, manifest, index) is stored once, under its digest."""
    return f"docker/blobs/{digest}"


def manifest_key(build_key: str) -> str:
    """The build's top-level manifest or index (the key the original used)."""
    return f"docker/manifest/{build_key}"


def failure_key(build_key: str) -> str:
    """Why a build's image step failed, for `GET /api/v1/build/{id}/docker/`."""
    return f"docker/failure/{build_key}.txt"
