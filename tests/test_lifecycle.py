"""Rebuild, rollback, lockfile round trip, conda-pack relocation, deletion."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import artifact_ready, login, submit, unpack_archive, wait_for_build


def prefix_of(build) -> str:
    return next(a["key"] for a in build["build_artifacts"] if a["artifact_type"] == "DIRECTORY")


def test_lockfile_round_trip_gives_the_same_packages(client, worker) -> None:
    login(client)
    first = wait_for_build(client, submit(client, "name: pinned\ndependencies: [curl, hello-py]\n"))
    assert first["status"] == "COMPLETED"
    lock_text = client.get(f"/api/v1/build/{first['id']}/lockfile/").text
    lock = json.loads(lock_text)

    response = client.post(
        "/api/v1/specification/",
        json={
            "specification": lock_text,
            "is_lockfile": True,
            "environment_name": "from-lock",
            "environment_description": "round trip",
        },
    )
    assert response.status_code == 200, response.text
    second = wait_for_build(client, response.json()["data"]["build_id"])
    assert second["status"] == "COMPLETED"
    assert "lockfile" in second["specification"]["spec"]
    again = json.loads(client.get(f"/api/v1/build/{second['id']}/lockfile/").text)

    def pins(document):
        return sorted((p["name"], p["version"], p["url"]) for p in document["package"])

    assert pins(again) == pins(lock)
    env = client.get("/api/v1/environment/alice/from-lock/").json()["data"]
    assert env["description"] == "round trip"


def test_conda_pack_archive_relocates(client, worker, tmp_path: Path) -> None:
    login(client)
    build = wait_for_build(client, submit(client, "name: packed\ndependencies: [hello-tool, hello-py]\n"))
    assert build["status"] == "COMPLETED"
    build = wait_for_build(client, build["id"], artifact_ready("CONDA_PACK"))
    target = unpack_archive(client, build["id"], tmp_path / "elsewhere" / "unpacked")
    assert str(target) in (target / "etc" / "hello.conf").read_text()
    assert prefix_of(build) not in (target / "etc" / "hello.conf").read_text()
    out = subprocess.run([str(target / "bin" / "hello-tool")], capture_output=True, text=True, check=True)
    assert str(target) in out.stdout
    python = subprocess.run(
        [str(target / "bin" / "python"), "-c", "import hello_py, sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert python.stdout.strip() == str(target)


def test_rollback_moves_the_environment_link(client, worker, conda_store) -> None:
    login(client)
    first = wait_for_build(client, submit(client, "name: roll\ndependencies: [hello-py 1.0.0]\n"))
    second = wait_for_build(client, submit(client, "name: roll\ndependencies: [hello-py 1.1.0]\n"))
    assert first["status"] == second["status"] == "COMPLETED"
    link = Path(conda_store.store_directory, "alice", "envs", "roll")
    assert os.path.realpath(link) == os.path.realpath(prefix_of(second))

    calls: list[tuple[str, str, int | None]] = []
    conda_store.post_update_environment_build_hook = lambda store, env: calls.append(
        (env.namespace.name, env.name, env.current_build_id)
    )
    response = client.put("/api/v1/environment/alice/roll/", json={"build_id": first["id"]})
    assert response.status_code == 200, response.text
    assert os.path.realpath(link) == os.path.realpath(prefix_of(first))
    assert client.get("/api/v1/environment/alice/roll/").json()["data"]["current_build_id"] == first["id"]
    out = subprocess.run([str(link / "bin" / "hello-py")], capture_output=True, text=True, check=True)
    assert "1.0.0" in out.stdout
    assert calls == [("alice", "roll", first["id"])]

    rebuilt = client.put(f"/api/v1/build/{first['id']}/")
    assert rebuilt.status_code == 200 and rebuilt.json()["message"] == "rebuild triggered"
    third = wait_for_build(client, rebuilt.json()["data"]["build_id"])
    assert third["status"] == "COMPLETED"
    assert third["specification"]["sha256"] == first["specification"]["sha256"]
    assert os.path.realpath(link) == os.path.realpath(prefix_of(third))


def test_rollback_refuses_unfinished_or_foreign_builds(client, worker) -> None:
    login(client)
    a = wait_for_build(client, submit(client, "name: env-a\ndependencies: [libzlib]\n"))
    wait_for_build(client, submit(client, "name: env-b\ndependencies: [libzlib]\n"))
    response = client.put("/api/v1/environment/alice/env-b/", json={"build_id": a["id"]})
    assert response.status_code == 400 and "another environment" in response.json()["message"]
    response = client.put("/api/v1/environment/alice/env-b/", json={"build_id": 9999})
    assert response.status_code == 400 and "does not exist" in response.json()["message"]


@pytest.mark.parametrize("kept", [["LOGS", "LOCKFILE", "YAML"], ["LOGS"]])
def test_delete_build_keeps_exactly_the_configured_artifacts(
    client, worker, conda_store, kept, store_settings
) -> None:
    conda_store.build_artifacts_kept_on_deletion = kept
    login(client)
    old = wait_for_build(client, submit(client, "name: del\ndependencies: [hello-tool]\n"))
    old = wait_for_build(client, old["id"], artifact_ready("CONDA_PACK"))
    new = wait_for_build(client, submit(client, "name: del\ndependencies: [curl]\n"))
    assert new["status"] == "COMPLETED"

    refused = client.delete(f"/api/v1/build/{new['id']}/")
    assert refused.status_code == 400 and "current build" in refused.json()["message"]

    storage = Path(store_settings["LocalStorage"]["storage_path"])
    before = {a["artifact_type"]: a["key"] for a in old["build_artifacts"]}
    assert client.delete(f"/api/v1/build/{old['id']}/").status_code == 200
    after = client.get(f"/api/v1/build/{old['id']}/").json()["data"]
    assert {a["artifact_type"] for a in after["build_artifacts"]} == set(kept)
    assert after["size"] == 0
    assert not Path(before["DIRECTORY"]).exists()
    for kind, key in before.items():
        if kind != "DIRECTORY":
            assert (storage / key).exists() == (kind in kept), kind
    assert Path(prefix_of(new)).exists()


def test_delete_environment_and_namespace(client, worker, conda_store) -> None:
    login(client)
    build = wait_for_build(client, submit(client, "name: gone\ndependencies: [libzlib]\n", "team"))
    assert build["status"] == "COMPLETED", (build, client.get(f"/api/v1/build/{build['id']}/logs/").text)
    prefix = prefix_of(build)
    assert client.delete("/api/v1/environment/team/gone/").status_code == 200
    assert not Path(prefix).exists()
    assert not Path(conda_store.store_directory, "team", "envs", "gone").exists()
    assert client.get("/api/v1/environment/team/gone/").status_code == 404
    again = client.delete("/api/v1/environment/team/gone/")
    assert again.status_code == 400 and "does not exist" in again.json()["message"]
    logs = client.get(f"/api/v1/build/{build['id']}/logs/")
    # LOGS kept by default (its last lines, shipped after COMPLETED is visible, may still be on the way)
    assert logs.status_code == 200
    assert f"starting build {build['id']} of conda environment team/gone" in logs.text

    rebuilt = wait_for_build(client, submit(client, "name: gone\ndependencies: [libzlib]\n", "team"))
    assert rebuilt["status"] == "COMPLETED"
    assert client.delete("/api/v1/namespace/team/").status_code == 200
    assert client.get("/api/v1/environment/team/gone/").status_code == 404
    assert not Path(prefix_of(rebuilt)).exists()


def test_worker_runs_the_hook_from_the_config_file(client, config_file, tmp_path) -> None:
    from conftest import WorkerProcess

    marker = tmp_path / "hook-calls"
    config_file.write_text(
        config_file.read_text()
        + (
            "def hook(conda_store, environment):\n"
            f"    line = f'{{environment.name}} {{environment.current_build_id}}\\n'\n"
            f"    open({str(marker)!r}, 'a').write(line)\n"
            "c.CondaStore.post_update_environment_build_hook = hook\n"
        )
    )
    worker = WorkerProcess(config_file, tmp_path / "worker.log").start()
    try:
        login(client)
        build = wait_for_build(client, submit(client, "name: hooked\ndependencies: [libzlib]\n"))
        assert build["status"] == "COMPLETED"
        assert marker.read_text() == f"hooked {build['id']}\n"
    finally:
        worker.stop()
