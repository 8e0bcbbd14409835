"""Artifacts made from an installed prefix: the exported YAML and the conda-pack archive."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml


def installed_records(prefix: str) -> list[dict[str, Any]]:
    records = [json.loads(p.read_text()) for p in Path(prefix, "conda-meta").glob("*.json")]
    return sorted(records, key=lambda record: record["name"])


def export_yaml(name: str, prefix: str, channels: list[str], pip: list[str]) -> str:
    """What `conda env export` gives: exact name=version=build pins, plus pip pins."""
    dependencies: list[Any] = [
        f"{record['name']}={record['version']}={record['build']}" for record in installed_records(prefix)
    ]
    if pip:
        dependencies.append({"pip": pip})
    document = {"name": name, "channels": channels, "dependencies": dependencies, "prefix": prefix}
    return yaml.safe_dump(document, sort_keys=False)


def conda_pack_archive(prefix: str, destination_directory: str) -> str:
    """Pack the prefix relocatably; `conda-unpack` in the unpacked copy rewrites its prefixes."""
    import conda_pack

    output = os.path.join(destination_directory, "environment.tar.gz")
    conda_pack.pack(
        prefix=prefix,
        output=output,
        format="tar.gz",
        ignore_missing_files=True,
        ignore_editable_packages=True,
        force=True,
        verbose=False,
    )
    return output


def temporary_directory(store_directory: str) -> tempfile.TemporaryDirectory[str]:
    """Scratch space on the store's filesystem, so large artifacts never fill /tmp."""
    scratch = os.path.join(store_directory, ".tmp")
    os.makedirs(scratch, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=scratch)
