"""Rendering the admin pages: which templates, what every page is given, the error page.

`CondaStoreServer.template` (a Jinja2Templates) replaces ours when configured; every page gets
`CondaStoreServer.template_vars` (a banner, a logo, ...) beside its own values. Rendering reads
templates from disk, so it runs in the thread pool, never on the event loop.
"""

from __future__ import annotations

import functools
import urllib.parse
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from conda_store_server.server.admin.access import granted_somewhere
from conda_store_server.server.admin.csrf import CSRF_FIELD, csrf_token
from conda_store_server.server.auth import Permissions
from conda_store_server.server.dependencies import Caller, refuse_on_event_loop

__all__ = ["TEMPLATE_DIRECTORY", "error_page", "login_url", "page_url", "prefix_of", "render"]

TEMPLATE_DIRECTORY = Path(__file__).parent.parent / "templates"

#: Every page: never cached (pages carry CSRF tokens, new API tokens), never framed.
HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff"}
#: Our templates load nothing from elsewhere and run no inline script; a deployment's own
#: templates (`CondaStoreServer.template`) may, so they do not get this policy.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: https:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

#: `?done=` after a form: the sentence the next page shows (fixed texts, never the query's).
DONE = {
    "created": "Created.",
    "current": "The current build was changed.",
    "deleted": "Deleted.",
    "canceled": "Cancel requested.",
    "namespace": "The namespace was created.",
    "settings": "The settings were saved.",
}

TITLES = {
    400: "Bad request",
    401: "Not logged in",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Too large",
    422: "Invalid input",
}


@functools.cache
def default_templates() -> Jinja2Templates:
    """Ours (autoescaped), made on first use: importing this module touches no disk."""
    return Jinja2Templates(directory=TEMPLATE_DIRECTORY)


def prefix_of(request: Request) -> str:
    """`url_prefix` as links need it: "" for "/"."""
    url_prefix: str = request.app.state.server.url_prefix
    return "" if url_prefix == "/" else url_prefix


def page_url(request: Request, *segments: str | int, done: str | None = None) -> str:
    """The admin page at `segments` (names quoted: they may hold `?`, `&` or `=`)."""
    path = "".join(f"/{urllib.parse.quote(str(segment), safe='')}" for segment in segments)
    return f"{prefix_of(request)}/admin{path}/" + (f"?done={done}" if done else "")


def login_url(request: Request) -> str:
    """The login page, coming back to this page (a form post comes back to the admin home)."""
    prefix = prefix_of(request)
    if request.method in ("GET", "HEAD"):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    else:
        target = f"{prefix}/admin/"
    # every character quoted: a query ending in "/" loses it (RequestGuard, for the official client)
    return f"{prefix}/login/?next={urllib.parse.quote(target, safe='')}"


def render(
    request: Request,
    caller: Caller | None,
    name: str,
    context: dict[str, Any],
    status_code: int = 200,
) -> Response:
    """The page `name` with `context`, the template_vars and what the layout needs."""
    refuse_on_event_loop("rendering a page")
    server = request.app.state.server
    prefix = prefix_of(request)
    signed_in = caller is not None and caller.authenticated
    values: dict[str, Any] = {
        **server.template_vars,
        "request": request,
        "prefix": prefix,
        "admin": f"{prefix}/admin",
        "static": f"{prefix}/static/admin",
        "user": caller.primary_namespace if signed_in else None,
        "csrf_field": CSRF_FIELD,
        "csrf_token": csrf_token(request) if signed_in else "",
        "can_read_global_settings": signed_in and caller.can("", Permissions.SETTING_READ),
        "can_create_environments": signed_in and granted_somewhere(caller, Permissions.ENVIRONMENT_CREATE),
        "done": DONE.get(request.query_params.get("done", "")),
        **context,
    }
    headers = dict(HEADERS)
    if server.template is None:
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    templates = server.template or default_templates()
    return templates.TemplateResponse(request, name, values, status_code=status_code, headers=headers)


def _error_response(request: Request, status_code: int, message: str) -> Response:
    title = TITLES.get(status_code, "Error")
    context = {"title": title, "status_code": status_code, "message": message}
    return render(request, None, "error.html", context, status_code)


async def error_page(request: Request, status_code: int, message: str) -> Response:
    """The error page: the status the API would answer, and its message."""
    return await run_in_threadpool(_error_response, request, status_code, message)
