"""Builds with `pip:` dependencies: resolved and installed by uv from a local index, for real.

The index (`conda_store_server.testing.pypi`) serves hand-made wheels on loopback; it is
configured as an administrator would (`CondaStore.pypi_index_url`). Its projects depend on each
other, on an extra and a marker, and on `tinylib`, which the demo conda channel provides (1.0.0)
and the index offers in a newer version (2.0.0) that must never shadow conda's.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import (
    WorkerProcess,
    artifact_ready,
    login,
    submit,
    unpack_archive,
    uv_processes,
    wait_for_build,
)
from live import free_port

from conda_store_server import discarded_prefixes, service
from conda_store_server.build.pip import PipPackage
from conda_store_server.exception import BuildFailure
from conda_store_server.redact import mask_credentials, strip_credentials
from conda_store_server.testing.channel import host_subdir
from conda_store_server.testing.pypi import (
    GitRepository,
    GitServer,
    WheelSpec,
    serve_git,
    source_project,
)

PIP_SPEC = """
name: {name}
dependencies:
  - python
  - tinylib
  - pip:
    - pipgreet[fancy]
"""
GREETING = "import pipgreet; print(pipgreet.greet('alice'))"
SECRET = "s3cret-pw"
CONDA = ("python", "tinylib")


def spec(
    name: str = "pipenv", pip: list[str] | None = None, conda: tuple[str, ...] = ("python", "tinylib")
) -> str:
    if pip is None:
        return PIP_SPEC.format(name=name)
    return yaml.safe_dump({"name": name, "dependencies": [*conda, {"pip": pip}]})


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: pip adds no database code, and each build here is a real uv run."""
    return f"sqlite:///{tmp_path / 'conda-store.sqlite'}"


@pytest.fixture
def dead_index_url() -> str:
    """An index with credentials in its URL at a port where nothing listens."""
    return f"http://ci-bot:{SECRET}@127.0.0.1:{free_port()}/simple"


@pytest.fixture
def extra_settings() -> dict[str, Any]:
    """CondaStore traits of one test; "{index}" and "{dead}" stand for the URLs of this run."""
    return {}


@pytest.fixture
def store_settings(store_settings, index, dead_index_url, extra_settings):
    def fill(value: Any) -> Any:
        if isinstance(value, list):
            return [fill(item) for item in value]
        if isinstance(value, str):
            return value.format(index=index.url, dead=dead_index_url)
        return value

    traits = store_settings["CondaStore"]
    traits["pypi_index_url"] = index.authenticated_index_url
    traits.update({key: fill(value) for key, value in extra_settings.items()})
    return store_settings


def prefix_of(build: dict[str, Any]) -> str:
    return next(a["key"] for a in build["build_artifacts"] if a["artifact_type"] == "DIRECTORY")


def logs_of(client: Any, build_id: int) -> str:
    return client.get(f"/api/v1/build/{build_id}/logs/").text


def completed(client: Any, build_id: int) -> dict[str, Any]:
    build = wait_for_build(client, build_id)
    assert build["status"] == "COMPLETED", f"{build['status_info']}\n{logs_of(client, build_id)}"
    return build


def failed(client: Any, build_id: int) -> dict[str, Any]:
    build = wait_for_build(client, build_id)
    assert build["status"] == "FAILED", logs_of(client, build_id)
    return build


def assert_discarded(conda_store: Any, build_id: int) -> None:
    """What a build that did not complete installed is gone: moved out at once, then deleted."""
    with conda_store.session() as session:
        prefix = service.prefix_of(conda_store, service.get_build(session, build_id))
    assert not os.path.lexists(prefix)
    trash = Path(conda_store.store_directory, discarded_prefixes.DIRECTORY_NAME)
    deadline = time.monotonic() + 10
    while trash.exists() and any(trash.iterdir()):
        assert time.monotonic() < deadline, list(trash.iterdir())
        time.sleep(0.05)


