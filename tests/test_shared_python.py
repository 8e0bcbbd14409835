"""uv given the package cache's copy of the environment's python (`build/shared_python.py`).

What such an install leaves must be what uv leaves when it runs the environment's own python:
the same files, scripts that name and run the environment's python, RECORD files that are
true, headers where that python keeps them; and nothing of uv's cache is changed on the way.
These install real wheels with real uv into environments rattler installs from the demo
channel.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import rattler

from conda_store_server.build import pip, shared_python
from conda_store_server.build.interpreter_cache import python_record
from conda_store_server.build.wheel_record import record_hash
from conda_store_server.exception import BuildFailure
from conda_store_server.testing.channel import host_subdir
from conda_store_server.testing.pypi import WheelSpec, build_wheel
from conda_store_server.testing.pypi import source_project as pip_source_files

SHOW_PREFIX = "import sys\nprint('prefix', sys.prefix)\n"
PYTHON_X_Y = f"python{sys.version_info.major}.{sys.version_info.minor}"  # the demo channel's


class Lines:
    """A build log that keeps what it is given."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture(scope="module")
def tool_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel with each kind of file an installer treats specially: a console script, a data
    script with `#!python`, a shell script it links as it is, and a C header."""
    spec = WheelSpec(
        name="pytool",
        version="1.0.0",
        modules={
            "pytool/__init__.py": "def main():\n    import sys\n    print('prefix', sys.prefix)\n",
            "pytool-1.0.0.data/scripts/pytool-raw": f"#!python\n{SHOW_PREFIX}",
            "pytool-1.0.0.data/scripts/pytool-sh": "#!/bin/sh\necho shell\n",
            "pytool-1.0.0.data/headers/pytool.h": "/* pytool */\n",
        },
        console_scripts={"pytool": "pytool:main"},
    )
    return build_wheel(spec, tmp_path_factory.mktemp("tool-wheel"))


def environment(channel: Path, prefix: Path, cache: Path) -> None:
    async def install() -> None:
        records = await rattler.solve([channel.as_uri()], ["python"], platforms=[host_subdir(), "noarch"])
        await rattler.install(records, prefix, cache_dir=cache, show_progress=False)

    asyncio.run(install())


def installed_files(prefix: Path) -> dict[str, bytes]:
    """Relative path -> content of the distribution's files (from its RECORD), RECORD aside."""
    (dist_info,) = prefix.glob("lib/python*/site-packages/pytool-1.0.0.dist-info")
    files = {}
    for row in csv.reader((dist_info / "RECORD").read_text().splitlines()):
        path = os.path.normpath(dist_info.parent / row[0])
        if not path.endswith("RECORD"):
            files[os.path.relpath(path, prefix)] = Path(path).read_bytes()
    return files


def assert_record_is_true(prefix: Path) -> None:
    for dist_info in prefix.glob("lib/python*/site-packages/*.dist-info"):
        for row in csv.reader((dist_info / "RECORD").read_text().splitlines()):
            if row[1]:
                content = Path(os.path.normpath(dist_info.parent / row[0])).read_bytes()
                assert row[1:] == [record_hash(content), str(len(content))], row


def install(prefix: Path, file: Path, uv_cache: Path, *, shared: bool, **changes: object) -> Lines:
    """`pip.install` of a wheel or source archive, as a build does it: the log it wrote."""
    interpreter = pip.inspect_interpreter(str(prefix), 30)
    if not shared:
        interpreter = dataclasses.replace(interpreter, shared_python=None)
    interpreter = dataclasses.replace(interpreter, **changes)
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    package = pip.PipPackage(file.name.split("-")[0], "1.0.0", file.as_uri(), digest)
    options = pip.PipOptions(requirements=(), index_url="https://pypi.invalid/simple")
    log = Lines()
    scratch = prefix.parent / f"{prefix.name}-scratch"
    scratch.mkdir()
    pip.install(interpreter, [package], options, str(uv_cache), str(scratch), log)
    return log


