"""A database that exists for one benchmark run: a SQLite file, or a fresh PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432"


@contextmanager
def throwaway_database(kind: str, directory: Path) -> Iterator[str]:
    """Yields its URL; a PostgreSQL database is dropped afterwards (even with clients left)."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'bench.sqlite'}"
        return
    name = f"cs_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
