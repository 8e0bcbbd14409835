"""Index `conda_indexed_channels` into the package tables: what package search and the UI list.

Incremental: only package builds whose sha256 is not in the database yet are inserted, with one
query per table, so an unchanged channel costs a fetch of its (cached) repodata and a few SELECTs.
Rows have the same natural keys as those the build pipeline records, so a package indexed here
and later installed is one row. Summaries and descriptions come from the channel's
`channeldata.json` (repodata has none), as in the original; it is fetched only when the channel
has new packages, and never while a database transaction is open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import rattler
from sqlalchemy import select
from sqlalchemy.orm import Session

from conda_store_server.build.pipeline import (
    CHANNEL_KEY,
    PACKAGE_BUILD_KEY,
    PACKAGE_KEY,
    existing_or_created,
    fill_missing,
    package_build_values,
)
from conda_store_server.build.solve import channel_url
from conda_store_server.db.models import CondaChannel, CondaPackage, CondaPackageBuild, utcnow
from conda_store_server.specification import normalize_channel

if TYPE_CHECKING:
    from conda_store_server.app import CondaStore

log = logging.getLogger(__name__)
#: Seconds to wait for a channel's channeldata.json; it is small, and optional.
CHANNELDATA_TIMEOUT = 30


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
            changed = bool(_new_records(session, name, records))
        about = _channeldata(name) if changed else {}
        with conda_store.session() as session:
            added = _store(session, name, records, about)
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


def _new_records(
    session: Session, channel_name: str, records: list[rattler.RepoDataRecord]
) -> list[rattler.RepoDataRecord]:
    """The records whose package build is not in the database yet for this channel."""
    known = set(
        session.scalars(
            select(CondaPackageBuild.sha256)
            .join(CondaChannel, CondaPackageBuild.channel_id == CondaChannel.id)
            .where(CondaChannel.name == channel_name)
        )
    )
    return [r for r in records if r.sha256 and r.sha256.hex() not in known]


def _channeldata(channel: str) -> dict[str, dict[str, Any]]:
    """The `packages` of the channel's channeldata.json ({name: {"summary": ...}}), or {}.

    The file is optional (rattler's indexer does not write it), so a channel without it, or
    with an unreadable one, is indexed without summaries and a warning.
    """
    url = f"{channel_url(channel)}/channeldata.json"
    try:
        if url.startswith("file://"):
            text = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).read_text()
        elif url.startswith(("http://", "https://")):
            response = httpx.get(url, timeout=CHANNELDATA_TIMEOUT, follow_redirects=True)
            response.raise_for_status()
            text = response.text
        else:
            return {}
        packages = json.loads(text)["packages"]
        return {name: entry for name, entry in packages.items() if isinstance(entry, dict)}
    except (OSError, httpx.HTTPError, ValueError, TypeError, KeyError, AttributeError) as error:
        log.warning("channel %s: no package summaries, channeldata.json unreadable: %s", channel, error)
        return {}


def _text(entry: dict[str, Any], key: str) -> str | None:
    value = entry.get(key)
    return value if isinstance(value, str) and value else None


def _store(
    session: Session,
    channel_name: str,
    records: list[rattler.RepoDataRecord],
    about: dict[str, dict[str, Any]],
) -> int:
    existing_channels = {
        (c.name,): c for c in session.scalars(select(CondaChannel).where(CondaChannel.name == channel_name))
    }
    channel = existing_or_created(
        session, CondaChannel, CHANNEL_KEY, existing_channels, {(channel_name,): {"name": channel_name}}
    )[(channel_name,)]
    session.flush()
    new = _new_records(session, channel_name, records)
    if new:
        wanted_packages: dict[tuple, dict[str, Any]] = {}
        for record in new:
            key = (channel.id, record.name.normalized, str(record.version))
            entry = about.get(record.name.normalized, {})
            wanted_packages[key] = {
                "channel_id": channel.id,
                "name": record.name.normalized,
                "version": str(record.version),
                "license": record.license,
                "license_family": record.license_family,
                "summary": _text(entry, "summary"),
                "description": _text(entry, "description"),
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
        fill_missing(packages, wanted_packages, ("summary", "description"))
        session.flush()
        wanted_builds: dict[tuple, dict[str, Any]] = {}
        for record in new:
            package = packages[(channel.id, record.name.normalized, str(record.version))]
            values = package_build_values(record, channel.id, package.id)
            wanted_builds[tuple(values[k] for k in PACKAGE_BUILD_KEY)] = values
        existing_or_created(session, CondaPackageBuild, PACKAGE_BUILD_KEY, {}, wanted_builds)
    channel.last_update = utcnow()
    return len(new)
