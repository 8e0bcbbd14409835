"""The routes an app really serves, including those of included routers.

FastAPI keeps an included router as one entry of `app.routes`; its own routes are reached
through it, with the include prefix added.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def served_routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(path, method) of every endpoint, HEAD left out."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from served_routes(included.routes, prefix + route.include_context.prefix)
        elif getattr(route, "methods", None):
            for method in sorted(route.methods - {"HEAD"}):
                yield prefix + route.path, method
