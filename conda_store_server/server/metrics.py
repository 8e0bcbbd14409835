"""GET {prefix}/metrics: Prometheus text format, read from the database at scrape time.

Every figure comes from the database (the truth shared by server and workers), so any server
replica answers the same, and a per-application registry keeps app instances independent.
"""

from __future__ import annotations

import datetime
import shutil
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from conda_store_server.app import CondaStore
from conda_store_server.db.models import Build, BuildStatus, CondaStoreConfiguration, Environment
from conda_store_server.disk_usage import namespace_bytes
from conda_store_server.periodic.package_cache import freed_totals
from conda_store_server.periodic.storage import STORAGE_ROW_ID, existing_ancestor

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)


class StoreCollector(Collector):
    def __init__(self, conda_store: CondaStore) -> None:
        self.conda_store = conda_store

    def collect(self) -> Iterator[Any]:
        yield from self._disk()
        with self.conda_store.session() as session:
            by_status = dict(
                session.execute(
                    select(Build.status, func.count())
                    .where(Build.deleted_on.is_(None))
                    .group_by(Build.status)
                ).all()
            )
            environments = session.scalar(
                select(func.count()).select_from(Environment).where(Environment.deleted_on.is_(None))
            )
            stored = session.scalar(
                select(func.coalesce(func.sum(Build.size), 0)).where(Build.deleted_on.is_(None))
            )
            on_disk = namespace_bytes(session)
            durations = session.execute(
                select(Build.started_on, Build.ended_on).where(
                    Build.status.in_([BuildStatus.COMPLETED, BuildStatus.FAILED]),
                    Build.started_on.is_not(None),
                    Build.ended_on.is_not(None),
                )
            ).all()

        # the upstream names, one gauge per status present
        for status, count in sorted(by_status.items(), key=lambda item: item[0].value):
            yield GaugeMetricFamily(
                f"conda_store_build_{status.value.lower()}", f"Builds {status.value}", value=count
            )
        labelled = GaugeMetricFamily("conda_store_builds", "Builds by status", labels=["status"])
        for status in BuildStatus:
            labelled.add_metric([status.value], by_status.get(status, 0))
        yield labelled
        yield GaugeMetricFamily(
            "conda_store_queue_depth",
            "Builds waiting for a worker",
            value=by_status.get(BuildStatus.QUEUED, 0),
        )
        yield GaugeMetricFamily("conda_store_environments", "Environments (not deleted)", value=environments)
        yield GaugeMetricFamily(
            "conda_store_environments_size_bytes", "Bytes of the builds not deleted", value=stored
        )
        yield self._durations(durations)
        live = GaugeMetricFamily(
            "conda_store_namespace_bytes_on_disk",
            "Bytes on disk of a namespace's live builds, hard links counted once",
            labels=["namespace"],
        )
        archived = GaugeMetricFamily(
            "conda_store_namespace_archived_bytes",
            "Bytes a namespace's archived builds occupied (freed; taken again by restoring them)",
            labels=["namespace"],
        )
        for name, usage in on_disk.items():
            live.add_metric([name], usage.live)
            archived.add_metric([name], usage.archived)
        yield live
        yield archived
        yield from self._package_cache_collections()

    def _package_cache_collections(self) -> Iterator[Any]:
        """Collections run in a worker's child process; their totals are in the database, so
        every server replica reports the same, and a worker's restart loses nothing."""
        with self.conda_store.session() as session:
            totals = freed_totals(session)
        freed_bytes = CounterMetricFamily(
            "conda_store_package_cache_freed_bytes",
            "Bytes the package-cache collections removed, by cache (conda, pip, image)",
            labels=["cache"],
        )
        freed_packages = CounterMetricFamily(
            "conda_store_package_cache_freed_packages",
            "Entries the package-cache collections removed: conda packages, wheels, image blobs",
            labels=["cache"],
        )
        for cache, freed in sorted(totals.items()):
            freed_bytes.add_metric([cache], freed.bytes)
            freed_packages.add_metric([cache], freed.packages)
        yield freed_bytes
        yield freed_packages

    def _disk(self) -> Iterator[Any]:
        """What a worker last measured where builds are written; this machine's disk until then."""
        with self.conda_store.session() as session:
            recorded = session.get(CondaStoreConfiguration, STORAGE_ROW_ID)
        if recorded is not None:
            free, total, used = recorded.free_storage, recorded.total_storage, recorded.disk_usage
        else:
            total, used, free = shutil.disk_usage(existing_ancestor(self.conda_store.store_directory))
        yield GaugeMetricFamily("conda_store_disk_free", "Free bytes where builds are stored", value=free)
        yield GaugeMetricFamily("conda_store_disk_total", "Size of the store's filesystem", value=total)
        yield GaugeMetricFamily("conda_store_disk_usage", "Used bytes of the store's filesystem", value=used)

    @staticmethod
    def _durations(rows: list[tuple[datetime.datetime, datetime.datetime]]) -> HistogramMetricFamily:
        seconds = [(ended - started).total_seconds() for started, ended in rows]
        buckets = [(str(bound), sum(1 for s in seconds if s <= bound)) for bound in DURATION_BUCKETS]
        buckets.append(("+Inf", len(seconds)))
        return HistogramMetricFamily(
            "conda_store_build_duration_seconds",
            "Wall-clock time of finished builds (started to ended)",
            buckets=buckets,
            sum_value=sum(seconds),
        )


def metrics_router(conda_store: CondaStore) -> APIRouter:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(conda_store))
    router = APIRouter()

    @router.get("/metrics", response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
