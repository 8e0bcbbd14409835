"""What the registry read side (`/v2/`) needs from the database and storage, without HTTP.

Every function here is synchronous database or storage work: the routes run them in the thread
pool. A problem a registry client must see is raised as `RegistryError`, which carries the OCI
distribution error code and HTTP status, so the routes only translate it into a response.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from conda_store_server.build.keys import build_id_from_key, build_key, identity_of
from conda_store_server.db.models import (
    Build,
    BuildArtifact,
    BuildArtifactType,
    BuildStatus,
    Environment,
    Namespace,
)
from conda_store_server.images.oci import OCI_INDEX, OCI_MANIFEST, blob_key, sha256_digest
from conda_store_server.specification import CondaSpecification, validation_message

if TYPE_CHECKING:
    from conda_store_server.app import CondaStore

#: The namespace of images made on demand from package specs in the image name.
DYNAMIC_NAMESPACE = "conda-store-dynamic"
#: Registries refuse larger manifests (the distribution spec's recommended limit): a digest of a
#: layer asked for as a manifest is answered without reading the layer.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: The largest page of tags/list (a client asking for more gets this many and a next link).
MAX_TAGS_PAGE = 1000

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_BUILD_ID = re.compile(r"[0-9]{1,10}")
#: Tags are `latest`, build ids and build keys (v1 keys end in the environment's name, so they
#: can hold any character of a name and be longer than the 128 of an OCI tag).
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9\-+_@$&?^~.=]{0,399}")
_OPERATORS = ((".ge.", ">="), (".le.", "<="), (".gt.", ">"), (".lt.", "<"), (".eq.", "=="))
_PACKAGE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


class RegistryError(Exception):
    """An error answer of the registry: `{"errors": [{"code", "message", "detail"}]}`."""

    def __init__(self, code: str, status: int, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.detail = detail


def name_unknown(name: str) -> RegistryError:
    return RegistryError(
        "NAME_UNKNOWN", 404, f"repository {name} is not known to this registry", {"name": name}
    )


def manifest_unknown(reference: str, detail: str) -> RegistryError:
    return RegistryError("MANIFEST_UNKNOWN", 404, f"manifest {reference} is unknown", detail)


def blob_unknown(digest: str, detail: str) -> RegistryError:
    return RegistryError("BLOB_UNKNOWN", 404, f"blob {digest} is unknown", detail)


def parse_digest(text: str) -> str:
    """Only sha256 digests are stored; anything else is the client's mistake (400), not a miss."""
    if not _DIGEST.fullmatch(text):
        raise RegistryError(
            "DIGEST_INVALID",
            400,
            f"invalid digest {text[:100]!r}: expected sha256: followed by 64 lowercase hex digits",
        )
    return text


def parse_reference(text: str) -> str:
    """A manifest reference: a digest (anything with a colon is checked as one) or a tag."""
    if ":" in text:
        return parse_digest(text)
    if not _TAG.fullmatch(text):
        raise RegistryError(
            "MANIFEST_INVALID",
            400,
            f"invalid manifest reference {text[:100]!r}: expected latest, a build id, a build key "
            "or a sha256: digest",
        )
    return text


# ------------------------------------------------------------------------------ names
def find_environment(session: Session, namespace: str, name: str) -> Environment:
    """A live environment of a live namespace; a deleted one is as unknown as a missing one."""
    environment = session.scalar(
        select(Environment)
        .join(Namespace, Environment.namespace_id == Namespace.id)
        .where(
            Namespace.name == namespace,
            Environment.name == name,
            Environment.deleted_on.is_(None),
            Namespace.deleted_on.is_(None),
        )
        .options(selectinload(Environment.namespace))
    )
    if environment is None:
        raise name_unknown(f"{namespace}/{name}")
    return environment


def _load_build(session: Session, build_id: int) -> Build | None:
    return session.scalar(
        select(Build)
        .where(Build.id == build_id)
        .options(
            selectinload(Build.specification),
            selectinload(Build.build_artifacts),
            selectinload(Build.environment).selectinload(Environment.namespace),
        )
    )


