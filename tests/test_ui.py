"""The browser UI: the page we serve around conda-store's React app, and the app in Chromium."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_CI, login, wait_for_build
from fastapi.testclient import TestClient
from live import live_server
from traitlets.config import Config

from conda_store_server.server import ui
from conda_store_server.server.app import CondaStoreServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BUNDLE = ui.BUNDLE_DIRECTORY / "main.js"


def require(condition: bool, what: str) -> None:
    if not condition:
        if IN_CI:
            pytest.fail(f"{what} is required in CI (.ci/run installs it)")
        pytest.skip(f"{what} is missing")


def app_client(conda_store, store_settings, **options: Any) -> TestClient:
    server = CondaStoreServer(config=Config({**store_settings, "CondaStoreServer": options}))
    return TestClient(server.create_app(conda_store))


def page_config(html: str) -> dict[str, str]:
    start = html.index("var condaStoreConfig = ") + len("var condaStoreConfig = ")
    return json.loads(html[start : html.index(";</script>", start)])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("prefix", ["/", "/conda-store"])
def test_the_page_points_the_app_at_this_server(conda_store, store_settings, prefix: str) -> None:
    require(BUNDLE.is_file(), "the UI bundle (scripts/fetch-ui)")
    base = "" if prefix == "/" else prefix
    with app_client(conda_store, store_settings, url_prefix=prefix) as client:
        root = client.get(f"{base}/", follow_redirects=False)
        assert root.status_code == 307 and root.headers["location"] == f"{base}/ui/"
        page = client.get(f"{base}/ui/lab/env")
        assert page.status_code == 200
        config = page_config(page.text)
        assert config["REACT_APP_API_URL"] == f"http://testserver{base}/"
        assert config["REACT_APP_URL_BASENAME"] == f"{base}/ui"
        assert config["REACT_APP_LOGIN_PAGE_URL"] == f"http://testserver{base}/login/?next="
        assert f'src="{base}/static/conda-store-ui/main.js"' in page.text
        assert client.get(f"{base}/static/conda-store-ui/main.js").status_code == 200
        assert client.get(f"{base}/ui/not-found").status_code == 404


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_enable_ui_false_removes_the_ui_but_not_login(conda_store, store_settings) -> None:
    with app_client(conda_store, store_settings, enable_ui=False) as client:
        assert client.get("/ui/").status_code == 404
        assert client.get("/", follow_redirects=False).status_code == 404
        login(client)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_without_the_bundle_the_page_says_how_to_get_it(
    conda_store, store_settings, monkeypatch, tmp_path
) -> None:
    monkeypatch.setattr(ui, "BUNDLE_DIRECTORY", tmp_path / "none")
    with app_client(conda_store, store_settings) as client:
        page = client.get("/ui/")
        assert page.status_code == 503 and "scripts/fetch-ui" in page.text
        assert client.get("/api/v1/").status_code == 200


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_app_works_in_a_browser(conda_store, store_settings, worker, tmp_path: Path) -> None:
    require(BUNDLE.is_file(), "the UI bundle (scripts/fetch-ui)")
    require(os.path.exists(CHROMIUM), "Chromium")
    from playwright.sync_api import expect, sync_playwright

    with live_server(conda_store, store_settings) as url, sync_playwright() as playwright:
        url = url.replace("127.0.0.1", "localhost")
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page()
            page.goto(f"{url}/ui/")
            expect(page.get_by_text("Log in", exact=False).first).to_be_visible(timeout=30_000)

            # log in through the login page the UI links to, which must bring us back
            page.goto(f"{url}/login/?next={url}/ui/")
            page.fill("input[name=username]", "alice")
            page.fill("input[name=password]", "password")
            page.click("button[type=submit]")
            page.wait_for_url(f"{url}/ui/", timeout=30_000)

            # an environment built through the API, with the browser's own session
            created = page.request.post(
                f"{url}/api/v1/specification/",
                data={"namespace": "alice", "specification": "name: browsed\ndependencies: [hello-py]\n"},
            )
            assert created.ok, created.text()
            build_id = created.json()["data"]["build_id"]
            with TestClient(CondaStoreServer(config=Config(store_settings)).create_app(conda_store)) as api:
                login(api)
                assert wait_for_build(api, build_id)["status"] == "COMPLETED"

            # the environment's page: found from the sidebar's list, its build, its packages
            page.goto(f"{url}/ui/alice/browsed")
            expect(page.get_by_text("Status: Completed")).to_be_visible(timeout=30_000)
            expect(page.get_by_text("Installed Packages")).to_be_visible()
            expect(page.get_by_text("tinylib", exact=True)).to_be_visible(timeout=30_000)
            # artifact links, and the lockfile they lead to
            lockfile = page.locator(f'a[href$="/api/v1/build/{build_id}/lockfile/"]')
            expect(lockfile).to_have_count(1, timeout=30_000)
            download = page.request.get(lockfile.get_attribute("href"))
            assert download.ok and download.json()["version"] == 1
            page.screenshot(path=str(tmp_path / "environment.png"), full_page=True)

            # log out from the UI
            page.get_by_role("button", name="Log out").click()
            expect(page.get_by_text("Log in", exact=False).first).to_be_visible(timeout=30_000)
        finally:
            browser.close()
