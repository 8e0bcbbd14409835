"""Installing solved records into a prefix from the shared package cache, and checking the result."""

from __future__ import annotations

import json
import os
from pathlib import Path

import rattler

from conda_store_server.exception import BuildFailure


async def install(records: list[rattler.RepoDataRecord], prefix: str, package_cache: str) -> None:
    """Hard-link from the shared cache (rattler locks each cache entry, so builds may run at once)."""
    try:
        await rattler.install(
            records,
            Path(prefix),
            cache_dir=Path(package_cache),
            show_progress=False,
            execute_link_scripts=False,
        )
    except Exception as error:
        raise BuildFailure(f"Installing the packages failed: {error}") from error
    check_paths_inside_prefix(prefix)
    Path(prefix, "CACHEDIR.TAG").unlink(missing_ok=True)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def check_paths_inside_prefix(prefix: str) -> None:
    """Every path a package installed must stay inside the prefix (defence beyond rattler's own)."""
    root = os.path.realpath(prefix)
    for meta in sorted(Path(prefix, "conda-meta").glob("*.json")):
        record = json.loads(meta.read_text())
        for relative in record.get("files", []):
            target = os.path.normpath(os.path.join(root, relative))
            parent = os.path.realpath(os.path.dirname(target))
            if os.path.isabs(relative) or not _inside(target, root) or not _inside(parent, root):
                raise BuildFailure(
                    f"Package {record.get('name')} installs {relative!r} outside the environment "
                    "prefix; the build was stopped and the package must be fixed."
                )
