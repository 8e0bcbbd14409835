"""What goes wrong on a page, as the status and sentence the error page shows.

The pages call the API's own handlers, so they meet the API's errors: HTTP errors, domain
errors and validation errors. Each becomes the same 4xx the API would answer, as a page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException

from conda_store_server.exception import CondaStoreError, http_status

__all__ = ["CsrfError", "LoginRequired", "PageFailure", "failure_of", "validation_sentence"]

#: What the parts of a request are called on an error page.
_PLACES = {"query": "query parameter", "path": "path segment", "body": "form field", "header": "header"}


class LoginRequired(Exception):
    """The caller is anonymous: the page sends them to the login page, then back."""


class CsrfError(Exception):
    """A form arrived without this session's CSRF token: a 403, nothing is changed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


#: Errors a page action can meet, as the API meets them.
PageFailure = (HTTPException, CondaStoreError, ValidationError)


def validation_sentence(errors: Sequence[Any]) -> str:
    """FastAPI's or pydantic's error list as sentences naming each field: "form field
    namespace: String should have at most 255 characters"."""
    sentences = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ())]
        place = _PLACES.get(location[0], "") if location else ""
        field = ".".join(location[1:] if place else location)
        where = f"{place} {field}".strip()
        sentences.append(f"{where}: {error.get('msg', 'invalid value')}" if where else str(error.get("msg")))
    return "; ".join(sentences) or "the request is invalid"


def failure_of(error: Exception) -> tuple[int, str]:
    """The status and message the API answers for `error` (one of PageFailure)."""
    if isinstance(error, HTTPException):
        return error.status_code, str(error.detail)
    if isinstance(error, CondaStoreError):
        return http_status(error), error.message
    if isinstance(error, ValidationError):
        return 400, validation_sentence(error.errors(include_url=False))
    raise TypeError(f"not a page failure: {error!r}")
