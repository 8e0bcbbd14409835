"""The links a page shows for a build's artifacts: the API routes that serve them."""

from __future__ import annotations

from dataclasses import dataclass

from conda_store_server.db.models import Build, BuildArtifactType

__all__ = ["ArtifactLink", "artifact_links"]

#: artifact type -> (label, path under /api/v1/build/{id}/); in the order pages list them.
ROUTES: dict[BuildArtifactType, tuple[str, str]] = {
    BuildArtifactType.LOCKFILE: ("Lockfile", "lockfile/"),
    BuildArtifactType.YAML: ("YAML", "yaml/"),
    BuildArtifactType.CONDA_PACK: ("Archive (conda-pack)", "archive/"),
    BuildArtifactType.DOCKER_MANIFEST: ("Image", "docker/"),
    BuildArtifactType.CONSTRUCTOR_INSTALLER: ("Installer", "installer/"),
    BuildArtifactType.LOGS: ("Log", "logs/"),
}


@dataclass(frozen=True)
class ArtifactLink:
    kind: str
    label: str
    href: str


def artifact_links(
    prefix: str, build: Build, kinds: tuple[BuildArtifactType, ...] = tuple(ROUTES)
) -> list[ArtifactLink]:
    """A link per artifact the build has (of `kinds`): an image link only when there is an image."""
    present = {artifact.artifact_type for artifact in build.build_artifacts}
    base = f"{prefix}/api/v1/build/{build.id}/"
    links = [
        ArtifactLink(kind.value, ROUTES[kind][0], base + ROUTES[kind][1])
        for kind in kinds
        if kind in present and kind in ROUTES
    ]
    if BuildArtifactType.LOCKFILE in present and BuildArtifactType.LOCKFILE in kinds:
        links.insert(1, ArtifactLink("PIXI_LOCK", "pixi.lock", base + "pixi.lock"))
    return links
