"""Entry points that could escape the prefix or inject code stop the build before anything links."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from rattler.package_streaming import extract

from conda_store_server.build import install, solve
from conda_store_server.exception import BuildFailure
from conda_store_server.testing.channel import build_channel, host_subdir, python_package
from conda_store_server.testing.package_builder import PackageSpec

ESCAPING = "../../../../escaped-by-entry-point = os:getcwd"
INJECTING = "innocent = os:getcwd;import shutil"


def _package(name: str, entry_point: str) -> PackageSpec:
    return PackageSpec(
        name=name,
        version="1.0.0",
        noarch="python",
        depends=("python >=3.8",),
        python_site_packages={f"{name.replace('-', '_')}/__init__.py": "def main():\n    pass\n"},
        entry_points=(entry_point,),
    )


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_channel(
        tmp_path_factory.mktemp("entry-points") / "channel",
        [
            python_package(),
            _package("escaping", ESCAPING),
            _package("injecting", INJECTING),
            _package("fine", "fine-tool = fine.cli:main"),
        ],
    )


def _records(channel: Path, name: str, tmp_path: Path) -> list:
    solved = asyncio.run(
        solve.solve([channel.as_uri()], [name], [host_subdir()], str(tmp_path / "repodata"), 60)
    )
    return solved[host_subdir()]


@pytest.mark.parametrize(("name", "entry_point"), [("escaping", ESCAPING), ("injecting", INJECTING)])
def test_a_bad_entry_point_stops_the_install_before_linking(
    channel: Path, tmp_path: Path, name: str, entry_point: str
) -> None:
    prefix = tmp_path / "deep" / "er" / "env"
    records = _records(channel, name, tmp_path)
    with pytest.raises(BuildFailure, match="not `name = module:function`") as failure:
        asyncio.run(install.install(records, str(prefix), str(tmp_path / "pkgs")))
    assert repr(entry_point) in str(failure.value)
    assert not prefix.exists()
    assert not any(tmp_path.rglob("escaped-by-entry-point*"))


def test_entry_points_are_read_from_the_shared_cache_when_extracted(channel: Path, tmp_path: Path) -> None:
    records = _records(channel, "escaping", tmp_path)
    cache = tmp_path / "pkgs"
    # the cached copy wins over the archive: a package already extracted is checked as extracted
    (record,) = [r for r in records if r.name.normalized == "escaping"]
    extracted = cache / record.file_name.removesuffix(".conda").removesuffix(".tar.bz2")
    extract(channel / "noarch" / record.file_name, extracted)
    link = extracted / "info" / "link.json"
    link.write_text(link.read_text().replace(ESCAPING, "repaired = escaping:main"))
    asyncio.run(install.install(records, str(tmp_path / "env"), str(cache)))
    assert (tmp_path / "env" / "bin" / "repaired").exists()


def test_well_formed_entry_points_install(channel: Path, tmp_path: Path) -> None:
    records = _records(channel, "fine", tmp_path)
    asyncio.run(install.install(records, str(tmp_path / "env"), str(tmp_path / "pkgs")))
    assert (tmp_path / "env" / "bin" / "fine-tool").exists()
