"""GET /api/v1/specification/: solve without building, and what would change.

Every store here has a local PyPI (`conda_store_server.testing.pypi`) as its `pypi_index_url`,
as an administrator configures a private index, so `pip=` is resolved by uv for real.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import yaml
from conftest import WorkerProcess, login, submit, uv_processes, wait_for_build
from fastapi.testclient import TestClient
from live import free_port

from conda_store_server.app import CondaStore
from conda_store_server.db.models import CondaPackageBuild
from conda_store_server.testing.pypi import PyPIIndex

SECRET = "s3cret-pw"
#: pip solves write nothing to the database: one database is enough for their uv runs.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def pypi_settings() -> dict[str, Any]:
    """CondaStore traits of one test, applied after the local index is configured."""
    return {}


@pytest.fixture
def store_settings(
    store_settings: dict[str, dict[str, Any]], index: PyPIIndex, pypi_settings: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    traits = store_settings["CondaStore"]
    traits["pypi_index_url"] = index.authenticated_index_url
    traits.update(pypi_settings)
    return store_settings


def solve(client: TestClient, **params):
    return client.get("/api/v1/specification/", params=params)


def test_a_solve_lists_packages_without_building(client: TestClient) -> None:
    login(client)
    response = solve(client, conda=["hello-py"])
    assert response.status_code == 200, response.text
    names = {p["name"] for p in response.json()["data"]["solve"]}
    assert names == {"hello-py", "python", "tinylib"}
    assert response.json()["solve"] == response.json()["data"]["solve"]
    assert client.get("/api/v1/build/").json()["count"] == 0  # nothing was built or queued


def test_changes_against_the_current_build(client: TestClient, worker) -> None:
    login(client)
    build_id = submit(client, "name: tracked\ndependencies: [hello-py ==1.0.0, hello-tool]\n")
    assert wait_for_build(client, build_id)["status"] == "COMPLETED"
    response = solve(client, conda=["hello-py >=1.1", "curl"], environment="tracked")
    assert response.status_code == 200, response.text
    changes = response.json()["data"]["changes"]
    added = {p["name"] for p in changes["added"]}
    assert "curl" in added and "tinylib" in added
    assert {p["name"] for p in changes["removed"]} == {"hello-tool", "hello-config"}
    assert changes["upgraded"] == [{"name": "hello-py", "from": "1.0.0", "to": "1.1.0"}]
    assert changes["downgraded"] == []


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"conda": ["no-such-package"]}, 400, "cannot be solved"),
        ({"conda": ["python"], "pip": ["-e ."]}, 400, "editable installs are not supported"),
        (
            {"conda": ["python"], "pip": ["--index-url https://ci:hunter2@pypi.example/simple", "flask"]},
            400,
            "Invalid pip option '--index-url https://****@pypi.example/simple': credentials for "
            "private indexes are configured by the administrator",
        ),
        (
            {"conda": ["python"], "pip": ["--extra-index-url http://127.0.0.1:9/simple", "pipcolor"]},
            400,
            "Pip index URL 'http://127.0.0.1:9/simple' is not allowed: its host 127.0.0.1 is a loopback",
        ),
        ({}, 400, "at least one package"),
        ({"conda": ["python"], "channel": ["https://elsewhere.example/channel"]}, 400, "not allowed"),
        ({"conda": ["python"], "environment": "bad/name"}, 400, None),
    ],
)
def test_bad_solves_are_4xx(client: TestClient, store_settings, params, status, message) -> None:
    login(client)
    client.put(
        "/api/v1/setting/",
        json={"conda_allowed_channels": store_settings["CondaStore"]["conda_default_channels"]},
    )
    response = solve(client, **params)
    assert response.status_code == status, response.text
    if message:
        assert message in response.json()["message"]
    assert "hunter2" not in response.text


def test_anonymous_callers_cannot_solve(client: TestClient) -> None:
    assert solve(client, conda=["python"]).status_code == 403


#: What upstream's answer holds per package (its conda_package_build columns), beside ours.
UPSTREAM_FIELDS = {
    *("id", "package_id", "channel_id", "build", "build_number", "constrains", "depends"),
    *("md5", "sha256", "size", "subdir", "timestamp"),
}


def test_solved_packages_carry_the_ids_the_package_tables_have(
    client: TestClient, worker, conda_store: CondaStore
) -> None:
    login(client)
    before = solve(client, conda=["hello-py"]).json()["solve"]
    assert all(UPSTREAM_FIELDS | {"name", "version", "channel"} <= set(p) for p in before)
    # nothing was built or indexed yet: no row to point at, and the solve writes none
    assert {(p["id"], p["package_id"], p["channel_id"]) for p in before} == {(None, None, None)}
    assert all(isinstance(p["size"], int) and p["md5"] and p["depends"] is not None for p in before)

    build_id = submit(client, "name: rows\ndependencies: [hello-py]\n")
    assert wait_for_build(client, build_id)["status"] == "COMPLETED"
    after = solve(client, conda=["hello-py"]).json()["solve"]
    with conda_store.session() as session:
        for package in after:
            row = session.get(CondaPackageBuild, package["id"])
            assert row is not None, package
            assert (row.package.name, row.package.version, row.build) == (
                package["name"],
                package["version"],
                package["build"],
            )
            assert row.package_id == package["package_id"]
            assert row.channel_id == package["channel_id"]
            assert row.channel.name == package["channel"]
            assert row.sha256 == package["sha256"] and row.md5 == package["md5"]


def pip_file(index: PyPIIndex, name: str, version: str) -> dict[str, str]:
    """A pip package of the answer: served by the local index, by its URL without credentials."""
    return {"name": name, "version": version, "url": f"{index.url}/files/{name}-{version}-py3-none-any.whl"}


@SQLITE_ONLY
def test_pip_requirements_are_resolved_for_the_solved_python_and_listed(
    client: TestClient, index: PyPIIndex, conda_store: CondaStore
) -> None:
    login(client)
    cache = os.path.join(conda_store.store_directory, ".uv-cache")
    conda_only = solve(client, conda=["python"]).json()
    assert conda_only["data"]["pip"] == conda_only["pip"] == []
    assert not os.path.exists(cache)  # no pip entries: uv never ran
    python = next(p["version"] for p in conda_only["solve"] if p["name"] == "python")

    response = solve(client, conda=["python", "tinylib"], pip=["pipgreet[fancy]"])
    assert response.status_code == 200, response.text
    body = response.json()
    # the extra is resolved, pipwin's marker is for Windows, pipfancy's pre-release is not
    # chosen without --pre, and tinylib>=1.0 is met by the conda solve's tinylib 1.0.0
    assert body["data"]["pip"] == [
        pip_file(index, "pipcolor", "1.1.0"),
        pip_file(index, "pipfancy", "0.1.0"),
        pip_file(index, "pipgreet", "2.0.0"),
    ]
    assert body["pip"] == body["data"]["pip"]
    assert {p["name"] for p in body["data"]["solve"]} >= {"python", "tinylib"}
    assert "changes" not in body["data"]
    assert os.path.isdir(cache)
    assert client.get("/api/v1/build/").json()["count"] == 0  # nothing was built or queued

    # markers see the conda solve's python, to its patch version
    markers = [
        f'pipcolor==1.0.0; python_full_version == "{python}"',
        f'pipfancy; python_full_version != "{python}"',
        "--pre",
    ]
    response = solve(client, conda=["python"], pip=markers)
    assert response.json()["data"]["pip"] == [pip_file(index, "pipcolor", "1.0.0")], response.text


def artifact_key(build: dict[str, Any], kind: str) -> str:
    return next(a["key"] for a in build["build_artifacts"] if a["artifact_type"] == kind)


@SQLITE_ONLY
def test_changes_cover_the_pip_packages_of_the_current_build(
    client: TestClient, worker: WorkerProcess, conda_store: CondaStore
) -> None:
    login(client)
    pip = ["pipgreet==1.0.0", "pipfancy"]  # installs pipgreet 1.0.0, pipcolor 1.1.0, pipfancy 0.1.0
    spec = yaml.safe_dump({"name": "pipdiff", "dependencies": ["python", "tinylib", {"pip": pip}]})
    build_id = submit(client, spec)
    build = wait_for_build(client, build_id)
    assert build["status"] == "COMPLETED", client.get(f"/api/v1/build/{build_id}/logs/").text

    wanted = ["pipgreet", "pipcolor==1.0.0", "pipwin"]
    response = solve(client, conda=["python", "tinylib"], pip=wanted, environment="pipdiff")
    assert response.status_code == 200, response.text
    assert response.json()["data"]["changes"] == {
        "added": [{"name": "pipwin", "version": "1.0.0", "manager": "pip"}],
        "removed": [{"name": "pipfancy", "version": "0.1.0", "manager": "pip"}],
        "upgraded": [{"name": "pipgreet", "from": "1.0.0", "to": "2.0.0", "manager": "pip"}],
        "downgraded": [{"name": "pipcolor", "from": "1.1.0", "to": "1.0.0", "manager": "pip"}],
    }

    conda_only = solve(client, conda=["python", "tinylib", "hello-tool"], environment="pipdiff")
    changes = conda_only.json()["data"]["changes"]
    assert {(p["name"], p.get("manager")) for p in changes["added"]} >= {("hello-tool", None)}
    assert changes["removed"] == [
        {"name": name, "version": version, "manager": "pip"}
        for name, version in [("pipcolor", "1.1.0"), ("pipfancy", "0.1.0"), ("pipgreet", "1.0.0")]
    ]

    # the lockfile is the only record of the pip packages: without it there is no diff to tell
    build = wait_for_build(client, build_id, lambda b: len(b["build_artifacts"]) >= 5, timeout=60)
    conda_store.storage.delete(artifact_key(build, "LOCKFILE"))
    gone = solve(client, conda=["python"], environment="pipdiff")
    assert gone.status_code == 409, gone.text
    assert gone.json()["message"] == (
        f"build {build_id} (the current build of alice/pipdiff) has no LOCKFILE artifact, where "
        "its pip packages are recorded, so what would change cannot be told; rebuild the "
        "environment, or solve without environment="
    )


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("pip", "explanation"),
    [
        (["no-such-project"], "no-such-project was not found in the package registry"),
        (["pipcolor>=5"], "only pipcolor<=1.1.0 is available and you require pipcolor>=5"),
        (["pipconflict"], "tinylib==1.0.0"),  # the conda solve's noarch:python tinylib
    ],
    ids=["unknown", "unsatisfiable", "conflicts with conda"],
)
def test_requirements_uv_cannot_meet_are_400s_with_its_explanation(
    client: TestClient, pip: list[str], explanation: str
) -> None:
    login(client)
    response = solve(client, conda=["python", "tinylib"], pip=pip)
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    assert message.startswith("The pip requirements cannot be installed: "), message
    assert explanation in message, message


@SQLITE_ONLY
def test_pip_without_python_among_the_conda_packages_is_a_400(client: TestClient) -> None:
    login(client)
    response = solve(client, conda=["hello-config"], pip=["pipcolor"])
    assert response.status_code == 400, response.text
    assert response.json()["message"] == (
        "pip requirements need python among the conda packages, and the conda solve has none; "
        "add python to the conda packages"
    )


@SQLITE_ONLY
@pytest.mark.parametrize("index_options", [{"credentials": ("ci-bot", SECRET)}])
def test_a_private_index_serves_the_solve_and_its_password_never_shows(
    client: TestClient, index: PyPIIndex
) -> None:
    login(client)
    response = solve(client, conda=["python", "tinylib"], pip=["pipgreet"])
    assert response.status_code == 200, response.text
    assert response.json()["data"]["pip"] == [
        pip_file(index, "pipcolor", "1.1.0"),
        pip_file(index, "pipgreet", "2.0.0"),
    ]
    assert httpx.get(f"{index.index_url}/pipgreet/").status_code == 401  # it needed the login
    refused = solve(client, conda=["python"], pip=["no-such-project"])
    assert refused.status_code == 400, refused.text
    for text in (response.text, refused.text):
        assert SECRET not in text


@SQLITE_ONLY
@pytest.mark.parametrize(
    "pypi_settings", [{"pypi_index_url": f"http://ci-bot:{SECRET}@127.0.0.1:{free_port()}/simple"}]
)
def test_an_index_that_does_not_answer_is_a_400_without_its_credentials(
    client: TestClient, pypi_settings: dict[str, Any]
) -> None:
    login(client)
    response = solve(client, conda=["python"], pip=["pipgreet"])
    assert response.status_code == 400, response.text
    address = pypi_settings["pypi_index_url"].rpartition("@")[2].removesuffix("/simple")
    message = response.json()["message"]
    assert f"Failed to fetch: http://{address}/simple/pipgreet/" in message, message
    assert SECRET not in response.text


@SQLITE_ONLY
@pytest.mark.parametrize("pypi_settings", [{"conda_max_solve_time": 8}])
@pytest.mark.parametrize("index_options", [{"delay": 60}])
def test_uv_runs_off_the_event_loop_and_is_stopped_at_the_solve_time_limit(
    client: TestClient, conda_store: CondaStore
) -> None:
    login(client)
    cache = os.path.join(conda_store.store_directory, ".uv-cache")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(solve, client, conda=["python"], pip=["pipgreet"])
        deadline = time.monotonic() + 8
        while not uv_processes(cache):
            assert time.monotonic() < deadline and not pending.done(), "uv never ran"
            time.sleep(0.05)
        started = time.monotonic()
        assert client.get("/api/v1/").status_code == 200
        assert time.monotonic() - started < 3  # answered while uv waits for the index
        response = pending.result(timeout=30)
    assert response.status_code == 400, response.text
    assert "conda_max_solve_time (8 s, conda solve included) and uv was stopped" in response.json()["message"]
    assert not uv_processes(cache)
