"""POST /api/v1/token/: never more than the issuer holds, never for anonymous callers."""

from __future__ import annotations

import datetime

import jwt as pyjwt
import pytest
from conftest import login
from fastapi.testclient import TestClient

from conda_store_server.server.auth import AuthenticationToken


def bearer(client: TestClient, token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def mint(client: TestClient, headers: dict[str, str] | None = None, **body):
    return client.post("/api/v1/token/", json=body, headers=headers or {})


def test_anonymous_callers_cannot_create_tokens(client: TestClient) -> None:
    response = mint(client)
    assert response.status_code == 401
    assert "anonymous" in response.json()["message"]


def test_a_token_carries_the_callers_bindings_by_default(client: TestClient) -> None:
    login(client)
    token = mint(client).json()["data"]["token"]
    client.cookies.clear()
    permission = client.get("/api/v1/permission/", headers=bearer(client, token)).json()["data"]
    assert permission["authenticated"] is True
    assert permission["primary_namespace"] == "alice"
    assert permission["entity_roles"]["*/*"] == ["admin"]


def test_a_narrower_token_is_narrower(client: TestClient) -> None:
    login(client)
    token = mint(client, role_bindings={"team/*": ["editor"]}, primary_namespace="team").json()["data"]
    client.cookies.clear()
    headers = bearer(client, token["token"])
    roles = client.get("/api/v1/permission/", headers=headers).json()["data"]["entity_roles"]
    assert roles["team/*"] == ["developer"]
    assert "*/*" not in roles
    # a token minted from that token can only narrow further
    assert mint(client, headers, role_bindings={"team/one": ["viewer"]}).status_code == 200
    wider = mint(client, headers, role_bindings={"*/*": ["viewer"]})
    assert wider.status_code == 400
    assert wider.json()["message"] == "Requested role_bindings are not a subset of current permissions"
    admin = mint(client, headers, role_bindings={"team/*": ["admin"]})
    assert admin.status_code == 400


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"role_bindings": {"team/*": ["overlord"]}}, "invalid role=overlord"),
        ({"role_bindings": {"no slash": ["viewer"]}}, "invalid entity=no slash"),
        ({"expiration": "2000-01-01T00:00:00"}, "in the past"),
        ({"expiration": "2999-01-01T00:00:00"}, "greater than current permissions"),
    ],
)
def test_bad_token_requests_are_400(client: TestClient, body, message) -> None:
    login(client)
    response = mint(client, **body)
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]


def test_expiry_is_honoured_and_bounded_by_the_issuer(client: TestClient) -> None:
    backend = client.app.state.authentication.authentication
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=10)
    issuer = backend.encrypt_token(AuthenticationToken("bob", {"bob/*": ["admin"]}, exp=soon))
    later = (soon + datetime.timedelta(minutes=5)).isoformat()
    assert mint(client, bearer(client, issuer), expiration=later).status_code == 400
    earlier = soon - datetime.timedelta(minutes=5)
    token = mint(client, bearer(client, issuer), expiration=earlier.isoformat()).json()["data"]["token"]
    claims = pyjwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] == int(earlier.timestamp())


def test_malformed_tokens_make_the_caller_anonymous_not_500(client: TestClient) -> None:
    for value in ("garbage", "a.b.c", "Bearer", ""):
        response = client.get("/api/v1/permission/", headers={"Authorization": f"Bearer {value}"})
        assert response.status_code == 200
        assert response.json()["data"]["authenticated"] is False
        assert mint(client, {"Authorization": f"Bearer {value}"}).status_code == 401
