"""conda-lock v1 lockfiles: what the original serves and accepts back.

Written with conda-lock's own pydantic models (the format's definition); read back with
py-rattler, which understands conda-lock v1 and yields installable records.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rattler

from conda_store_server.conda_lock_models import HashModel, LockedDependency, Lockfile, LockMeta
from conda_store_server.exception import BuildFailure
from conda_store_server.redact import strip_credentials

if TYPE_CHECKING:
    from conda_store_server.build.pip import PipPackage


def _dependencies(depends: list[str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for depend in depends:
        name = rattler.MatchSpec(depend).name.normalized
        constraint = depend.strip()[len(name) :].strip()
        result[name] = constraint or "*"
    return result


def to_conda_lock(
    records_by_platform: dict[str, list[rattler.RepoDataRecord]],
    channels: list[str],
    content_hash: str,
) -> dict[str, Any]:
    """A conda-lock v1 document (as a JSON-ready dict) for the solved records of each platform."""
    packages = [
        LockedDependency(
            name=record.name.normalized,
            version=str(record.version),
            manager="conda",
            platform=platform,
            dependencies=_dependencies(list(record.depends)),
            url=record.url,
            hash=HashModel(
                md5=record.md5.hex() if record.md5 else None,
                sha256=record.sha256.hex() if record.sha256 else None,
            ),
            build=str(record.build),
            category="main",
            optional=False,
        )
        for platform, records in records_by_platform.items()
        for record in sorted(records, key=lambda r: r.name.normalized)
    ]
    lockfile = Lockfile(
        package=packages,
        metadata=LockMeta(
            content_hash={platform: content_hash for platform in records_by_platform},
            channels=channels,
            platforms=list(records_by_platform),
            sources=["environment.yaml"],
        ),
    )
    return lockfile.dict_for_output()


def from_conda_lock(lock: dict[str, Any]) -> dict[str, list[rattler.RepoDataRecord]]:
    """The conda records of each platform of a conda-lock v1 document.

    Every platform of `metadata.platforms` is present, with no records when the lockfile lists
    no package for it: rattler only knows platforms that have packages, and an environment
    with no dependencies is a valid, empty one, not a missing platform.

    rattler reads only the conda entries. The pip entries are installed by
    `conda_store_server.build.pip`, and py-rattler 0.28 refuses pip entries that conda-lock
    itself writes: a dependency of `"*"` (any version), git packages (no sha256), and others
    that other tools write (dependencies with markers, names with extras).
    """
    conda = [
        package
        for package in lock.get("package") or []
        if not (isinstance(package, dict) and package.get("manager") == "pip")
    ]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "conda-lock.yml"
        path.write_text(json.dumps({**lock, "version": 1, "package": conda}))
        try:
            lockfile = rattler.LockFile.from_path(path)
        except Exception as error:  # rattler raises its own parse errors; the message is the cause
            raise BuildFailure(f"The lockfile could not be read: {error}") from error
    records: dict[str, list[rattler.RepoDataRecord]] = {
        str(platform): [] for platform in lock.get("metadata", {}).get("platforms", [])
    }
    environment = lockfile.default_environment()
    if environment is not None:
        for platform in environment.platforms():
            records[str(platform.name)] = environment.conda_repodata_records_for_platform(platform) or []
    return records


def pip_packages(lock: dict[str, Any], platform: str) -> list[dict[str, Any]]:
    """The `manager: pip` entries of a lockfile for one platform."""
    return [
        package
        for package in lock.get("package", [])
        if package.get("manager") == "pip" and package.get("platform") == platform
    ]


def with_pip_packages(lock: dict[str, Any], platform: str, packages: list[PipPackage]) -> dict[str, Any]:
    """`lock` with the pip packages installed for `platform`, as conda-lock writes them.

    URLs carry no credentials: a lockfile is read by everyone who may read the environment,
    and whoever installs it again brings their own login for the index.
    """
    entries = [_pip_entry(package, platform) for package in sorted(packages, key=lambda p: p.name)]
    return {**lock, "package": [*lock.get("package", []), *entries]}


def _pip_entry(package: PipPackage, platform: str) -> dict[str, Any]:
    """One `manager: pip` entry, validated by conda-lock's model.

    A git package is written as conda-lock writes one: `url` `git+URL@<commit>` and a `source`
    of the same URL (from which `conda-lock install` installs it, rather than by name from an
    index). Its hash is empty, not conda-lock's commit id posing as a sha256: no file of it
    has a hash, and the model requires the field but none of its values.
    """
    url = strip_credentials(package.url)
    entry: dict[str, Any] = {
        "name": package.name,
        "version": package.version,
        "manager": "pip",
        "platform": platform,
        "dependencies": dict(package.dependencies),
        "url": url,
        "hash": {} if package.is_git else {"sha256": package.sha256},
        "category": "main",
        "optional": False,
    }
    if package.is_git:
        entry["source"] = {"type": "url", "url": url}
    validated = LockedDependency.model_validate(entry)
    return validated.model_dump(by_alias=True, exclude_unset=True, exclude_none=True)
