"""The server-rendered admin pages under {url_prefix}/admin/ (Jinja2 templates, no CDN).

Each page calls the API handler that answers the same question, so a page shows exactly what
the API would show the caller and refuses what it would refuse; forms carry a CSRF token.
"""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["admin_router"]


def admin_router() -> APIRouter:
    """The routes of every page module (paths without the url_prefix, which include_router adds)."""
    from conda_store_server.server.admin import builds, create, environments, namespaces, settings, user

    router = APIRouter(include_in_schema=False)
    for module in (environments, create, namespaces, builds, user, settings):
        router.include_router(module.router)
    return router
