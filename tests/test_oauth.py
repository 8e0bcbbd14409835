"""OAuth login against a fake provider on loopback: the whole authorization-code flow."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Form, Header, HTTPException
from live import free_port, live_server, serve
from traitlets.config import Config

from conda_store_server.server.auth import GithubOAuthAuthentication, JupyterHubOAuthAuthentication


def fake_provider() -> FastAPI:
    provider = FastAPI()

    @provider.post("/token")
    def token(code: str = Form(...), client_secret: str = Form(...), grant_type: str = Form(...)) -> dict:
        if code != "good-code" or client_secret != "s3cret" or grant_type != "authorization_code":
            raise HTTPException(400, "bad code")
        return {"access_token": "provider-token", "token_type": "bearer"}

    @provider.get("/user")
    def user(authorization: str = Header("")) -> dict:
        if authorization != "Bearer provider-token":
            raise HTTPException(401)
        return {"login": "octocat"}

    return provider


@pytest.fixture
def provider_url() -> Iterator[str]:
    with serve(
        uvicorn.Config(fake_provider(), host="127.0.0.1", port=free_port(), log_level="warning")
    ) as url:
        yield url


@pytest.fixture
def oauth_server(conda_store, store_settings: dict[str, Any], provider_url: str) -> Iterator[str]:
    settings = {
        **store_settings,
        "GenericOAuthAuthentication": {
            "access_token_url": f"{provider_url}/token",
            "authorizie_url": f"{provider_url}/authorize",  # the seed's spelling works too
            "client_id": "app",
            "client_secret": "s3cret",
            "access_scope": "profile",
            "user_data_url": f"{provider_url}/user",
            "user_data_key": "login",
        },
    }
    options = {"authentication_class": "conda_store_server.server.auth.GenericOAuthAuthentication"}
    with live_server(conda_store, settings, options) as url:
        yield url


def test_the_authorization_code_flow_logs_the_user_in(oauth_server: str, provider_url: str) -> None:
    with httpx.Client(base_url=oauth_server) as browser:
        start = browser.get("/login/", params={"next": "/api/v1/permission/"})
        assert start.status_code == 307
        location = urllib.parse.urlsplit(start.headers["location"])
        query = dict(urllib.parse.parse_qsl(location.query))
        assert f"{location.scheme}://{location.netloc}{location.path}" == f"{provider_url}/authorize"
        assert query["client_id"] == "app" and query["scope"] == "profile"
        assert query["redirect_uri"] == f"{oauth_server}/oauth_callback/"

        forged = browser.get("/oauth_callback/", params={"code": "good-code", "state": "forged"})
        assert forged.status_code == 401 and forged.json()["message"] == "OAuth states do not match"
        refused = browser.get("/oauth_callback/", params={"code": "bad-code", "state": query["state"]})
        assert refused.status_code == 401

        done = browser.get("/oauth_callback/", params={"code": "good-code", "state": query["state"]})
        assert done.status_code == 303 and done.headers["location"] == "/api/v1/permission/"
        permission = browser.get("/api/v1/permission/").json()["data"]
        assert permission["authenticated"] is True
        assert permission["primary_namespace"] == "octocat"
        # not an admin of everything, as upstream would make them: admin of their own namespace
        assert permission["entity_roles"]["octocat/*"] == ["admin"]
        assert "*/*" not in permission["entity_roles"]
        # no password login with OAuth
        assert browser.post("/login/", json={"username": "x", "password": "password"}).status_code == 405


def test_provider_presets() -> None:
    github = GithubOAuthAuthentication(
        config=Config({"GithubOAuthAuthentication": {"github_url": "https://ghe.example"}})
    )
    assert github.authorize_url == "https://ghe.example/login/oauth/authorize"
    assert github.user_data_url == "https://api.github.com/user" and github.user_data_key == "login"
    hub = JupyterHubOAuthAuthentication(
        config=Config({"JupyterHubOAuthAuthentication": {"jupyterhub_url": "https://hub.example"}})
    )
    assert hub.access_token_url == "https://hub.example/hub/api/oauth2/token"
    assert hub.user_data_url == "https://hub.example/hub/api/user" and hub.user_data_key == "name"
