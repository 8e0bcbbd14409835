"""GET /api/v1/specification/: solve without building, and what would change."""

from __future__ import annotations

import pytest
from conftest import login, submit, wait_for_build
from fastapi.testclient import TestClient


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