def run_python(prefix: str | Path, code: str) -> str:
    result = subprocess.run([f"{prefix}/bin/python", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def distributions(prefix: str | Path) -> dict[str, tuple[str, str]]:
    """name -> (version, INSTALLER) of every distribution the environment's python sees."""
    code = (
        "import importlib.metadata as m, json\n"
        "print(json.dumps({d.metadata['Name']: [d.version, (d.read_text('INSTALLER') or '').strip()]"
        " for d in m.distributions()}))"
    )
    return {name: tuple(value) for name, value in json.loads(run_python(prefix, code)).items()}


def lockfile_of(client: Any, build_id: int) -> dict[str, Any]:
    return json.loads(client.get(f"/api/v1/build/{build_id}/lockfile/").content)


def pip_entries(lock: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in lock["package"] if p["manager"] == "pip"}


def test_a_conda_and_pip_build_runs_the_pip_packages_code(client, worker, index, wheels):
    login(client)
    build = completed(client, submit(client, spec()))
    prefix = prefix_of(build)
    assert run_python(prefix, GREETING) == "*hello from alice 2.0.0*"  # pipgreet -> pipcolor, tinylib

    installed = distributions(prefix)
    assert installed["pipgreet"] == ("2.0.0", "uv")
    assert installed["pipcolor"] == ("1.1.0", "uv")
    assert installed["pipfancy"] == ("0.1.0", "uv")  # the extra, and no pre-release without --pre
    assert "pipwin" not in installed  # its marker is for Windows
    # tinylib>=1.0 is met by conda's tinylib 1.0.0: not replaced by the index's 2.0.0
    assert installed["tinylib"] == ("1.0.0", "conda")
    (record,) = Path(prefix, "conda-meta").glob("tinylib-1.0.0-*.json")
    assert any(
        f.endswith("tinylib-1.0.0.dist-info/METADATA") for f in json.loads(record.read_text())["files"]
    )
    assert not list(Path(prefix).glob("lib/python*/site-packages/tinylib-2.0.0.dist-info"))

    lock = lockfile_of(client, build["id"])
    entries = pip_entries(lock)
    assert set(entries) == {"pipgreet", "pipcolor", "pipfancy"}
    greet = entries["pipgreet"]
    filename = "pipgreet-2.0.0-py3-none-any.whl"
    assert greet == {
        "name": "pipgreet",
        "version": "2.0.0",
        "manager": "pip",
        "platform": host_subdir(),
        "dependencies": {"pipcolor": ">=1.0", "pipfancy": ">=0.1", "tinylib": ">=1.0"},
        "url": f"{index.url}/files/{filename}",
        "hash": {"sha256": hashlib.sha256((wheels / filename).read_bytes()).hexdigest()},
        "category": "main",
        "optional": False,
    }
    assert entries["pipcolor"]["dependencies"] == {}
    assert [p["manager"] for p in lock["package"] if p["name"] == "tinylib"] == ["conda"]

    rows = client.get(f"/api/v1/build/{build['id']}/packages/", params={"size": 100}).json()["data"]
    names = {row["name"] for row in rows}
    assert "tinylib" in names and not names & set(entries)  # pip packages are no conda packages

    build = wait_for_build(client, build["id"], artifact_ready("YAML"))
    exported = yaml.safe_load(client.get(f"/api/v1/build/{build['id']}/yaml/").text)
    assert exported["dependencies"][-1] == {"pip": ["pipcolor==1.1.0", "pipfancy==0.1.0", "pipgreet==2.0.0"]}
    assert any(str(d).startswith("tinylib=1.0.0=") for d in exported["dependencies"])
    assert "tinylib 1.0.0: installed by conda, not by pip" in logs_of(client, build["id"])


def test_the_conda_pack_archive_holds_the_pip_packages(client, worker, tmp_path):
    login(client)
    build = completed(client, submit(client, spec("packed")))
    build = wait_for_build(client, build["id"], artifact_ready("CONDA_PACK"), timeout=60)
    target = unpack_archive(client, build["id"], tmp_path / "elsewhere" / "unpacked")
    assert run_python(target, GREETING) == "*hello from alice 2.0.0*"
    where = run_python(target, "import pipgreet, sys; print(pipgreet.__file__); print(sys.prefix)")
    assert all(line.startswith(str(target)) for line in where.splitlines())


@pytest.mark.parametrize(
    "pip",
    [["pipconflict"], ["tinylib>=2"]],
    ids=["a dependency needs a newer conda package", "a requirement names a conda package"],
)
def test_a_conflict_between_conda_and_pip_fails_naming_both(client, worker, pip):
    login(client)
    build = failed(client, submit(client, spec(pip=pip)))
    reason = build["status_info"]
    assert "tinylib>=2" in reason and "tinylib==1.0.0" in reason, reason
    assert "conda installed tinylib 1.0.0" in reason, reason
    assert pip[0].split(">")[0] in reason


@pytest.mark.parametrize(
    ("requirement", "explanation"),
    [
        ("no-such-project", "no-such-project was not found in the package registry"),
        ("pipcolor>=5", "only pipcolor<=1.1.0 is available and you require pipcolor>=5"),
    ],
    ids=["unknown", "unsatisfiable"],
)
def test_a_requirement_uv_cannot_meet_fails_with_its_explanation(
    client, worker, conda_store, requirement, explanation
):
    login(client)
    build = failed(client, submit(client, spec(pip=[requirement])))
    assert build["status_info"].startswith("The pip requirements cannot be installed: ")
    assert explanation in build["status_info"], build["status_info"]
    assert explanation in logs_of(client, build["id"])
    # no lockfile without its pip part
    assert not any(a["artifact_type"] == "LOCKFILE" for a in build["build_artifacts"])
    # nor the conda environment the build had installed before pip failed
    assert "installed in" in logs_of(client, build["id"])
    assert_discarded(conda_store, build["id"])


def test_pip_dependencies_without_python_fail_saying_to_add_it(client, worker):
    login(client)
    build = failed(client, submit(client, spec(pip=["pipcolor"], conda=("hello-config",))))
    assert "environment has no python; add `python` to the conda dependencies" in build["status_info"]


@pytest.mark.parametrize("extra_settings", [{"pypi_index_url": "{dead}"}])
def test_an_index_that_does_not_answer_fails_naming_it_without_its_credentials(
    client, worker, dead_index_url
):
    login(client)
    build = failed(client, submit(client, spec()))
    logs = logs_of(client, build["id"])
    address = dead_index_url.rpartition("@")[2]
    assert f"Failed to fetch: http://{address}/pipgreet/" in build["status_info"], build["status_info"]
    assert "Connection refused" in build["status_info"]
    assert f"http://****@{address}" in logs  # named where the log says where pip packages come from
    assert SECRET not in build["status_info"] and SECRET not in logs


@pytest.mark.parametrize("index_options", [{"credentials": ("ci-bot", SECRET)}])
def test_a_private_index_never_shows_its_credentials(client, worker, index):
    login(client)
    build = completed(client, submit(client, spec("private")))
    assert run_python(prefix_of(build), GREETING) == "*hello from alice 2.0.0*"
    assert sum(index.downloads.values()) > 0  # the files came through the authenticated index
    assert httpx.get(f"{index.index_url}/pipgreet/").status_code == 401  # which needs them
    build = wait_for_build(client, build["id"], artifact_ready("CONDA_PACK"), timeout=60)
    refused = failed(client, submit(client, spec("private-fails", pip=["no-such-project"])))
    lock = lockfile_of(client, build["id"])
    assert all("@" not in entry["url"] for entry in pip_entries(lock).values())
    shown = [
        logs_of(client, build["id"]),
        json.dumps(lock),
        client.get(f"/api/v1/build/{build['id']}/yaml/").text,
        client.get(f"/api/v1/build/{build['id']}/").text,
        client.get("/api/v1/environment/alice/private/").text,
        client.get("/api/v1/setting/").text,
        client.get("/api/v1/setting/alice/private/").text,
        refused["status_info"],
        logs_of(client, refused["id"]),
    ]
    assert "http://****@127.0.0.1" in shown[0]
    for text in shown:
        assert SECRET not in text
    archive = client.get(f"/api/v1/build/{build['id']}/archive/").content
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        members = [tar.extractfile(m) for m in tar.getmembers() if m.isfile()]
        assert len(members) > 10 and not [m for m in members if m and SECRET.encode() in m.read()]
    assert not [
        p for p in Path(prefix_of(build)).rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()
    ]


def upload_lockfile(client: Any, lock: dict[str, Any], name: str) -> int:
    body = {"specification": json.dumps(lock), "is_lockfile": True, "environment_name": name}
    response = client.post("/api/v1/specification/", json=body)
    assert response.status_code == 200, response.text
    return response.json()["data"]["build_id"]


@pytest.mark.parametrize("extra_settings", [{"pypi_allowed_indexes": ["{index}"]}])
def test_a_lockfile_round_trip_installs_the_same_conda_and_pip_packages(client, worker, index, wheels):
    login(client)
    first = completed(client, submit(client, spec("original")))
    lock = lockfile_of(client, first["id"])
    second = completed(client, upload_lockfile(client, lock, "from-lock"))
    assert "pip compile" not in logs_of(client, second["id"])  # installed as locked, not resolved

    def pins(document: dict[str, Any]) -> list[tuple[str, ...]]:
        return sorted((p["manager"], p["name"], p["version"], p["url"]) for p in document["package"])

    assert pins(lockfile_of(client, second["id"])) == pins(lock)
    assert distributions(prefix_of(second)) == distributions(prefix_of(first))
    conda = [sorted(p.name for p in Path(prefix_of(b), "conda-meta").glob("*.json")) for b in (first, second)]
    assert conda[0] == conda[1]
    assert run_python(prefix_of(second), GREETING) == "*hello from alice 2.0.0*"


@pytest.mark.parametrize("extra_settings", [{"pypi_allowed_indexes": ["{index}"]}])
def test_a_lockfile_is_installed_exactly_or_fails(client, worker, index, wheels):
    login(client)
    lock = lockfile_of(client, completed(client, submit(client, spec("original")))["id"])

    tampered = json.loads(json.dumps(lock))
    next(p for p in tampered["package"] if p["name"] == "pipcolor")["hash"]["sha256"] = "0" * 64
    build = failed(client, upload_lockfile(client, tampered, "tampered"))
    assert "Installing the pip packages failed" in build["status_info"]
    assert "Hash mismatch" in build["status_info"] and "pipcolor" in build["status_info"]

    shadowing = json.loads(json.dumps(lock))
    wheel = wheels / "tinylib-2.0.0-py3-none-any.whl"
    entry = {**pip_entries(lock)["pipcolor"], "name": "tinylib", "version": "2.0.0"}
    entry |= {
        "url": f"{index.url}/files/{wheel.name}",
        "hash": {"sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()},
    }
    shadowing["package"].append(entry)
    build = failed(client, upload_lockfile(client, shadowing, "shadowing"))
    assert "installs tinylib 2.0.0 (conda: 1.0.0) with pip over the conda package" in build["status_info"]


@pytest.mark.parametrize("index_options", [{"delay": 1}])  # so that both builds are in uv at once
def test_concurrent_builds_share_the_uv_cache_and_a_later_build_downloads_nothing(
    client, conda_store, config_file, tmp_path, index
):
    login(client)
    worker = WorkerProcess(config_file, tmp_path / "worker.log").start("--concurrency=2")
    try:
        build_ids = [submit(client, spec(f"shared-{n}")) for n in (1, 2)]
        first, second = (completed(client, build_id) for build_id in build_ids)
        (start_1, end_1), (start_2, end_2) = (
            (datetime.datetime.fromisoformat(b["started_on"]), datetime.datetime.fromisoformat(b["ended_on"]))
            for b in (first, second)
        )
        assert start_1 < end_2 and start_2 < end_1  # they ran at the same time
        downloaded = sum(index.downloads.values())
        assert downloaded > 0
        third = completed(client, submit(client, spec("shared-3")))
        assert sum(index.downloads.values()) == downloaded, index.downloads
    finally:
        worker.stop()
    cache = os.path.join(conda_store.store_directory, ".uv-cache")
    assert os.path.isdir(cache)
    for build in (first, second, third):
        assert f"--cache-dir {cache}" in logs_of(client, build["id"])
        assert run_python(prefix_of(build), GREETING) == "*hello from alice 2.0.0*"


@pytest.mark.parametrize(
    "extra_settings", [{"pypi_index_url": "{dead}", "pypi_allowed_indexes": ["{index}"]}]
)
def test_a_specifications_index_direct_reference_and_pre_are_used(client, worker, index, wheels):
    login(client)
    direct = f"{index.url}/files/pipcolor-1.0.0-py3-none-any.whl"
    pip = [f"--index-url {index.index_url}", "--pre", f"pipcolor @ {direct}", "pipgreet==1.0.0", "pipfancy"]
    build = completed(client, submit(client, spec("options", pip=pip)))  # the store's index is dead
    installed = distributions(prefix_of(build))
    assert installed["pipcolor"][0] == "1.0.0" and installed["pipgreet"][0] == "1.0.0"
    assert installed["pipfancy"][0] == "0.2.0b1"
    entries = pip_entries(lockfile_of(client, build["id"]))
    assert entries["pipcolor"]["url"] == direct
    assert (
        entries["pipcolor"]["hash"]["sha256"]
        == hashlib.sha256((wheels / direct.rsplit("/")[-1]).read_bytes()).hexdigest()
    )


@pytest.mark.parametrize("extra_settings", [{"pypi_allowed_indexes": ["{index}/simple"]}])
def test_files_of_a_specifications_index_are_checked_before_they_are_installed(client, worker, index):
    """The index is allowed, but its files lie elsewhere: on loopback, which nobody configured."""
    login(client)
    pip = [f"--extra-index-url {index.index_url}", "pipcolor"]
    build = failed(client, submit(client, spec("elsewhere", pip=pip)))
    assert build["status_info"] == (
        f"Pip package URL '{index.url}/files/pipcolor-1.1.0-py3-none-any.whl' is not allowed: its host "
        "127.0.0.1 is a loopback address, and such hosts are only allowed when the administrator "
        "configures them (pypi_allowed_indexes, pypi_index_url, pypi_extra_index_urls)"
    )
    assert index.downloads["pipcolor-1.1.0-py3-none-any.whl"] == 0


@pytest.mark.parametrize("extra_settings", [{"conda_max_solve_time": 3}])
@pytest.mark.parametrize("index_options", [{"delay": 60}])
def test_pip_resolution_counts_against_the_solve_time_limit(client, worker, conda_store):
    login(client)
    started = time.monotonic()
    build = failed(client, submit(client, spec("slow")))
    assert time.monotonic() - started < 30
    assert "conda_max_solve_time (3 s, conda solve included)" in build["status_info"], build["status_info"]
    assert not uv_processes(os.path.join(conda_store.store_directory, ".uv-cache"))


@pytest.mark.parametrize("index_options", [{"delay": 60}])
def test_cancel_stops_uv_with_the_build(client, worker, conda_store):
    login(client)
    build_id = submit(client, spec("canceled"))
    cache = os.path.join(conda_store.store_directory, ".uv-cache")
    deadline = time.monotonic() + 60
    while not uv_processes(cache):
        assert time.monotonic() < deadline, logs_of(client, build_id)
        time.sleep(0.1)
    for pid in uv_processes(cache):  # a child of the build process, in the group it leads
        parent, group, session = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1:4]
        assert parent == group == session
    assert client.put(f"/api/v1/build/{build_id}/cancel/").status_code == 200
    assert wait_for_build(client, build_id, timeout=20)["status"] == "CANCELED"
    deadline = time.monotonic() + 10
    while uv_processes(cache):
        assert time.monotonic() < deadline, "uv outlived its canceled build"
        time.sleep(0.1)
    assert_discarded(conda_store, build_id)  # the conda environment installed before pip


def test_a_build_without_pip_entries_never_runs_uv(client, worker, conda_store):
    login(client)
    build = completed(client, submit(client, "name: conda-only\ndependencies: [python, tinylib]\n"))
    assert not os.path.exists(os.path.join(conda_store.store_directory, ".uv-cache"))
    assert "uv pip" not in logs_of(client, build["id"])


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("https://user:pass@host/simple", "https://****@host/simple"),
        ("https://token@host/simple", "https://****@host/simple"),
        ("https://user:p@ss@host:8080/simple/x/", "https://****@host:8080/simple/x/"),
        ("fetch (http://a:b@h/x) and `https://c@d/`", "fetch (http://****@h/x) and `https://****@d/`"),
        ("git+https://u:p@github.com/o/r@v1", "git+https://****@github.com/o/r@v1"),
        ("name @ https://host/x.whl; a@b.org", "name @ https://host/x.whl; a@b.org"),
    ],
)
def test_mask_credentials(text, masked):
    assert mask_credentials(text) == masked


