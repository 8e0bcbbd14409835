"""Index `conda_indexed_channels` into the package tables: what package search and the UI list.

Incremental: only package builds whose sha256 is not in the database yet are inserted, with one
query per table, so an unchanged channel costs a fetch of its (cached) repodata and one SELECT.
Rows have the same natural keys as those the build pipeline records, so a package indexed here
and later installed is one row.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rattler
from sqlalchemy import select
from sqlalchemy.orm import Session

from conda_store_server.build.pipeline import (
    CHANNEL_KEY,
    PACKAGE_BUILD_KEY,
    PACKAGE_KEY,
    existing_or_created,
    package_build_values,
)
from conda_store_server.build.solve import channel_url
from conda_store_server.db.models import CondaChannel, CondaPackage, CondaPackageBuild, utcnow
from conda_store_server.specification import normalize_channel

if TYPE_CHECKING:
    from conda_store_server.app import CondaStore

log = logging.getLogger(__name__)


def index_channels(conda_store: CondaStore) -> None:
    """Fetch each channel's repodata and add its new package builds (runs rattler: call it in
    a process that forks no builds afterwards)."""
    alias = conda_store.conda_channel_alias
    platforms = sorted({*conda_store.conda_platforms, "noarch"})
    for channel in conda_store.conda_indexed_channels:
        name = normalize_channel(channel, alias).rstrip("/")
        try:
            records = asyncio.run(_fetch(name, platforms, conda_store.repodata_cache_directory))
        except Exception as error:  # one unreachable channel must not stop the others
            log.warning("indexing channel %s failed: %s", name, error)
            continue
        with conda_store.session() as session:
            added = _store(session, name, records)
        log.info("indexed channel %s: %d package builds, %d new", name, len(records), added)


async def _fetch(channel: str, platforms: list[str], cache: str) -> list[rattler.RepoDataRecord]:
    sparse = await rattler.fetch_repo_data(
        channels=[rattler.Channel(channel_url(channel))],
        platforms=[rattler.Subdir(p) for p in platforms],
        cache_path=Path(cache),
        callback=None,
    )
    records: list[rattler.RepoDataRecord] = []
    for repodata in sparse:
        records.extend(repodata.load_all_records())
    return records


def _store(session: Session, channel_name: str, records: list[rattler.RepoDataRecord]) -> int:
    existing_channels = {
        (c.name,): c for c in session.scalars(select(CondaChannel).where(CondaChannel.name == channel_name))
    }
    channel = existing_or_created(
        session, CondaChannel, CHANNEL_KEY, existing_channels, {(channel_name,): {"name": channel_name}}
    )[(channel_name,)]
    session.flush()
    known = set(
        session.scalars(select(CondaPackageBuild.sha256).where(CondaPackageBuild.channel_id == channel.id))
    )
    new = [r for r in records if r.sha256 and r.sha256.hex() not in known]
    if new:
        wanted_packages: dict[tuple, dict[str, Any]] = {}
        for record in new:
            key = (channel.id, record.name.normalized, str(record.version))
            wanted_packages[key] = {
                "channel_id": channel.id,
                "name": record.name.normalized,
                "version": str(record.version),
                "license": record.license,
                "license_family": record.license_family,
            }
        found = session.scalars(
            select(CondaPackage).where(
                CondaPackage.channel_id == channel.id,
                CondaPackage.name.in_({record.name.normalized for record in new}),
            )
        )
        packages = existing_or_created(
            session,
            CondaPackage,
            PACKAGE_KEY,
            {(p.channel_id, p.name, p.version): p for p in found},
            wanted_packages,
        )
        session.flush()
        wanted_builds: dict[tuple, dict[str, Any]] = {}
        for record in new:
            package = packages[(channel.id, record.name.normalized, str(record.version))]
            values = package_build_values(record, channel.id, package.id)
            wanted_builds[tuple(values[k] for k in PACKAGE_BUILD_KEY)] = values
        existing_or_created(session, CondaPackageBuild, PACKAGE_BUILD_KEY, {}, wanted_builds)
    channel.last_update = utcnow()
    return len(new)
