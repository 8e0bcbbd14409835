"""Domain errors. Each says what the user must change; the HTTP layer maps them to 4xx."""

from __future__ import annotations


class CondaStoreError(Exception):
    """A request that cannot be honoured as asked (becomes a 400 with `message`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SpecificationError(CondaStoreError):
    """An environment specification or lockfile that is malformed or violates policy."""


class BuildPathError(CondaStoreError):
    """The build prefix would exceed the path length conda packages can be relocated into."""


class NotFoundError(CondaStoreError):
    """A named namespace, environment or build does not exist (becomes a 404)."""


class ConflictError(CondaStoreError):
    """The request conflicts with the current state (becomes a 409)."""


class TooLargeError(CondaStoreError):
    """A value over one of the documented limits of `conda_store_server.limits` (becomes a 413)."""


class SpecificationTooLargeError(SpecificationError, TooLargeError):
    """A specification or lockfile text over its documented size (a 413, and a specification error)."""


def http_status(error: CondaStoreError) -> int:
    """The HTTP status a domain error becomes."""
    for kind, status in ((NotFoundError, 404), (ConflictError, 409), (TooLargeError, 413)):
        if isinstance(error, kind):
            return status
    return 400


class BuildFailure(Exception):
    """A build step failed; `reason` is what the user sees in status_info and the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
