"""GET {prefix}/celery: what the Celery workers say about themselves, in the original's keys.

The original answers anyone; worker statistics name hosts, pids and task arguments, so here
only an admin of every namespace (`*/*`) gets them, and everyone else the keys with nulls.
Workers answer a broadcast, which the SQL broker cannot carry: then the values are null too.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from conda_store_server.app import CondaStore
from conda_store_server.server.dependencies import Caller, CallerDependency, StoreDependency

#: Seconds each question waits for the workers' replies (a broadcast has no end otherwise).
REPLY_SECONDS = 0.5
KEYS = ("availability", "stats", "registered_tasks", "active_tasks", "scheduled_tasks")


def celery_router(prefix: str) -> APIRouter:
    router = APIRouter(prefix=prefix)

    @router.get("/celery")
    def api_celery(
        caller: Caller = CallerDependency, conda_store: CondaStore = StoreDependency
    ) -> dict[str, Any]:
        if "admin" not in caller.bindings.get("*/*", set()):
            return dict.fromkeys(KEYS)
        return worker_status(conda_store)

    return router


def worker_status(conda_store: CondaStore) -> dict[str, Any]:
    """Ping first: with no worker listening, the other four questions would each wait in vain."""
    try:
        inspect = conda_store.celery_app.control.inspect(timeout=REPLY_SECONDS)
        availability = inspect.ping()
        if not availability:
            return dict.fromkeys(KEYS)
        return {
            "availability": availability,
            "stats": inspect.stats(),
            "registered_tasks": inspect.registered(),
            "active_tasks": inspect.active(),
            "scheduled_tasks": inspect.scheduled(),
        }
    except Exception:  # noqa: BLE001 - a broker without broadcast (SQL) or unreachable: no answer
        return dict.fromkeys(KEYS)
