"""Package-cache garbage collection: cached packages and image blobs that no live build uses.

Three caches grow with every build: the conda package cache (`CondaStore.package_cache_directory`,
hard-linked into every prefix, and its ownership copies beside it), uv's cache for pip packages,
and the image blobs in storage. A collection, run once per deployment by the periodic work:

1. reads which cache entries the live prefixes use (each prefix's `conda-meta` names them),
   without any lock, so builds are not held up while it reads a thousand prefixes;
2. takes the package-cache lease exclusively (`conda_store_server.package_gc`): from then on no
   build links, and every build that linked since step 1 has its `conda-meta` written, so
   re-reading only the prefixes whose `conda-meta` changed (or that are new) gives the exact
   set in use; it then moves the unused entries out of the cache (a rename) and deletes the
   image blobs no live build's DOCKER_BLOB rows name, and releases the lease;
3. deletes what it moved (slow, outside the lease) and runs `uv cache prune`, which keeps
   whatever a running uv holds (uv's own in-use lock).

Removing an entry never breaks a built prefix: prefixes hold their own hard links. A build
that wants a removed entry later fetches it again. What was freed is added to counters in the
database (`keyvaluestore`), which every server replica reads for `/metrics`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import joinedload

from conda_store_server.db.models import (
    Build,
    BuildArtifact,
    BuildArtifactType,
    Environment,
    KeyValueStore,
)
from conda_store_server.package_gc import exclusive_cache_lease, owned_root, uv_python_root

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from conda_store_server.app import CondaStore
    from conda_store_server.storage import Storage

log = logging.getLogger(__name__)

__all__ = ["CollectionReport", "Freed", "collect_package_caches", "collect_conda_cache", "freed_totals"]

METRICS_PREFIX = "package-cache-gc"
CACHES = ("conda", "pip", "image")
BLOB_PREFIX = "docker/blobs/"
BASE_PREFIX = "docker/base/"
LEASE_TIMEOUT_SECONDS = 30.0
UV_PRUNE_TIMEOUT_SECONDS = 600.0


@dataclass
class Freed:
    packages: int = 0
    bytes: int = 0


@dataclass
class CollectionReport:
    """What one collection removed, by cache; `skipped` says why a part did not run."""

    freed: dict[str, Freed] = field(default_factory=lambda: {cache: Freed() for cache in CACHES})
    conda_cache_bytes: int | None = None  # measured when a bound is configured
    lease_seconds: float = 0.0  # how long builds could not start linking
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{name}: {f.packages} entries, {f.bytes} bytes" for name, f in self.freed.items()]
        parts.append(f"lease held {self.lease_seconds:.3f} s")
        return "; ".join(parts + [f"skipped: {reason}" for reason in self.skipped])


# ------------------------------------------------------------------ measuring
def _tree_size(path: str, only_last_link: bool) -> int:
    """Bytes of the files under `path`, each inode once; with `only_last_link`, only the files no
    other path links (what removing `path` really frees)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                    continue
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if (info.st_dev, info.st_ino) in seen or (only_last_link and info.st_nlink > 1):
                continue
            seen.add((info.st_dev, info.st_ino))
            total += info.st_size
    return total


def _entries(cache: str) -> dict[str, float]:
    """The cache's package entries (extracted directories) and when each was last used (mtime)."""
    found: dict[str, float] = {}
    try:
        scanned = list(os.scandir(cache))
    except FileNotFoundError:
        return found
    for entry in scanned:
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            found[entry.name] = entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue
    return found


# ------------------------------------------------------------------ what live prefixes use
def _meta_stamp(prefix: str) -> int | None:
    try:
        return os.stat(os.path.join(prefix, "conda-meta")).st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return None


