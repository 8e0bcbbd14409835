"""Pages read namespace by namespace are exactly the pages of a plain OFFSET query."""

from __future__ import annotations

import pytest
from sqlalchemy import insert

from conda_store_server.db.models import Environment, Namespace
from conda_store_server.server.api.listing import ENVIRONMENT_SORT, EnvironmentFilters, environment_query
from conda_store_server.server.auth import AuthenticationToken
from conda_store_server.server.dependencies import Caller
from conda_store_server.server.namespace_pages import namespace_ordered_page
from conda_store_server.server.pagination import PageArguments, paginate, sorted_query


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("sort_by", [[], ["namespace"], ["namespace", "name"]])
def test_every_page_matches_the_offset_query(conda_store, client, order, sort_by) -> None:
    sizes = [0, 1, 7, 40, 3, 0, 25, 1]  # uneven, some empty, one spanning several pages
    with conda_store.engine.begin() as connection:
        names = [f"team-{(n * 5) % 8}" for n in range(8)]  # name order differs from id order
        connection.execute(
            insert(Namespace), [{"id": n + 1, "name": name, "metadata_": {}} for n, name in enumerate(names)]
        )
        rows = [
            {"namespace_id": n + 1, "name": f"env-{(e * 7) % size:03d}-{e}"}
            for n, size in enumerate(sizes)
            for e in range(size)
        ]
        connection.execute(insert(Environment), rows)
    admin = AuthenticationToken(primary_namespace="admin", role_bindings={"*/*": ["admin"]})
    caller = Caller(admin, client.app.state.authentication, "default")
    query = environment_query(caller, EnvironmentFilters())
    total = sum(sizes)
    default = ["namespace", "name"]
    with conda_store.session() as session:
        for page in range(1, total // 10 + 3):  # two pages past the end too
            arguments = PageArguments(page=page, size=10, order=order, sort_by=list(sort_by))
            expected, fields = paginate(
                session, query, arguments, ENVIRONMENT_SORT, default, Environment.id, entities=False
            )
            ordered = sorted_query(query, arguments, ENVIRONMENT_SORT, default).order_by(Environment.id)
            rows, count = namespace_ordered_page(session, query, ordered, arguments)
            assert [row.id for row in rows] == [row.id for row in expected], page
            assert count == fields["count"] == total
