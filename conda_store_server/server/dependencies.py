"""FastAPI dependencies: the store, a session per request, the caller, permission checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from conda_store_server.app import CondaStore
from conda_store_server.db.session import end_session
from conda_store_server.server.auth import Authentication, AuthenticationToken, Permissions
from conda_store_server.specification import validate_name


async def get_conda_store(request: Request) -> CondaStore:
    return request.app.state.conda_store


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One unit of work per request: committed when the handler returns, rolled back on error.

    Async so that FastAPI does not hop to a worker thread just to create the session, which does
    no I/O (its connection is taken on first use, in the handler's thread); ending it is I/O and
    runs in the thread pool.
    """
    conda_store: CondaStore = request.app.state.conda_store
    session = conda_store.session_factory()
    try:
        yield session
    except BaseException:
        await _end(session, commit=False)
        raise
    await _end(session, commit=True)


async def _end(session: Session, commit: bool) -> None:
    if session.in_transaction():
        await run_in_threadpool(end_session, session, commit)
    else:
        session.close()  # never used: no connection to return, nothing to commit


# "function" scope commits before the response is sent: a client acting on a response must
# find what it announced (an id returned by POST is readable by the next request).
SessionDependency = Depends(get_session, scope="function")


@dataclass
class Caller:
    entity: AuthenticationToken | None
    authentication: Authentication
    default_namespace: str
    session: Session | None = None  # the request's, where role mappings are read; None: none are
    _database_bindings: dict[str, set[str]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def database_bindings(self) -> dict[str, set[str]]:
        """The namespaces' role mappings for this entity, read on first use, in the handler's
        thread: every request needs the caller, not every caller needs the database.

        Kept on the instance by hand, not with `functools.cached_property`: before Python 3.12
        that takes one lock for every instance of the class, so under load every request's
        thread queued behind the one reading its mappings, which held that lock while it
        waited for a database connection the queued threads held (a deadlock at 64 connections
        on PostgreSQL). A caller belongs to one request, so it needs no lock at all.
        """
        if self._database_bindings is None:
            if self.entity is None or self.session is None:
                return {}
            refuse_on_event_loop("reading the caller's role mappings")
            self._database_bindings = self.authentication.authorization.database_role_bindings(
                self.session, self.entity
            )
        return self._database_bindings

    @property
    def bindings(self) -> dict[str, set[str]]:
        """Everything that grants this caller roles: defaults, token, database role mappings."""
        return self.authentication.authorization.entity_bindings(self.entity, self.database_bindings)

    @property
    def authenticated(self) -> bool:
        return self.entity is not None

    @property
    def primary_namespace(self) -> str:
        return self.entity.primary_namespace if self.entity else self.default_namespace

    def can(self, arn: str, *permissions: Permissions) -> bool:
        granted = self.authentication.authorization.permissions_on(self.bindings, arn)
        return all(p.value in granted for p in permissions)

    def require(self, arn: str, *permissions: Permissions) -> None:
        """403 unless granted; a malformed name is a 400 naming the problem, even for an admin
        (no role can match it, so "not authorized" would hide what to fix)."""
        if arn:  # the global level of settings has no name
            namespace, _, name = arn.partition("/")
            validate_name(namespace, "namespace name")
            if name:
                validate_name(name, "environment name")
        if not self.can(arn, *permissions):
            raise HTTPException(status_code=403, detail="request not authorized")


def refuse_on_event_loop(action: str) -> None:
    """Database work on the event loop would stall every request: fail loudly instead."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"{action} blocks the event loop: do it in the thread pool (run_in_threadpool)")


async def get_caller(request: Request, session: Session = SessionDependency) -> Caller:
    """The token is checked here (CPU only: a signature); role mappings are read when needed,
    in the request's own session (one connection per request)."""
    authentication: Authentication = request.app.state.authentication
    entity = authentication.entity_of(request)
    conda_store: CondaStore = request.app.state.conda_store
    return Caller(entity, authentication, conda_store.default_namespace, session)


# Ids are 32-bit integer columns on PostgreSQL: a larger id cannot exist, and asking the
# database for one would be an error (500) instead of a 422.
MAX_ID = 2**31 - 1
BuildId = Annotated[int, Path(ge=0, le=MAX_ID, description="Build id")]

CallerDependency = Depends(get_caller)
StoreDependency = Depends(get_conda_store)
