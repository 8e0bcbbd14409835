"""Work done once in the fork server, so that no build child repeats it.

Imported by the fork server (`supervisor.FORK_SERVER_PRELOAD`): SQLAlchemy configures the ORM
mappers on a process's first query, ~40 ms that every build child paid before its first step.
Configured here, each child inherits them configured. Then the CondaStore of the worker's
configuration is made and its first queries run (`supervisor.prepare_store_in_fork_server`),
the connection closed again before any fork.

Then everything imported so far is frozen out of the garbage collector: a build child
allocates a tuple or two per installed file, and each full collection that triggers would walk
the hundreds of thousands of objects the imports made, which never become garbage (measured:
sizing a 6,500-file prefix took 0.27 s in a child, 0.09 s in a fresh interpreter). Frozen
objects are also never written to by the collector, so the children keep sharing their pages
with the fork server.
"""

import gc

from sqlalchemy.orm import configure_mappers

from conda_store_server.db import models  # noqa: F401 - the mappers to configure
from conda_store_server.worker.supervisor import prepare_store_in_fork_server

configure_mappers()
prepare_store_in_fork_server()
gc.collect()
gc.freeze()
