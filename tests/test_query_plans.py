"""List pages are read in index order, not sorted per request (SQLite, once it has statistics)."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, text

from conda_store_server.db.models import Environment, Namespace
from conda_store_server.db.session import refresh_query_statistics
from conda_store_server.server.api.listing import ENVIRONMENT_SORT, EnvironmentFilters, environment_query
from conda_store_server.server.auth import AuthenticationToken
from conda_store_server.server.dependencies import Caller
from conda_store_server.server.pagination import PageArguments, sorted_query


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_environment_list_walks_the_name_indexes(conda_store, client) -> None:
    with conda_store.engine.begin() as connection:
        connection.execute(
            insert(Namespace), [{"id": n, "name": f"team-{n:02d}", "metadata_": {}} for n in range(1, 21)]
        )
        connection.execute(
            insert(Environment),
            [{"namespace_id": e % 20 + 1, "name": f"env-{e:04d}"} for e in range(2000)],
        )

    admin = AuthenticationToken(primary_namespace="admin", role_bindings={"*/*": ["admin"]})
    caller = Caller(entity=admin, authentication=client.app.state.authentication, default_namespace="default")
    filters = EnvironmentFilters(
        search=None, namespace=None, name=None, status=None, packages=[], artifact=None, jwt=None
    )
    query = (
        sorted_query(
            environment_query(caller, filters),
            PageArguments(page=3, size=100, order="asc", sort_by=[]),
            ENVIRONMENT_SORT,
            ["namespace", "name"],
        )
        .order_by(Environment.id)
        .limit(100)
        .offset(200)
    )
    sql = str(query.compile(conda_store.engine, compile_kwargs={"literal_binds": True}))

    def plan() -> str:
        with conda_store.engine.connect() as connection:
            return " | ".join(row[-1] for row in connection.execute(text(f"EXPLAIN QUERY PLAN {sql}")))

    assert "TEMP B-TREE" in plan()  # without statistics, SQLite sorts every row for each page
    refresh_query_statistics(conda_store.engine)
    assert "TEMP B-TREE" not in plan(), plan()
