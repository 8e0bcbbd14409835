"""CondaStoreServer options: url_prefix, enable_api, behind_proxy, additional_routes, OpenAPI."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from conftest import login
from fastapi import Request
from fastapi.testclient import TestClient
from live import live_server
from routes import served_routes
from traitlets.config import Config

from conda_store_server.server.app import CondaStoreServer


def make_client(conda_store, store_settings, **options: Any) -> TestClient:
    server = CondaStoreServer(config=Config({**store_settings, "CondaStoreServer": options}))
    return TestClient(server.create_app(conda_store))


def whoami(request: Request) -> dict[str, str]:
    return {"scheme": request.url.scheme, "client": request.client.host if request.client else ""}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_url_prefix_moves_every_route(conda_store, store_settings) -> None:
    with make_client(conda_store, store_settings, url_prefix="/conda-store") as client:
        assert client.get("/conda-store/api/v1/").json()["status"] == "ok"
        assert client.get("/api/v1/").status_code == 404
        response = client.post("/conda-store/login/", json={"username": "alice", "password": "password"})
        assert response.json()["data"]["redirect_url"] == "/conda-store/"
        assert client.get("/conda-store/api/v1/permission/").json()["data"]["authenticated"] is True
        assert client.get("/conda-store/openapi.json").status_code == 200
        assert client.get("/conda-store/docs").status_code == 200
        assert client.get("/conda-store/metrics").status_code == 200
        assert client.get("/metrics").status_code == 404


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_enable_api_false_keeps_login(conda_store, store_settings) -> None:
    with make_client(conda_store, store_settings, enable_api=False) as client:
        assert client.get("/api/v1/").status_code == 404
        assert client.get("/api/v2/environment/").status_code == 404
        login(client)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_additional_routes_are_served(conda_store, store_settings) -> None:
    with make_client(conda_store, store_settings, additional_routes=[("/whoami", "get", whoami)]) as client:
        assert client.get("/whoami").json()["scheme"] == "http"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("behind_proxy", [False, True])
def test_forwarded_headers_are_trusted_only_behind_a_proxy(conda_store, store_settings, behind_proxy) -> None:
    options = {"behind_proxy": behind_proxy, "additional_routes": [("/whoami", "get", whoami)]}
    with live_server(conda_store, store_settings, options) as url:
        answer = httpx.get(
            f"{url}/whoami", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
        ).json()
    if behind_proxy:
        assert answer == {"scheme": "https", "client": "203.0.113.9"}
    else:
        assert answer == {"scheme": "http", "client": "127.0.0.1"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_openapi_describes_every_api_route(conda_store, store_settings) -> None:
    with make_client(conda_store, store_settings) as client:
        document = client.get("/openapi.json").json()
        described = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
        served = [
            (path, method) for path, method in served_routes(client.app.routes) if path.startswith("/api/")
        ]
        assert len(served) > 40
        for path, method in served:
            assert (path, method) in described, f"{method} {path} is not in openapi.json"
