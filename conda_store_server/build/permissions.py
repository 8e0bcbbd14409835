"""Ownership and mode of a built prefix (CondaStore.default_uid/gid/permissions)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import uuid
from pathlib import Path

from conda_store_server.exception import BuildFailure
from conda_store_server.package_gc import cache_lease, owned_root
from conda_store_server.prefix_files import FileStats, entries

# (st_dev, st_ino) of a cache file -> (package cache, entry, path inside the entry)
CacheFiles = dict[tuple[int, int], tuple[str, str, str]]


def apply_ownership(
    prefix: str, uid: int | None, gid: int | None, permissions: str | None
) -> FileStats | None:
    """chown/chmod every entry; files only get execute bits the mode grants and they already had.

    Without an owner change, the mode is set through the hard links into the shared package
    cache: every environment wants the same mode on a shared file, and copying each file
    instead would give up the shared package store.

    With an owner change (default_uid/default_gid) a cache file is never chowned in place: the
    cache must stay the service's (its owner could otherwise change what later builds and the
    container images are made from), and changing default_uid must not re-own the files of
    environments built before. Instead the file is linked to a copy owned by that user, made
    once per owner, mode and cache entry beside the cache
    (`<store>/.pkgs-owned/<uid>-<gid>-<mode>/<entry>/...`): every environment shares it, so the
    deployment stores each package twice (cache and owned copy), not once per build. Files
    hard-linked from elsewhere (uv's cache) are still copied into the prefix.

    Returns the prefix's regular files with their `lstat` as the pass left them, for the storage
    measure that follows (`disk_usage.record_build_storage`), or None when there was nothing to
    change and so no walk.
    """
    mode = int(permissions, 8) if permissions else None
    wants_owner = (uid is not None and uid != os.getuid()) or (gid is not None and gid != os.getgid())
    if mode is None and not wants_owner:
        return None
    cache_files, package_cache = _cache_files(prefix) if wants_owner else ({}, None)
    owner_key = (
        f"{uid if uid is not None else 'same'}-{gid if gid is not None else 'same'}-{permissions or 'asis'}"
    )
    lease = cache_lease(package_cache) if package_cache else contextlib.nullcontext()
    try:
        with lease:  # the package-cache collector must not remove what is being shared
            return _apply(prefix, uid, gid, mode, wants_owner, cache_files, owner_key)
    except PermissionError as error:
        raise BuildFailure(
            f"Cannot apply default_uid={uid}, default_gid={gid}, default_permissions={permissions} "
            f"to the environment: {error}. The worker needs the right to chown (run it as root or "
            "leave default_uid/default_gid unset)."
        ) from error


def _apply(
    prefix: str,
    uid: int | None,
    gid: int | None,
    mode: int | None,
    wants_owner: bool,
    cache_files: CacheFiles,
    owner_key: str,
) -> FileStats:
    new_uid, new_gid = -1 if uid is None else uid, -1 if gid is None else gid
    files: FileStats = []
    for relative, entry in entries(prefix):
        path = entry.path
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode):
            if wants_owner:
                os.lchown(path, new_uid, new_gid)
            continue
        if stat.S_ISDIR(info.st_mode):
            if mode is not None and stat.S_IMODE(info.st_mode) != mode:
                os.chmod(path, mode)
            if wants_owner:
                os.lchown(path, new_uid, new_gid)
            continue
        wanted = stat.S_IMODE(info.st_mode)
        if mode is not None:
            wanted = (mode & ~0o111) | (mode & info.st_mode & 0o111)
        if wants_owner and info.st_nlink > 1:
            source = cache_files.get((info.st_dev, info.st_ino))
            if source is not None:
                _link_owned_copy(path, source, owner_key, new_uid, new_gid, wanted)
                files.append((relative, os.lstat(path)))
                continue
            _unshare(path)
        if stat.S_IMODE(info.st_mode) != wanted:
            os.chmod(path, wanted)
        if wants_owner:
            os.chown(path, new_uid, new_gid)
            info = os.lstat(path)
        if stat.S_ISREG(info.st_mode):
            files.append((relative, info))
    if mode is not None:
        os.chmod(prefix, mode)
    if wants_owner:
        os.chown(prefix, new_uid, new_gid)
    return files


def _cache_files(prefix: str) -> tuple[CacheFiles, str | None]:
    """The cache files this prefix links, found from the entries its records were extracted to."""
    found: CacheFiles = {}
    package_cache: str | None = None
    for meta in sorted(Path(prefix, "conda-meta").glob("*.json")):
        try:
            extracted = json.loads(meta.read_text()).get("extracted_package_dir")
        except (OSError, ValueError):
            continue
        if not isinstance(extracted, str) or not os.path.isdir(extracted):
            continue
        cache, entry = os.path.split(os.path.normpath(extracted))
        package_cache = package_cache or cache
        for root, _directories, files in os.walk(extracted):
            for name in files:
                path = os.path.join(root, name)
                info = os.lstat(path)
                if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                    found[(info.st_dev, info.st_ino)] = (cache, entry, os.path.relpath(path, extracted))
    return found, package_cache


def _link_owned_copy(
    path: str, source: tuple[str, str, str], owner_key: str, uid: int, gid: int, wanted: int
) -> None:
    """Replace `path` by a hard link to the owner's copy of its cache file, made if missing or stale
    (the cache entry was fetched again: the copy no longer has the cache file's size and time)."""
    cache, entry, relative = source
    original = os.path.join(cache, entry, relative)
    copy = os.path.join(owned_root(cache), owner_key, entry, relative)
    origin = os.stat(original)
    try:
        existing = os.stat(copy)
        fresh = (existing.st_size, existing.st_mtime_ns) == (origin.st_size, origin.st_mtime_ns)
    except FileNotFoundError:
        fresh = False
    if not fresh:
        os.makedirs(os.path.dirname(copy), exist_ok=True)
        temporary = f"{copy}.{uuid.uuid4().hex}.tmp"
        shutil.copyfile(original, temporary)
        os.utime(temporary, ns=(origin.st_atime_ns, origin.st_mtime_ns))
        os.chown(temporary, uid, gid)
        os.chmod(temporary, wanted)
        os.replace(temporary, copy)  # builds making the same copy at once each leave a whole one
    link = f"{path}.{uuid.uuid4().hex}.owned"
    os.link(copy, link)
    os.replace(link, path)


def _unshare(path: str) -> None:
    temporary = f"{path}.unshare"
    with open(path, "rb") as source, open(temporary, "wb") as target:
        while chunk := source.read(1 << 20):
            target.write(chunk)
    os.chmod(temporary, stat.S_IMODE(os.lstat(path).st_mode))
    os.replace(temporary, path)
