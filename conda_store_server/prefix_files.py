"""One walk of a prefix: every entry with its path relative to the prefix.

Several steps of a build need every file's `lstat` (the ownership pass, the storage measure);
walking with `os.scandir` and building the relative paths as strings while descending costs a
fraction of `os.walk` plus `os.path.join`/`relpath` per file, and lets one walk serve them both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

__all__ = ["FileStats", "entries"]

#: (path relative to the prefix, lstat) of regular files, as a walk found them
FileStats = list[tuple[str, os.stat_result]]


def entries(root: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every entry below `root`, a directory before what it holds; symbolic links not followed.

    A directory that cannot be read is skipped with what it holds.
    """
    stack = [("", root)]
    while stack:
        relative_directory, directory = stack.pop()
        try:
            with os.scandir(directory) as listing:
                found = list(listing)
        except OSError:
            continue
        for entry in found:
            relative = f"{relative_directory}{entry.name}"
            yield relative, entry
            if entry.is_dir(follow_symlinks=False):
                stack.append((f"{relative}/", entry.path))