def test_strip_credentials():
    assert (
        strip_credentials("https://u:p@host:1/files/x.whl#sha256=1") == "https://host:1/files/x.whl#sha256=1"
    )
    assert strip_credentials("https://host/x.whl") == "https://host/x.whl"


@pytest.mark.parametrize("extra_settings", [{"pypi_allowed_indexes": ["{index}"]}])
def test_a_lockfile_with_pip_dependencies_rattler_cannot_read_still_builds(client, worker):
    """conda-lock writes "*" for a pip dependency of any version, other tools write markers and
    extras; py-rattler 0.28 refuses all three, and the build reads pip entries itself."""
    login(client)
    lock = lockfile_of(client, completed(client, submit(client, spec("original")))["id"])
    next(p for p in lock["package"] if p["name"] == "pipgreet")["dependencies"] = {
        "pipcolor": "*",
        "pipfancy[extra]": ">=0.1",
        "tinylib": '>=1.0; python_version >= "3"',
    }
    build = completed(client, upload_lockfile(client, lock, "unreadable-to-rattler"))
    assert run_python(prefix_of(build), GREETING) == "*hello from alice 2.0.0*"
    assert pip_entries(lockfile_of(client, build["id"]))["pipgreet"]["dependencies"]["pipcolor"] == "*"


