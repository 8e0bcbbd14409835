"""Work done once in the fork server, so that no build child repeats it.

Imported by the fork server (`supervisor.FORK_SERVER_PRELOAD`): SQLAlchemy configures the ORM
mappers on a process's first query, ~40 ms that every build child paid before its first step.
Configured here, each child inherits them configured. CPU only: no disk, network or database.
"""

from sqlalchemy.orm import configure_mappers

from conda_store_server.db import models  # noqa: F401 - the mappers to configure

configure_mappers()
