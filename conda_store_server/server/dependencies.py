"""FastAPI dependencies: the store, a session per request, the caller, permission checks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from sqlalchemy.orm import Session

from conda_store_server.app import CondaStore
from conda_store_server.server.auth import Authentication, AuthenticationToken, Permissions


def get_conda_store(request: Request) -> CondaStore:
    return request.app.state.conda_store


def get_authentication(request: Request) -> Authentication:
    return request.app.state.authentication


def get_session(request: Request) -> Iterator[Session]:
    """One unit of work per request: committed when the handler returns, rolled back on error."""
    conda_store: CondaStore = request.app.state.conda_store
    with conda_store.session() as session:
        yield session


@dataclass
class Caller:
    entity: AuthenticationToken | None
    authentication: Authentication
    default_namespace: str
    database_bindings: dict[str, set[str]] = field(default_factory=dict)

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
        if not self.can(arn, *permissions):
            raise HTTPException(status_code=403, detail="request not authorized")


def get_caller(request: Request) -> Caller:
    authentication: Authentication = request.app.state.authentication
    entity = authentication.entity_from_headers(
        request.cookies.get(authentication.cookie_name), request.headers.get("authorization")
    )
    conda_store: CondaStore = request.app.state.conda_store
    database_bindings: dict[str, set[str]] = {}
    if entity is not None:
        with conda_store.session() as session:
            database_bindings = authentication.authorization.database_role_bindings(session, entity)
    return Caller(entity, authentication, conda_store.default_namespace, database_bindings)


# Ids are 32-bit integer columns on PostgreSQL: a larger id cannot exist, and asking the
# database for one would be an error (500) instead of a 422.
MAX_ID = 2**31 - 1
BuildId = Annotated[int, Path(ge=0, le=MAX_ID, description="Build id")]

CallerDependency = Depends(get_caller)
# "function" scope commits before the response is sent: a client acting on a response must
# find what it announced (an id returned by POST is readable by the next request).
SessionDependency = Depends(get_session, scope="function")
StoreDependency = Depends(get_conda_store)
