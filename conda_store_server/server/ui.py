"""The browser UI: conda-store's React app (fetched by `scripts/fetch-ui`) in a page of ours.

The page only tells the app where the API, login and logout are; everything else is the app
talking to the API. Without the bundle the server still runs, and /ui/ says how to get it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIRECTORY = Path(__file__).parent / "static"
BUNDLE_DIRECTORY = STATIC_DIRECTORY / "conda-store-ui"

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
<p>The REST API works without it. To add the UI, run <code>scripts/fetch-ui</code> from the
repository (it fetches <code>@conda-store/conda-store-ui</code> with npm), then reload.</p>
</body></html>
"""


def page_config(request: Request, prefix: str) -> dict[str, str]:
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
    router = APIRouter(include_in_schema=False)

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
            return HTMLResponse(MISSING, status_code=503)
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
