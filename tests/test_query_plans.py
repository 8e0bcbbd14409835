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


def test_the_migrations_create_the_schema_the_models_describe(database_url) -> None:
    """An index or column added to the models without a migration would exist only in tests."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    from conda_store_server.db.models import Base
    from conda_store_server.db.session import upgrade_database

    engine = create_engine(database_url)
    try:
        upgrade_database(engine)
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_counting_live_environments_reads_only_the_list_index(conda_store) -> None:
    """The list's COUNT is answered from the partial index, without reading environment rows."""
    with conda_store.engine.begin() as connection:
        connection.execute(
            insert(Namespace), [{"id": n, "name": f"team-{n:02d}", "metadata_": {}} for n in range(1, 21)]
        )
        connection.execute(
            insert(Environment), [{"namespace_id": e % 20 + 1, "name": f"env-{e:04d}"} for e in range(2000)]
        )
    refresh_query_statistics(conda_store.engine)
    with conda_store.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")  # small tables: force the choice
        sql = (
            "SELECT count(*) FROM environment JOIN namespace ON namespace.id = environment.namespace_id"
            " WHERE environment.deleted_on IS NULL AND namespace.deleted_on IS NULL"
        )
        explain = "EXPLAIN QUERY PLAN " if connection.dialect.name == "sqlite" else "EXPLAIN "
        plan = " | ".join(str(row[-1]) for row in connection.execute(text(explain + sql)))
    assert "ix_environment_live_by_name" in plan, plan
