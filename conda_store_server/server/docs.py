"""The API documentation pages (/docs: Swagger UI, /redoc: ReDoc), with every asset served here.

FastAPI's own pages load their JavaScript, CSS, favicon and fonts from CDNs, so they are blank on
a network without them and tell those CDNs who reads our docs. The same pages are made with
FastAPI's page functions, pointed at the copies the `fastapi-offline` package ships, and sent with
a Content-Security-Policy that keeps the browser on this server (ReDoc's script itself would
fetch its vendor's logo from cdn.redoc.ly; the policy blocks that, and ReDoc then hides it).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: The asset files, as fastapi-offline ships them (swagger-ui-dist 5 and redoc 2 builds).
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
#: Only this server; inline script and style because FastAPI's pages and both apps use them;
#: data: images and blob: workers because the apps make those themselves.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'self'; base-uri 'self'; form-action 'self'"
)


def _confined(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


def assets_directory() -> Path:
    """Where the installed fastapi-offline keeps the assets (a real directory: it is a wheel)."""
    return Path(str(files("fastapi_offline") / "static"))


def add_docs(app: FastAPI, prefix: str, openapi_url: str, title: str) -> None:
    """Serve {prefix}/docs, {prefix}/docs/oauth2-redirect, {prefix}/redoc and their assets under
    {prefix}/docs/assets/. `app` must be made with docs_url=None and redoc_url=None."""
    assets = f"{prefix}/docs/assets"
    oauth2_redirect = f"{prefix}/docs/oauth2-redirect"
    router = APIRouter(include_in_schema=False)

    @router.get(f"{prefix}/docs")
    def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
            oauth2_redirect_url=oauth2_redirect,
            # no badge fetched from validator.swagger.io (it would receive our schema's URL)
            swagger_ui_parameters={"validatorUrl": None},
        )
        return _confined(page)

    @router.get(oauth2_redirect)
    def swagger_ui_redirect() -> HTMLResponse:
        return _confined(get_swagger_ui_oauth2_redirect_html())

    @router.get(f"{prefix}/redoc")
    def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False,
        )
        return _confined(page)

    app.include_router(router)
    app.mount(assets, StaticFiles(directory=assets_directory()), name="docs-assets")


__all__ = ["ASSETS", "CONTENT_SECURITY_POLICY", "add_docs", "assets_directory"]
