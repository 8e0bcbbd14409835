"""Setting routes (three levels, no leak between them) and the usage summary."""

from __future__ import annotations

import pytest
from conftest import login, submit, wait_for_build
from fastapi.testclient import TestClient


def test_settings_are_layered_without_leaking(client: TestClient) -> None:
    assert client.get("/api/v1/setting/").status_code == 403
    login(client)
    base = client.get("/api/v1/setting/").json()["data"]
    assert base["conda_allowed_channels"] == []
    put = client.put("/api/v1/setting/lab/", json={"conda_included_packages": ["ipykernel"]})
    assert put.status_code == 200
    assert put.json()["message"] == "namespace lab setting keys ['conda_included_packages'] updated"
    client.put("/api/v1/setting/lab/env/", json={"conda_included_packages": ["hello-py"]})
    assert client.get("/api/v1/setting/lab/").json()["data"]["conda_included_packages"] == ["ipykernel"]
    assert client.get("/api/v1/setting/lab/env/").json()["data"]["conda_included_packages"] == ["hello-py"]
    assert client.get("/api/v1/setting/").json()["data"]["conda_included_packages"] == []
    assert client.get("/api/v1/setting/other/").json()["data"]["conda_included_packages"] == []


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/api/v1/setting/", {"nope": 1}, "Invalid setting keys ['nope']"),
        ("/api/v1/setting/lab/", {"storage_threshold": 1}, "storage_threshold is a global setting"),
        ("/api/v1/setting/", {"conda_allowed_channels": 5}, "validation error"),
    ],
)
def test_bad_settings_are_400_and_change_nothing(client: TestClient, path, body, message) -> None:
    login(client)
    before = client.get("/api/v1/setting/lab/").json()["data"]
    response = client.put(path, json=body)
    assert response.status_code == 400 and message in response.json()["message"]
    assert client.get("/api/v1/setting/lab/").json()["data"] == before


def test_a_namespace_setting_applies_to_its_builds(client: TestClient) -> None:
    login(client)
    client.put("/api/v1/setting/lab/", json={"conda_required_packages": ["hello-py"]})
    refused = client.post(
        "/api/v1/specification/",
        json={"namespace": "lab", "specification": "name: e\ndependencies: [python]\n"},
    )
    assert refused.status_code == 400 and "hello-py" in refused.json()["message"]
    submit(client, "name: e\ndependencies: [python]\n", namespace="elsewhere")


def test_usage_counts_what_the_caller_may_see(client: TestClient, worker) -> None:
    login(client)
    build_id = submit(client, "name: used\ndependencies: [hello-py]\n", namespace="lab")
    assert wait_for_build(client, build_id)["status"] == "COMPLETED"
    submit(client, "name: queued\ndependencies: [python]\n", namespace="private")
    usage = client.get("/api/v1/usage/").json()["data"]
    assert usage["lab"]["num_environments"] == 1 and usage["lab"]["num_builds"] == 1
    assert usage["lab"]["storage"] > 0
    assert usage["private"]["num_builds"] == 1
    client.cookies.clear()
    assert client.get("/api/v1/usage/").json()["data"] == {}
