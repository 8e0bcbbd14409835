"""The user page: who the caller is, their role bindings and permissions, and new API tokens.

A new token is shown once, in the answer to the form that made it; it is stored nowhere.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from conda_store_server.exception import CondaStoreError
from conda_store_server.server.admin.access import FormCaller, SignedIn
from conda_store_server.server.admin.errors import PageFailure, failure_of
from conda_store_server.server.admin.rendering import render
from conda_store_server.server.admin.route import AdminRoute
from conda_store_server.server.api import tokens, v1
from conda_store_server.server.dependencies import Caller

router = APIRouter(route_class=AdminRoute, include_in_schema=False)


def user_page(
    request: Request,
    caller: Caller,
    token: str | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    """What GET /api/v1/permission/ answers the caller."""
    permission = v1.api_permission(caller)["data"]
    bindings = [
        {
            "arn": arn,
            "roles": permission["entity_roles"][arn],
            "permissions": permission["entity_permissions"][arn],
        }
        for arn in sorted(permission["entity_roles"])
    ]
    context: dict[str, Any] = {
        "title": "User",
        "primary_namespace": permission["primary_namespace"],
        "expiration": permission["expiration"],
        "bindings": bindings,
        "token": token,
        "error": error,
    }
    return render(request, caller, "user.html", context, status_code)


@router.get("/admin/user/")
def user(request: Request, caller: Caller = SignedIn) -> Response:
    return user_page(request, caller)


def parse_expiration(value: str) -> datetime.datetime | None:
    """A date and time from the form (a browser's datetime-local input, in UTC), or None."""
    if not value.strip():
        return None
    try:
        moment = datetime.datetime.fromisoformat(value.strip())
    except ValueError as error:
        raise CondaStoreError(
            f"expiration {value[:40]!r} is not a date and time; give it as YYYY-MM-DDTHH:MM (UTC)"
        ) from error
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


@router.post("/admin/user/token/")
def create_token(
    request: Request,
    expiration: Annotated[str, Form(max_length=64)] = "",
    caller: Caller = FormCaller,
) -> Response:
    """A token with the caller's permissions, as POST /api/v1/token/ makes it."""
    try:
        body = tokens.TokenRequest(expiration=parse_expiration(expiration))
        answer = tokens.api_create_token(body, caller=caller)
    except PageFailure as failure:
        status_code, message = failure_of(failure)
        return user_page(request, caller, error=message, status_code=status_code)
    return user_page(request, caller, token=answer["data"]["token"])
