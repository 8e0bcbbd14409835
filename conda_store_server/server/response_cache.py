"""Answers of list routes kept until the database changes.

The lists are read far more often than anything is written (the UI polls them, JupyterHub
integrations list every environment for every user), and building a page of 100 is most of a
request's cost. A page is kept as the bytes it was sent as, under its route, query and caller,
with the database's *version* read before the page was computed; it is served again while the
version is the same. The version changes whenever a transaction that wrote anything commits,
in any process (server, workers, builds, a command-line tool), so a kept page is never older
than the database:

- SQLite: ``PRAGMA data_version`` of a connection of its own that never writes: SQLite changes
  it whenever another connection commits.
- PostgreSQL: ``pg_current_snapshot()``, read on a connection of its own: any commit of a
  transaction that wrote (read-only ones get no transaction id) moves its xmax or leaves its
  in-progress list, on any database of the cluster, so it errs on the side of a recomputation.

A page computed while a write commits is kept under the version read before it, which that
commit made old: it is recomputed at the next request. Other databases, and SQLite in memory
(one connection, so no "other" one to notice), keep nothing.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from starlette.types import Scope

if TYPE_CHECKING:
    from conda_store_server.server.auth import AuthenticationToken
    from conda_store_server.server.dependencies import Caller

__all__ = [
    "DatabaseVersion",
    "FreshVersions",
    "ListCache",
    "ResponseCache",
    "cached_list",
    "cached_page",
    "page_key",
]

log = logging.getLogger(__name__)


class DatabaseVersion:
    """A value that changes whenever a transaction that wrote to the database commits."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        self._lock = threading.Lock()
        self._watcher: Any = None  # a sqlite3 connection, or a detached PostgreSQL one
        self._warned = False
        database = engine.url.database
        self._sqlite_file = (
            Path(database).resolve()
            if self._dialect == "sqlite"
            and database
            and database != ":memory:"
            and "mode=memory" not in database
            else None
        )

    @property
    def supported(self) -> bool:
        return self._sqlite_file is not None or self._dialect == "postgresql"

    def read(self) -> Hashable | None:
        """The current version (None: not known, keep nothing). Blocking: call it off the loop."""
        with self._lock:
            try:
                if self._sqlite_file is not None:
                    if self._watcher is None:  # opened on first use: the schema exists by then
                        self._watcher = sqlite3.connect(
                            f"{self._sqlite_file.as_uri()}?mode=ro",
                            uri=True,
                            check_same_thread=False,
                            timeout=30,
                        )
                    return self._watcher.execute("PRAGMA data_version").fetchone()[0]
                if self._dialect == "postgresql":
                    return self._postgres_snapshot()
            except Exception:  # noqa: BLE001 - a version not read only means a page computed
                if not self._warned:  # once: a database that cannot tell would say so at every request
                    log.warning("the database version cannot be read; list pages are not kept", exc_info=True)
                    self._warned = True
                self._close_watcher()
        return None

    def _postgres_snapshot(self) -> str:
        """On a connection of its own, in autocommit: no transaction to begin or end per read."""
        if self._watcher is None:
            connection = self._engine.raw_connection()
            connection.detach()  # never back to the pool: it is this watcher's
            connection.dbapi_connection.autocommit = True  # type: ignore[union-attr]
            self._watcher = connection
        cursor = self._watcher.cursor()
        try:
            cursor.execute("SELECT pg_current_snapshot()::text")
            return cursor.fetchone()[0]
        finally:
            cursor.close()

    def _close_watcher(self) -> None:
        if self._watcher is not None:
            try:
                self._watcher.close()
            except Exception:  # noqa: BLE001 - it is being dropped
                pass
            self._watcher = None

    def close(self) -> None:
        with self._lock:
            self._close_watcher()


class FreshVersions:
    """The database's version for requests on the event loop, read in a thread of its own.

    Each request is answered by a read that *started after it asked*, so a page it is served
    is as fresh as one the route would read; requests that ask while a read runs share the
    next one, so under load one read (a round trip on PostgreSQL) serves many requests.
    """

    def __init__(self, read: Callable[[], Hashable | None]) -> None:
        self._read = read
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="database-version")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._waiting: list[asyncio.Future[Hashable | None]] = []  # for the next read

    async def read(self) -> Hashable | None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # another loop (a test client's): nothing of the last one counts
            self._loop, self._reading, self._waiting = loop, False, []
        waiter: asyncio.Future[Hashable | None] = loop.create_future()
        self._waiting.append(waiter)
        if not self._reading:
            self._start(loop)
        return await waiter

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        waiters, self._waiting = self._waiting, []
        self._reading = True

        def read_and_answer() -> None:
            try:
                version = self._read()
            except Exception:  # noqa: BLE001 - None: nothing kept is served, the routes answer
                log.warning("reading the database version failed", exc_info=True)
                version = None
            try:
                loop.call_soon_threadsafe(self._answer, loop, waiters, version)
            except RuntimeError:  # that loop is closed: nobody waits any more
                pass

        self._executor.submit(read_and_answer)

    def _answer(
        self, loop: asyncio.AbstractEventLoop, waiters: list[asyncio.Future[Hashable | None]], version: Any
    ) -> None:
        if loop is not self._loop:
            return
        for waiter in waiters:
            if not waiter.done():  # a request that went away cancelled its own
                waiter.set_result(version)
        self._reading = False
        if self._waiting:
            self._start(loop)

    def close(self) -> None:
        self._executor.shutdown(wait=False)