@pytest.mark.parametrize("parent", ["plain", "a space", "long" * 30])
def test_an_install_by_the_shared_python_equals_one_by_the_environments(
    demo_channel: Path, tool_wheel: Path, tmp_path: Path, parent: str
):
    """Also for prefixes whose scripts need the /bin/sh form of a shebang (a space in the path,
    or a path longer than a `#!` line may be)."""
    cache, uv_cache = tmp_path / "pkgs", tmp_path / "uv-cache"
    shared_prefix, own_prefix = tmp_path / parent / "shared", tmp_path / parent / "own"
    for prefix in (shared_prefix, own_prefix):
        environment(demo_channel, prefix, cache)

    log = install(shared_prefix, tool_wheel, uv_cache, shared=True)
    install(own_prefix, tool_wheel, uv_cache, shared=False)

    (python_package,) = [p for p in cache.glob("python-*") if p.is_dir()]
    uv_copy = Path(f"{cache}-uv-python") / python_package.name
    [command] = [line for line in log.lines if line.startswith("uv pip install")]
    assert f"--python {uv_copy}/bin/python" in command and f"--prefix {shared_prefix}" in command

    shared, own = installed_files(shared_prefix), installed_files(own_prefix)
    assert set(shared) == set(own)
    assert f"include/site/{PYTHON_X_Y}/pytool/pytool.h" in shared  # the demo python is venv-like
    for path, content in own.items():
        expected = content.replace(os.fsencode(own_prefix), os.fsencode(shared_prefix))
        assert shared[path] == expected, path
    assert_record_is_true(shared_prefix)
    for script in ("pytool", "pytool-raw"):
        result = subprocess.run([shared_prefix / "bin" / script], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"prefix {shared_prefix}"
    for root, _, names in os.walk(uv_cache):  # what uv links from its cache is left as it was
        for name in names:
            path = Path(root, name)
            if path.is_file() and not path.is_symlink():
                assert os.fsencode(str(shared_prefix)) not in path.read_bytes(), path


def test_headers_go_where_a_python_that_is_no_virtual_environment_keeps_them(
    demo_channel: Path, tool_wheel: Path, tmp_path: Path
):
    prefix = tmp_path / "env"
    environment(demo_channel, prefix, tmp_path / "pkgs")
    headers = str(prefix / "include" / PYTHON_X_Y)
    install(prefix, tool_wheel, tmp_path / "uv-cache", shared=True, headers=headers)

    files = installed_files(prefix)
    assert files[f"include/{PYTHON_X_Y}/pytool/pytool.h"] == b"/* pytool */\n"
    assert not any(path.startswith("include/site/") for path in files)
    assert not (prefix / "include" / "site").exists()
    assert_record_is_true(prefix)


def test_an_environment_whose_python_is_not_in_the_cache_uses_its_own(
    demo_channel: Path, tool_wheel: Path, tmp_path: Path
):
    prefix = tmp_path / "env"
    environment(demo_channel, prefix, tmp_path / "pkgs")
    meta = next(prefix.glob("conda-meta/python-*.json"))
    record = json.loads(meta.read_text())
    python = pip.inspect_interpreter(str(prefix), 30).python
    assert shared_python.find(str(prefix), python, python_record(str(prefix))) is not None

    copied = tmp_path / "other-cache" / "python-copied"
    shutil.copytree(record["extracted_package_dir"], copied)  # the same bytes: still the python
    meta.write_text(json.dumps({**record, "extracted_package_dir": str(copied)}))
    relative = os.path.relpath(python, prefix)
    assert shared_python.find(str(prefix), python, python_record(str(prefix))) == str(
        tmp_path / "other-cache-uv-python" / copied.name / relative
    )

    copied_python = copied / relative
    copied_python.unlink()
    copied_python.write_bytes(b"#!/bin/sh\nexit 1\n")  # another interpreter: never taken for it
    copied_python.chmod(0o755)
    assert shared_python.find(str(prefix), python, python_record(str(prefix))) is None
    meta.write_text(
        json.dumps({key: value for key, value in record.items() if key != "extracted_package_dir"})
    )
    assert shared_python.find(str(prefix), python, python_record(str(prefix))) is None
    assert (
        shared_python.find(str(prefix), "/usr/bin/python3", python_record(str(prefix))) is None
    )  # not the prefix's

    log = install(prefix, tool_wheel, tmp_path / "uv-cache", shared=True)
    [command] = [line for line in log.lines if line.startswith("uv pip install")]
    assert f"--python {python}" in command and "--prefix" not in command


def test_only_scripts_naming_the_interpreter_uv_ran_are_rewritten(tmp_path: Path):
    prefix = tmp_path / "env"
    site_packages = prefix / "lib" / PYTHON_X_Y / "site-packages"
    dist_info = site_packages / "x-1.dist-info"
    dist_info.mkdir(parents=True)
    (prefix / "bin").mkdir()
    ran, python = str(tmp_path / "pkgs" / "bin" / PYTHON_X_Y), str(prefix / "bin" / PYTHON_X_Y)
    Path(ran).parent.mkdir(parents=True)
    Path(ran).write_text("")
    scripts = {
        "mine": f"#!{ran}\nprint(1)\n",
        "env": "#!/usr/bin/env python\nprint(2)\n",
        "other": "#!/opt/other/python\nprint(3)\n",
        "binary": "\x7fELF",
    }
    rows = []
    for name, text in scripts.items():
        (prefix / "bin" / name).write_text(text)
        rows.append([f"../../../bin/{name}", record_hash(text.encode()), str(len(text))])
    (dist_info / "RECORD").write_text(
        "".join(f"{','.join(row)}\n" for row in rows) + "x-1.dist-info/RECORD,,\n"
    )

    shared_python.relocate(str(prefix), [str(dist_info)], ran, python, None)

    assert (prefix / "bin" / "mine").read_text() == f"#!{python}\nprint(1)\n"
    for name in ("env", "other", "binary"):
        assert (prefix / "bin" / name).read_text() == scripts[name]
    assert_record_is_true(prefix)


def test_a_source_archive_is_built_by_the_environments_own_python(demo_channel: Path, tmp_path: Path):
    """Building runs the interpreter, and the cache's copy would build with its placeholders."""
    spec = WheelSpec("pysource", "1.0.0", {"pysource/__init__.py": "import sys\nPREFIX = sys.prefix\n"})
    archive = tmp_path / "pysource-1.0.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in {
            **pip_source_files(spec),
            "PKG-INFO": "Metadata-Version: 2.1\nName: pysource\nVersion: 1.0.0\n",
        }.items():
            path = tmp_path / "tree" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            tar.add(path, arcname=f"pysource-1.0.0/{name}")
    prefix = tmp_path / "env"
    environment(demo_channel, prefix, tmp_path / "pkgs")
    python = pip.inspect_interpreter(str(prefix), 30).python

    log = install(prefix, archive, tmp_path / "uv-cache", shared=True)

    [command] = [line for line in log.lines if line.startswith("uv pip install")]
    assert f"--python {python}" in command and "--prefix" not in command
    code = "import pysource; print(pysource.PREFIX)"
    assert subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip() == str(prefix)


