"""v1 offset pagination and sorting (upstream-api §2.2), and RBAC filters written in SQL.

Lists are filtered and counted by the database: loading every row to check permissions in
Python would make a list of 10,000 environments cost 10,000 objects per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Query, Request
from sqlalchemy import ColumnElement, Select, false, func, or_, true
from sqlalchemy.orm import Session

from conda_store_server.server.auth import ARN_PATTERN


@dataclass
class PageArguments:
    page: int
    size: int
    order: str
    sort_by: list[str]

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size


async def page_arguments(
    request: Request,
    page: int = Query(1, ge=1, le=1_000_000, description="1-based page number"),
    size: int | None = Query(None, ge=1, description="Page size; larger than max_page_size is clamped"),
    order: str = Query("asc", description="asc or desc; anything else means asc"),
    sort_by: list[str] = Query([], description="Sort keys; the allowed ones depend on the route"),
) -> PageArguments:
    max_page_size = request.app.state.server.max_page_size
    return PageArguments(
        page=page,
        size=min(size or max_page_size, max_page_size),
        order="desc" if order.lower() == "desc" else "asc",
        sort_by=[key for value in sort_by for key in value.split(",") if key],
    )


def sorted_query(
    query: Select, arguments: PageArguments, allowed: dict[str, Any], default: list[str]
) -> Select:
    """Order by the requested keys (unknown ones are a 400 naming the allowed keys), then by id."""
    unknown = [key for key in arguments.sort_by if key not in allowed]
    if unknown:
        raise HTTPException(
            400, f"Cannot sort results by {unknown}. Valid sort_by values are {sorted(allowed)}"
        )
    keys = arguments.sort_by or default
    columns = [allowed[key] for key in keys]
    direction = (lambda c: c.desc()) if arguments.order == "desc" else (lambda c: c.asc())
    return query.order_by(*(direction(column) for column in columns))


def paginate(
    session: Session,
    query: Select,
    arguments: PageArguments,
    allowed: dict[str, Any],
    default: list[str],
    tiebreak: Any,
    entities: bool = True,
) -> tuple[list[Any], dict[str, Any]]:
    """The page's rows (ORM objects, or Row tuples for a select of columns when `entities` is
    false) and the envelope fields `page`, `size`, `count`."""
    count = count_of(session, query)
    ordered = sorted_query(query, arguments, allowed, default).order_by(tiebreak)
    result = session.execute(ordered.offset(arguments.offset).limit(arguments.size))
    rows = list(result.scalars().unique()) if entities else list(result)
    return rows, {"page": arguments.page, "size": arguments.size, "count": count}


def count_of(session: Session, query: Select) -> int:
    """COUNT(*) over the query's joins and filters, without a subquery of its columns."""
    counting = query.with_only_columns(func.count(), maintain_column_froms=True).order_by(None)
    return session.scalar(counting) or 0


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def visible_filter(
    bindings: dict[str, Any],
    namespace_column: Any,
    name_column: Any | None = None,
    extra_bindings: list[dict[str, Any]] | None = None,
) -> ColumnElement[bool]:
    """Rows some binding of the caller covers, with any role (upstream lists work this way).

    With `name_column` None the rows are namespaces, covered by the namespace part of a binding.
    `extra_bindings` further restrict the result (the `jwt` filter: what that token may see).
    """

    def condition(bindings: dict[str, Any]) -> ColumnElement[bool]:
        clauses = []
        for binding, roles in bindings.items():
            match = ARN_PATTERN.match(binding)
            if match is None or not roles:
                continue
            namespace_pattern, name_pattern = match.groups()
            if namespace_pattern == "*" and name_pattern == "*":
                return true()  # sees everything: no filter for the database to evaluate
            clause = namespace_column.like(_like(namespace_pattern), escape="\\")
            if name_column is not None:
                clause = clause & name_column.like(_like(name_pattern), escape="\\")
            clauses.append(clause)
        return or_(*clauses) if clauses else false()

    result = condition(bindings)
    for bindings in extra_bindings or []:
        result = result & condition(bindings)
    return result
