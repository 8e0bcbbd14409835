"""The route class of the admin pages: the API's errors become pages, anonymous callers log in.

The application's handlers answer errors in JSON for the API; a page answers the same status
with a page that says the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute

from conda_store_server.server.admin.errors import (
    CsrfError,
    LoginRequired,
    PageFailure,
    failure_of,
    validation_sentence,
)
from conda_store_server.server.admin.rendering import error_page, login_url

__all__ = ["AdminRoute"]


class AdminRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                return RedirectResponse(login_url(request), status_code=303)
            except CsrfError as error:
                return await error_page(request, 403, error.message)
            except RequestValidationError as error:
                return await error_page(request, 422, validation_sentence(error.errors()))
            except PageFailure as error:
                status_code, message = failure_of(error)
                return await error_page(request, status_code, message)

        return page_handler
