"""Namespace quotas: max_environments and max_storage_bytes refuse with a 409 and change nothing."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import login, submit, wait_for_build
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from conda_store_server import retention
from conda_store_server.app import CondaStore
from conda_store_server.db.models import Build, Environment, KeyValueStore, Namespace, Specification

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def table_counts(conda_store: CondaStore) -> tuple[int, ...]:
    with conda_store.session() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(model))
            for model in (Namespace, Environment, Specification, Build, KeyValueStore)
        )


def post(client: TestClient, specification: str, namespace: str = "lab") -> Any:
    return client.post(
        "/api/v1/specification/", json={"namespace": namespace, "specification": specification}
    )


def test_max_environments_refuses_one_more_and_changes_nothing(client: TestClient, conda_store) -> None:
    login(client)
    assert client.put("/api/v1/setting/lab/", json={"max_environments": 2}).status_code == 200
    assert post(client, "name: one\ndependencies: [python]\n").status_code == 200
    assert post(client, "name: two\ndependencies: [python]\n").status_code == 200
    before = table_counts(conda_store)

    refused = post(client, "name: three\ndependencies: [hello-py]\n")
    assert refused.status_code == 409, refused.text
    message = refused.json()["message"]
    assert "max_environments=2" in message and "holds 2 environments" in message and "three" in message
    assert table_counts(conda_store) == before

    # a new build of an environment that exists is no new environment
    assert post(client, "name: two\ndependencies: [python, hello-py]\n").status_code == 200
    # other namespaces have their own count; a deleted environment frees its place
    assert post(client, "name: three\ndependencies: [python]\n", namespace="other").status_code == 200
    assert client.delete("/api/v1/environment/lab/one/").status_code == 200
    assert post(client, "name: three\ndependencies: [python]\n").status_code == 200


def test_a_deployment_wide_limit_applies_to_new_namespaces(client: TestClient, conda_store) -> None:
    conda_store.max_environments = 0
    login(client)
    before = table_counts(conda_store)
    refused = post(client, "name: first\ndependencies: [python]\n", namespace="brand-new")
    assert refused.status_code == 409 and "max_environments=0" in refused.json()["message"]
    assert table_counts(conda_store) == before  # not even the namespace was created
    # a namespace setting lifts it for that namespace only
    assert client.put("/api/v1/setting/brand-new/", json={"max_environments": None}).status_code == 200
    assert post(client, "name: first\ndependencies: [python]\n", namespace="brand-new").status_code == 200
    assert post(client, "name: first\ndependencies: [python]\n", namespace="elsewhere").status_code == 409


@SQLITE
def test_max_storage_bytes_refuses_builds_rebuilds_and_restores(
    client: TestClient, worker, conda_store
) -> None:
    login(client)
    first = wait_for_build(client, submit(client, "name: big\ndependencies: [hello-py 1.0.0]\n", "lab"))
    second = wait_for_build(client, submit(client, "name: big\ndependencies: [hello-py 1.1.0]\n", "lab"))
    assert first["status"] == second["status"] == "COMPLETED"
    used = client.get("/api/v1/usage/").json()["data"]["lab"]["bytes_on_disk"]
    assert used > 0
    with conda_store.session() as session:
        retention.archive_build(session, conda_store, first["id"])
    live = client.get("/api/v1/usage/").json()["data"]["lab"]["bytes_on_disk"]
    assert 0 < live < used

    assert client.put("/api/v1/setting/lab/", json={"max_storage_bytes": live}).status_code == 200
    before = table_counts(conda_store)
    for response in (
        post(client, "name: big\ndependencies: [curl]\n"),
        post(client, "name: another\ndependencies: [curl]\n"),
        client.put(f"/api/v1/build/{second['id']}/"),
        client.post(f"/api/v1/build/{first['id']}/restore/"),
        client.put("/api/v1/environment/lab/big/", json={"build_id": first["id"]}),
    ):
        assert response.status_code == 409, response.text
        message = response.json()["message"]
        assert f"max_storage_bytes={live}" in message and f"use {live} bytes" in message
    assert table_counts(conda_store) == before
    archived = client.get(f"/api/v1/build/{first['id']}/").json()["data"]
    assert archived["archived"] and archived["status"] == "COMPLETED"
    assert client.get("/api/v1/environment/lab/big/").json()["data"]["current_build_id"] == second["id"]

    # other namespaces are not limited by it; raising the limit lets the restore through
    assert post(client, "name: big\ndependencies: [curl]\n", namespace="free").status_code == 200
    assert client.put("/api/v1/setting/lab/", json={"max_storage_bytes": live + 1}).status_code == 200
    assert client.post(f"/api/v1/build/{first['id']}/restore/").status_code == 200
    assert wait_for_build(client, first["id"])["status"] == "COMPLETED"


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/api/v1/setting/lab/",
            {"max_environments": -1},
            "max_environments (environments per namespace) must be at least 0",
        ),
        ("/api/v1/setting/lab/", {"max_environments": "10"}, "must be an integer or null, not '10'"),
        ("/api/v1/setting/lab/", {"max_environments": 2.5}, "must be an integer or null"),
        (
            "/api/v1/setting/",
            {"max_storage_bytes": -1},
            "max_storage_bytes (bytes of live prefixes per namespace)",
        ),
        ("/api/v1/setting/", {"max_storage_bytes": "10GB"}, "must be an integer or null, not '10GB'"),
        ("/api/v1/setting/", {"max_storage_bytes": False}, "must be an integer or null, not False"),
        (
            "/api/v1/setting/lab/env/",
            {"max_environments": 3},
            "max_environments is a limit of a whole namespace",
        ),
        (
            "/api/v1/setting/lab/env/",
            {"max_storage_bytes": 3},
            "max_storage_bytes is a limit of a whole namespace",
        ),
    ],
)
def test_bad_quota_settings_are_400_and_change_nothing(
    client: TestClient, conda_store, path, body, message
) -> None:
    login(client)
    before = table_counts(conda_store)
    response = client.put(path, json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]
    assert table_counts(conda_store) == before


def test_quota_settings_read_back_at_each_level(client: TestClient) -> None:
    login(client)
    assert client.get("/api/v1/setting/").json()["data"]["max_storage_bytes"] is None
    assert client.put("/api/v1/setting/", json={"max_storage_bytes": 10**12}).status_code == 200
    assert client.put("/api/v1/setting/lab/", json={"max_environments": 7}).status_code == 200
    lab = client.get("/api/v1/setting/lab/env/").json()["data"]
    assert lab["max_storage_bytes"] == 10**12 and lab["max_environments"] == 7
    assert client.get("/api/v1/setting/other/").json()["data"]["max_environments"] is None
