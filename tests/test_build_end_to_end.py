"""Real builds from the demo channel, through the API and a real worker process."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from conftest import login, submit, wait_for_build

SPEC = """
name: hello
dependencies:
  - hello-tool
  - hello-py
  - libprefix
"""


def has_artifact(kind: str):
    return lambda build: (
        any(a["artifact_type"] == kind for a in build["build_artifacts"])
        or build["status"] in ("FAILED", "CANCELED")
    )


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

    packages = {(p.name, p.version) for p in _package_rows(conda_store, build_id)}
    assert ("hello-py", "1.1.0") in packages and (
        "python",
        next(iter(p["version"] for p in lockfile["package"] if p["name"] == "python")),
    ) in packages
    assert build["size"] > 0

    build = wait_for_build(client, build_id, has_artifact("CONDA_PACK"))
    yaml_text = client.get(f"/api/v1/build/{build_id}/yaml/").text
    assert "hello-py=1.1.0=" in yaml_text
    logs = client.get(f"/api/v1/build/{build_id}/logs/").text
    assert "solved in" in logs and "COMPLETED" in logs


def _package_rows(conda_store, build_id):
    from conda_store_server.db.models import Build

    with conda_store.session() as session:
        build = session.get(Build, build_id)
        return [pb.package for pb in build.package_builds]
