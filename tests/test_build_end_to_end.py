"""Real builds from the demo channel, through the API and a real worker process."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from conftest import artifact_ready, login, submit, wait_for_build

from conda_store_server.testing.channel import host_subdir

SPEC = """
name: hello
dependencies:
  - hello-tool
  - hello-py
  - libprefix
"""


def test_build_installs_a_working_environment(client, worker, conda_store, tmp_path: Path) -> None:
    login(client)
    build_id = submit(client, SPEC)
    build = wait_for_build(client, build_id)
    assert build["status"] == "COMPLETED", client.get(f"/api/v1/build/{build_id}/logs/").text

    environment = client.get("/api/v1/environment/alice/hello/").json()["data"]
    assert environment["current_build_id"] == build_id
    prefix = next(a["key"] for a in build["build_artifacts"] if a["artifact_type"] == "DIRECTORY")
    link = Path(conda_store.store_directory, "alice", "envs", "hello")
    assert os.path.realpath(link) == os.path.realpath(prefix)

    # text prefix replacement, entry point, binary prefix replacement
    assert prefix in Path(prefix, "etc", "hello.conf").read_text()
    tool = subprocess.run([f"{prefix}/bin/hello-tool"], capture_output=True, text=True, check=True)
    assert prefix in tool.stdout
    entry = subprocess.run([f"{prefix}/bin/hello-py"], capture_output=True, text=True, check=True)
    assert "hello from hello-py 1.1.0" in entry.stdout
    data = Path(prefix, "lib", "libprefix.dat").read_bytes()
    assert prefix.encode() + b"/" in data or prefix.encode() in data
    assert b"placehold_" not in data

    lockfile = json.loads(client.get(f"/api/v1/build/{build_id}/lockfile/").content)
    assert lockfile["version"] == 1
    names = {p["name"] for p in lockfile["package"]}
    assert {"hello-tool", "hello-config", "hello-py", "tinylib", "python", "libprefix"} <= names

    listed = client.get(f"/api/v1/build/{build_id}/packages/", params={"size": 100}).json()["data"]
    summaries = {p["name"]: p["summary"] for p in listed}
    assert summaries["hello-py"] == "Pure Python package with a console entry point"  # info/about.json
    assert summaries["libprefix"] == "Binary file with an embedded, NUL-terminated prefix"

    packages = {(p.name, p.version) for p in _package_rows(conda_store, build_id)}
    assert ("hello-py", "1.1.0") in packages and (
        "python",
        next(iter(p["version"] for p in lockfile["package"] if p["name"] == "python")),
    ) in packages
    assert build["size"] > 0

    build = wait_for_build(client, build_id, artifact_ready("CONDA_PACK"))
    yaml_text = client.get(f"/api/v1/build/{build_id}/yaml/").text
    assert "hello-py=1.1.0=" in yaml_text
    logs = client.get(f"/api/v1/build/{build_id}/logs/").text
    assert "solved in" in logs and "COMPLETED" in logs


def test_an_empty_dependency_list_builds_an_empty_environment(client, worker) -> None:
    login(client)
    build = wait_for_build(client, submit(client, "name: empty\ndependencies: []\n"))
    assert build["status"] == "COMPLETED", build["status_info"]
    prefix = next(a["key"] for a in build["build_artifacts"] if a["artifact_type"] == "DIRECTORY")
    assert Path(prefix, "conda-meta").is_dir()
    assert list(Path(prefix, "conda-meta").glob("*.json")) == []
    lockfile = json.loads(client.get(f"/api/v1/build/{build['id']}/lockfile/").content)
    assert lockfile["package"] == [] and lockfile["metadata"]["platforms"] == [host_subdir()]
    assert client.get(f"/api/v1/build/{build['id']}/packages/").json()["count"] == 0


def test_a_misspelled_key_is_refused_instead_of_building_nothing(client, conda_store) -> None:
    login(client)
    response = client.post(
        "/api/v1/specification/", json={"specification": "name: typo\ndependecies: [curl]\n"}
    )
    assert response.status_code == 400
    assert response.json()["message"] == (
        "Unknown key 'dependecies' in the specification; did you mean 'dependencies'? "
        "Known keys: name, channels, dependencies, description, prefix, variables"
    )
    assert client.get("/api/v1/environment/alice/typo/").status_code == 404


def _package_rows(conda_store, build_id):
    from conda_store_server.db.models import Build

    with conda_store.session() as session:
        build = session.get(Build, build_id)
        return [pb.package for pb in build.package_builds]
