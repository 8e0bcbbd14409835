"""The installed-path checks (conda, pip) and the one walk the ownership pass and storage measure share."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from conda_store_server.build import install
from conda_store_server.build.install import check_installed_paths
from conda_store_server.build.permissions import apply_ownership
from conda_store_server.build.pip import Interpreter, PipPackage, check_installed_files
from conda_store_server.disk_usage import measure_prefix
from conda_store_server.exception import BuildFailure
from conda_store_server.prefix_files import entries, normalised


def prefix_with(root: Path, files: list[str]) -> Path:
    """A prefix whose one package records `files` (each created when it lies inside)."""
    for relative in files:
        target = root / relative
        if not relative.startswith("/") and ".." not in relative:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(relative)
    meta = root / "conda-meta" / "pkg-1.0-0.json"
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({"name": "pkg", "files": files}))
    return root


def test_paths_inside_the_prefix_pass(tmp_path: Path) -> None:
    prefix = prefix_with(
        tmp_path / "env", ["bin/tool", "lib/python3.11/site-packages/pkg/__init__.py", "./etc/a"]
    )
    # a symlinked directory that stays inside the prefix is fine, and so is what lies below it
    (prefix / "lib" / "current").symlink_to("python3.11")
    prefix_with(prefix, ["bin/tool", "lib/current/site-packages/pkg/__init__.py"])
    installed = check_installed_paths(str(prefix))
    # what each package installed, spelled as the walk spells it, for the storage measure
    assert installed == {"pkg-1.0-0": ["bin/tool", "lib/current/site-packages/pkg/__init__.py"]}


@pytest.mark.parametrize(
    ("recorded", "spelled"),
    [
        ("bin/tool", "bin/tool"),
        ("./etc/a", "etc/a"),
        ("lib//liba.so", "lib/liba.so"),
        ("lib/./liba.so", "lib/liba.so"),
        ("lib/../bin/tool", "bin/tool"),
        ("share/doc/", "share/doc"),
        ("../outside", "../outside"),
        ("/etc/passwd", "/etc/passwd"),
        ("share/.hidden", "share/.hidden"),
    ],
)
def test_recorded_paths_are_spelled_as_the_walk_spells_them(recorded: str, spelled: str) -> None:
    assert normalised(recorded) == spelled


def test_the_measure_given_the_checked_paths_equals_the_measure_reading_conda_meta(tmp_path: Path) -> None:
    cache = tmp_path / "pkgs"
    cache.mkdir()
    prefix = prefix_with(tmp_path / "env", ["./bin/tool", "lib//liba.so", "share/doc.txt"])
    for index, relative in enumerate(("bin/tool", "lib/liba.so")):  # hard links, as installs make
        os.link(prefix / relative, cache / f"{index}")
    given = measure_prefix(str(prefix), None, check_installed_paths(str(prefix)))
    assert given == measure_prefix(str(prefix))
    private, groups = given
    unlinked = [prefix / "share" / "doc.txt", prefix / "conda-meta" / "pkg-1.0-0.json"]
    assert private == sum(path.stat().st_size for path in unlinked)
    assert len(groups) == 1  # both hard links are the package's, none unowned


@pytest.mark.parametrize("escaping", ["../outside.txt", "lib/../../outside.txt", "/etc/outside.txt"])
def test_a_path_that_leaves_the_prefix_lexically_stops_the_build(tmp_path: Path, escaping: str) -> None:
    prefix = prefix_with(tmp_path / "env", ["bin/tool", escaping])
    with pytest.raises(BuildFailure, match="outside the environment prefix") as failure:
        check_installed_paths(str(prefix))
    assert "pkg" in failure.value.reason and repr(escaping) in failure.value.reason


def test_a_path_below_a_directory_symlinked_outside_stops_the_build(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    prefix = prefix_with(tmp_path / "env", ["bin/tool"])
    (prefix / "share").mkdir()
    (prefix / "share" / "docs").symlink_to(outside)  # share/docs -> outside the prefix
    prefix_with(prefix, ["bin/tool", "share/docs/deep/er/readme.txt"])
    with pytest.raises(BuildFailure, match="share/docs/deep/er/readme.txt"):
        check_installed_paths(str(prefix))
    # the same directory reached through a symlink inside the prefix is caught too
    (prefix / "alias").symlink_to("share")
    prefix_with(prefix, ["bin/tool", "alias/docs/readme.txt"])
    with pytest.raises(BuildFailure, match="alias/docs/readme.txt"):
        check_installed_paths(str(prefix))


def test_entries_lists_every_entry_once_with_its_relative_path(tmp_path: Path) -> None:
    prefix = prefix_with(tmp_path / "env", ["bin/tool", "lib/a/b/c.txt", "lib/a/d.txt"])
    (prefix / "lib" / "link").symlink_to("a")
    found = {relative: entry for relative, entry in entries(str(prefix))}
    expected = {
        str(path.relative_to(prefix)) for path in prefix.rglob("*")
    }  # rglob does not descend into lib/link either
    assert set(found) == expected
    assert all(found[relative].path == str(prefix / relative) for relative in found)
    assert found["lib/link"].is_symlink() and not any(r.startswith("lib/link/") for r in found)


def test_the_ownership_pass_hands_the_measure_what_a_fresh_walk_finds(tmp_path: Path) -> None:
    cache = tmp_path / "pkgs" / "pkg-1.0-0"
    prefix = prefix_with(tmp_path / "env", ["bin/tool", "lib/liba.so", "share/doc.txt"])
    cache.mkdir(parents=True)
    for relative in ("lib/liba.so", "share/doc.txt"):  # hard-linked from the cache, as installs do
        os.link(prefix / relative, cache / relative.replace("/", "_"))
    (prefix / "lib" / "libb.so").symlink_to("liba.so")
    (prefix / "bin" / "tool").chmod(0o711)
    (prefix / "lib").chmod(0o700)

    files = apply_ownership(str(prefix), None, None, "775")

    assert files is not None
    assert sorted(relative for relative, _ in files) == sorted(
        str(p.relative_to(prefix)) for p in prefix.rglob("*") if p.is_file() and not p.is_symlink()
    )
    assert measure_prefix(str(prefix), files) == measure_prefix(str(prefix))
    assert stat.S_IMODE((prefix / "bin" / "tool").stat().st_mode) == 0o775  # had execute bits
    assert stat.S_IMODE((prefix / "share" / "doc.txt").stat().st_mode) == 0o664  # had none
    assert stat.S_IMODE((prefix / "lib").stat().st_mode) == 0o775
    # nothing to change: no walk, and the measure walks for itself
    assert apply_ownership(str(prefix), None, None, None) is None


def installed_distribution(prefix: Path, records: list[str]) -> Interpreter:
    """A pip distribution `demo` 1.0 in the prefix's site-packages whose RECORD lists `records`."""
    site_packages = prefix / "lib" / "python3.11" / "site-packages"
    dist_info = site_packages / "demo-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n")
    (dist_info / "RECORD").write_text("".join(f"{path},,\n" for path in records))
    for path in records:
        target = os.path.normpath(site_packages / path)
        if target.startswith(str(prefix)):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            Path(target).write_text(path)
    return Interpreter(python="python", markers={}, tags=(), site_packages=(str(site_packages),))


