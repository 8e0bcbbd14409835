"""/docs and /redoc load every asset from this server, under any url_prefix."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import pytest
from browser import chromium_context
from fastapi.testclient import TestClient
from live import live_server
from traitlets.config import Config

from conda_store_server.server.app import CondaStoreServer
from conda_store_server.server.docs import ASSETS, CONTENT_SECURITY_POLICY, assets_directory


def app_client(conda_store, store_settings, **options: Any) -> TestClient:
    server = CondaStoreServer(config=Config({**store_settings, "CondaStoreServer": options}))
    return TestClient(server.create_app(conda_store))


def referenced_urls(html: str) -> list[str]:
    """Every src/href in the page, and every quoted URL-looking string in its inline script."""
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    urls += re.findall(r"""["'](https?://[^"']+|/[^"'\s]*\.(?:js|css|json|png))["']""", html)
    return urls


def test_the_assets_are_installed() -> None:
    assert sorted(path.name for path in assets_directory().iterdir() if path.name in ASSETS) == sorted(ASSETS)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("prefix", ["/", "/conda-store"])
def test_the_pages_reference_only_this_server(conda_store, store_settings, prefix: str) -> None:
    base = "" if prefix == "/" else prefix
    with app_client(conda_store, store_settings, url_prefix=prefix) as client:
        for page, needed in (
            ("docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}),
            ("redoc", {"redoc.standalone.js", "favicon.png"}),
        ):
            response = client.get(f"{base}/{page}")
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            html = response.text
            for host in ("cdn.jsdelivr.net", "fonts.googleapis.com", "fastapi.tiangolo.com", "unpkg.com"):
                assert host not in html, (page, host)
            urls = referenced_urls(html)
            assert urls, html
            names = set()
            for url in urls:
                parts = urllib.parse.urlsplit(url)
                assert not parts.scheme and not parts.netloc, f"{page} refers to another host: {url}"
                assert url.startswith(f"{base}/"), f"{page} ignores url_prefix: {url}"
                asset = client.get(url)
                assert asset.status_code == 200 and asset.content, url
                names.add(url.rsplit("/", 1)[-1])
            assert needed <= names, (page, names)
            assert f"{base}/openapi.json" in html
        assert client.get(f"{base}/docs/assets/swagger-ui-bundle.js").headers["content-type"].startswith(
            ("text/javascript", "application/javascript")
        )
        assert client.get(f"{base}/docs/assets/nothing.js").status_code == 404
        assert client.get(f"{base}/docs/assets/../../app.py").status_code == 404
        assert client.get(f"{base}/openapi.json").json()["info"]["title"] == "conda-store"
        redirect = client.get(f"{base}/docs/oauth2-redirect")
        assert redirect.status_code == 200
        assert redirect.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_pages_render_in_a_browser_without_the_network(conda_store, store_settings) -> None:
    """Chromium, with every request to another host blocked: both pages still show the API."""
    from playwright.sync_api import expect

    with live_server(conda_store, store_settings, {"url_prefix": "/conda-store"}) as url:
        with chromium_context(url) as (context, traffic):
            page = context.new_page()
            page.goto(f"{url}/conda-store/docs")
            expect(page.locator(".swagger-ui .info .title")).to_contain_text("conda-store", timeout=30_000)
            expect(page.locator(".opblock-tag").first).to_be_visible(timeout=30_000)

            page.goto(f"{url}/conda-store/redoc")
            expect(page.locator("h1").first).to_contain_text("conda-store", timeout=30_000)
            expect(page.get_by_text("/api/v1/environment/", exact=False).first).to_be_attached(timeout=30_000)
            assert any(request.endswith("/conda-store/openapi.json") for request in traffic.requests)
