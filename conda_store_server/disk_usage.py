"""Bytes on disk of build prefixes, measured once per build and summed per namespace by SQL.

Walking prefixes on every usage request cannot scale (10,000 environments), and summing each
build's size counts a file hard-linked into many prefixes (the shared package cache) many times.
So when a build completes its prefix is walked once and its files are split into groups, stored
as `BuildStorageGroup` rows:

- `private:<build id>`: the files only this prefix holds (one link), counted for this build;
- one group per owner (conda package, pip distribution, or `unowned`) of its hard-linked files,
  keyed by a digest of their (device, inode) pairs. Every prefix that links the same cached
  files computes the same key, so a namespace's bytes are the sum, over its distinct keys, of
  the group's bytes: each inode counted once, by one indexed aggregate query.

A file is counted at its apparent size (`st_size`), as the installed size of a build is.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import ColumnElement, and_, case, delete, func, insert, select
from sqlalchemy.orm import Session

from conda_store_server.db.models import Build, BuildStatus, BuildStorageGroup, Environment, Namespace
from conda_store_server.prefix_files import CondaFiles, FileStats, entries, normalised

__all__ = [
    "NamespaceBytes",
    "measure_prefix",
    "namespace_bytes",
    "record_build_storage",
]

PRIVATE_PREFIX = "private:"
UNOWNED = "unowned"


@dataclass(frozen=True)
class NamespaceBytes:
    """Bytes of a namespace's builds: `live` on disk now, `archived` freed by archiving (what
    restoring every archived build would take again), hard links counted once in each."""

    live: int = 0
    archived: int = 0


def _conda_files(root: str) -> CondaFiles:
    found: CondaFiles = {}
    for meta in sorted(Path(root, "conda-meta").glob("*.json")):
        try:
            recorded = json.loads(meta.read_bytes()).get("files", [])
            found[meta.stem] = [normalised(relative) for relative in recorded]
        except (OSError, ValueError, AttributeError, TypeError):
            continue
    return found


def _owners(root: str, conda_files: CondaFiles | None) -> dict[str, str]:
    """Path (relative to the prefix) -> the conda package or pip distribution that installed it."""
    owners: dict[str, str] = {}
    for package, files in (_conda_files(root) if conda_files is None else conda_files).items():
        owner = f"conda:{package}"
        for relative in files:
            owners.setdefault(relative, owner)
    for record in Path(root).glob("lib/python*/site-packages/*.dist-info/RECORD"):
        site_packages = os.path.relpath(record.parent.parent, root)
        owner = f"pip:{record.parent.name}"
        try:
            lines = record.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            path = line.rsplit(",", 2)[0] if line.count(",") >= 2 else line
            if path:
                owners.setdefault(os.path.normpath(f"{site_packages}/{path}"), owner)
    return owners


def _regular_files(root: str) -> FileStats:
    found: FileStats = []
    for relative, entry in entries(root):
        if entry.is_file(follow_symlinks=False):
            try:
                found.append((relative, entry.stat(follow_symlinks=False)))
            except OSError:
                continue
    return found


def measure_prefix(
    prefix: str, files: FileStats | None = None, conda_files: CondaFiles | None = None
) -> tuple[int, dict[str, int]]:
    """(private bytes, {group key: bytes}) of a prefix's regular files, each inode once.

    Symbolic links and directories are not counted; a missing prefix measures nothing. `files`
    are the prefix's regular files as a walk just found them (`permissions.apply_ownership`
    returns them), so that a build walks its prefix once; `conda_files`, what its conda
    packages installed as the install's path check read it (`install.install` returns them).
    Without them the prefix is walked and its conda-meta read.
    """
    root = os.path.realpath(prefix)
    if not os.path.isdir(root):
        return 0, {}
    owners = _owners(root, conda_files)
    seen: set[tuple[int, int]] = set()
    private = 0
    shared: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for relative, stat in _regular_files(root) if files is None else files:
        inode = (stat.st_dev, stat.st_ino)
        if inode in seen:
            continue
        seen.add(inode)
        if stat.st_nlink <= 1:
            private += stat.st_size
        else:
            shared[owners.get(relative, UNOWNED)].append((stat.st_dev, stat.st_ino, stat.st_size))
    groups: dict[str, int] = {}
    for files in shared.values():
        files.sort()
        digest = hashlib.sha256(b"".join(f"{dev}:{ino}\n".encode() for dev, ino, _ in files))
        key = digest.hexdigest()
        groups[key] = groups.get(key, 0) + sum(size for _, _, size in files)
    return private, groups


def record_build_storage(
    session: Session,
    build_id: int,
    prefix: str,
    files: FileStats | None = None,
    conda_files: CondaFiles | None = None,
) -> int:
    """Measure the build's prefix and store its groups (replacing earlier ones); its bytes."""
    private, groups = measure_prefix(prefix, files, conda_files)
    rows = [{"build_id": build_id, "key": key, "bytes": size} for key, size in groups.items()]
    rows.append({"build_id": build_id, "key": f"{PRIVATE_PREFIX}{build_id}", "bytes": private})
    session.execute(delete(BuildStorageGroup).where(BuildStorageGroup.build_id == build_id))
    session.execute(insert(BuildStorageGroup), rows)
    return private + sum(groups.values())


def namespace_bytes(
    session: Session, namespace: str | None = None, where: ColumnElement[bool] | None = None
) -> dict[str, NamespaceBytes]:
    """Bytes per namespace name (of one namespace only when given), by one aggregate query.

    Live: completed builds that are neither archived nor deleted. Archived: archived builds
    not deleted. A group shared by a live and an archived build counts as live only. `where`
    restricts the builds counted (a caller's visible environments) on the joined Namespace
    and Environment.
    """
    archived = Build.archived_on.is_not(None)
    state = case((archived, 1), else_=0)
    counted = and_(
        Build.deleted_on.is_(None),
        Environment.deleted_on.is_(None),
        Namespace.deleted_on.is_(None),
        (Build.status == BuildStatus.COMPLETED) | archived,
    )
    if namespace is not None:
        counted = and_(counted, Namespace.name == namespace)
    if where is not None:
        counted = and_(counted, where)
    groups = (
        select(
            Namespace.name.label("namespace"),
            BuildStorageGroup.key.label("key"),
            func.min(state).label("archived"),
            func.max(BuildStorageGroup.bytes).label("bytes"),
        )
        .join(Build, Build.id == BuildStorageGroup.build_id)
        .join(Environment, Environment.id == Build.environment_id)
        .join(Namespace, Namespace.id == Environment.namespace_id)
        .where(counted)
        .group_by(Namespace.name, BuildStorageGroup.key)
        .subquery()
    )
    totals = session.execute(
        select(groups.c.namespace, groups.c.archived, func.sum(groups.c.bytes)).group_by(
            groups.c.namespace, groups.c.archived
        )
    )
    live: dict[str, int] = defaultdict(int)
    freed: dict[str, int] = defaultdict(int)
    for name, is_archived, total in totals:
        (freed if is_archived else live)[name] += int(total or 0)
    return {name: NamespaceBytes(live[name], freed[name]) for name in sorted({*live, *freed})}