@pytest.mark.parametrize(
    "url", ["git+https://example.org/gitgreet.git", "git+https://example.org/gitgreet.git@main"]
)
def test_a_lockfiles_git_package_must_name_its_commit(url):
    entry = {"name": "gitgreet", "version": "0.1.0", "manager": "pip", "url": url, "hash": {}}
    with pytest.raises(BuildFailure) as raised:
        PipPackage.from_lock_entry(entry)
    assert raised.value.reason == (
        f"The lockfile's pip package 'gitgreet' comes from git without a commit id ({url}); a "
        "lockfile's git package must name the full commit (git+https://host/repo.git@<commit id>), "
        "so that exactly that commit is installed"
    )


def gitgreet(greeting: str) -> WheelSpec:
    """gitgreet 0.1.0, to build from git: `greet` paints `greeting` with pipcolor, a dependency
    from the index of any version (which the lockfile records as "*")."""
    code = f"import pipcolor\n\n\ndef greet(name):\n    return pipcolor.paint(f'{greeting} {{name}}')\n"
    return WheelSpec("gitgreet", "0.1.0", {"gitgreet/__init__.py": code}, requires=("pipcolor",))


GIT_GREETING = "import gitgreet; print(gitgreet.greet('alice'))"


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    with serve_git(tmp_path / "git-server") as server:
        yield server


