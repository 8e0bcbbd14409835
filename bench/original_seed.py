"""Runs inside the throwaway venv of the original conda-store-server (2025.2.2), never in ours.

    <venv>/bin/python bench/original_seed.py seed DATABASE_URL   # its schema + seed_shape's rows
    <venv>/bin/python bench/original_seed.py token SECRET        # an admin token it accepts

The seed creates the schema with the original's own migrations (`dbutil.upgrade`, what its
server runs at start) and inserts seed_shape's rows through its own ORM tables; the token is
minted with its own AuthenticationBackend.encrypt_token, as its login does.
"""

from __future__ import annotations

import sys

from seed_shape import SEQUENCED_TABLES, environment_rows, package_rows, postgresql_sequence_statements
from sqlalchemy import create_engine, insert, text


def seed(database_url: str) -> None:
    from conda_store_server._internal import dbutil, orm, schema

    dbutil.upgrade(database_url)
    tables = {
        "namespace": orm.Namespace,
        "specification": orm.Specification,
        "environment": orm.Environment,
        "build": orm.Build,
        "conda_channel": orm.CondaChannel,
        "conda_package": orm.CondaPackage,
        "conda_package_build": orm.CondaPackageBuild,
        "build_conda_package_build": orm.build_conda_package,
    }
    rows = {**environment_rows(), **package_rows()}
    for build in rows["build"]:
        build["status"] = schema.BuildStatus[build["status"]]
        build["build_key_version"] = 2  # its CondaStore.build_key_version default
    engine = create_engine(database_url)
    with engine.begin() as connection:
        for name, table in tables.items():
            connection.execute(insert(table), rows[name])
        connection.execute(text("UPDATE environment SET current_build_id = id"))
        if engine.dialect.name == "postgresql":
            for statement in postgresql_sequence_statements(SEQUENCED_TABLES):
                connection.execute(text(statement))
    engine.dispose()


def token(secret: str) -> str:
    from conda_store_server.server.auth import AuthenticationBackend
    from conda_store_server.server.schema import AuthenticationToken

    backend = AuthenticationBackend(secret=secret)
    return backend.encrypt_token(
        AuthenticationToken(primary_namespace="bench", role_bindings={"*/*": ["admin"]})
    )


if __name__ == "__main__":
    command, argument = sys.argv[1], sys.argv[2]
    if command == "seed":
        seed(argument)
    elif command == "token":
        print(token(argument))
    else:
        sys.exit(f"unknown command {command!r}: seed DATABASE_URL | token SECRET")
