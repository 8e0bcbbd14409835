"""Storage metrics: the disk where workers build, recorded in the database for every server to read.

The server may run on another machine than the workers; what matters to operators (and to
`/metrics`) is the free space where builds are written, so a worker measures it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from conda_store_server.db.models import CondaStoreConfiguration

if TYPE_CHECKING:
    from conda_store_server.app import CondaStore

STORAGE_ROW_ID = 1


def existing_ancestor(path: str) -> Path:
    """The store's filesystem, even before the first build creates the directory."""
    directory = Path(path).absolute()
    while not directory.exists():
        directory = directory.parent
    return directory


def record_storage_metrics(conda_store: CondaStore) -> CondaStoreConfiguration:
    usage = shutil.disk_usage(existing_ancestor(conda_store.store_directory))
    with conda_store.session() as session:
        row = session.get(CondaStoreConfiguration, STORAGE_ROW_ID)
        if row is None:
            row = CondaStoreConfiguration(id=STORAGE_ROW_ID)
            session.add(row)
        row.disk_usage = usage.used
        row.free_storage = usage.free
        row.total_storage = usage.total
        session.flush()
        session.expunge(row)
    return row
