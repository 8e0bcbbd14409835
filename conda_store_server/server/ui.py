"""The browser UI: conda-store's React app (installed by the package build) in a page of ours.

The page only tells the app where the API, login and logout are; everything else is the app
talking to the API. Without the bundle (an install that could not reach the npm registry) the
server still runs, and /ui/ says how to add it (`ui_bundle`'s command).
"""

from __future__ import annotations

import html
import json
import logging
import os
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from conda_store_server.server import ui_bundle

log = logging.getLogger(__name__)

STATIC_DIRECTORY = Path(__file__).parent / "static"
BUNDLE_DIRECTORY = ui_bundle.BUNDLE_DIRECTORY

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>conda-store</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<link href="{prefix}/static/conda-store-ui/main.css" rel="stylesheet">
<script>var condaStoreConfig = {config};</script>
<script defer src="{prefix}/static/conda-store-ui/main.js"></script>
</head><body></body></html>
"""

MISSING = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>conda-store</title></head><body>
<h1>The browser UI is not installed</h1>
<p>The REST API works without it. The package's install could not fetch
<code>@conda-store/conda-store-ui</code> {version} from the npm registry. To add it, run</p>
<pre>{command}</pre>
<p>with the Python that conda-store-server is installed in (it downloads the UI, checks it against
its pinned hash and puts it into the installed package; set <code>https_proxy</code> if the registry
is reached through a proxy), then reload this page.</p>
</body></html>
"""


def missing_page() -> str:
    """The 503 page: what is missing and the command that adds it."""
    return MISSING.format(version=ui_bundle.VERSION, command=html.escape(ui_bundle.FETCH_COMMAND))


def page_config(request: Request, prefix: str) -> dict[str, str]:
    """The app's settings (it reads `condaStoreConfig`): URLs of this server, cookie login."""
    base = str(request.base_url).rstrip("/") + prefix
    return {
        "REACT_APP_CONTEXT": "single-page-app",
        "REACT_APP_AUTH_METHOD": "cookie",
        "REACT_APP_AUTH_TOKEN": "",
        "REACT_APP_STYLE_TYPE": "green-accent",
        "REACT_APP_SHOW_LOGIN_ICON": "true",
        "REACT_APP_SHOW_AUTH_BUTTON": "true",
        "REACT_APP_ROUTER_TYPE": "browser",
        "REACT_APP_API_URL": f"{base}/",
        "REACT_APP_LOGIN_PAGE_URL": f"{base}/login/?next=",
        "REACT_APP_LOGOUT_PAGE_URL": f"{base}/logout/?next=/",
        "REACT_APP_URL_BASENAME": f"{prefix}/ui",
    }


def ui_router(prefix: str) -> APIRouter:
    """/ and {prefix}/ lead to the UI; {prefix}/ui/... is the app's page, whatever its route."""
    router = APIRouter(include_in_schema=False)
    if not (BUNDLE_DIRECTORY / "main.js").is_file():
        log.warning(
            "the browser UI is not installed (%s has no main.js): /ui/ answers 503; add it with: %s",
            BUNDLE_DIRECTORY,
            ui_bundle.FETCH_COMMAND,
        )

    @router.get("/")
    def root() -> RedirectResponse:
        return RedirectResponse(f"{prefix}/ui/", status_code=307)

    if prefix:

        @router.get(prefix)
        @router.get(f"{prefix}/")
        def prefix_root() -> RedirectResponse:
            return RedirectResponse(f"{prefix}/ui/", status_code=307)

    @router.get(f"{prefix}/ui/")
    @router.get(f"{prefix}/ui/{{path:path}}")
    def ui_page(request: Request, path: str = "") -> HTMLResponse:
        if not (BUNDLE_DIRECTORY / "main.js").is_file():
            return HTMLResponse(missing_page(), status_code=503)
        # `<` escaped: the configuration cannot close the script element
        config = json.dumps(page_config(request, prefix)).replace("<", "\\u003c")
        status = 404 if path.rstrip("/").endswith("not-found") else 200
        return HTMLResponse(PAGE.format(prefix=prefix, config=config), status_code=status)

    return router


class _OptionalStaticFiles(StaticFiles):
    """Static files whose directory may not exist (the bundle was never fetched): then every
    path is a 404. Starlette's own check would raise, a 500 on each request."""

    async def check_config(self) -> None:
        if self.directory is not None and os.path.isdir(self.directory):
            await super().check_config()


def static_files(directory: Path = STATIC_DIRECTORY) -> StaticFiles:
    """The bundle's files; a missing bundle is a 404 per file, not an error at start."""
    return _OptionalStaticFiles(directory=directory, check_dir=False)