def test_a_copy_uv_cannot_run_gives_way_to_the_environments_python(
    demo_channel: Path, tool_wheel: Path, index, tmp_path: Path
):
    """A cached copy that does not run (found only when uv tries) costs a retry, not the build."""
    prefix = tmp_path / "env"
    environment(demo_channel, prefix, tmp_path / "pkgs")
    broken = tmp_path / "broken" / "python3"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho 'cannot start' >&2\nexit 3\n")
    broken.chmod(0o755)

    log = install(prefix, tool_wheel, tmp_path / "uv-cache", shared=True, shared_python=str(broken))
    assert f"uv could not run {broken}; the environment's own python is used instead" in log.lines
    assert subprocess.run([prefix / "bin" / "pytool"], capture_output=True, text=True).stdout.strip() == (
        f"prefix {prefix}"
    )

    interpreter = dataclasses.replace(pip.inspect_interpreter(str(prefix), 30), shared_python=str(broken))
    options = pip.pip_options(["pipgreet"], f"{index.url}/simple", [])
    budget, log = pip.SolveBudget(60, time.monotonic()), Lines()
    resolved = pip.resolve(interpreter, options, str(tmp_path / "uv-cache"), str(tmp_path), budget, log)
    assert {package.name for package in resolved} == {"pipgreet", "pipcolor", "tinylib"}
    assert f"uv could not run {broken}; the environment's own python is used instead" in log.lines


def test_the_copy_uv_runs_stays_the_same_file_while_environments_come_and_go(
    demo_channel: Path, tmp_path: Path
):
    """uv re-queries an interpreter whose inode changed (ctime): every new environment links the
    cache's python once more, so uv is given a copy that nothing links, laid out once."""
    cache = tmp_path / "pkgs"
    environment(demo_channel, tmp_path / "first", cache)
    first = pip.inspect_interpreter(str(tmp_path / "first"), 30)
    assert first.shared_python is not None and first.shared_python.startswith(f"{cache}-uv-python/")
    before = os.stat(first.shared_python)

    environment(demo_channel, tmp_path / "second", cache)
    second = pip.inspect_interpreter(str(tmp_path / "second"), 30)
    after = os.stat(second.shared_python)
    assert second.shared_python == first.shared_python
    assert (after.st_ino, after.st_ctime_ns, after.st_nlink) == (before.st_ino, before.st_ctime_ns, 1)
    result = subprocess.run(
        [second.shared_python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True
    )
    assert result.stdout.strip() == str(Path(second.shared_python).parent.parent)  # runs from the copy

    (python_package,) = [p for p in cache.glob("python-*") if p.is_dir()]
    os.utime(python_package / os.path.relpath(second.python, tmp_path / "second"), (1, 1))  # re-extracted
    third = pip.inspect_interpreter(str(tmp_path / "second"), 30)
    assert third.shared_python == first.shared_python and os.stat(third.shared_python).st_ino != before.st_ino


def test_a_failing_wheel_install_fails_with_uvs_reason_and_no_retry(
    demo_channel: Path, tool_wheel: Path, tmp_path: Path
):
    prefix = tmp_path / "env"
    environment(demo_channel, prefix, tmp_path / "pkgs")
    interpreter = pip.inspect_interpreter(str(prefix), 30)
    package = pip.PipPackage("pytool", "1.0.0", tool_wheel.as_uri(), "0" * 64)  # not its hash
    options = pip.PipOptions(requirements=(), index_url="https://pypi.invalid/simple")
    log = Lines()
    with pytest.raises(BuildFailure, match="(?i)hash"):
        pip.install(interpreter, [package], options, str(tmp_path / "uv-cache"), str(tmp_path), log)
    assert len([line for line in log.lines if line.startswith("uv pip install")]) == 1
    assert not any("could not run" in line for line in log.lines)
