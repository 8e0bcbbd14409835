"""pixi lockfiles (`pixi.lock`, formats 6 and 7): read into conda-lock v1, and written from it.

The service builds, stores and serves conda-lock v1 documents; pixi users hold `pixi.lock`
files. Uploads are converted into the conda-lock v1 shape `build.lockfile.to_conda_lock` writes,
so they meet the same validation and URL rules as conda-lock uploads; a build's stored lockfile
is converted the other way for download. Reading and writing the pixi format is py-rattler's
(`rattler.LockFile`); this module maps between the shapes and says, in a `SpecificationError`,
why a pixi lockfile cannot be used.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import rattler
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from rattler.exceptions import ConversionError
from rattler.lock.package import CondaLockedBinaryPackage, CondaLockedSourcePackage, PypiLockedPackage

from conda_store_server.build.lockfile import to_conda_lock
from conda_store_server.conda_lock_models import HashModel, LockedDependency
from conda_store_server.exception import ConflictError, SpecificationError

__all__ = ["DEFAULT_ENVIRONMENT", "PIXI_VERSIONS", "conda_lock_from_pixi", "pixi_from_conda_lock"]

#: The pixi lock formats accepted: what pixi has written since 2024 (6) and writes now (7).
PIXI_VERSIONS = (6, 7)
#: The environment pixi locks when a workspace names none.
DEFAULT_ENVIRONMENT = "default"
#: A marker that mentions `extra` guards a requirement of an optional feature of the package.
_EXTRA_MARKER = re.compile(r"\bextra\b")
#: libyaml's loader when PyYAML has it: detection parses the whole upload once, up to 16 MiB.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _pixi_document(text: str) -> dict[str, Any] | None:
    """The parsed upload when it is meant as a pixi lockfile, else None.

    A pixi lockfile is a mapping with `environments`, or one whose `version` is a pixi format.
    Text that is not a YAML mapping is left to the conda-lock parser, whose messages say what
    is wrong with it.
    """
    try:
        data = yaml.load(text, Loader=_LOADER)
    except (yaml.YAMLError, RecursionError, UnicodeError):
        return None
    if not isinstance(data, dict):
        return None
    version = data.get("version")
    if "environments" in data or (not isinstance(version, bool) and version in PIXI_VERSIONS):
        return data
    return None


def _read_pixi(text: str) -> rattler.LockFile:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "pixi.lock"
        path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
        try:
            return rattler.LockFile.from_path(path)
        except Exception as error:  # rattler raises its own parse errors; the message is the cause
            raise SpecificationError(f"Invalid pixi lockfile: {error}") from error


def _hex_hashes(package: PypiLockedPackage) -> tuple[str | None, str | None]:
    """(md5, sha256) of a PyPI package; py-rattler 0.28 wraps a missing set of hashes in a
    `PackageHashes` whose properties raise AttributeError."""
    try:
        md5, sha256 = package.hashes.md5, package.hashes.sha256
    except AttributeError:
        return None, None
    return (md5.hex() if md5 else None), (sha256.hex() if sha256 else None)


def _pip_dependencies(package: PypiLockedPackage) -> dict[str, str]:
    """conda-lock's `{name: version constraint}` map of a PyPI package's requirements.

    conda-lock v1 has no room for markers: requirements of optional extras are left out (they
    are not installed with the package, and conda-lock leaves them out too), other markers are
    dropped, and a name whose requirements state different constraints (alternatives for other
    interpreters or platforms) gets none rather than a wrong one. The map is informational:
    PyPI packages are installed from their locked URLs.
    """
    constraints: dict[str, set[str]] = {}
    for text in package.requires_dist:
        try:
            requirement = Requirement(text)
        except InvalidRequirement as error:
            raise SpecificationError(
                f"PyPI package {package.name} has an invalid requirement {text!r} in the pixi "
                f"lockfile: {error}"
            ) from error
        if requirement.marker is not None and _EXTRA_MARKER.search(str(requirement.marker)):
            continue
        constraints.setdefault(requirement.name, set()).add(str(requirement.specifier))
    return {name: next(iter(found)) if len(found) == 1 else "" for name, found in constraints.items()}


def _pip_entry(package: PypiLockedPackage, platform: str) -> dict[str, Any]:
    if "://" not in package.location:
        raise SpecificationError(
            f"PyPI package {package.name} is a local path ({package.location}) in the pixi lockfile: "
            "only packages at a URL can be installed; publish it to an index and lock again"
        )
    md5, sha256 = _hex_hashes(package)
    entry = LockedDependency(
        name=package.name,
        version=package.version,
        manager="pip",
        platform=platform,
        dependencies=_pip_dependencies(package),
        url=package.location,
        hash=HashModel(md5=md5, sha256=sha256),
        category="main",
        optional=False,
    )
    return entry.model_dump(by_alias=True, exclude_none=True)


def _conda_record(package: CondaLockedBinaryPackage) -> rattler.RepoDataRecord:
    try:
        record = package.repo_data_record()
    except ConversionError as error:
        raise SpecificationError(
            f"Conda package {package.name} cannot be located ({package.location}): {error}; "
            "packages must be at a URL or an absolute path"
        ) from error
    if record.md5 is None:
        raise SpecificationError(
            f"Conda package {package.name} ({package.location}) has no md5 hash in the pixi lockfile; "
            "conda-lock v1 lockfiles need one: lock it again with pixi from a channel's repodata"
        )
    return record


def conda_lock_from_pixi(text: str, environment: str | None = None) -> dict[str, Any] | None:
    """The conda-lock v1 document of one environment of a pixi lockfile, or None if `text` is
    not a pixi lockfile (then it is a conda-lock upload, or not a lockfile at all).

    `environment` defaults to pixi's `default`. Each pixi platform becomes the conda-lock
    platform of its subdir; an environment with no package at all covers the lockfile's
    platforms. Raises SpecificationError naming the problem: an unsupported format version,
    an unknown environment (listing those there are), a source package, a local path.
    """
    document = _pixi_document(text)
    if document is None:
        return None
    version = document.get("version")
    if "version" not in document:
        raise SpecificationError(
            f"The pixi lockfile has no `version`; formats {list(PIXI_VERSIONS)} are accepted"
        )
    if isinstance(version, bool) or version not in PIXI_VERSIONS:
        raise SpecificationError(
            f"Unsupported pixi lockfile version {version!r}: formats {list(PIXI_VERSIONS)} are accepted; "
            "`pixi lock` with a recent pixi rewrites it"
        )
    lockfile = _read_pixi(text)
    name = environment or DEFAULT_ENVIRONMENT
    chosen = lockfile.environment(name)
    if chosen is None:
        names = sorted(found for found, _ in lockfile.environments())
        raise SpecificationError(f"The pixi lockfile has no environment {name!r}; it has {names}")

    conda: dict[str, list[rattler.RepoDataRecord]] = {}
    pip: list[dict[str, Any]] = []
    origin: dict[str, str] = {}
    for platform in chosen.platforms() or lockfile.platforms():
        subdir = str(platform.subdir)
        if subdir in origin:
            raise SpecificationError(
                f"Environment {name!r} has platforms {origin[subdir]!r} and {platform.name!r} for the same "
                f"subdir {subdir}; a conda-lock lockfile holds one per subdir: upload one of them"
            )
        origin[subdir] = platform.name
        conda[subdir] = []
        for package in chosen.packages(platform) or []:
            if isinstance(package, CondaLockedSourcePackage):
                raise SpecificationError(
                    f"Conda package {package.name} is built from source ({package.location}) in the pixi "
                    "lockfile: only built packages can be installed; publish it to a channel and lock again"
                )
            if isinstance(package, PypiLockedPackage):
                pip.append(_pip_entry(package, subdir))
            else:
                conda[subdir].append(_conda_record(package))

    channels = [str(channel).rstrip("/") for channel in chosen.channels()]
    content_hash = hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()
    lock = to_conda_lock(conda, channels, content_hash)
    lock["package"].extend(pip)
    lock["metadata"]["sources"] = ["pixi.lock"]
    return lock


def _readable_pip_entry(package: Any) -> Any:
    """A pip entry as py-rattler 0.28 reads conda-lock: it refuses the `"*"` that conda-lock
    writes for an unconstrained requirement, and takes `""` for the same meaning."""
    if not isinstance(package, dict) or package.get("manager") != "pip":
        return package
    dependencies = package.get("dependencies") or {}
    return {**package, "dependencies": {n: "" if c == "*" else c for n, c in dependencies.items()}}


def pixi_from_conda_lock(lock: dict[str, Any]) -> str:
    """The pixi lockfile (format 7, written by py-rattler) of a conda-lock v1 document.

    One `default` environment with the document's channels, and its conda and PyPI packages
    for each platform: py-rattler reads conda-lock v1 (PyPI entries included, with their
    sha256 and requirements) and writes its own format. A document without any package would
    lose its platforms that way (rattler knows only platforms that have packages), so its
    platforms are declared explicitly. Raises ConflictError when rattler cannot read it.
    """
    metadata = lock.get("metadata") or {}
    document = {
        **lock,
        "version": 1,
        "package": [_readable_pip_entry(package) for package in lock.get("package") or []],
    }
    with tempfile.TemporaryDirectory() as directory:
        source = Path(directory) / "conda-lock.yml"
        source.write_text(json.dumps(document))
        try:
            lockfile = rattler.LockFile.from_path(source)
            if not lockfile.platforms():
                lockfile = rattler.LockFile([rattler.LockPlatform(p) for p in metadata.get("platforms", [])])
                channels = [c["url"] if isinstance(c, dict) else c for c in metadata.get("channels", [])]
                lockfile.set_channels(DEFAULT_ENVIRONMENT, [rattler.LockChannel(c) for c in channels])
            target = Path(directory) / "pixi.lock"
            lockfile.to_path(target)
        except Exception as error:  # rattler's own errors; the message is the cause
            raise ConflictError(f"The lockfile cannot be written as a pixi lockfile: {error}") from error
        return target.read_text()
