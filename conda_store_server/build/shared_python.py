"""uv runs one copy of the environment's python per python package; what it wrote is then made
the environment's own.

uv learns about an interpreter by running it (a python start-up, tens of milliseconds) and
remembers the answer by the interpreter's path, for as long as that file's inode is unchanged.
Every build's python has a new path, so every pip build paid that query, as long as uv's
resolution and install themselves; and the package cache's file is no way out, since every new
environment links it once more, which changes its inode (ctime). So uv is given a copy per
python package beside the cache (`<cache>-uv-python/<entry>/`: the interpreter file copied, the
rest of the entry linked), at a path every environment of that package shares, on an inode
nothing links: uv asks it once per machine.

Resolving with it is exact: the markers and wheel tags are those of the same binary on the same
machine. Installing wheels with it uses `--prefix <environment>`, where uv lays files out as in a
virtual environment at that prefix, which is what it does with the environment's own python but
for two things `relocate` puts right afterwards: the scripts' shebangs name the interpreter uv
ran, and C headers land in `include/site/pythonX.Y/` where a python that is not a virtual
environment has them in its own `include` path. Source distributions and git packages are not
installed this way: building them runs the interpreter, and the cache's files still have their
build-time placeholders in the configuration (compiler flags naming no real directory).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from conda_store_server import package_gc
from conda_store_server.build.wheel_record import record_hash

__all__ = ["find", "relocate"]

#: The longest `#!` line uv writes as it is; a longer one, or one with a space, goes through
#: /bin/sh (the kernel truncates long interpreter lines).
_LONGEST_SHEBANG = 127


def find(prefix: str, python: str, record: Mapping[str, Any] | None) -> str | None:
    """The copy of `python` (a path in `prefix`) that uv runs, or None when there is none.

    `record` is the prefix's conda-meta record of its python package, which names the cache
    entry it came from. The package cache's file must be the very file the prefix has (a hard
    link, or the same bytes when the package was copied in), so that uv's answer about it is
    true of the environment's python.
    """
    relative = os.path.relpath(python, prefix)
    if relative.startswith(os.pardir) or "'" in python:
        return None  # not in the prefix, or a path no shebang quoting of uv's would survive
    extracted = (record or {}).get("extracted_package_dir")
    if not isinstance(extracted, str) or not os.path.isabs(extracted):
        return None
    source = os.path.join(extracted, relative)
    try:
        if not os.path.isfile(source) or not os.access(source, os.X_OK):
            return None
        if not (os.path.samefile(source, python) or _same_bytes(source, python)):
            return None
        return _uv_copy(extracted, relative)
    except OSError:
        return None


def _uv_copy(extracted: str, relative: str) -> str | None:
    """`<cache>-uv-python/<entry>/<relative>`: the interpreter copied, everything else of the
    cache entry linked (so it runs as the entry's python would, from its own directory).

    Not the cache's file itself: every environment of the package adds a hard link to that, and
    uv takes an interpreter whose inode changed (its ctime) for another one, to be queried
    again. Nothing links the copy. Laid out once per entry, aside and renamed into place, so a
    build never sees half of one; the package-cache collector removes it with its entry.
    """
    root = package_gc.uv_python_root(os.path.dirname(extracted))
    copy = os.path.join(root, os.path.basename(extracted))
    target, source = os.path.join(copy, relative), os.path.join(extracted, relative)
    if _current(copy, target, source):
        return target
    os.makedirs(root, exist_ok=True)
    new = tempfile.mkdtemp(dir=root, prefix=".new-")
    try:
        _lay_out(new, extracted, relative.split(os.sep))
    except OSError:
        shutil.rmtree(new, ignore_errors=True)
        raise
    stale = os.path.join(root, f".stale-{uuid.uuid4().hex}")
    try:
        os.rename(copy, stale)  # a copy whose entry changed under it (re-extracted)
    except FileNotFoundError:
        pass
    try:
        os.rename(new, copy)
    except OSError:  # another build put its own in place meanwhile: that one serves
        shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(stale, ignore_errors=True)
    return target if _current(copy, target, source) else None


def _current(copy: str, target: str, source: str) -> bool:
    """Whether the copy is of this interpreter and what it links still exists."""
    try:
        copied, original = os.stat(target), os.stat(source)
        if (copied.st_size, copied.st_mtime_ns) != (original.st_size, original.st_mtime_ns):
            return False
        return all(os.path.exists(entry.path) for entry in os.scandir(copy) if entry.is_symlink())
    except OSError:
        return False


def _lay_out(directory: str, source: str, parts: list[str]) -> None:
    """In `directory`, every entry of `source` linked, but the path `parts` made of real
    directories down to the interpreter, which is copied (mode and times kept)."""
    for entry in os.scandir(source):
        path = os.path.join(directory, entry.name)
        if entry.name != parts[0]:
            os.symlink(entry.path, path)
        elif len(parts) == 1:
            shutil.copy2(entry.path, path)
        else:
            os.mkdir(path)
            _lay_out(path, entry.path, parts[1:])


def _same_bytes(first: str, second: str) -> bool:
    if os.path.getsize(first) != os.path.getsize(second):
        return False
    with open(first, "rb") as a, open(second, "rb") as b:
        while True:
            chunk = a.read(1 << 20)
            if chunk != b.read(1 << 20):
                return False
            if not chunk:
                return True


def relocate(prefix: str, dist_infos: Iterable[str], ran: str, python: str, headers: str | None) -> None:
    """Make what uv installed with the interpreter `ran` into `prefix` as if `python` had run it.

    Scripts whose shebang names `ran` name `python` instead (in the form uv would have chosen for
    that path), and with `headers` (the include path of a python that is not a virtual
    environment) the C headers move there from `include/site/pythonX.Y/`; every RECORD is made
    true again. Files are replaced, never written in place: a file uv linked from its cache
    must not change there.
    """
    scripts = os.path.join(prefix, "bin") + os.sep
    venv_headers = os.path.join(prefix, "include", "site") + os.sep
    ran_real = os.path.realpath(ran)
    for dist_info in dist_infos:
        record_path = os.path.join(dist_info, "RECORD")
        site_packages = os.path.dirname(dist_info)
        with open(record_path, newline="") as file:
            rows = list(csv.reader(file))
        changed = False
        for row in rows:
            if not row:
                continue
            path = os.path.normpath(os.path.join(site_packages, row[0]))
            if path.startswith(scripts) and os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as file:
                    content = file.read()
                named = _shebang_interpreter(content)
                if named and os.path.realpath(named[1]) == ran_real:
                    content = _shebang(python) + content[named[0] :]
                    _replace(path, content, os.stat(path).st_mode & 0o7777)
                    row[1:] = [record_hash(content), str(len(content))]
                    changed = True
            elif headers and path.startswith(venv_headers) and os.path.isfile(path):
                # include/site/pythonX.Y/<distribution>/<file> -> <headers>/<distribution>/<file>
                inside = path[len(venv_headers) :].split(os.sep, 1)
                if len(inside) == 2:
                    target = os.path.join(headers, inside[1])
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    os.replace(path, target)
                    _remove_empty_parents(os.path.dirname(path), os.path.join(prefix, "include"))
                    row[0] = os.path.relpath(target, site_packages)
                    changed = True
        if changed:
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerows(rows)
            _replace(record_path, text.getvalue().encode(), os.stat(record_path).st_mode & 0o7777)


#: The opening and closing of the /bin/sh form of a shebang (see `_shebang`).
_SH_OPENING = b"#!/bin/sh\n'''exec' '"
_SH_CLOSING = b"' \"$0\" \"$@\"\n' '''\n"


def _shebang(python: str) -> bytes:
    """The opening lines uv writes in a script for `python`."""
    line = f"#!{python}\n"
    if len(line) > _LONGEST_SHEBANG or " " in python:
        return _SH_OPENING + os.fsencode(python) + _SH_CLOSING
    return os.fsencode(line)


def _shebang_interpreter(content: bytes) -> tuple[int, str] | None:
    """(length of the opening lines, interpreter) of a script in either form `_shebang` writes."""
    if content.startswith(_SH_OPENING):
        end = content.find(_SH_CLOSING, len(_SH_OPENING))
        if end < 0 or b"\n" in content[len(_SH_OPENING) : end]:
            return None
        return end + len(_SH_CLOSING), os.fsdecode(content[len(_SH_OPENING) : end])
    if content.startswith(b"#!"):
        end = content.find(b"\n")
        line = content[2:end] if end >= 0 else content[2:]
        if not line.strip() or b" " in line.strip():
            return None  # `#!/usr/bin/env python` and the like name no file uv chose
        return (end + 1 if end >= 0 else len(content)), os.fsdecode(line.strip())
    return None


def _replace(path: str, content: bytes, mode: int) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".relocate-")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _remove_empty_parents(directory: str, stop: str) -> None:
    while directory.startswith(stop + os.sep):
        try:
            os.rmdir(directory)
        except OSError:
            return
        directory = os.path.dirname(directory)
