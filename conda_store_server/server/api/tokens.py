"""POST /api/v1/token/: a caller hands out a token that can do at most what the caller can.

Deviations from upstream (secure defaults): anonymous callers cannot mint tokens (upstream gives
them a token with the authenticated defaults), and unknown roles or naive expirations are 400s
instead of 500s.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from conda_store_server.server.auth import (
    ARN_PATTERN,
    AuthenticationToken,
    AuthorizationBackend,
    normalize_role,
)
from conda_store_server.server.dependencies import Caller, CallerDependency

router = APIRouter(prefix="/api/v1")


class TokenRequest(BaseModel):
    primary_namespace: str | None = Field(None, max_length=255)
    expiration: datetime.datetime | None = None
    role_bindings: dict[str, list[str]] | None = Field(None, max_length=1000)


def pattern_covers(outer: str, inner: str) -> bool:
    """Does the binding pattern `outer` match every ARN that `inner` matches?

    A `*` of `inner` can only be absorbed by a `*` of `outer`: outer's literal characters are
    escaped, so they never match inner's `*`.
    """
    regex = "".join(".*" if c == "*" else re.escape(c) for c in outer)
    return re.fullmatch(regex, inner) is not None


def check_subset(
    authorization: AuthorizationBackend, held: dict[str, set[str]], requested: dict[str, list[str]]
) -> None:
    for binding, roles in requested.items():
        if ARN_PATTERN.match(binding) is None:
            raise HTTPException(400, f"invalid entity={binding}: expected namespace/name with * wildcards")
        unknown = [role for role in roles if normalize_role(role) not in authorization.role_mappings]
        if unknown:
            raise HTTPException(400, f"invalid role={unknown[0]}")
        for permission in authorization.permissions_of_roles(roles):
            if not any(
                pattern_covers(own, binding) and permission in authorization.permissions_of_roles(own_roles)
                for own, own_roles in held.items()
            ):
                raise HTTPException(400, "Requested role_bindings are not a subset of current permissions")


@router.post("/token/")
def api_create_token(body: TokenRequest | None = None, caller: Caller = CallerDependency) -> dict[str, Any]:
    if caller.entity is None:
        raise HTTPException(401, "log in to create a token: anonymous callers cannot create tokens")
    body = body or TokenRequest()
    authorization = caller.authentication.authorization
    held = caller.bindings

    requested = body.role_bindings
    if requested is None:
        role_bindings = {arn: sorted(roles) for arn, roles in held.items()}
    else:
        check_subset(authorization, held, requested)
        role_bindings = {arn: sorted({normalize_role(r) for r in roles}) for arn, roles in requested.items()}

    expiration = body.expiration or caller.entity.exp
    if expiration.tzinfo is None:
        expiration = expiration.replace(tzinfo=datetime.UTC)
    if expiration > caller.entity.exp:
        raise HTTPException(400, "Requested expiration of token is greater than current permissions")
    if expiration <= datetime.datetime.now(datetime.UTC):
        raise HTTPException(400, "Requested expiration of token is in the past")

    token = AuthenticationToken(
        primary_namespace=body.primary_namespace or caller.entity.primary_namespace,
        role_bindings=role_bindings,
        exp=expiration,
    )
    encoded = caller.authentication.authentication.encrypt_token(token)
    return {"status": "ok", "data": {"token": encoded}, "message": None}
