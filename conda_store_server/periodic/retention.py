"""The periodic storage-lifecycle pass: measure unmeasured builds, apply build retention, and
delete the prefixes of unfinished builds that a crash left in `discarded_prefixes`.

A worker's first pass also looks for prefixes that FAILED and CANCELED builds left where they
were installed: a build discards its prefix as it ends, but a store written by an earlier
version (or by the original) still holds theirs, often a whole conda environment each.

Builds completed before their sizes were recorded (a database from an earlier version, or
the original's) have no `BuildStorageGroup` rows; they are measured here, a bounded batch per
pass, so usage and quotas become exact without any request walking a prefix.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from sqlalchemy import exists, select, update
from sqlalchemy.orm import selectinload

from conda_store_server import discarded_prefixes
from conda_store_server.db.models import (
    UNFINISHED_STATUSES,
    Build,
    BuildStatus,
    BuildStorageGroup,
    Environment,
)
from conda_store_server.disk_usage import record_build_storage
from conda_store_server.exception import BuildPathError
from conda_store_server.retention import apply_retention_everywhere
from conda_store_server.service import prefix_of

if TYPE_CHECKING:
    from conda_store_server.app import CondaStore

__all__ = ["MEASURE_BATCH", "discard_leftover_prefixes", "measure_unmeasured_builds", "run_storage_lifecycle"]

log = logging.getLogger(__name__)

MEASURE_BATCH = 200
LEFTOVER_BATCH = 500


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


def discard_leftover_prefixes(conda_store: CondaStore, batch: int = LEFTOVER_BATCH) -> list[int]:
    """Delete the prefixes FAILED and CANCELED builds left installed; ids of those builds.

    Each is moved out while a no-op update holds the build's row, so that a restore cannot be
    queued for it (and start installing into the same prefix) until the prefix is gone.
    """
    found: list[tuple[int, str]] = []
    after = 0
    while True:
        with conda_store.session() as session:
            builds = session.scalars(
                select(Build)
                .where(Build.status.in_(UNFINISHED_STATUSES), Build.id > after)
                .options(
                    selectinload(Build.specification),
                    selectinload(Build.environment).selectinload(Environment.namespace),
                )
                .order_by(Build.id)
                .limit(batch)
            ).all()
            for build in builds:
                try:
                    prefix = prefix_of(conda_store, build)
                except BuildPathError:
                    continue  # failed for its too long a path: it never had a prefix
                if os.path.isdir(prefix):
                    found.append((build.id, prefix))
        if len(builds) < batch:
            break
        after = builds[-1].id
    discarded = []
    for build_id, prefix in found:
        with conda_store.session() as session:
            held = session.execute(
                update(Build)
                .where(Build.id == build_id, Build.status.in_(UNFINISHED_STATUSES))
                .values(status=Build.status)
                .execution_options(synchronize_session=False)
            ).rowcount
            moved = discarded_prefixes.discard(conda_store.store_directory, prefix) if held else None
        if moved is not None:
            discarded_prefixes.delete(moved)
            discarded.append(build_id)
    return discarded


def run_storage_lifecycle(conda_store: CondaStore, look_for_leftovers: bool = False) -> list[int]:
    """One pass for the whole deployment (the caller holds the period's claim); archived ids.

    `look_for_leftovers` (a worker's first pass) adds `discard_leftover_prefixes`.
    """
    emptied = discarded_prefixes.empty(conda_store.store_directory)
    if emptied:
        log.info("deleted %d prefixes of failed or canceled builds left from before", emptied)
    if look_for_leftovers:
        leftovers = discard_leftover_prefixes(conda_store)
        if leftovers:
            log.info("deleted the prefixes failed or canceled builds %s had left installed", leftovers)
    measured = measure_unmeasured_builds(conda_store)
    if measured:
        log.info("measured the prefixes of builds %s", measured)
    return apply_retention_everywhere(conda_store)
