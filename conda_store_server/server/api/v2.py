"""/api/v2/environment/: cursor pagination (upstream-api §2.2), stable under inserts."""

from __future__ import annotations

import base64
import binascii
import enum
import json
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import tuple_
from sqlalchemy.orm import Session

from conda_store_server.db.models import Environment
from conda_store_server.server.api.listing import (
    ENVIRONMENT_SORT,
    EnvironmentFilters,
    EnvironmentFiltersDependency,
    environment_query,
    environments_json,
)
from conda_store_server.server.dependencies import Caller, CallerDependency, SessionDependency
from conda_store_server.server.pagination import count_of
from conda_store_server.server.response_cache import cached_page

router = APIRouter(prefix="/api/v2")
END_CURSOR = {"last_id": None, "last_value": None}


class Order(enum.StrEnum):
    asc = "asc"
    desc = "desc"


def encode_cursor(cursor: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(cursor, separators=(",", ":")).encode()).decode()


def decode_cursor(value: str | None, sort_by: list[str]) -> dict[str, Any] | None:
    """The position after which the page starts; None for the first page (or the end cursor)."""
    if not value:
        return None
    try:
        cursor = json.loads(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError) as error:
        raise HTTPException(400, "invalid cursor: not the base64 JSON this server returned") from error
    if not isinstance(cursor, dict) or cursor.get("last_id") is None:
        return None
    last_value = cursor.get("last_value")
    if (
        not isinstance(cursor["last_id"], int)
        or not isinstance(last_value, dict)
        or sorted(last_value) != sorted(sort_by)
        or not all(isinstance(v, str) for v in last_value.values())
    ):
        raise HTTPException(400, "invalid cursor: it does not match the requested sort_by")
    return cursor


@router.get("/environment/")
@cached_page
def api_list_environments_v2(
    request: Request,
    filters: EnvironmentFilters = EnvironmentFiltersDependency,
    limit: int | None = Query(None, ge=1, description="Page size (at most max_page_size)"),
    order: Order = Query(Order.asc),
    sort_by: list[str] = Query([], description="namespace and/or name; commas also separate"),
    cursor: str | None = Query(None, max_length=4096),
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
) -> JSONResponse:
    keys = [key for value in sort_by for key in value.split(",") if key]
    unknown = [key for key in keys if key not in ENVIRONMENT_SORT]
    if unknown:
        raise HTTPException(
            400, f"Cannot sort results by {unknown}. Valid sort_by values are {sorted(ENVIRONMENT_SORT)}"
        )
    keys = list(dict.fromkeys(keys))
    position = decode_cursor(cursor, keys)
    max_page_size = request.app.state.server.max_page_size
    size = min(limit or max_page_size, max_page_size)

    query = environment_query(caller, filters)
    count = count_of(session, query)
    columns = [ENVIRONMENT_SORT[key] for key in keys] + [Environment.id]
    if position is not None:
        after = tuple_(*columns)
        values = tuple_(*[position["last_value"][key] for key in keys], position["last_id"])
        query = query.where(after < values if order is Order.desc else after > values)
    direction = (lambda c: c.desc()) if order is Order.desc else (lambda c: c.asc())
    rows = list(session.execute(query.order_by(*map(direction, columns)).limit(size)))

    if rows:
        last = rows[-1]
        values_of = {"namespace": last.namespace_name, "name": last.name}
        next_cursor = {"last_id": last.id, "last_value": {key: values_of[key] for key in keys}}
    else:
        next_cursor = END_CURSOR
    data = environments_json(session, rows, with_current_build=False)
    body = {
        "data": data,
        "status": "ok",
        "message": None,
        "cursor": encode_cursor(next_cursor),
        "count": count,
    }
    return JSONResponse(body)