@pytest.fixture
def repository(git_server: GitServer) -> GitRepository:
    return git_server.repository("gitgreet")


def path_without_git(directory: Path) -> str:
    """A PATH of one directory linking every program of this PATH but git's: the worker without
    git, but with the tools the rest of a build runs (the demo channel's python is a script)."""
    directory.mkdir()
    for entry in os.environ["PATH"].split(os.pathsep):
        for program in sorted(Path(entry).iterdir()) if os.path.isdir(entry) else []:
            link = directory / program.name
            if not program.name.startswith("git") and os.access(program, os.X_OK) and not link.exists():
                link.symlink_to(program)
    assert shutil.which("git", path=str(directory)) is None and shutil.which("dirname", path=str(directory))
    return str(directory)


def no_git_message(requirement: str) -> str:
    return (
        f"pip requirement {requirement!r} needs git on the worker, and git is not installed there; "
        "install git on the workers or use a released version from an index"
    )


class TestGitReferences:
    """`name @ git+http://...` served over git's dumb HTTP protocol on loopback."""

    @pytest.fixture
    def store_settings(self, store_settings, git_server, index):
        """The git server allowed as an administrator would, with the index's files (which an
        uploaded lockfile names)."""
        store_settings["CondaStore"]["pypi_allowed_indexes"] = [git_server.url, index.url]
        return store_settings

    def test_a_git_reference_builds_from_the_commit_the_lockfile_pins(self, client, worker, repository):
        first = repository.commit(source_project(gitgreet("hello v1")), "v1")
        login(client)
        reference = f"gitgreet @ git+{repository.url}@main"
        build = completed(client, submit(client, spec("from-git", pip=[reference])))
        assert run_python(prefix_of(build), GIT_GREETING) == "*hello v1 alice*"
        assert distributions(prefix_of(build))["gitgreet"] == ("0.1.0", "uv")

        lock = lockfile_of(client, build["id"])
        entries = pip_entries(lock)
        pinned = f"git+{repository.url}@{first}"
        assert entries["gitgreet"] == {
            "name": "gitgreet",
            "version": "0.1.0",
            "manager": "pip",
            "platform": host_subdir(),
            "dependencies": {"pipcolor": "*"},
            "url": pinned,
            "hash": {},
            "source": {"type": "url", "url": pinned},
            "category": "main",
            "optional": False,
        }
        assert len(entries["pipcolor"]["hash"]["sha256"]) == 64  # the index's file stays hashed
        logs = logs_of(client, build["id"])
        assert "--no-deps --require-hashes" in logs  # pipcolor's call; gitgreet's has no hash to require

        second = repository.commit(source_project(gitgreet("hello v2")), "v2")  # main moves on
        moved = completed(client, submit(client, spec("from-git-again", pip=[reference])))
        assert run_python(prefix_of(moved), GIT_GREETING) == "*hello v2 alice*"
        assert pip_entries(lockfile_of(client, moved["id"]))["gitgreet"]["url"].endswith(f"@{second}")

        locked = completed(client, upload_lockfile(client, lock, "from-git-lock"))
        assert "pip compile" not in logs_of(client, locked["id"])  # installed as locked
        assert run_python(prefix_of(locked), GIT_GREETING) == "*hello v1 alice*"
        stored = pip_entries(lockfile_of(client, locked["id"]))  # the upload, as the server keeps it
        assert {name: entry["url"] for name, entry in stored.items()} == {
            name: entry["url"] for name, entry in entries.items()
        }

    def test_without_git_on_the_worker_a_git_reference_fails_saying_so(
        self, client, config_file, tmp_path, repository
    ):
        commit = repository.commit(source_project(gitgreet("hello")))
        path = path_without_git(tmp_path / "bin-without-git")
        worker = WorkerProcess(config_file, tmp_path / "worker.log").start(env={**os.environ, "PATH": path})
        try:
            login(client)
            reference = f"gitgreet @ git+{repository.url}@main"
            build = failed(client, submit(client, spec("no-git", pip=[reference])))
            assert build["status_info"] == no_git_message(reference)
            assert no_git_message(reference) in logs_of(client, build["id"])

            plain = completed(client, submit(client, spec("no-git-needed", pip=["pipcolor"])))
            lock = lockfile_of(client, plain["id"])
            pinned = f"git+{repository.url}@{commit}"
            lock["package"].append(  # as conda-lock writes a git package: its commit as "sha256"
                {
                    **pip_entries(lock)["pipcolor"],
                    "name": "gitgreet",
                    "version": "0.1.0",
                    "url": pinned,
                    "hash": {"sha256": commit},
                    "source": {"type": "url", "url": pinned},
                }
            )
            build = failed(client, upload_lockfile(client, lock, "no-git-lock"))
            assert build["status_info"] == no_git_message(f"gitgreet @ {pinned}")
        finally:
            worker.stop()


