"""Scheduled work: claimed once per period across workers; channel indexing, storage metrics."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import event, func, select

from conda_store_server.db.models import (
    CondaChannel,
    CondaPackage,
    CondaPackageBuild,
    CondaStoreConfiguration,
)
from conda_store_server.periodic import claim_run
from conda_store_server.periodic.channels import index_channels
from conda_store_server.periodic.storage import STORAGE_ROW_ID, record_storage_metrics


def test_a_period_is_claimed_once(conda_store) -> None:
    with conda_store.session() as first:
        won = claim_run(first, "job", 3600)
        assert won.claimed is True
    with conda_store.session() as session:
        lost = claim_run(session, "job", 3600)
        assert lost.claimed is False
        assert lost.next_run_at == won.next_run_at  # the loser learns when it is next due
        assert claim_run(session, "other-job", 3600).claimed is True
    with conda_store.session() as session:
        assert claim_run(session, "now-again", 0).claimed is True
        assert claim_run(session, "now-again", 0).claimed is True  # a zero period is always due


@pytest.fixture
def store_settings(store_settings, demo_channel, tmp_path):
    store_settings["CondaStore"]["conda_indexed_channels"] = [
        demo_channel.as_uri(),
        (tmp_path / "missing-channel").as_uri(),
    ]
    return store_settings


def counts(conda_store) -> tuple[int, int, int]:
    with conda_store.session() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(model))
            for model in (CondaChannel, CondaPackage, CondaPackageBuild)
        )


def test_indexing_adds_the_channel_once(conda_store, demo_channel, caplog, client) -> None:
    caplog.set_level("WARNING")
    index_channels(conda_store)
    channels, packages, builds = counts(conda_store)
    assert channels == 1 and packages >= 10 and builds >= packages
    assert "missing-channel" in caplog.text  # the unreachable channel is named, the other indexed
    with conda_store.session() as session:
        hello = session.scalars(select(CondaPackage).where(CondaPackage.name == "hello-py")).all()
        assert sorted(p.version for p in hello) == ["1.0.0", "1.1.0"]
        channel = session.scalars(select(CondaChannel)).one()
        assert channel.name == demo_channel.as_uri() and channel.last_update is not None

    inserts: list[str] = []

    def count_inserts(_conn, _cursor, statement, *_args) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            inserts.append(statement)

    event.listen(conda_store.engine, "before_cursor_execute", count_inserts)
    try:
        index_channels(conda_store)
    finally:
        event.remove(conda_store.engine, "before_cursor_execute", count_inserts)
    assert counts(conda_store) == (channels, packages, builds)
    assert inserts == []

    found = client.get("/api/v1/package/", params={"search": "hello-py"}).json()["data"]
    assert {p["version"] for p in found} == {"1.0.0", "1.1.0"}


def test_a_worker_indexes_the_channels(conda_store, worker, demo_channel) -> None:
    deadline = time.monotonic() + 60
    while counts(conda_store)[2] == 0:
        assert time.monotonic() < deadline, worker.output()
        time.sleep(0.2)
    with conda_store.session() as session:
        names = set(session.scalars(select(CondaPackage.name)))
    assert {"hello-py", "python", "tinylib"} <= names


def test_storage_metrics_come_from_the_workers_disk(conda_store, worker, client) -> None:
    deadline = time.monotonic() + 30
    while True:
        with conda_store.session() as session:
            row = session.get(CondaStoreConfiguration, STORAGE_ROW_ID)
        if row is not None:
            break
        assert time.monotonic() < deadline, worker.output()
        time.sleep(0.2)
    assert row.total_storage > 0 and 0 < row.free_storage <= row.total_storage
    # the server reports what the worker measured (it may run on another machine than the builds)
    with conda_store.session() as session:
        session.get(CondaStoreConfiguration, STORAGE_ROW_ID).free_storage = 12345
    assert "conda_store_disk_free 12345.0" in client.get("/metrics").text
    assert record_storage_metrics(conda_store).free_storage != 12345


def test_a_worker_asks_the_database_only_when_a_job_can_be_due(conda_store) -> None:
    from conda_store_server.worker.supervisor import StoreRecipe, Supervisor

    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    first = Supervisor(conda_store, StoreRecipe(()), concurrency=1)
    second = Supervisor(conda_store, StoreRecipe(()), concurrency=1)
    assert first._due("hourly", 3600) is True
    assert second._due("hourly", 3600) is False  # claimed by the first for this hour
    event.listen(conda_store.engine, "before_cursor_execute", record)
    try:
        for _ in range(5):
            assert first._due("hourly", 3600) is False
            assert second._due("hourly", 3600) is False
    finally:
        event.remove(conda_store.engine, "before_cursor_execute", record)
    assert statements == []  # both know the next run is an hour away
    assert first._due("always", 0) is True and first._due("always", 0) is True
