"""The browser UI: the page we serve around conda-store's React app, and the app in Chromium."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from browser import chromium_context, require, screenshot_directory
from conftest import login
from fastapi.testclient import TestClient
from live import live_server
from traitlets.config import Config

from conda_store_server.server import ui
from conda_store_server.server.app import CondaStoreServer

BUNDLE = ui.BUNDLE_DIRECTORY / "main.js"


def app_client(conda_store, store_settings, **options: Any) -> TestClient:
    server = CondaStoreServer(config=Config({**store_settings, "CondaStoreServer": options}))
    return TestClient(server.create_app(conda_store))


def page_config(html: str) -> dict[str, str]:
    start = html.index("var condaStoreConfig = ") + len("var condaStoreConfig = ")
    return json.loads(html[start : html.index(";</script>", start)])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("prefix", ["/", "/conda-store"])
def test_the_page_points_the_app_at_this_server(conda_store, store_settings, prefix: str) -> None:
    require(BUNDLE.is_file(), "the UI bundle (installed by the package build)")
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
        assert page.status_code == 503
        assert "python -m conda_store_server.server.ui_bundle" in page.text and "2024.11.1" in page.text
        assert client.get("/api/v1/").status_code == 200


#: Every text the environment page's build status shows, in order (it updates without a reload).
RECORD_STATUSES = """
window.__statuses = [];
new MutationObserver(() => {
  const element = document.querySelector('[data-testid="build-status"]');
  const text = element ? element.textContent.trim() : null;
  if (text && window.__statuses[window.__statuses.length - 1] !== text) window.__statuses.push(text);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""
SPECIFICATION = "dependencies:\n  - hello-py\n"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_app_works_in_a_browser(conda_store, store_settings, worker, tmp_path: Path) -> None:
    """Log in, create an environment in the editor, watch it build, its packages and artifacts,
    log out: with no 5xx and no request to another host (chromium_context checks both)."""
    require(BUNDLE.is_file(), "the UI bundle (installed by the package build)")
    from playwright.sync_api import expect

    shots = screenshot_directory(tmp_path)
    with live_server(conda_store, store_settings) as url:
        url = url.replace("127.0.0.1", "localhost")
        with chromium_context(url) as (context, traffic):
            context.add_init_script(RECORD_STATUSES)
            page = context.new_page()
            page.goto(f"{url}/ui/")
            login_button = page.get_by_role("button", name="Log in")
            expect(login_button).to_be_visible(timeout=30_000)

            # the UI's own login button leads to our login page, which brings us back
            login_button.click()
            page.wait_for_url(f"{url}/login/**", timeout=30_000)
            page.fill("input[name=username]", "alice")
            page.fill("input[name=password]", "password")
            page.screenshot(path=str(shots / "ui-login.png"))
            page.click("button[type=submit]")
            page.wait_for_url(f"{url}/ui/**", timeout=30_000)
            expect(page.get_by_role("button", name="Log out")).to_be_visible(timeout=30_000)
            expect(page.get_by_text("Shared Environments")).to_be_visible()

            # create an environment with the YAML editor
            page.get_by_label("Create a new environment in the alice namespace").click()
            page.wait_for_url(f"{url}/ui/alice/new-environment", timeout=30_000)
            page.get_by_label("Environment name").fill("browsed")
            page.get_by_placeholder("Enter here the description of your environment").fill("made in Chromium")
            page.locator("input[type=checkbox]").check()  # GUI -> YAML
            editor = page.locator(".cm-content").first
            editor.click()
            page.keyboard.press("Control+A")
            page.keyboard.press("Delete")
            page.keyboard.insert_text(SPECIFICATION)
            expect(editor).to_contain_text("hello-py")
            page.screenshot(path=str(shots / "ui-create.png"))
            page.get_by_role("button", name="Create", exact=True).click()

            # the environment's page follows its build live, to Completed, without a reload
            page.wait_for_url(f"{url}/ui/alice/browsed", timeout=30_000)
            status = page.get_by_test_id("build-status")
            expect(status).to_contain_text("Completed", timeout=180_000)
            statuses = page.evaluate("window.__statuses")
            # the demo build may end before the page first renders, so the earlier statuses are
            # not asserted here; tests/test_admin_browser.py follows a slow build live
            assert statuses[-1] == "Status: Completed", statuses
            expect(page.get_by_text("made in Chromium")).to_be_visible()

            # its packages: what was asked for and what the solve installed
            expect(page.get_by_text("Installed Packages")).to_be_visible()
            for package in ("hello-py", "python", "tinylib"):
                expect(page.get_by_text(package, exact=True).last).to_be_visible(timeout=30_000)
            page.screenshot(path=str(shots / "ui-environment.png"))

            # its artifacts: each link the page shows answers, the lockfile is conda-lock v1
            artifacts = page.get_by_text("Logs and Artifacts")
            artifacts.scroll_into_view_if_needed()
            lockfile = page.get_by_role("link", name="Show lockfile")
            expect(lockfile).to_be_visible(timeout=30_000)
            expect(page.get_by_role("link", name="Show yml file")).to_be_visible()
            links = page.locator('a[href*="/api/v1/build/"]')
            hrefs = [links.nth(index).get_attribute("href") for index in range(links.count())]
            assert any(href.endswith("/lockfile/") for href in hrefs), hrefs
            for href in hrefs:
                answer = page.request.get(href)
                assert answer.ok, (href, answer.status)
            assert page.request.get(lockfile.get_attribute("href")).json()["version"] == 1
            page.screenshot(path=str(shots / "ui-artifacts.png"))

            # log out from the UI: the session is gone, for the page and for the API
            page.get_by_role("button", name="Log out").click()
            expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=30_000)
            permissions = page.request.get(f"{url}/api/v1/permission/").json()["data"]
            assert permissions["authenticated"] is False, permissions
            assert any("/api/v1/specification/" in request for request in traffic.requests)
