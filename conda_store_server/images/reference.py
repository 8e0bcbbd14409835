"""Image references as docker reads them, and the container platform of a conda subdir.

A base image is named the way users write it for docker (`debian:bookworm-slim`,
`ghcr.io/org/img@sha256:...`); the registry client needs the host, the repository and the tag
or digest separately, with Docker Hub's implicit host and `library/` namespace made explicit.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = ["ImageReference", "container_platform", "parse_reference", "is_loopback_host", "DOCKER_HUB"]

#: Docker Hub's registry API host; `docker.io` and `index.docker.io` are names of it.
DOCKER_HUB = "registry-1.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", DOCKER_HUB}

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::[0-9]{1,5})?")

_PLATFORMS = {
    "linux-64": ("linux", "amd64"),
    "linux-aarch64": ("linux", "arm64"),
    "linux-ppc64le": ("linux", "ppc64le"),
}


@dataclass(frozen=True)
class ImageReference:
    """`registry` is host[:port], `reference` a tag or a `sha256:` digest."""

    registry: str
    repository: str
    reference: str

    @property
    def is_digest(self) -> bool:
        return self.reference.startswith("sha256:")

    @property
    def url(self) -> str:
        """Plain HTTP for loopback registries (as docker allows them), HTTPS for any other."""
        host = self.registry.rpartition(":")[0] if _has_port(self.registry) else self.registry
        scheme = "http" if is_loopback_host(host) else "https"
        return f"{scheme}://{self.registry}"

    def __str__(self) -> str:
        separator = "@" if self.is_digest else ":"
        return f"{self.registry}/{self.repository}{separator}{self.reference}"


def _has_port(host: str) -> bool:
    return bool(re.search(r":[0-9]+$", host)) and not host.endswith("]")


def is_loopback_host(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (brackets allowed), with no port."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_reference(text: str) -> ImageReference:
    """`[host[:port]/]name[:tag][@sha256:hex]`, with docker's defaults (Docker Hub, `latest`).

    The first component is a registry host when it has a dot or a port or is `localhost`, as
    in docker; a digest wins over a tag given beside it (the digest is what is pulled).
    """
    if not isinstance(text, str) or not text or text != text.strip() or "://" in text:
        raise ValueError(f"invalid image reference {text!r}: expected [registry/]name[:tag][@sha256:digest]")
    remainder, _, digest = text.partition("@")
    if digest and not _DIGEST.fullmatch(digest):
        raise ValueError(f"invalid image reference {text!r}: the digest must be sha256: and 64 hex digits")
    first, slash, rest = remainder.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, path = first, rest
        if not _HOST.fullmatch(registry):
            raise ValueError(f"invalid image reference {text!r}: bad registry host {registry!r}")
    else:
        registry, path = "docker.io", remainder
    name, colon, tag = path.rpartition(":") if ":" in path.rpartition("/")[2] else (path, "", "")
    if colon and not _TAG.fullmatch(tag):
        raise ValueError(f"invalid image reference {text!r}: bad tag {tag!r}")
    components = name.split("/")
    if not name or not all(_COMPONENT.fullmatch(component) for component in components):
        raise ValueError(
            f"invalid image reference {text!r}: the repository name {name!r} must be lowercase "
            "letters, digits and separators (. _ -), in components split by /"
        )
    if registry.lower() in _HUB_ALIASES:
        registry = DOCKER_HUB
        if len(components) == 1:
            name = f"library/{name}"
    return ImageReference(registry=registry, repository=name, reference=digest or tag or "latest")


def container_platform(conda_subdir: str) -> tuple[str, str] | None:
    """(os, architecture) of the OCI platform a conda subdir runs on, None when there is none."""
    return _PLATFORMS.get(conda_subdir)