DEMO = [PipPackage(name="demo", version="1.0", url="https://example.invalid/demo.whl", sha256=None)]


def test_pip_files_inside_the_prefix_pass(tmp_path: Path) -> None:
    records = ["demo/__init__.py", "demo-1.0.dist-info/RECORD", "../../../bin/demo"]
    interpreter = installed_distribution(tmp_path / "env", records)
    check_installed_files(str(tmp_path / "env"), interpreter, DEMO)


def test_a_pip_file_recorded_outside_the_prefix_stops_the_build(tmp_path: Path) -> None:
    interpreter = installed_distribution(tmp_path / "env", ["demo/__init__.py", "../../../../outside.py"])
    with pytest.raises(BuildFailure, match=r"demo installed '\.\./\.\./\.\./\.\./outside\.py' outside"):
        check_installed_files(str(tmp_path / "env"), interpreter, DEMO)


def test_a_pip_file_that_is_a_symlink_out_of_the_prefix_stops_the_build(tmp_path: Path) -> None:
    interpreter = installed_distribution(tmp_path / "env", ["demo/__init__.py", "demo/data.txt"])
    data = tmp_path / "env" / "lib" / "python3.11" / "site-packages" / "demo" / "data.txt"
    data.unlink()
    data.symlink_to(tmp_path / "elsewhere.txt")
    with pytest.raises(BuildFailure, match="demo/data.txt"):
        check_installed_files(str(tmp_path / "env"), interpreter, DEMO)


@pytest.mark.parametrize(
    ("files", "plain"),
    [
        (["bin/tool", "lib/liba.so", "share/doc/readme"], True),
        ([], True),
        (["bin/tool", "./etc/a"], False),
        (["bin/tool", "lib//liba.so"], False),
        (["lib/./liba.so"], False),
        (["lib/../bin/tool"], False),
        (["share/doc/"], False),
        (["../outside"], False),
        (["/etc/passwd"], False),
        (["bin/tool\n/etc/passwd"], False),  # a newline makes each line a path of its own
        (["bin/tool", 7], False),
    ],
)
def test_only_paths_that_normalising_keeps_take_the_directory_at_a_time_check(
    files: list[str], plain: bool
) -> None:
    assert install._plain(files) is plain
    if plain:
        assert [normalised(path) for path in files] == files