def resolve_tag(session: Session, environment: Environment, reference: str) -> Build:
    """The live build of this environment a tag names: `latest`, a build id or a build key."""
    label = f"{environment.namespace.name}/{environment.name}:{reference}"
    build: Build | None = None
    if reference == "latest":
        if environment.current_build_id is None:
            raise manifest_unknown(reference, f"{label}: the environment has no current build yet")
        build = _load_build(session, environment.current_build_id)
    elif _BUILD_ID.fullmatch(reference):
        build = _load_build(session, int(reference))
    else:
        candidate = build_id_from_key(reference)
        if candidate is not None:
            build = _load_build(session, candidate)
        else:  # v3 keys are cached in build.hash
            build_id = session.scalar(
                select(Build.id).where(Build.hash == reference, Build.environment_id == environment.id)
            )
            build = _load_build(session, build_id) if build_id is not None else None
        if build is not None and build_key(identity_of(build)) != reference:
            build = None
    if build is None or build.environment_id != environment.id or build.deleted_on is not None:
        raise manifest_unknown(reference, f"{label}: no such live build of this environment")
    return build


def manifest_key_of(build: Build) -> str | None:
    """The key of the build's top-level manifest, or None when the build has no image."""
    for artifact in build.build_artifacts:
        if artifact.artifact_type == BuildArtifactType.DOCKER_MANIFEST:
            return artifact.key
    return None


def no_image_detail(build: Build) -> str:
    detail = (
        f"build {build.id} has no image (DOCKER_MANIFEST is not in build_artifacts, or the image "
        "step failed: see its log)"
    )
    if not build.status.is_final:
        detail = f"build {build.id} is {build.status.value}: its image is made after the environment is built"
    elif build.status != BuildStatus.COMPLETED:
        detail = f"build {build.id} is {build.status.value}: {build.status_info or 'see its log'}"
    return detail


def tag_manifest_key(session: Session, environment: Environment, reference: str) -> str:
    build = resolve_tag(session, environment, reference)
    key = manifest_key_of(build)
    if key is None:
        raise manifest_unknown(reference, no_image_detail(build))
    return key


def environment_has_blob(session: Session, environment: Environment, digest: str, *, manifests: bool) -> bool:
    """Does a live build of THIS environment reference the blob? Content addressing shares blobs
    between environments; the check keeps a reader of one from fetching another's by digest."""
    types = [BuildArtifactType.DOCKER_BLOB]
    if manifests:
        types.append(BuildArtifactType.DOCKER_MANIFEST)
    found = session.scalar(
        select(BuildArtifact.id)
        .join(Build, BuildArtifact.build_id == Build.id)
        .where(
            Build.environment_id == environment.id,
            Build.deleted_on.is_(None),
            BuildArtifact.key == blob_key(digest),
            BuildArtifact.artifact_type.in_(types),
        )
        .limit(1)
    )
    return found is not None


# ------------------------------------------------------------------------------ manifests
@dataclass(frozen=True)
class Manifest:
    content: bytes
    media_type: str
    digest: str


def read_manifest(conda_store: CondaStore, key: str, reference: str) -> Manifest:
    """The stored bytes as they are (their digest is what clients verify), typed by their JSON."""
    storage = conda_store.storage
    path = storage.local_path(key)
    if path is not None and path.is_file() and path.stat().st_size > MAX_MANIFEST_BYTES:
        raise manifest_unknown(reference, f"{reference} is not a manifest (a blob of more than 4 MiB)")
    if not storage.exists(key):
        raise manifest_unknown(reference, f"the manifest's object {key} is missing from storage")
    content = storage.get(key)
    try:
        document = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        raise manifest_unknown(reference, f"{reference} is not a manifest (not JSON)") from None
    media_type = document.get("mediaType") if isinstance(document, dict) else None
    if not isinstance(media_type, str) or not media_type:
        if not isinstance(document, dict) or ("layers" not in document and "manifests" not in document):
            raise manifest_unknown(reference, f"{reference} is not a manifest (no mediaType)")
        media_type = OCI_INDEX if "manifests" in document else OCI_MANIFEST
    return Manifest(content, media_type, sha256_digest(content))


def digest_manifest_key(session: Session, environment: Environment, digest: str) -> str:
    if not environment_has_blob(session, environment, digest, manifests=True):
        raise manifest_unknown(
            digest, f"no live build of {environment.namespace.name}/{environment.name} references {digest}"
        )
    return blob_key(digest)


