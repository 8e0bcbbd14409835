"""`ContainerRegistry`: the seed's options for pushing container images to registries.

Configuration only, so that a `conda_store_config.py` written for the original loads: this
release builds no container images, so nothing is pushed and these options have no effect yet.
"""

from __future__ import annotations

from typing import Any

from traitlets import Callable, Dict
from traitlets.config import LoggingConfigurable

__all__ = ["ContainerRegistry"]


def default_image_name(registry: Any, build: Any) -> str:
    """`<registry>/<namespace>/<environment>`, the original's naming."""
    environment = build.environment
    return f"{registry}/{environment.namespace.name}/{environment.name}"


def default_image_tag(registry: Any, build: Any) -> str:
    """The build's key, so every build has a tag of its own."""
    from conda_store_server.build.keys import build_key, identity_of

    return build_key(identity_of(build))


class ContainerRegistry(LoggingConfigurable):
    container_registries = Dict(
        {},
        config=True,
        help="Registries to push each build's container image to: {registry URL: callable taking "
        "the URL and returning a client with its credentials}. Accepted for compatibility: this "
        "release builds no container images, so nothing is pushed yet.",
    )
    container_registry_image_name = Callable(
        default_image_name,
        config=True,
        help="Callable (registry, build) -> the image name pushed to that registry. Default: "
        "`<registry>/<namespace>/<environment>`. No effect yet (no images are built).",
    )
    container_registry_image_tag = Callable(
        default_image_tag,
        config=True,
        help="Callable (registry, build) -> the image tag pushed to that registry. Default: the "
        "build key. No effect yet (no images are built).",
    )
