"""`ContainerRegistry` and `Registry`: where each build's container image is pushed, and as what.

The image step (`conda_store_server.images.step`) reads these options after it has stored a
build's image; the pushing itself is `conda_store_server.images.push`.
"""

from __future__ import annotations

from typing import Any

from traitlets import Callable, Dict
from traitlets.config import LoggingConfigurable

__all__ = ["ContainerRegistry", "Registry"]


class Registry:
    """A registry and its credentials, as `python_docker.registry.Registry` is constructed in
    the seed's example configuration (`lambda url: Registry(url, username=..., password=...)`).

    Plain data: nothing is contacted until an image is pushed, so a configuration loads
    offline; the password never shows in its repr (configurations get printed and logged).
    """

    def __init__(self, url: str, username: str | None = None, password: str | None = None) -> None:
        self.url = url
        self.username = username
        self.password = password

    def __repr__(self) -> str:
        from conda_store_server.redact import mask_credentials

        password = None if self.password is None else "****"
        return f"Registry({mask_credentials(self.url)!r}, username={self.username!r}, password={password!r})"


def default_image_name(registry: Any, build: Any) -> str:
    """`<namespace>/<environment>`: the repository the image is pushed to on that registry."""
    environment = build.environment
    return f"{environment.namespace.name}/{environment.name}"


def default_image_tag(registry: Any, build: Any) -> str:
    """The build's key, so every build has a tag of its own."""
    from conda_store_server.build.keys import build_key, identity_of

    return build_key(identity_of(build))


class ContainerRegistry(LoggingConfigurable):
    container_registries = Dict(
        {},
        config=True,
        help="Registries to push each build's container image to (when DOCKER_MANIFEST is in "
        "build_artifacts): {registry URL: callable taking the URL and returning an object with "
        "`url`, `username` and `password`, such as conda_store_server.registry.Registry}. Only "
        "blobs the registry lacks are sent; a failed push is logged in the build's log and "
        "retried a few times. The same credentials are used to pull the base image from it.",
    )
    container_registry_image_name = Callable(
        default_image_name,
        config=True,
        help="Callable (registry, build) -> the repository the image is pushed to on that "
        "registry. Default: `<namespace>/<environment>`.",
    )
    container_registry_image_tag = Callable(
        default_image_tag,
        config=True,
        help="Callable (registry, build) -> the tag the image is pushed as. Default: the build key.",
    )
