"""Build real ``.conda`` packages from a short Python description.

Tests, the standalone demo and the benchmarks need conda packages that rattler can solve,
install, prefix-relocate and link exactly like packages from a public channel, but the machines
that run them have no conda channel to download from. ``build_package`` writes such packages
offline: it stages the payload and the ``info/`` metadata conda-build would write (``index.json``,
``paths.json`` with prefix placeholders, ``files``, ``has_prefix``, ``about.json`` and, for
noarch:python, ``link.json`` with entry points) and archives it with conda-package-handling.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import rattler
from conda_package_handling import api as cph

TEXT_PLACEHOLDER = "/opt/anaconda1anaconda2anaconda3"
"""The prefix placeholder conda replaces in text files (any length replacement is fine)."""

BINARY_PLACEHOLDER = "/opt/" + "placehold_" * 25
"""A 255-character placeholder, as conda-build uses for binary files.

Binary files cannot change length, so the installer overwrites the placeholder with the (shorter)
target prefix and pads the rest of the NUL-terminated string with NUL bytes. The placeholder has
to be long so that any real prefix fits.
"""

NOARCH_KINDS = (None, "generic", "python")


@dataclass(frozen=True)
class PackageSpec:
    """Everything needed to build one conda package.

    ``files``, ``text_prefix_files`` and ``binary_prefix_files`` map paths relative to the
    environment prefix (for noarch:python, relative to the archive root) to their contents;
    ``python_site_packages`` maps paths relative to ``site-packages`` (noarch:python only), which
    the installer places in the environment's ``lib/pythonX.Y/site-packages``.
    """

    name: str
    version: str
    build: str = "0"
    build_number: int = 0
    depends: tuple[str, ...] = ()
    constrains: tuple[str, ...] = ()
    noarch: str | None = None
    files: Mapping[str, bytes | str] = field(default_factory=dict)
    text_prefix_files: Mapping[str, str] = field(default_factory=dict)
    binary_prefix_files: Mapping[str, bytes] = field(default_factory=dict)
    executables: frozenset[str] = frozenset()
    entry_points: tuple[str, ...] = ()
    python_site_packages: Mapping[str, str] = field(default_factory=dict)
    license: str = "BSD-3-Clause"
    summary: str = ""
    timestamp: int | None = None

    @property
    def filename(self) -> str:
        """The archive name conda uses: ``<name>-<version>-<build>.conda``."""
        return f"{self.name}-{self.version}-{self.build}.conda"


@dataclass(frozen=True)
class _PayloadFile:
    path: str
    content: bytes
    placeholder: str | None = None
    file_mode: str | None = None


def build_package(spec: PackageSpec, out_dir: Path, subdir: str) -> Path:
    """Write ``<out_dir>/<subdir>/<spec.filename>`` and return its path.

    conda-package-handling changes the process's working directory while it archives, so do not
    call this concurrently with code that relies on relative paths.
    """
    _check_subdir(spec, subdir)
    payload = _payload(spec)
    payload += [
        _PayloadFile(f"info/{name}", text.encode())
        for name, text in _info_files(spec, subdir, payload).items()
    ]
    target_dir = (out_dir / subdir).resolve()
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pkg-stage-") as tmp:
        stage = Path(tmp)
        for item in payload:
            _write(stage / item.path, item.content, executable=item.path in spec.executables)
        file_list = sorted(item.path for item in payload)
        cph.create(str(stage), file_list, spec.filename, out_folder=str(target_dir))
    return target_dir / spec.filename


def _check_subdir(spec: PackageSpec, subdir: str) -> None:
    if spec.noarch not in NOARCH_KINDS:
        raise ValueError(f"{spec.name}: noarch must be one of {NOARCH_KINDS}, not {spec.noarch!r}")
    if (spec.noarch is not None) != (subdir == "noarch"):
        raise ValueError(f"{spec.name}: noarch={spec.noarch!r} cannot go into subdir {subdir!r}")
    if spec.noarch != "python" and (spec.entry_points or spec.python_site_packages):
        raise ValueError(f"{spec.name}: entry points and site-packages need noarch='python'")


def _payload(spec: PackageSpec) -> list[_PayloadFile]:
    """All package files, validated: no duplicates, placeholders present, executables exist."""
    items = [_PayloadFile(path, _as_bytes(content)) for path, content in spec.files.items()]
    items += [
        _PayloadFile(f"site-packages/{path}", content.encode())
        for path, content in spec.python_site_packages.items()
    ]
    if spec.noarch == "python":
        items += _dist_info(spec)
    items += [
        _prefix_file(path, content.encode(), TEXT_PLACEHOLDER, "text")
        for path, content in spec.text_prefix_files.items()
    ]
    items += [
        _prefix_file(path, content, BINARY_PLACEHOLDER, "binary")
        for path, content in spec.binary_prefix_files.items()
    ]
    paths = [item.path for item in items]
    duplicates = sorted({path for path in paths if paths.count(path) > 1})
    if duplicates:
        raise ValueError(f"{spec.name}: paths given more than once: {duplicates}")
    missing = sorted(spec.executables - set(paths))
    if missing:
        raise ValueError(f"{spec.name}: executables not in the package: {missing}")
    return items


def _prefix_file(path: str, content: bytes, placeholder: str, mode: str) -> _PayloadFile:
    if placeholder.encode() not in content:
        raise ValueError(f"{path}: a {mode} prefix file must contain its placeholder")
    return _PayloadFile(path, content, placeholder, mode)


def _dist_info(spec: PackageSpec) -> list[_PayloadFile]:
    """Minimal ``.dist-info`` so ``importlib.metadata`` and pip see the package as installed."""
    folder = f"site-packages/{re.sub(r'[-_.]+', '_', spec.name)}-{spec.version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {spec.name}\nVersion: {spec.version}\n"
    if spec.summary:
        metadata += f"Summary: {spec.summary}\n"
    return [
        _PayloadFile(f"{folder}/METADATA", metadata.encode()),
        _PayloadFile(f"{folder}/INSTALLER", b"conda\n"),
    ]


def _info_files(spec: PackageSpec, subdir: str, payload: list[_PayloadFile]) -> dict[str, str]:
    """The ``info/`` metadata files (name relative to ``info/`` -> text)."""
    paths = [_paths_entry(item) for item in payload]
    info = {
        "index.json": _json(_index_json(spec, subdir)),
        "paths.json": _json({"paths": paths, "paths_version": 1}),
        "files": "".join(f"{item.path}\n" for item in payload),
        "about.json": _json({"license": spec.license, "summary": spec.summary}),
    }
    has_prefix = [
        f"{item.placeholder} {item.file_mode} {shlex.quote(item.path)}\n"
        for item in payload
        if item.placeholder
    ]
    if has_prefix:
        info["has_prefix"] = "".join(has_prefix)
    if spec.noarch == "python":
        link = {"noarch": {"type": "python", "entry_points": list(spec.entry_points)}}
        info["link.json"] = _json({**link, "package_metadata_version": 1})
    return info


def _index_json(spec: PackageSpec, subdir: str) -> dict[str, object]:
    index: dict[str, object] = {
        "name": spec.name,
        "version": spec.version,
        "build": spec.build,
        "build_number": spec.build_number,
        "depends": list(spec.depends),
        "license": spec.license,
        "subdir": subdir,
        "timestamp": spec.timestamp if spec.timestamp is not None else int(time.time() * 1000),
    }
    if spec.constrains:
        index["constrains"] = list(spec.constrains)
    if spec.noarch is None:
        platform = rattler.Subdir(subdir)
        index["arch"] = str(platform.arch) if platform.arch is not None else None
        index["platform"] = platform.only_platform
    else:
        index["noarch"] = spec.noarch
    return index


def _paths_entry(item: _PayloadFile) -> dict[str, object]:
    entry: dict[str, object] = {
        "_path": item.path,
        "path_type": "hardlink",
        "sha256": hashlib.sha256(item.content).hexdigest(),
        "size_in_bytes": len(item.content),
    }
    if item.placeholder:
        entry["prefix_placeholder"] = item.placeholder
        entry["file_mode"] = item.file_mode
    return entry


def _write(path: Path, content: bytes, *, executable: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(0o755 if executable else 0o644)


def _as_bytes(content: bytes | str) -> bytes:
    return content.encode() if isinstance(content, str) else content


def _json(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