def prefix_entries(prefix: str, entries: Iterable[str] | set[str]) -> set[str]:
    """The cache entries a prefix was linked from: a `conda-meta/<dist>.json` names its entry; a
    record whose name is no entry says where it was extracted (read only then: records are large)."""
    meta = os.path.join(prefix, "conda-meta")
    try:
        names = os.listdir(meta)
    except (FileNotFoundError, NotADirectoryError):
        return set()
    known = entries if isinstance(entries, set) else set(entries)
    used: set[str] = set()
    for name in names:
        if not name.endswith(".json"):
            continue
        stem = name[: -len(".json")]
        if stem in known:
            used.add(stem)
            continue
        try:
            record = json.loads(Path(meta, name).read_text())
        except (OSError, ValueError):
            continue
        extracted = record.get("extracted_package_dir") or (record.get("link") or {}).get("source")
        if isinstance(extracted, str) and extracted:
            used.add(os.path.basename(os.path.normpath(extracted)))
    return used


def live_prefixes(conda_store: CondaStore) -> list[str]:
    """Every prefix a build not deleted may have: also failed, archived or still building ones,
    whose directories may hold links (reading a missing prefix costs one failed listdir)."""
    from conda_store_server.service import prefix_of

    with conda_store.session() as session:
        builds = session.scalars(
            select(Build)
            .options(
                joinedload(Build.environment).joinedload(Environment.namespace),
                joinedload(Build.specification),
            )
            .where(Build.deleted_on.is_(None))
        ).all()
        return [prefix_of(conda_store, build) for build in builds]


# ------------------------------------------------------------------ the conda package cache
def collect_conda_cache(
    package_cache: str,
    prefixes: Callable[[], list[str]],
    max_bytes: int | None,
    report: CollectionReport,
    *,
    under_lease: Callable[[], None] | None = None,
    lease_timeout: float = LEASE_TIMEOUT_SECONDS,
) -> None:
    """Remove the entries no live prefix uses (all of them without a bound; with `max_bytes`,
    unused ones least recently used first until the cache fits). `under_lease` runs while the
    lease is held exclusively (the image blobs are collected there)."""
    _delete_leftovers(package_cache)
    entries = _entries(package_cache)
    stamps: dict[str, int | None] = {}
    used: set[str] = set()
    for prefix in prefixes():
        stamps[prefix] = _meta_stamp(prefix)
        used |= prefix_entries(prefix, entries.keys())
    # measured before the lease, so builds wait only for renames (an entry in use now cannot
    # become unused, and one a build starts using meanwhile is kept, so these stay right)
    sizes = _Sizes(package_cache)
    for name in entries:
        if max_bytes is not None:
            sizes.total(name)
        if name not in used:
            sizes.freed(name)
    trash = os.path.join(os.path.dirname(os.path.normpath(package_cache)), f".pkgs-trash-{uuid.uuid4().hex}")
    with exclusive_cache_lease(package_cache, lease_timeout) as acquired:
        if not acquired:
            report.skipped.append(f"builds held the package cache for {lease_timeout:.0f} s; next run")
            return
        leased = time.monotonic()
        entries = _entries(package_cache)  # entries fetched since are in use by their build
        for prefix in prefixes():
            stamp = _meta_stamp(prefix)
            if prefix not in stamps or stamps[prefix] != stamp:
                used |= prefix_entries(prefix, entries.keys())
        unused = sorted((entries[name], name) for name in entries if name not in used)
        chosen = _over_bound(sizes, entries, unused, max_bytes, report)
        moved = _move_out(package_cache, sizes, chosen, trash, report)
        if under_lease is not None:
            under_lease()
        report.lease_seconds = time.monotonic() - leased
    _delete(trash, moved)


class _Sizes:
    """Bytes of each entry (all its files) and what removing it frees (its files' last links,
    owned copies included), each measured once."""

    def __init__(self, package_cache: str) -> None:
        self.package_cache = package_cache
        self._total: dict[str, int] = {}
        self._freed: dict[str, int] = {}

    def total(self, name: str) -> int:
        if name not in self._total:
            self._total[name] = _tree_size(os.path.join(self.package_cache, name), False)
        return self._total[name]

    def freed(self, name: str) -> int:
        if name not in self._freed:
            sources = [os.path.join(self.package_cache, name), *_owned_copies(self.package_cache, name)]
            self._freed[name] = sum(_tree_size(source, True) for source in sources)
        return self._freed[name]


