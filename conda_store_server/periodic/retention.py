"""The periodic storage-lifecycle pass: measure unmeasured builds, apply build retention, and
delete the prefixes of unfinished builds that a crash left in `discarded_prefixes`.

Builds completed before their sizes were recorded (a database from an earlier version, or
the original's) have no `BuildStorageGroup` rows; they are measured here, a bounded batch per
pass, so usage and quotas become exact without any request walking a prefix.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import exists, select

from conda_store_server import discarded_prefixes
from conda_store_server.db.models import Build, BuildStatus, BuildStorageGroup
from conda_store_server.disk_usage import record_build_storage
from conda_store_server.retention import apply_retention_everywhere
from conda_store_server.service import prefix_of

if TYPE_CHECKING:
    from conda_store_server.app import CondaStore

__all__ = ["MEASURE_BATCH", "measure_unmeasured_builds", "run_storage_lifecycle"]

log = logging.getLogger(__name__)

MEASURE_BATCH = 200


def measure_unmeasured_builds(conda_store: CondaStore, limit: int = MEASURE_BATCH) -> list[int]:
    """Record the storage groups of live completed builds that have none; their ids."""
    with conda_store.session() as session:
        builds = session.scalars(
            select(Build)
            .where(
                Build.status == BuildStatus.COMPLETED,
                Build.deleted_on.is_(None),
                Build.archived_on.is_(None),
                ~exists().where(BuildStorageGroup.build_id == Build.id),
            )
            .order_by(Build.id)
            .limit(limit)
        ).all()
        for build in builds:
            record_build_storage(session, build.id, prefix_of(conda_store, build))
        return [build.id for build in builds]


def run_storage_lifecycle(conda_store: CondaStore) -> list[int]:
    """One pass for the whole deployment (the caller holds the period's claim); archived ids."""
    emptied = discarded_prefixes.empty(conda_store.store_directory)
    if emptied:
        log.info("deleted %d prefixes of failed or canceled builds left from before", emptied)
    measured = measure_unmeasured_builds(conda_store)
    if measured:
        log.info("measured the prefixes of builds %s", measured)
    return apply_retention_everywhere(conda_store)
