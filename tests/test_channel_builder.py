"""The test channel builder makes packages that rattler really solves, installs and runs."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import rattler
from rattler.exceptions import SolverError
from rattler.package import PathsJson

from conda_store_server.testing.channel import (
    BINARY_PLACEHOLDER,
    TEXT_PLACEHOLDER,
    PackageSpec,
    build_channel,
    build_channel_async,
    build_demo_channel,
    build_package,
    demo_packages,
    host_subdir,
)

PY_XY = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_channel(tmp_path_factory.mktemp("channel"))


@pytest.fixture(scope="module")
def pkgs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pkgs")


@pytest.fixture(scope="module")
def env(channel: Path, pkgs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An environment with one of every demo package that can be installed."""
    prefix = tmp_path_factory.mktemp("envs") / "demo"
    specs = ["python", "curl", "hello-tool", "libprefix", "hello-py", "ipykernel"]
    records = solve(channel, specs)
    asyncio.run(rattler.install(records, prefix, cache_dir=pkgs_dir, show_progress=False))
    return prefix


def solve(channel: Path, specs: list[str]) -> list[rattler.RepoDataRecord]:
    gateway = rattler.Gateway(cache_dir=channel.parent / "repodata-cache")
    return asyncio.run(
        rattler.solve(
            [rattler.Channel(channel.as_uri())],
            specs,
            gateway=gateway,
            platforms=[host_subdir(), "noarch"],
        )
    )


def versions(records: list[rattler.RepoDataRecord]) -> dict[str, str]:
    return {record.name.normalized: str(record.version) for record in records}


def run(*command: str | Path) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
    return result.stdout.strip()


def repodata(channel: Path, subdir: str) -> dict[str, dict]:
    return json.loads((channel / subdir / "repodata.json").read_text())["packages.conda"]


def test_channel_indexes_every_package_in_its_subdir(channel: Path) -> None:
    expected = {("noarch" if spec.noarch else host_subdir(), spec.filename) for spec in demo_packages()}
    indexed = {
        (subdir, filename) for subdir in (host_subdir(), "noarch") for filename in repodata(channel, subdir)
    }
    assert indexed == expected

    arch = repodata(channel, host_subdir())
    assert arch["libcurl-8.4.0-0.conda"]["depends"] == ["libzlib >=1.2.13,<2"]
    assert arch["libssl-3.2.0-0.conda"]["constrains"] == ["libcurl >=8.5"]
    assert "constrains" not in arch["libssl-3.0.0-0.conda"]
    python = arch[f"python-{'.'.join(map(str, sys.version_info[:3]))}-0_host.conda"]
    assert (python["name"], python["depends"], python["subdir"]) == ("python", [], host_subdir())
    hello_py = repodata(channel, "noarch")["hello-py-1.1.0-0.conda"]
    assert hello_py["noarch"] == "python"
    assert hello_py["depends"] == ["python >=3.8", "tinylib >=1.0"]


def test_archives_record_prefix_placeholders(channel: Path) -> None:
    binary = PathsJson.from_package_archive(channel / host_subdir() / "libprefix-1.0.0-0.conda")
    [entry] = binary.paths
    assert entry.relative_path == Path("lib/libprefix.dat")
    assert entry.prefix_placeholder.placeholder == BINARY_PLACEHOLDER
    assert entry.prefix_placeholder.file_mode.binary
    text = PathsJson.from_package_archive(channel / "noarch" / "hello-config-1.0.0-0.conda")
    [entry] = text.paths
    assert entry.prefix_placeholder.placeholder == TEXT_PLACEHOLDER
    assert entry.prefix_placeholder.file_mode.text
    assert len(BINARY_PLACEHOLDER) == 255


def test_solve_picks_newest_versions_through_the_chain(channel: Path) -> None:
    assert versions(solve(channel, ["curl"])) == {
        "curl": "8.5.0",
        "libcurl": "8.5.0",
        "libzlib": "1.3.1",
    }


def test_solve_respects_version_ranges(channel: Path) -> None:
    assert versions(solve(channel, ["curl", "libzlib <1.3"])) == {
        "curl": "8.4.0",
        "libcurl": "8.4.0",
        "libzlib": "1.2.13",
    }


def test_solve_respects_constrains(channel: Path) -> None:
    assert versions(solve(channel, ["libssl"])) == {"libssl": "3.2.0"}
    assert versions(solve(channel, ["libssl", "libcurl <8.5"])) == {
        "libssl": "3.0.0",
        "libcurl": "8.4.0",
        "libzlib": "1.3.1",
    }
    with pytest.raises(SolverError, match="libcurl"):
        solve(channel, ["libssl >=3.2", "curl 8.4.*"])


def test_missing_dependency_is_a_solver_error(channel: Path) -> None:
    with pytest.raises(SolverError, match="does-not-exist"):
        solve(channel, ["broken-pkg"])


