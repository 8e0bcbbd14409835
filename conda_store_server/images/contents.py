"""What goes into an image's layers: one unit per conda package and per pip distribution.

The environment is installed a second time for the image, into scratch space but with its
files rewritten for the image's own prefix (rattler's alternative target prefix), so a package's
files are the same for every environment on every worker: that is what lets images share layers.
Pip distributions are taken from the built environment, with the build's prefix (script
shebangs) rewritten and their RECORD hashes made true again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conda_store_server.build.install import inside
from conda_store_server.build.wheel_record import record_hash
from conda_store_server.images.layers import LayerFile
from conda_store_server.redact import mask_credentials

# Changes whenever the bytes a unit's layer holds would change for the same input, so cached
# layer digests from an earlier release are never reused for different content.
LAYER_FORMAT = "conda-store-layer-1"
# conda-meta fields that name this worker's package cache: meaningless inside an image.
_WORKER_FIELDS = ("extracted_package_dir", "package_tarball_full_path", "link")


@dataclass
class Unit:
    """Files that travel together: a package, a pip distribution, or the environment's own.

    `key` identifies the layer content without reading the files when it can (a conda
    package's checksum and paths); two units with one key give one layer."""

    name: str
    package: str
    key: str
    files: list[LayerFile] = field(default_factory=list)


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps([LAYER_FORMAT, *parts], sort_keys=True).encode()).hexdigest()


def conda_records(prefix: Path) -> list[dict[str, Any]]:
    """The installed packages' records (conda-meta), read once for every use below."""
    return [json.loads(path.read_text()) for path in sorted(prefix.glob("conda-meta/*.json"))]


def _in_image(image_prefix: str, relative: str) -> str:
    return f"{image_prefix.rstrip('/')}/{relative}"


def conda_units(records: list[dict[str, Any]], prefix: Path, image_prefix: str) -> list[Unit]:
    """One unit per installed conda package, keyed by its checksum and the paths it installed
    (a noarch:python package lands under the environment's python version)."""
    units = []
    for record in records:
        paths = sorted(entry["_path"] for entry in record.get("paths_data", {}).get("paths", []))
        if not paths:
            paths = sorted(record.get("files", []))
        identity = record.get("sha256") or record.get("md5") or mask_credentials(record.get("url", ""))
        unit = Unit(
            name=f"{record['name']}-{record['version']}-{record['build']}",
            package=record["name"],
            key=_digest("conda", image_prefix, identity, paths),
        )
        unit.files = [LayerFile(_in_image(image_prefix, path), prefix / path) for path in paths]
        units.append(unit)
    return units


def owned_by_conda(records: list[dict[str, Any]]) -> set[str]:
    return {path for record in records for path in record.get("files", [])}


def environment_unit(prefix: Path, image_prefix: str) -> Unit:
    """conda-meta, as the image's own: without this worker's cache paths or URL credentials."""
    files = []
    for path in sorted(prefix.glob("conda-meta/*")):
        relative = f"conda-meta/{path.name}"
        if path.suffix == ".json":
            record = json.loads(path.read_text())
            for name in _WORKER_FIELDS:
                record.pop(name, None)
            for name in ("url", "channel"):
                if isinstance(record.get(name), str):
                    record[name] = mask_credentials(record[name])
            content = json.dumps(record, indent=2, sort_keys=True).encode()
            files.append(LayerFile(_in_image(image_prefix, relative), path, content))
        elif path.is_file():
            files.append(LayerFile(_in_image(image_prefix, relative), path))
    key = _digest(
        "environment",
        [(f.path, hashlib.sha256(f.content or f.source.read_bytes()).hexdigest()) for f in files],
    )
    return Unit(name="conda-meta", package="conda-meta", key=key, files=files)


def pip_units(
    prefix: Path, image_prefix: str, conda_owned: set[str], also_rewritten: str | None = None
) -> list[Unit]:
    """One unit per distribution that pip (uv, or a wheel installer) put into `prefix`: the
    `*.dist-info` directories no conda package owns. Text files naming `prefix`, or the prefix
    `also_rewritten` (where the interpreter in scripts' shebangs lives), name the image's instead."""
    old_prefixes = [os.fsencode(str(prefix))] + ([os.fsencode(also_rewritten)] if also_rewritten else [])
    units = []
    for dist_info in sorted(prefix.glob("lib/python*/site-packages/*.dist-info")):
        record = dist_info / "RECORD"
        if record.relative_to(prefix).as_posix() not in conda_owned and record.is_file():
            units.append(_pip_unit(prefix, dist_info, image_prefix, old_prefixes))
    return units


def _pip_unit(prefix: Path, dist_info: Path, image_prefix: str, old_prefixes: list[bytes]) -> Unit:
    """The files the distribution's RECORD lists, inside the prefix; RECORD itself is rewritten
    last, with the hashes of the files whose prefix was rewritten."""
    new_prefix = os.fsencode(image_prefix)
    site_packages = dist_info.parent
    record_source = dist_info / "RECORD"
    record_relative = record_source.relative_to(site_packages).as_posix()
    rows = list(csv.reader(io.StringIO(record_source.read_text())))
    root = os.path.realpath(prefix)
    files: list[LayerFile] = []
    fingerprint = []
    new_rows = []
    for row in rows:
        if not row:
            continue
        path = os.path.normpath(os.path.join(site_packages, row[0]))
        relative = os.path.relpath(path, prefix)
        escapes = not inside(path, str(prefix)) or not inside(os.path.realpath(os.path.dirname(path)), root)
        if row[0] == record_relative or escapes or not os.path.lexists(path):
            new_rows.append(row)
            continue
        source = Path(path)
        content = None
        if not source.is_symlink():
            data = source.read_bytes()
            if any(old in data for old in old_prefixes) and b"\0" not in data:
                content = data
                for old in old_prefixes:
                    content = content.replace(old, new_prefix)
                row = [row[0], record_hash(content), str(len(content))]
            fingerprint.append(
                (relative, hashlib.sha256(content or data).hexdigest(), os.access(path, os.X_OK))
            )
        else:
            fingerprint.append((relative, os.readlink(path), False))
        new_rows.append(row)
        files.append(LayerFile(_in_image(image_prefix, relative), source, content))
    record_text = io.StringIO()
    csv.writer(record_text, lineterminator="\n").writerows(new_rows)
    record_content = record_text.getvalue().encode()
    files.append(
        LayerFile(
            _in_image(image_prefix, record_source.relative_to(prefix).as_posix()),
            record_source,
            record_content,
        )
    )
    fingerprint.append(("RECORD", hashlib.sha256(record_content).hexdigest(), False))
    name = dist_info.name.removesuffix(".dist-info")
    return Unit(
        name=f"pip:{name}",
        package=f"pip:{name.rsplit('-', 1)[0].lower()}",
        key=_digest("pip", image_prefix, sorted(fingerprint)),
        files=files,
    )


def group_units(units: Iterable[Unit], budget: int) -> list[list[Unit]]:
    """One layer per unit while they fit the budget; beyond it, units share layers by a stable
    rule (a hash of the unit's name), so a changed package still rewrites only its group."""
    units = sorted(units, key=lambda unit: unit.name)
    if len(units) <= budget:
        return [[unit] for unit in units]
    groups: list[list[Unit]] = [[] for _ in range(max(budget, 1))]
    for unit in units:
        groups[int(hashlib.sha256(unit.package.encode()).hexdigest()[:8], 16) % len(groups)].append(unit)
    return [group for group in groups if group]
