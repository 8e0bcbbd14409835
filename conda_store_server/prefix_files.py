"""One walk of a prefix: every entry with its path relative to the prefix.

Several steps of a build need every file's `lstat` (the ownership pass, the storage measure);
walking with `os.scandir` and building the relative paths as strings while descending costs a
fraction of `os.walk` plus `os.path.join`/`relpath` per file, and lets one walk serve them both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

__all__ = ["CondaFiles", "FileStats", "entries", "normalised"]

#: (path relative to the prefix, lstat) of regular files, as a walk found them
FileStats = list[tuple[str, os.stat_result]]
#: conda package (its conda-meta file's name without `.json`) -> the paths it installed, as
#: `normalised` spells them; read once after the install, for the path check and the measure
CondaFiles = dict[str, list[str]]


def normalised(relative: str) -> str:
    """A recorded relative path as `entries` spells it (`..` may remain at its start).

    Most recorded paths are already in that form, and `os.path.normpath` costs as much as a
    stat: it runs only for a path that may change (absolute, `.` or `..` parts, doubled or
    trailing slashes).
    """
    if relative.startswith(("/", ".")) or "//" in relative or "/." in relative or relative.endswith("/"):
        return os.path.normpath(relative)
    return relative


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