def _over_bound(
    sizes: _Sizes,
    entries: dict[str, float],
    unused: list[tuple[float, str]],
    max_bytes: int | None,
    report: CollectionReport,
) -> list[str]:
    if max_bytes is None:
        return [name for _, name in unused]
    total = sum(sizes.total(name) for name in entries)
    report.conda_cache_bytes = total
    chosen = []
    for _, name in unused:  # oldest use first
        if total <= max_bytes:
            break
        total -= sizes.total(name)
        chosen.append(name)
    return chosen


def _owned_copies(package_cache: str, name: str) -> list[str]:
    """What exists of an entry besides the entry itself: copies given other owners, and the
    copy of a python package that uv runs."""
    root = owned_root(package_cache)
    try:
        owners = os.listdir(root)
    except FileNotFoundError:
        owners = []
    copies = [os.path.join(root, owner, name) for owner in owners]
    copies.append(os.path.join(uv_python_root(package_cache), name))
    return [copy for copy in copies if os.path.isdir(copy)]


def _move_out(
    package_cache: str, sizes: _Sizes, names: list[str], trash: str, report: CollectionReport
) -> list[str]:
    """Renames only (fast): the lease is held. Sizes are what the last links free."""
    moved: list[str] = []
    for name in names:
        sources = [os.path.join(package_cache, name), *_owned_copies(package_cache, name)]
        freed = sizes.freed(name)
        os.makedirs(trash, exist_ok=True)
        for index, source in enumerate(sources):
            target = os.path.join(trash, f"{index}-{name}")
            try:
                os.rename(source, target)
            except FileNotFoundError:
                continue
            moved.append(target)
        try:
            os.unlink(os.path.join(package_cache, f"{name}.lock"))
        except FileNotFoundError:
            pass
        report.freed["conda"].packages += 1
        report.freed["conda"].bytes += freed
        log.info("package cache: removed %s (%d bytes)", name, freed)
    return moved


def _delete(trash: str, moved: list[str]) -> None:
    if moved or os.path.isdir(trash):
        shutil.rmtree(trash, ignore_errors=True)


def _delete_leftovers(package_cache: str) -> None:
    """What a collection stopped mid-way (its worker stopped) had moved out but not deleted."""
    parent = os.path.dirname(os.path.normpath(package_cache))
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(".pkgs-trash-"):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


