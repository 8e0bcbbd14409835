"""Who may open a page or send a form: the API's caller, signed in, with the form's CSRF token.

What a signed-in caller may see or do is decided by the API's own checks (`Caller.require`,
called by the API handlers the pages use); these dependencies only add what pages need on top.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Form, Request

from conda_store_server.server.admin.csrf import CSRF_FIELD, MAX_TOKEN_CHARACTERS, check_token
from conda_store_server.server.admin.errors import LoginRequired
from conda_store_server.server.auth import Permissions
from conda_store_server.server.dependencies import Caller, CallerDependency

__all__ = ["FormCaller", "SignedIn", "granted_somewhere"]


async def _signed_in(caller: Caller = CallerDependency) -> Caller:
    """Anonymous callers go to the login page (CPU only: the token was checked already)."""
    if caller.entity is None:
        raise LoginRequired()
    return caller


def _form_caller(
    request: Request,
    token: Annotated[str, Form(alias=CSRF_FIELD, max_length=MAX_TOKEN_CHARACTERS)] = "",
    caller: Caller = CallerDependency,
) -> Caller:
    """The caller of a form post: signed in (else the login page), with this session's token.

    A plain `def`: the secret may be read from disk on first use, so this runs in the thread pool.
    """
    if caller.entity is None:
        raise LoginRequired()
    check_token(request, token)
    return caller


#: The caller of a page (GET).
SignedIn = Depends(_signed_in)
#: The caller of every form post (POST).
FormCaller = Depends(_form_caller)


def granted_somewhere(caller: Caller, permission: Permissions) -> bool:
    """Whether any binding of the caller grants `permission`: links to a form are shown then
    (the API decides for the name the form is sent with)."""
    authorization = caller.authentication.authorization
    roles_of_bindings = caller.bindings.values()
    return any(permission.value in authorization.permissions_of_roles(roles) for roles in roles_of_bindings)
