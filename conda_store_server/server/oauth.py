"""Login through an OAuth provider: /login/ sends the browser there, /oauth_callback/ returns.

The state that ties the two together travels in a short-lived signed cookie, so any server
replica can finish a login another one started.
"""

from __future__ import annotations

import datetime
import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from conda_store_server.server.auth import GenericOAuthAuthentication

STATE_COOKIE = "conda-store-oauth-state"
STATE_SECONDS = 600


def oauth_router(authentication: GenericOAuthAuthentication, prefix: str, safe_redirect: Any) -> APIRouter:
    router = APIRouter()
    signer = URLSafeTimedSerializer(authentication.authentication.secret, salt="oauth-state")

    def callback_url(request: Request) -> str:
        return authentication.oauth_callback_url or str(
            request.url.replace(path=f"{prefix}/oauth_callback/", query="")
        )

    @router.get(f"{prefix}/login/")
    def oauth_login(request: Request, next: str | None = None) -> RedirectResponse:
        state = secrets.token_urlsafe(24)
        response = RedirectResponse(
            authentication.authorization_redirect(callback_url(request), state), status_code=307
        )
        cookie = signer.dumps({"state": state, "next": safe_redirect(request, next, f"{prefix}/")})
        response.set_cookie(
            STATE_COOKIE, cookie, max_age=STATE_SECONDS, httponly=True, samesite="lax", path="/"
        )
        return response

    @router.get(f"{prefix}/oauth_callback/")
    def oauth_callback(request: Request, code: str = "", state: str = "") -> Response:
        try:
            saved = signer.loads(request.cookies.get(STATE_COOKIE, ""), max_age=STATE_SECONDS)
        except BadSignature:
            saved = None
        if not saved or not state or not secrets.compare_digest(saved["state"], state):
            return JSONResponse({"status": "error", "message": "OAuth states do not match"}, status_code=401)
        try:
            username = authentication.username_for_code(code, callback_url(request))
        except PermissionError as error:
            return JSONResponse({"status": "error", "message": f"login failed: {error}"}, status_code=401)
        entity = authentication.entity_for(username)
        response = RedirectResponse(saved["next"], status_code=303)
        response.delete_cookie(STATE_COOKIE, path="/")
        response.set_cookie(
            authentication.cookie_name,
            authentication.authentication.encrypt_token(entity),
            httponly=True,
            samesite="lax",  # the browser arrives here from the provider's site
            max_age=int((entity.exp - datetime.datetime.now(datetime.UTC)).total_seconds()),
            domain=authentication.cookie_domain,
            path="/",
        )
        return response

    return router