# ------------------------------------------------------------------ uv's cache
def collect_uv_cache(uv_cache: str, report: CollectionReport) -> None:
    """`uv cache prune`: uv knows which of its entries are dangling, and waits for (or leaves)
    what a running uv holds; counted as unpacked wheels (archive entries) and bytes."""
    if not os.path.isdir(uv_cache):
        return
    import uv

    before_bytes, before_archives = _tree_size(uv_cache, False), _archives(uv_cache)
    try:
        result = subprocess.run(
            [uv.find_uv_bin(), "cache", "prune", "--cache-dir", uv_cache, "--no-config", "--color", "never"],
            capture_output=True,
            text=True,
            timeout=UV_PRUNE_TIMEOUT_SECONDS,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        report.skipped.append(f"uv cache prune: {error}")
        return
    if result.returncode != 0:
        report.skipped.append(f"uv cache prune failed: {result.stderr.strip()[-500:]}")
        return
    report.freed["pip"].bytes += max(before_bytes - _tree_size(uv_cache, False), 0)
    report.freed["pip"].packages += max(before_archives - _archives(uv_cache), 0)


def _archives(uv_cache: str) -> int:
    return sum(len(os.listdir(entry)) for entry in Path(uv_cache).glob("archive-v*") if entry.is_dir())


# ------------------------------------------------------------------ image blobs
def blob_listing(storage: Storage, prefix: str) -> dict[str, float] | None:
    """Keys under `prefix` and when each was written; None when the storage cannot list."""
    from conda_store_server.storage import LocalStorage, S3Storage

    if isinstance(storage, LocalStorage):
        root = Path(storage.storage_path)
        directory = root / prefix
        if not directory.is_dir():
            return {}
        return {
            path.relative_to(root).as_posix(): path.stat().st_mtime
            for path in directory.rglob("*")
            if path.is_file() and not path.name.startswith(".")
        }
    if isinstance(storage, S3Storage):
        client = storage.internal_client
        return {
            item.object_name: item.last_modified.timestamp()
            for item in client.list_objects(storage.bucket_name, prefix=prefix, recursive=True)
        }
    return None


def collect_image_blobs(conda_store: CondaStore, started: float, report: CollectionReport) -> None:
    """Blobs no live build's image names (base-image blobs included), written before this
    collection started; run under the exclusive lease, so every finished image is recorded."""
    storage = conda_store.storage
    listing = blob_listing(storage, BLOB_PREFIX)
    if listing is None:
        report.skipped.append(f"image blobs: {type(storage).__name__} cannot list keys")
        return
    if not listing:
        return
    with conda_store.session() as session:
        referenced = set(
            session.scalars(
                select(BuildArtifact.key)
                .join(Build, Build.id == BuildArtifact.build_id)
                .where(
                    BuildArtifact.artifact_type == BuildArtifactType.DOCKER_BLOB,
                    Build.deleted_on.is_(None),
                    Build.archived_on.is_(None),
                )
            )
        )
    removed: set[str] = set()
    for key, written in sorted(listing.items()):
        if key in referenced or written >= started:
            continue
        size = _blob_size(storage, key)
        storage.delete(key)
        removed.add(key.removeprefix(BLOB_PREFIX))
        report.freed["image"].packages += 1
        report.freed["image"].bytes += size
    if removed:
        log.info("image blobs: removed %d unused blobs", len(removed))
        _forget_base_images(storage, removed)


def _blob_size(storage: Storage, key: str) -> int:
    local = storage.local_path(key)
    if local is not None:
        try:
            return local.stat().st_size
        except FileNotFoundError:
            return 0
    try:
        client = storage.internal_client  # type: ignore[attr-defined]
        return int(client.stat_object(storage.bucket_name, key).size)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a size is only reported
        return 0


def _forget_base_images(storage: Storage, removed: set[str]) -> None:
    """A base-image record whose blobs are gone would only make the next image pull again."""
    for key in blob_listing(storage, BASE_PREFIX) or {}:
        try:
            record = json.loads(storage.get(key))
            digests = {record["config_digest"], *(layer["digest"] for layer in record["layers"])}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if digests & removed:
            storage.delete(key)


# ------------------------------------------------------------------ the whole collection
def collect_package_caches(conda_store: CondaStore) -> CollectionReport:
    """One collection of every cache; what it freed is logged and added to the counters."""
    report = CollectionReport()
    started = time.time()
    collect_conda_cache(
        conda_store.package_cache_directory,
        lambda: live_prefixes(conda_store),
        conda_store.package_cache_max_bytes,
        report,
        under_lease=lambda: collect_image_blobs(conda_store, started, report),
    )
    collect_uv_cache(conda_store.uv_cache_directory, report)
    with conda_store.session() as session:
        add_freed(session, report)
    log.info("package cache collection in %.2f s: %s", time.time() - started, report.summary())
    return report


def add_freed(session: Session, report: CollectionReport) -> None:
    """Counters only grow (Prometheus counters): one row per cache, updated under a row lock."""
    from conda_store_server.service import insert_once

    for cache, freed in report.freed.items():
        insert_once(
            session,
            KeyValueStore,
            {"prefix": METRICS_PREFIX, "key": cache, "value": {"bytes": 0, "packages": 0}},
            ("prefix", "key"),
        )
        row = session.scalars(
            select(KeyValueStore)
            .where(KeyValueStore.prefix == METRICS_PREFIX, KeyValueStore.key == cache)
            .with_for_update()
        ).one()
        session.refresh(row)
        value: dict[str, Any] = dict(row.value or {})
        row.value = {
            "bytes": int(value.get("bytes", 0)) + freed.bytes,
            "packages": int(value.get("packages", 0)) + freed.packages,
        }
    session.flush()


def freed_totals(session: Session) -> dict[str, Freed]:
    """What every collection so far freed, by cache (zero for a cache never collected)."""
    totals = {cache: Freed() for cache in CACHES}
    for row in session.scalars(select(KeyValueStore).where(KeyValueStore.prefix == METRICS_PREFIX)):
        value = row.value if isinstance(row.value, dict) else {}
        totals[row.key] = Freed(int(value.get("packages", 0)), int(value.get("bytes", 0)))
    return totals
