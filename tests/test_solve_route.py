"""GET /api/v1/specification/: solve without building, and what would change."""

from __future__ import annotations

import pytest
from conftest import login, submit, wait_for_build
from fastapi.testclient import TestClient

from conda_store_server.app import CondaStore
from conda_store_server.db.models import CondaPackageBuild


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
        ({"conda": ["python"], "pip": ["flask"]}, 400, "pip dependencies"),
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
