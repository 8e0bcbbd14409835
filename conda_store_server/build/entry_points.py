"""Refuse noarch:python packages whose entry points could escape the prefix or inject code.

py-rattler 0.28.0 (the newest on PyPI) writes entry points from `info/link.json` without
checking them (CVE-2026-47425: a name with `../` writes outside the prefix, a module or function
with other characters becomes code in the generated script). The check after the install would
come too late for a write outside the prefix, so each package's entry points are read and
checked before rattler links anything.
"""

from __future__ import annotations

import json
import re
import tarfile
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import rattler
from conda_package_streaming.package_streaming import stream_conda_info
from rattler.package_streaming import download_to_path, fetch_raw_package_file_from_url

from conda_store_server.exception import BuildFailure

# `name = package.module:object.attribute`, as Python packaging defines console scripts
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
ENTRY_POINT = re.compile(rf"^(?P<name>[A-Za-z0-9_][A-Za-z0-9_.+-]*)\s*=\s*{_DOTTED}:{_DOTTED}$")
ARCHIVE_SUFFIXES = (".conda", ".tar.bz2")


async def check_entry_points(records: list[rattler.RepoDataRecord], package_cache: str) -> None:
    """Every noarch:python record's entry points must be plain `name = module:function`."""
    for record in records:
        if not record.noarch.python:
            continue
        link = await _link_json(record, Path(package_cache))
        for entry_point in link.get("noarch", {}).get("entry_points", []):
            if not isinstance(entry_point, str) or not ENTRY_POINT.match(entry_point.strip()):
                raise BuildFailure(
                    f"Package {record.name.normalized} {record.version} declares the entry point "
                    f"{entry_point!r}, which is not `name = module:function`; it could write outside "
                    "the environment or inject code, so the build was stopped. Remove the package "
                    "or use a fixed build of it."
                )


async def _link_json(record: rattler.RepoDataRecord, package_cache: Path) -> dict[str, Any]:
    """From the extracted package in the shared cache when it is there, else from the archive."""
    extracted = package_cache / _stem(record.file_name) / "info" / "link.json"
    if extracted.is_file():
        return json.loads(extracted.read_text())
    url = urllib.parse.urlparse(record.url)
    if url.scheme == "file":
        return _from_archive(Path(urllib.parse.unquote(url.path)))
    if record.file_name.endswith(".conda"):
        client = rattler.Client()
        try:
            return json.loads(await fetch_raw_package_file_from_url(client, record.url, "info/link.json"))
        except Exception as error:
            if "not found" not in str(error).lower():
                raise BuildFailure(f"Could not read the entry points of {record.url}: {error}") from error
            return {}
    with tempfile.TemporaryDirectory() as directory:
        archive = Path(directory, record.file_name)
        await download_to_path(rattler.Client(), record.url, archive)
        return _from_archive(archive)


def _from_archive(archive: Path) -> dict[str, Any]:
    try:
        with archive.open("rb") as handle:
            for tar, member in stream_conda_info(str(archive), handle):
                if member.name == "info/link.json":
                    extracted = tar.extractfile(member)
                    return json.loads(extracted.read()) if extracted else {}
    except (OSError, tarfile.TarError, ValueError) as error:
        raise BuildFailure(f"Could not read the package {archive.name}: {error}") from error
    return {}


def _stem(file_name: str) -> str:
    for suffix in ARCHIVE_SUFFIXES:
        if file_name.endswith(suffix):
            return file_name[: -len(suffix)]
    return file_name