def test_noarch_python_pulls_in_python_and_dependencies(channel: Path) -> None:
    solved = versions(solve(channel, ["hello-py"]))
    assert solved["hello-py"] == "1.1.0"
    assert solved["tinylib"] == "1.0.0"
    assert solved["python"] == ".".join(map(str, sys.version_info[:3]))
    assert "tinylib" not in versions(solve(channel, ["hello-py ==1.0.0"]))


def test_text_prefix_is_replaced(env: Path) -> None:
    assert (env / "etc" / "hello.conf").read_text() == f"prefix={env}\ngreeting=hello\n"
    assert run(env / "bin" / "hello-tool") == f"hello-tool 1.0.0 says hello from {env}"


def test_binary_prefix_is_nul_padded(env: Path) -> None:
    data = (env / "lib" / "libprefix.dat").read_bytes()
    padding = b"\0" * (len(BINARY_PLACEHOLDER) - len(str(env)))
    head, tail = b"\x7fDEMO\x00", b"\x00\x01\x02tail\x00"
    assert data == head + str(env).encode() + b"/share/libprefix" + padding + tail


def test_executables_run(env: Path) -> None:
    assert run(env / "bin" / "curl") == "curl 8.5.0"


def test_entry_point_runs_with_the_environment_python(env: Path) -> None:
    entry_point = env / "bin" / "hello-py"
    assert entry_point.read_text().startswith(f"#!{env}/bin/python{PY_XY}\n")
    assert run(entry_point) == "hello from hello-py 1.1.0"


def test_python_is_the_environment_interpreter(env: Path) -> None:
    code = (
        "import sys, site, hello_py, ipykernel, importlib.metadata as md;"
        "print(sys.prefix); print(hello_py.__file__); print(md.version('hello-py'));"
        "print([p for p in sys.path if p.endswith('-packages')]); print(site.ENABLE_USER_SITE)"
    )
    site_packages = env / "lib" / f"python{PY_XY}" / "site-packages"
    for name in ("python", "python3", f"python{PY_XY}"):
        assert run(env / "bin" / name, "-c", code).splitlines() == [
            str(env),
            str(site_packages / "hello_py" / "__init__.py"),
            "1.1.0",
            str([str(site_packages)]),
            "False",
        ]


def test_python_keeps_working_after_the_environment_moves(env: Path, tmp_path: Path) -> None:
    moved = shutil.copytree(env, tmp_path / "moved", symlinks=True)
    code = "import sys, tinylib; print(sys.prefix); print(tinylib.__file__)"
    assert run(moved / "bin" / "python", "-c", code).splitlines() == [
        str(moved),
        str(moved / "lib" / f"python{PY_XY}" / "site-packages" / "tinylib" / "__init__.py"),
    ]


def test_build_channel_from_a_thread_and_from_async_code(tmp_path: Path) -> None:
    spec = PackageSpec(
        name="solo",
        version="2.0",
        noarch="generic",
        files={"share/solo.txt": b"\x00bytes"},
        timestamp=1_700_000_000_000,
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(build_channel, tmp_path / "threaded", [spec]).result()
    assert repodata(tmp_path / "threaded", "noarch")["solo-2.0-0.conda"]["timestamp"] == (1_700_000_000_000)
    assert repodata(tmp_path / "threaded", host_subdir()) == {}

    async def from_async() -> None:
        with pytest.raises(RuntimeError, match="build_channel_async"):
            build_channel(tmp_path / "async", [spec])
        await build_channel_async(tmp_path / "async", [spec])

    asyncio.run(from_async())
    assert list(repodata(tmp_path / "async", "noarch")) == ["solo-2.0-0.conda"]


@pytest.mark.parametrize(
    ("spec", "subdir", "message"),
    [
        (PackageSpec("a", "1", noarch="generic"), "linux-64", "cannot go into subdir"),
        (PackageSpec("a", "1"), "noarch", "cannot go into subdir"),
        (PackageSpec("a", "1", noarch="java"), "noarch", "noarch must be one of"),
        (PackageSpec("a", "1", entry_points=("a = a:main",)), "linux-64", "need noarch='python'"),
        (PackageSpec("a", "1", text_prefix_files={"etc/a": "no"}), "linux-64", "placeholder"),
        (PackageSpec("a", "1", executables=frozenset({"bin/a"})), "linux-64", "not in the package"),
        (
            PackageSpec("a", "1", files={"f": "x"}, text_prefix_files={"f": TEXT_PLACEHOLDER}),
            "linux-64",
            "more than once",
        ),
    ],
)
def test_build_package_rejects_inconsistent_specs(
    spec: PackageSpec, subdir: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        build_package(spec, tmp_path, subdir)
    assert not list(tmp_path.rglob("*.conda"))
