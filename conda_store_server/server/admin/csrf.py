"""CSRF protection of the admin forms: a token signed for the caller's session.

The token is the hash of the credential the browser sent (the login cookie, or an
Authorization header), signed with the server's secret (itsdangerous, with a salt of its own)
and dated. Another site can make a browser send the cookie (SameSite=strict already stops
that in current browsers), but it cannot read a page to learn the token, and a token taken
from one session (one login cookie) is refused in another, such as a later login as another user.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from conda_store_server.server.admin.errors import CsrfError

__all__ = ["CSRF_FIELD", "MAX_TOKEN_CHARACTERS", "check_token", "csrf_token"]

CSRF_FIELD = "csrf_token"
SALT = "conda-store-admin-csrf"
#: A page older than this must be reloaded before its form is sent (a login lasts a day).
MAX_AGE_SECONDS = 24 * 60 * 60
MAX_TOKEN_CHARACTERS = 512


def _serializer(request: Request) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(request.app.state.authentication.authentication.secret, salt=SALT)


def _session_of(request: Request) -> str:
    """What identifies the session: the credential that authenticated the request, hashed (the
    same precedence as `Authentication.entity_from_headers`: cookie first)."""
    authentication = request.app.state.authentication
    credential = request.cookies.get(authentication.cookie_name)
    if credential is None:
        credential = request.headers.get("authorization", "")
    return hashlib.sha256(credential.encode("utf-8", "surrogatepass")).hexdigest()


def csrf_token(request: Request) -> str:
    """The token the forms of this request's pages carry."""
    return _serializer(request).dumps(_session_of(request))


def check_token(request: Request, token: str) -> None:
    """Raise CsrfError unless `token` was made by `csrf_token` for this session, recently."""
    if not token:
        raise CsrfError("the form has no CSRF token; reload the page and send the form again")
    try:
        session = _serializer(request).loads(token, max_age=MAX_AGE_SECONDS)
    except SignatureExpired as error:
        raise CsrfError("the form's CSRF token has expired; reload the page and send it again") from error
    except BadSignature as error:
        raise CsrfError("the form's CSRF token is invalid; reload the page and send it again") from error
    if not isinstance(session, str) or not hmac.compare_digest(session, _session_of(request)):
        raise CsrfError(
            "the form's CSRF token belongs to another session; reload the page and send it again"
        )
