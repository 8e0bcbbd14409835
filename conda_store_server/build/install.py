"""Installing solved records into a prefix from the shared package cache, and checking the result."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import rattler

from conda_store_server.build.entry_points import check_entry_points
from conda_store_server.exception import BuildFailure
from conda_store_server.package_gc import cache_lease, touch_entries

log = logging.getLogger(__name__)


async def install(records: list[rattler.RepoDataRecord], prefix: str, package_cache: str) -> int:
    """Hard-link from the shared cache (rattler locks each cache entry, so builds may run at once).

    Returns the bytes the packages installed, measured while checking them, so the prefix is
    walked once rather than twice. The cache lease is held while linking, so the collector
    never removes an entry this build links from.
    """
    with cache_lease(package_cache):  # the package-cache collector waits (package_gc.py)
        await check_entry_points(records, package_cache)
        try:
            await rattler.install(
                records,
                Path(prefix),
                cache_dir=Path(package_cache),
                show_progress=False,
                execute_link_scripts=False,
            )
        except Exception as error:
            raise _install_failure(records, error) from error
        touch_entries(package_cache, [record.file_name for record in records])
    Path(prefix, "CACHEDIR.TAG").unlink(missing_ok=True)
    return check_installed_paths(prefix)


def _install_failure(records: list[rattler.RepoDataRecord], error: Exception) -> BuildFailure:
    """rattler's explanation, unless a package is a local file: then it could tell whether a
    path exists on the worker, so it is logged for the administrator instead."""
    if all(record.url.startswith(("http://", "https://")) for record in records):
        return BuildFailure(f"Installing the packages failed: {error}")
    log.warning("installing the packages failed: %s", error)
    return BuildFailure(
        "Installing the packages failed; the details name files on the worker, "
        "so they are in the worker's log"
    )


def inside(path: str, root: str) -> bool:
    """`path` is `root` or below it (both normalised)."""
    return path == root or path.startswith(root + os.sep)


def check_installed_paths(prefix: str) -> int:
    """Every path a package installed must stay inside the prefix (defence beyond rattler's own).

    A path can escape lexically (`..`, absolute) or through a symlinked directory, so each
    directory is resolved once (packages share few directories among thousands of files).
    Returns the bytes on disk of the installed files and their records, each inode counted once.
    """
    root = os.path.realpath(prefix)
    resolved: dict[str, str] = {}
    seen: set[tuple[int, int]] = set()
    total = 0
    for meta in sorted(Path(root, "conda-meta").glob("*.json")):
        total += meta.stat().st_size
        record = json.loads(meta.read_text())
        for relative in record.get("files", []):
            target = os.path.normpath(os.path.join(root, relative))
            directory = os.path.dirname(target)
            parent = resolved.get(directory)
            if parent is None:
                parent = resolved[directory] = os.path.realpath(directory)
            if os.path.isabs(relative) or not inside(target, root) or not inside(parent, root):
                raise BuildFailure(
                    f"Package {record.get('name')} installs {relative!r} outside the environment "
                    "prefix; the build was stopped and the package must be fixed."
                )
            try:
                stat = os.lstat(target)
            except FileNotFoundError:
                continue
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total
