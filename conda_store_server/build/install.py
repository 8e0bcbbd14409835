"""Installing solved records into a prefix from the shared package cache, and checking the result."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import rattler

from conda_store_server.build.entry_points import check_entry_points
from conda_store_server.exception import BuildFailure
from conda_store_server.package_gc import cache_lease, touch_entries
from conda_store_server.prefix_files import CondaFiles, normalised

log = logging.getLogger(__name__)


async def install(records: list[rattler.RepoDataRecord], prefix: str, package_cache: str) -> CondaFiles:
    """Hard-link from the shared cache (rattler locks each cache entry, so builds may run at once);
    what each package installed, as the path check read it from conda-meta.

    The cache lease is held while linking, so the collector never removes an entry this build
    links from. The prefix's size is measured once, when the build is complete
    (`disk_usage.record_build_storage`, given the paths returned here), not here: pip and the
    ownership step change it after.
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


def check_installed_paths(prefix: str) -> CondaFiles:
    """Every path a package installed must stay inside the prefix (defence beyond rattler's own);
    the paths, by package.

    A path can escape lexically (`..`, absolute) or through a symlinked directory. Thousands of
    files share a few hundred directories, so each directory is looked at once (one `lstat`,
    and `realpath` only for a symlink), its verdict inherited by what lies below it.
    """
    root = os.path.realpath(prefix)
    contained: dict[str, bool] = {"": True}

    def directory_inside(directory: str) -> bool:
        verdict = contained.get(directory)
        if verdict is None:
            parent = directory.rpartition("/")[0]
            verdict = directory_inside(parent)
            path = os.path.join(root, directory)
            if verdict and os.path.islink(path):
                verdict = inside(os.path.realpath(path), root)
            contained[directory] = verdict
        return verdict

    installed: CondaFiles = {}
    for meta in sorted(Path(root, "conda-meta").glob("*.json")):
        record = json.loads(meta.read_bytes())
        files = record.get("files", [])
        if _plain(files):  # the usual case, checked a directory at a time
            if not all(directory_inside(parent) for parent in {path.rpartition("/")[0] for path in files}):
                _plain_path_escapes(record, files, directory_inside)
            installed[meta.stem] = list(files)
            continue
        paths = installed[meta.stem] = []
        for relative in files:
            path = normalised(relative)
            escapes = os.path.isabs(path) or path == ".." or path.startswith("../")
            if escapes or not directory_inside(path.rpartition("/")[0]):
                raise _escape(record, relative)
            paths.append(path)
    return installed


def _plain(files: list[str]) -> bool:
    """No path needs `normalised` and none starts outside the prefix by itself (absolute, `..`):
    those stay inside unless a directory on their way is a symbolic link out of it. The lines of
    a path holding a newline are each looked at as a path: all plain, so is the path."""
    try:
        joined = "\n" + "\n".join(files) + "\n"
    except TypeError:
        return False
    return not any(part in joined for part in ("\n/", "\n.", "//", "/.", "/\n"))


def _plain_path_escapes(record: dict, files: list[str], directory_inside: Callable[[str], bool]) -> None:
    """Name the first path whose directory leads out of the prefix."""
    for relative in files:
        if not directory_inside(relative.rpartition("/")[0]):
            raise _escape(record, relative)


def _escape(record: dict, relative: str) -> BuildFailure:
    return BuildFailure(
        f"Package {record.get('name')} installs {relative!r} outside the environment "
        "prefix; the build was stopped and the package must be fixed."
    )
