"""Namespace routes and the role mappings that grant access through the database (v1 and v2)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import login, submit
from fastapi.testclient import TestClient

from conda_store_server.server.auth import AuthenticationToken


def bearer(client: TestClient, namespace: str, bindings: dict[str, list[str]] | None = None) -> dict:
    backend = client.app.state.authentication.authentication
    token = backend.encrypt_token(
        AuthenticationToken(primary_namespace=namespace, role_bindings=bindings or {})
    )
    return {"Authorization": f"Bearer {token}"}


def test_create_read_update_namespace(client: TestClient) -> None:
    assert client.post("/api/v1/namespace/team/").status_code == 403  # anonymous
    login(client)
    assert client.post("/api/v1/namespace/team/").json() == {"status": "ok", "message": None}
    conflict = client.post("/api/v1/namespace/team/")
    assert conflict.status_code == 409 and conflict.json()["message"] == "namespace already exists"
    assert client.post("/api/v1/namespace/bad name/").status_code in (400, 403)
    update = client.put(
        "/api/v1/namespace/team/",
        json={"metadata": {"owner": "alice"}, "role_mappings": {"team/*": ["editor", "viewer"]}},
    )
    assert update.status_code == 200, update.text
    data = client.get("/api/v1/namespace/team/").json()["data"]
    assert data["metadata_"] == {"owner": "alice"}
    assert sorted((m["entity"], m["role"]) for m in data["role_mappings"]) == [
        ("team/*", "developer"),
        ("team/*", "viewer"),
    ]
    assert client.put("/api/v1/namespace/team/metadata", json={"k": 1}).status_code == 200
    assert client.get("/api/v1/namespace/team/").json()["data"]["metadata_"] == {"k": 1}
    assert client.get("/api/v1/namespace/nope/").status_code == 404
    client.cookies.clear()
    assert client.get("/api/v1/namespace/nope/").status_code == 403  # no existence leak


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"role_mappings": {"team/*": ["overlord"]}}, "invalid role=overlord"),
        ({"role_mappings": {"not an arn": ["viewer"]}}, "invalid entity=not an arn"),
    ],
)
def test_bad_role_mappings_are_400_and_change_nothing(client: TestClient, body: Any, message: str) -> None:
    login(client)
    client.post("/api/v1/namespace/team/")
    client.put("/api/v1/namespace/team/", json={"role_mappings": {"team/*": ["viewer"]}})
    response = client.put("/api/v1/namespace/team/", json=body)
    assert response.status_code == 400 and response.json()["message"] == message
    mappings = client.get("/api/v1/namespace/team/").json()["data"]["role_mappings"]
    assert [(m["entity"], m["role"]) for m in mappings] == [("team/*", "viewer")]


def test_v1_mappings_grant_members_of_the_primary_namespace(client: TestClient) -> None:
    login(client)
    submit(client, "name: secret\ndependencies: [python]\n", namespace="lab")
    client.post("/api/v1/namespace/members/")
    member = bearer(client, "members")
    client.cookies.clear()
    assert client.get("/api/v1/environment/lab/secret/", headers=member).status_code == 403
    login(client)
    client.put("/api/v1/namespace/members/", json={"role_mappings": {"lab/*": ["viewer"]}})
    client.cookies.clear()
    assert client.get("/api/v1/environment/lab/secret/", headers=member).status_code == 200
    roles = client.get("/api/v1/permission/", headers=member).json()["data"]["entity_roles"]
    assert roles["lab/*"] == ["viewer"]
    listed = client.get("/api/v1/environment/", headers=member).json()["data"]
    assert [e["name"] for e in listed] == ["secret"]
    # viewer is not editor
    rebuild = client.post(
        "/api/v1/specification/",
        json={"namespace": "lab", "specification": "name: other\ndependencies: [python]\n"},
        headers=member,
    )
    assert rebuild.status_code == 403


class TestV2:
    @pytest.fixture
    def store_settings(self, store_settings: dict[str, Any]) -> dict[str, Any]:
        store_settings["RBACAuthorizationBackend"] = {"role_mappings_version": 2}
        return store_settings

    def test_v2_role_routes_and_access(self, client: TestClient) -> None:
        login(client)
        submit(client, "name: shared\ndependencies: [python]\n", namespace="lab")
        client.post("/api/v1/namespace/guests/")
        assert client.get("/api/v1/namespace/lab/roles").json()["data"] == []
        created = client.post(
            "/api/v1/namespace/lab/role", json={"other_namespace": "guests", "role": "editor"}
        )
        assert created.status_code == 200, created.text
        duplicate = client.post(
            "/api/v1/namespace/lab/role", json={"other_namespace": "guests", "role": "viewer"}
        )
        assert duplicate.status_code == 409
        bogus = client.post("/api/v1/namespace/lab/role", json={"other_namespace": "guests", "role": "bogus"})
        assert bogus.status_code == 400 and bogus.json()["message"] == "invalid role=bogus"
        missing = client.post(
            "/api/v1/namespace/lab/role", json={"other_namespace": "ghosts", "role": "viewer"}
        )
        assert missing.status_code == 400 and missing.json()["message"] == "Namespace='ghosts' not found"
        one = client.get("/api/v1/namespace/lab/role", params={"other_namespace": "guests"}).json()["data"]
        assert {k: one[k] for k in ("namespace", "other_namespace", "role")} == {
            "namespace": "lab",
            "other_namespace": "guests",
            "role": "developer",
        }
        guest = bearer(client, "guests")
        client.cookies.clear()
        assert client.get("/api/v1/environment/lab/shared/", headers=guest).status_code == 200
        login(client)
        client.put("/api/v1/namespace/lab/role", json={"other_namespace": "guests", "role": "viewer"})
        client.cookies.clear()
        roles = client.get("/api/v1/permission/", headers=guest).json()["data"]["entity_roles"]
        assert roles["lab/*"] == ["viewer"]
        login(client)
        deleted = client.request("DELETE", "/api/v1/namespace/lab/role", json={"other_namespace": "guests"})
        assert deleted.status_code == 200
        assert (
            client.get("/api/v1/namespace/lab/role", params={"other_namespace": "guests"}).status_code == 404
        )
        client.cookies.clear()
        assert client.get("/api/v1/environment/lab/shared/", headers=guest).status_code == 403
