"""Kept list pages answered before routing.

A list page the cache keeps (response_cache.py) is the same bytes for the same path, query
string and caller while the database is unchanged. Serving one through the framework still cost
~0.7 ms of the server's one core: routing, solving the route's dependencies (a session, the
caller, the page arguments), a hop to the thread pool and back, and a response object. This
plain ASGI layer looks the page up first and sends the kept bytes itself; anything it does not
hold, or holds for an older version of the database, goes on to the routes as before. It sits
inside the request guard and CORS, so every answer still passes both.

What it checks is what the route's own cache lookup checks: the key (`page_key`: path, query,
and the caller from the request's cookie or token, verified as the route would) and a version
of the database read after the request arrived (`FreshVersions`, off the event loop).
"""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from conda_store_server.server.auth import Authentication
from conda_store_server.server.response_cache import ListCache, page_key


class KeptPages:
    def __init__(self, app: ASGIApp, cache: ListCache, authentication: Authentication) -> None:
        self.app = app
        self.cache = cache
        self.authentication = authentication

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not self.cache.enabled:
            await self.app(scope, receive, send)
            return
        key = page_key(scope, self.authentication.entity_of(HTTPConnection(scope)))
        if not self.cache.pages.holds(key):  # most requests: no read of the version at all
            await self.app(scope, receive, send)
            return
        version = await self.cache.fresh_versions.read()
        entry = None if version is None else self.cache.pages.get(key, version, count_miss=False)
        if entry is None:  # older than the database: the route computes it again (and keeps it)
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": entry.raw_headers})
        await send({"type": "http.response.body", "body": entry.body})
