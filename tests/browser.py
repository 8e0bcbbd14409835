"""Headless Chromium (Debian's) for the browser tests, watching every request a page makes.

A page may talk to the server under test only: a request to any other host is blocked (so a test
never depends on, or leaks to, the network) and recorded; so is every 5xx answer. `Traffic.check`
fails the test on either.
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_CI

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Switches that keep Chromium from calling home (updates, sync, QUIC probes) while tests run.
ARGUMENTS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


def require(condition: bool, what: str) -> None:
    """Skip without `what`, except in CI, where it must be there."""
    if not condition:
        if IN_CI:
            pytest.fail(f"{what} is required in CI (.ci/run installs it)")
        pytest.skip(f"{what} is missing")


def screenshot_directory(tmp_path: Path) -> Path:
    """docs/screenshots with UPDATE_SCREENSHOTS=1 (they are the README's), else tmp_path."""
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return tmp_path


class Traffic:
    """What the pages of one browser context asked for, and what went wrong."""

    def __init__(self, base_url: str) -> None:
        self.origin = _origin(base_url)
        self.requests: list[str] = []
        self.foreign: list[str] = []
        self.server_errors: list[str] = []

    def route(self, route: Any) -> None:
        url = route.request.url
        if url.startswith(("data:", "blob:", "about:")):
            route.continue_()
        elif _origin(url) == self.origin:
            self.requests.append(url)
            route.continue_()
        else:
            self.foreign.append(url)
            route.abort("blockedbyclient")

    def response(self, response: Any) -> None:
        if response.status >= 500:
            self.server_errors.append(f"{response.status} {response.request.method} {response.url}")

    def check(self) -> None:
        assert self.foreign == [], f"requests to hosts other than the server: {self.foreign}"
        assert self.server_errors == [], f"server errors: {self.server_errors}"


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.netloc


@contextmanager
def chromium_context(base_url: str, **options: Any) -> Iterator[tuple[Any, Traffic]]:
    """A fresh browser context whose traffic is watched; checked when the block ends cleanly."""
    require(os.path.exists(CHROMIUM), "Chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGUMENTS)
        try:
            context = browser.new_context(**{"viewport": {"width": 1280, "height": 900}, **options})
            traffic = Traffic(base_url)
            context.route("**/*", traffic.route)
            context.on("response", traffic.response)
            yield context, traffic
            traffic.check()
        finally:
            browser.close()
