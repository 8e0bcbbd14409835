"""Engines, sessions and schema upgrades: the one place that knows how we talk to the database."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

MIGRATIONS_DIRECTORY = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_SECONDS = 30
SQLITE_ANALYSIS_LIMIT = 1000  # rows sampled per index by ANALYZE
# Session.info key: ids of builds created in the transaction, announced to workers after commit
QUEUED_BUILDS = "conda_store_queued_builds"


def create_database_engine(database_url: str, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL and a busy timeout so server, worker and builds can share it."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
            **kwargs,
        )
        event.listen(engine, "connect", _configure_sqlite_connection)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
    except BaseException:
        end_session(session, commit=False)
        raise
    end_session(session, commit=True)


def end_session(session: Session, commit: bool) -> None:
    """Commit (or roll back) and close; a failed commit is rolled back before it propagates."""
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(database_url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIRECTORY))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_database(engine: Engine) -> None:
    """Bring the schema to the newest revision; run at start when CondaStore.upgrade_db is true."""
    from alembic import command

    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def refresh_query_statistics(engine: Engine) -> None:
    """Give SQLite's query planner table statistics (PostgreSQL's autovacuum keeps its own).

    Without them SQLite sorts every visible environment for each list page (a temporary B-tree
    over the join); with them it walks the namespace and environment name indexes in order:
    10,000 environments, ~10 ms → ~2 ms per page. `analysis_limit` bounds the cost on big tables.
    """
    if engine.dialect.name != "sqlite":
        return
    with engine.begin() as connection:
        connection.exec_driver_sql(f"PRAGMA analysis_limit={SQLITE_ANALYSIS_LIMIT}")
        connection.exec_driver_sql("ANALYZE")


def schema_is_current(engine: Engine) -> bool:
    """True when the database has our tables at the newest revision (checked when upgrade_db is off)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(str(engine.url)))
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return False
        current = MigrationContext.configure(connection).get_current_heads()
    return set(current) == set(script.get_heads())