def test_the_interpreter_inspection_sees_what_packaging_sees(tmp_path):
    """The inspection builds the marker environment itself; it must equal packaging's."""
    import sys
    import sysconfig

    from packaging import markers, tags

    from conda_store_server.build.pip import inspect_interpreter

    interpreter = inspect_interpreter(sys.prefix, timeout=30)
    assert dict(interpreter.markers) == markers.default_environment()
    assert list(interpreter.tags) == [str(tag) for tag in tags.sys_tags()]
    assert sysconfig.get_path("purelib") in interpreter.site_packages


def test_an_interpreter_inspection_is_reused_for_the_same_python_package(
    demo_channel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A second environment of the same python package is not asked again; its own paths are
    given, and a damaged cache entry is asked anew."""
    import asyncio
    import json

    import rattler

    from conda_store_server.build import pip as pip_module

    async def environment(prefix: Path) -> None:
        records = await rattler.solve(
            [demo_channel.as_uri()], ["python"], platforms=[host_subdir(), "noarch"]
        )
        await rattler.install(records, prefix, cache_dir=tmp_path / "pkgs", show_progress=False)

    cache = str(tmp_path / "interpreters")
    first_prefix, second_prefix = tmp_path / "first", tmp_path / "second"
    for prefix in (first_prefix, second_prefix):
        asyncio.run(environment(prefix))
    first = pip_module.inspect_interpreter(str(first_prefix), 30, cache)
    [entry] = Path(cache).glob("*.json")
    assert str(first_prefix) not in entry.read_text()  # paths are kept relative to the prefix

    asked: list[str] = []
    inspect = pip_module._inspect
    monkeypatch.setattr(
        pip_module, "_inspect", lambda *arguments: asked.append(arguments[0]) or inspect(*arguments)
    )
    second = pip_module.inspect_interpreter(str(second_prefix), 30, cache)
    assert asked == []
    assert (second.markers, second.tags) == (first.markers, first.tags)
    assert second.site_packages == tuple(
        p.replace(str(first_prefix), str(second_prefix)) for p in first.site_packages
    )
    assert second.python.startswith(str(second_prefix) + "/bin/python")

    entry.write_text("{not json")
    again = pip_module.inspect_interpreter(str(second_prefix), 30, cache)
    assert asked == [str(second_prefix)] and again == second
    assert json.loads(entry.read_text())["markers"] == dict(first.markers)  # and written again


FOREIGN = "osx-arm64" if host_subdir() != "osx-arm64" else "linux-64"


@pytest.fixture
def foreign_platform(store_settings, demo_channel: Path, tmp_path: Path) -> str:
    """The demo channel with a python for a second platform, solved for beside the host's."""
    import asyncio

    from rattler.index import index_fs

    from conda_store_server.testing.channel import python_package
    from conda_store_server.testing.package_builder import build_package

    channel = tmp_path / "two-platforms"
    shutil.copytree(demo_channel, channel)
    (channel / FOREIGN).mkdir()
    build_package(python_package(), channel, FOREIGN)
    asyncio.run(index_fs(channel, force=True))
    traits = store_settings["CondaStore"]
    traits["conda_default_channels"] = [channel.as_uri()]
    traits["conda_solve_platforms"] = [host_subdir(), FOREIGN]
    return FOREIGN


def test_every_solve_platform_gets_pip_entries_in_the_lockfile(foreign_platform, client, worker, index):
    login(client)
    build = completed(client, submit(client, spec("two")))
    lock = lockfile_of(client, build["id"])
    by_platform: dict[str, dict[str, dict[str, Any]]] = {}
    for package in lock["package"]:
        if package["manager"] == "pip":
            by_platform.setdefault(package["platform"], {})[package["name"]] = package
    assert set(by_platform) == {host_subdir(), foreign_platform}
    host, foreign = by_platform[host_subdir()], by_platform[foreign_platform]
    assert {name: p["version"] for name, p in foreign.items()} == {n: p["version"] for n, p in host.items()}
    assert {name: (p["url"], p["hash"]) for name, p in foreign.items()} == {
        name: (p["url"], p["hash"]) for name, p in host.items()
    }
    assert f"resolving pip requirements for {foreign_platform}" in logs_of(client, build["id"])


@pytest.mark.parametrize(
    ("subdir", "expected"),
    [
        ("osx-arm64", "macosx_11_0_arm64"),
        ("osx-64", "macosx_13_0_x86_64"),
        ("linux-aarch64", "manylinux_2_17_aarch64.manylinux2014_aarch64"),
        ("win-64", "win_amd64"),
    ],
)
def test_another_platforms_wheel_is_the_one_uv_targets(subdir, expected, tmp_path, wheels):
    """uv lists the wheels its fixed target for `subdir` accepts; the tags pick the best."""
    import tomllib

    import uv
    from packaging.version import Version

    from conda_store_server.build import pip, pip_solve

    if subdir == host_subdir():
        pytest.skip("the host's platform is detected, not fixed")
    links = tmp_path / "links"
    links.mkdir()
    wheel = wheels / "pipcolor-1.1.0-py3-none-any.whl"
    for platform_tag in (
        "macosx_11_0_arm64",
        "macosx_14_0_arm64",
        "macosx_10_9_x86_64",
        "macosx_13_0_x86_64",
        "macosx_14_0_x86_64",
        "manylinux_2_17_aarch64.manylinux2014_aarch64",
        "manylinux_2_28_aarch64",
        "musllinux_1_2_aarch64",
        "win_amd64",
        "win32",
    ):
        shutil.copy(wheel, links / f"pipcolor-1.1.0-cp311-cp311-{platform_tag}.whl")
    (tmp_path / "requirements.in").write_text("pipcolor\n")
    python = Version("3.11.7")
    arguments = [uv.find_uv_bin(), "pip", "compile", "requirements.in", "--format", "pylock.toml"]
    arguments += ["-o", "pylock.toml", "--no-index", "--find-links", str(links), "--no-config"]
    arguments += ["--python-version", str(python), "--python-platform", pip_solve.python_platform(subdir)]
    subprocess.run(arguments, cwd=tmp_path, check=True, capture_output=True)
    (package,) = tomllib.loads((tmp_path / "pylock.toml").read_text())["packages"]
    url, _ = pip.chosen_file(package, pip_solve._wheel_tags(python, subdir))
    assert url.endswith(f"pipcolor-1.1.0-cp311-cp311-{expected}.whl")