@dataclass(frozen=True)
class _Entry:
    version: Hashable
    body: bytes
    headers: tuple[tuple[str, str], ...]
    raw_headers: list[tuple[bytes, bytes]]  # the same as an ASGI response sends them, with the length


class ResponseCache:
    """Bodies by key, valid for one database version; least recently used go first beyond
    `max_bytes`. Thread-safe: list routes run in the thread pool."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, version: Hashable, count_miss: bool = True) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.version != version:
                self.misses += count_miss
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def holds(self, key: Hashable) -> bool:
        """A page is kept under `key`, of whatever version."""
        return key in self._entries

    def put(
        self, key: Hashable, version: Hashable, body: bytes, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        if len(body) > self.max_bytes // 8:  # one page may not push out most of the others
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old.body)
            raw = [
                (b"content-length", str(len(body)).encode()),
                *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers),
            ]
            self._entries[key] = _Entry(version, body, headers, raw)
            self._bytes += len(body)
            while self._bytes > self.max_bytes and self._entries:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted.body)

    @property
    def size_bytes(self) -> int:
        return self._bytes


class ListCache:
    """The list routes' cache of one server process: its database's version and the pages."""

    def __init__(self, engine: Engine, max_bytes: int) -> None:
        self.version = DatabaseVersion(engine)
        self.pages = ResponseCache(max_bytes)
        self.enabled = max_bytes > 0 and self.version.supported
        self.fresh_versions = FreshVersions(self.version.read)

    def respond(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The kept page for `key` if the database has not changed since, else `compute()`
        (kept when it is a 200). Blocking: list routes run in the thread pool."""
        if not self.enabled:
            return compute()
        version = self.version.read()
        entry = self.pages.get(key, version)
        if entry is not None:
            return Response(entry.body, headers=dict(entry.headers))
        response = compute()
        if not isinstance(response, Response):
            response = JSONResponse(response)
        if response.status_code == 200 and version is not None:
            headers = tuple((k, v) for k, v in response.headers.items() if k.lower() != "content-length")
            self.pages.put(key, version, bytes(response.body), headers)
        return response

    def close(self) -> None:
        self.fresh_versions.close()
        self.version.close()


def page_key(scope: Scope, entity: AuthenticationToken | None) -> Hashable:
    """A page's key: its path, its query string as sent (`sort_by` twice is an order) and its
    caller, by what the caller's token grants (primary namespace and role bindings); what the
    database grants it (namespace role mappings) is in the database, whose version is checked.
    Every route counts its caller, even one whose answer does not depend on it: the shortcut
    that serves kept pages before routing (kept_pages.py) cannot know which routes those are."""
    who = (
        None
        if entity is None
        else (
            entity.primary_namespace,
            tuple(sorted((k, tuple(sorted(v))) for k, v in entity.role_bindings.items())),
        )
    )
    return (scope["path"], scope.get("query_string", b""), who)


def cached_list(request: Request, caller: Caller | None, compute: Callable[[], Any]) -> Any:
    """`compute()`'s answer to this route, query string and caller (`page_key`), kept while the
    database is unchanged."""
    cache: ListCache | None = getattr(request.app.state, "list_cache", None)
    if cache is None or "jwt" in request.query_params:  # that filter's token may expire: not kept
        return compute()
    entity = caller.entity if caller is not None else request.app.state.authentication.entity_of(request)
    return cache.respond(page_key(request.scope, entity), compute)


def cached_page(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """A list route whose answers `cached_list` keeps: under `@router.get(...)`.

    A route whose answer depends on the caller takes it as `caller`. FastAPI sees the route's
    own parameters and, if it has none for the request, one more.
    """
    signature = inspect.signature(endpoint, eval_str=True)
    own = next((name for name, p in signature.parameters.items() if p.annotation is Request), None)
    parameters = list(signature.parameters.values())
    if own is None:  # FastAPI hands the request to one parameter only: add one if the route has none
        parameters.append(inspect.Parameter(_REQUEST, inspect.Parameter.KEYWORD_ONLY, annotation=Request))

    @functools.wraps(endpoint)
    def route(*args: Any, **kwargs: Any) -> Any:
        request = kwargs[own] if own is not None else kwargs.pop(_REQUEST)
        return cached_list(request, kwargs.get("caller"), lambda: endpoint(*args, **kwargs))

    route.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return route


_REQUEST = "cache_request"