# ------------------------------------------------------------------------------ tags
def list_tags(session: Session, environment: Environment) -> list[str]:
    """`latest` when the current build has an image, then every live imaged build's id and key."""
    builds = session.scalars(
        select(Build)
        .join(BuildArtifact, BuildArtifact.build_id == Build.id)
        .where(
            Build.environment_id == environment.id,
            Build.deleted_on.is_(None),
            BuildArtifact.artifact_type == BuildArtifactType.DOCKER_MANIFEST,
        )
        .options(
            selectinload(Build.specification),
            selectinload(Build.environment).selectinload(Environment.namespace),
        )
        .order_by(Build.id)
        .distinct()
    ).all()
    tags: set[str] = set()
    for build in builds:
        tags.add(str(build.id))
        tags.add(build_key(identity_of(build)))
        if build.id == environment.current_build_id:
            tags.add("latest")
    return sorted(tags)


def page_of_tags(tags: list[str], n: int | None, last: str | None) -> tuple[list[str], bool]:
    """The spec's pagination: tags after `last` in lexical order, at most `n`; and whether more remain."""
    remaining = [tag for tag in tags if last is None or tag > last]
    if n is None:
        n = MAX_TAGS_PAGE
    return remaining[: min(n, MAX_TAGS_PAGE)], len(remaining) > min(n, MAX_TAGS_PAGE)


# ------------------------------------------------------------------------------ images on demand
def parse_dynamic_specs(parts: list[str]) -> list[str]:
    """`python.ge.3.10` -> `python>=3.10`: image names cannot hold `<`, `>` or `=`."""
    if not parts:
        raise RegistryError(
            "NAME_INVALID", 400, f"{DYNAMIC_NAMESPACE}/ must be followed by at least one package spec"
        )
    specs = []
    for part in parts:
        spec = part
        for written, operator in _OPERATORS:
            spec = spec.replace(written, operator)
        specs.append(spec)
    return sorted(set(specs))


def dynamic_environment_name(specs: list[str]) -> str:
    """Stable for a set of specs (order and repeats do not matter), readable, and a valid name."""
    unique = sorted(set(specs))
    digest = hashlib.sha256("\n".join(unique).encode()).hexdigest()[:16]
    names = []
    for spec in unique:
        match = _PACKAGE_NAME.match(spec)
        if match:
            names.append(match.group(0))
    readable = "-".join(names)[:100].strip("-.")
    return f"{readable}-{digest}" if readable else f"specs-{digest}"


def dynamic_specification(specs: list[str]) -> CondaSpecification:
    """Each spec is checked as a specification's dependency is; a bad one is NAME_INVALID."""
    try:
        return CondaSpecification.model_validate(
            {"name": dynamic_environment_name(specs), "channels": [], "dependencies": specs}
        )
    except ValidationError as error:
        raise RegistryError(
            "NAME_INVALID", 400, f"invalid package spec in the image name: {validation_message(error)}"
        ) from None


def reusable_build(session: Session, environment: Environment) -> Build | None:
    """The newest live build that is or will be usable (a failed one too: it is reported, not
    silently rebuilt by every pull); None when the environment has none."""
    build_id = session.scalar(
        select(Build.id)
        .where(
            Build.environment_id == environment.id,
            Build.deleted_on.is_(None),
            Build.status != BuildStatus.CANCELED,
        )
        .order_by(Build.id.desc())
        .limit(1)
    )
    return _load_build(session, build_id) if build_id is not None else None


def ensure_image_artifacts(session: Session, conda_store: CondaStore, namespace: str, name: str) -> None:
    """Builds read `build_artifacts` from the settings of their environment: an environment-level
    entry makes this environment's builds produce an image whatever the deployment default."""
    from conda_store_server.settings import get_settings, set_settings

    wanted = list(get_settings(session, conda_store, namespace, name).build_artifacts)
    if BuildArtifactType.DOCKER_MANIFEST.value not in wanted:
        set_settings(
            session,
            conda_store,
            {"build_artifacts": [*wanted, BuildArtifactType.DOCKER_MANIFEST.value]},
            namespace,
            name,
        )


@dataclass(frozen=True)
class BuildState:
    build_id: int
    status: BuildStatus
    status_info: str | None
    manifest_key: str | None


def build_state(conda_store: CondaStore, build_id: int) -> BuildState:
    """What a waiting pull needs to know, in a short session of its own per poll."""
    with conda_store.session() as session:
        build = _load_build(session, build_id)
        if build is None or build.deleted_on is not None:
            return BuildState(build_id, BuildStatus.CANCELED, f"build {build_id} was deleted", None)
        return BuildState(build.id, build.status, build.status_info, manifest_key_of(build))
