"""Setting routes (three levels, no leak between them, pypi_* entries checked) and the usage summary."""

from __future__ import annotations

import json

import pytest
from conftest import login, submit, wait_for_build
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from conda_store_server.db.models import Build, Environment, KeyValueStore, Specification


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


def spec_with_pip(name: str, *entries: str) -> str:
    return json.dumps(
        {"name": name, "dependencies": ["python", *([{"pip": list(entries)}] if entries else [])]}
    )


def stored_pip(client: TestClient, response) -> list[str]:
    assert response.status_code == 200, response.text
    build = client.get(f"/api/v1/build/{response.json()['data']['build_id']}/").json()["data"]
    dependencies = build["specification"]["spec"]["dependencies"]
    return [item for dep in dependencies if isinstance(dep, dict) for item in dep["pip"]]


def table_counts(conda_store) -> tuple[int, ...]:
    with conda_store.session() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(m))
            for m in (Environment, Specification, Build, KeyValueStore)
        )


def test_pypi_settings_apply_by_level_with_their_index_options(client: TestClient, conda_store) -> None:
    login(client)
    private_index = "--extra-index-url http://10.0.0.5/simple"
    namespace_level = {
        "pypi_required_packages": ["flask"],
        "pypi_included_packages": [private_index, "requests"],
    }
    assert client.put("/api/v1/setting/lab/", json=namespace_level).status_code == 200
    assert (
        client.put("/api/v1/setting/lab/env/", json={"pypi_default_packages": ["flask>=3"]}).status_code
        == 200
    )

    def post(name: str, *entries: str, namespace: str = "lab"):
        body = {"namespace": namespace, "specification": spec_with_pip(name, *entries)}
        return client.post("/api/v1/specification/", json=body)

    # included entries are added, and an index the settings name is trusted although private
    assert stored_pip(client, post("other", "Flask==3.0")) == ["Flask==3.0", private_index, "requests"]
    # the environment's defaults apply only without pip packages, beside the namespace's rules
    assert stored_pip(client, post("env")) == ["flask>=3", private_index, "requests"]
    assert stored_pip(client, post("env", "flask")) == ["flask", private_index, "requests"]

    before = table_counts(conda_store)
    missing = post("other", "attrs")
    assert missing.status_code == 400
    assert missing.json()["message"] == (
        "PyPI packages ['flask'] are required and missing from the specification"
    )
    elsewhere = post("other", "flask", private_index, namespace="elsewhere")
    assert elsewhere.status_code == 400
    assert elsewhere.json()["message"].startswith(
        "Pip index URL 'http://10.0.0.5/simple' is not allowed: its host 10.0.0.5 is a private address"
    )
    assert table_counts(conda_store) == before


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"pypi_index_url": "https://alice:s3cret@pypi.internal/simple"},
            "Setting pypi_index_url is a deployment option (CondaStore.pypi_index_url in the "
            "configuration file) and cannot be set through the API",
        ),
        ({"pypi_allowed_indexes": []}, "Setting pypi_allowed_indexes is a deployment option"),
        (
            {"pypi_included_packages": ["--index-url https://alice:s3cret@pypi.internal/simple"]},
            "Invalid setting pypi_included_packages: Invalid pip option "
            "'--index-url https://****@pypi.internal/simple': credentials for private indexes are "
            "configured by the administrator",
        ),
        (
            {"pypi_default_packages": ["-e ."]},
            "Invalid setting pypi_default_packages: Invalid pip option '-e .'",
        ),
        (
            {"pypi_required_packages": ["./tool"]},
            "Invalid setting pypi_required_packages: Invalid pypi package",
        ),
        ({"conda_included_packages": ["num*py"]}, "Invalid setting conda_included_packages: "),
    ],
)
def test_bad_pypi_settings_are_400_name_the_setting_and_change_nothing(
    client: TestClient, conda_store, body, message
) -> None:
    login(client)
    before = table_counts(conda_store), client.get("/api/v1/setting/lab/").json()["data"]
    response = client.put("/api/v1/setting/lab/", json=body)
    assert response.status_code == 400
    assert response.json()["message"].startswith(message)
    assert "s3cret" not in response.text
    assert (table_counts(conda_store), client.get("/api/v1/setting/lab/").json()["data"]) == before
