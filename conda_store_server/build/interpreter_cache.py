"""What an environment's python said about itself, remembered by the conda package it came from.

Every pip build asks the environment's interpreter for its markers, wheel tags and
site-packages (`pip.inspect_interpreter`): a python start-up and a `packaging` import, tens of
milliseconds in every build, although the answer depends only on the python package and the
machine. It is kept here, one small JSON file per (python package sha256, inspection script,
packaging version, kernel, C library), with the prefix's own paths stored relative to it, so
the next environment of that python reads the file instead of starting the interpreter. A
record without a hash, or an answer naming paths outside the prefix, is never cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import packaging

_PREFIX_MARK = "{prefix}"


def python_record(prefix: str) -> dict[str, Any] | None:
    """The prefix's conda-meta record of its python package, or None (read once per pip build:
    the key below and `shared_python.find` both need it)."""
    for path in Path(prefix, "conda-meta").glob("python-*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("name") == "python":
            return record
    return None


def cache_key(record: dict[str, Any] | None, script: str) -> str | None:
    """The key of the python of this conda record, or None when the record has no hash."""
    digest = (record or {}).get("sha256") or (record or {}).get("md5")
    if not isinstance(digest, str) or not digest:
        return None
    machine = (platform.machine(), platform.release(), platform.version(), _libc())
    parts = [digest, script, packaging.__version__, *machine]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _libc() -> str:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return ""


def load(cache_dir: str, key: str, prefix: str) -> dict[str, Any] | None:
    """The remembered answer with this prefix's paths, or None."""
    try:
        stored = json.loads(Path(cache_dir, f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or not all(
        isinstance(stored.get(field), kind)
        for field, kind in (("markers", dict), ("tags", list), ("site_packages", list))
    ):
        return None
    return {
        **stored,
        "site_packages": [_localized(path, prefix) for path in stored["site_packages"]],
        "executable": _localized(stored.get("executable"), prefix),
        "headers": _localized(stored.get("headers"), prefix),
    }


def store(cache_dir: str, key: str, prefix: str, answer: dict[str, Any]) -> None:
    """Remember `answer` when every path it names lies in the prefix (written atomically)."""
    roots = sorted({prefix.rstrip(os.sep), os.path.realpath(prefix)}, key=len, reverse=True)
    paths = [*answer.get("site_packages", []), answer.get("executable")]
    generalized = [_generalized(path, roots) for path in paths]
    headers = answer.get("headers")  # None for a virtual environment
    generalized_headers = None if headers is None else _generalized(headers, roots)
    if any(path is None for path in generalized) or (headers is not None and generalized_headers is None):
        return
    stored = {
        **answer,
        "site_packages": generalized[:-1],
        "executable": generalized[-1],
        "headers": generalized_headers,
    }
    os.makedirs(cache_dir, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump(stored, file)
        os.replace(temporary, os.path.join(cache_dir, f"{key}.json"))
    except OSError:
        Path(temporary).unlink(missing_ok=True)


def _generalized(path: Any, roots: list[str]) -> str | None:
    if not isinstance(path, str):
        return None
    for root in roots:
        if path == root or path.startswith(root + os.sep):
            return _PREFIX_MARK + path[len(root) :]
    return None


def _localized(path: Any, prefix: str) -> Any:
    if isinstance(path, str) and path.startswith(_PREFIX_MARK):
        return prefix.rstrip(os.sep) + path[len(_PREFIX_MARK) :]
    return path
