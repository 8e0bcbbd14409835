"""Builds travel through Celery on every supported broker: Redis, RabbitMQ and the SQL database."""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery.result import AsyncResult
from conftest import (
    RABBITMQ_URL,
    REDIS_URL,
    WorkerProcess,
    allow_channels,
    login,
    require_service,
    submit,
    wait_for_build,
)
from slow_channel import SlowChannel

from conda_store_server.app import CondaStore
from conda_store_server.worker import queue as queue_module
from conda_store_server.worker.doorbell import doorbell_directory
from conda_store_server.worker.queue import build_task_id

BROKERS: dict[str, dict[str, str]] = {
    "redis": {"redis_url": REDIS_URL},
    "rabbitmq": {"celery_broker_url": RABBITMQ_URL},
    "sql": {},  # nothing set: the broker and the results live in the database
}
FAST = "name: fast-{n}\ndependencies:\n  - hello-tool\n"
SLOW = "name: slow-{n}\nchannels: [{channel}]\ndependencies:\n  - hello-tool\n"

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(params=list(BROKERS))
def broker(request: pytest.FixtureRequest) -> dict[str, str]:
    settings = BROKERS[request.param]
    for name, url in settings.items():
        require_service(name, url)
    return settings


@pytest.fixture
def slow_channel(demo_channel) -> Any:
    with SlowChannel(demo_channel, delay=60) as channel:
        yield channel


@pytest.fixture
def store_settings(store_settings, broker, slow_channel):
    store_settings["CondaStore"].update(broker)
    allow_channels(store_settings, slow_channel.url)
    return store_settings


@pytest.fixture
def queue(conda_store, broker):
    """The Celery app of the store under test, without earlier tests' messages and results."""
    if "redis_url" in broker:
        redis.Redis.from_url(broker["redis_url"]).flushdb()
    app = conda_store.celery_app
    app.control.purge()
    return app


def silence_the_doorbell(monkeypatch: pytest.MonkeyPatch) -> None:
    """Builds reach the worker through the broker (or the database) alone."""
    monkeypatch.setattr(queue_module, "ring", lambda store_directory: None)


@contextlib.contextmanager
def client_cut_off_from_the_broker(store_settings: dict[str, Any]) -> Iterator[Any]:
    """A server (and its store) whose broker does not answer; the worker's still does."""
    from fastapi.testclient import TestClient
    from traitlets.config import Config

    from conda_store_server.server.app import CondaStoreServer

    unreachable = {**store_settings, "CondaStore": {**store_settings["CondaStore"]}}
    unreachable["CondaStore"]["celery_broker_url"] = "redis://127.0.0.1:1/0"
    cut_off = CondaStore(config=Config(unreachable))
    try:
        with TestClient(CondaStoreServer(config=Config(unreachable)).create_app(cut_off)) as client:
            yield client
    finally:
        cut_off.engine.dispose()


def wait_for_doorbell(conda_store: CondaStore, timeout: float = 30) -> None:
    directory = doorbell_directory(conda_store.store_directory)
    deadline = time.monotonic() + timeout
    while not (os.path.isdir(directory) and any(n.endswith(".sock") for n in os.listdir(directory))):
        assert time.monotonic() < deadline, "the worker never listened for its doorbell"
        time.sleep(0.05)


def test_builds_travel_through_the_broker(client, queue, config_file, tmp_path, monkeypatch) -> None:
    silence_the_doorbell(monkeypatch)
    login(client)
    worker = WorkerProcess(config_file, tmp_path / "worker.log").start("--concurrency=2")
    try:
        build_ids = [submit(client, FAST.format(n=n)) for n in range(3)]
        builds = []
        for build_id in build_ids:
            build = wait_for_build(client, build_id)
            assert build["status"] == "COMPLETED", build
            # started by the task (which answers "not started: ..." when another claim won), not
            # by the database fallback for lost messages
            result = AsyncResult(build_task_id(build_id), app=queue)
            assert result.get(timeout=30) == "COMPLETED"
            assert f"build {build_id} had waited" not in worker.output()
            builds.append(build)
        # two build processes ran at once, installing from the one shared package cache
        first, second = builds[0], builds[1]
        assert first["started_on"] < second["ended_on"] and second["started_on"] < first["ended_on"]
        assert f"task_build_conda_environment[{build_task_id(build_ids[0])}] received" in worker.output()
    finally:
        worker.stop()


def test_cancel_running_and_queued_builds(client, queue, config_file, slow_channel, tmp_path) -> None:
    login(client)
    worker = WorkerProcess(config_file, tmp_path / "worker.log").start("--concurrency=1")
    try:
        running = submit(client, SLOW.format(n=1, channel=slow_channel.url))
        wait_for_build(client, running, lambda build: build["status"] == "BUILDING", timeout=30)
        queued = submit(client, SLOW.format(n=2, channel=slow_channel.url))

        assert client.put(f"/api/v1/build/{queued}/cancel/").status_code == 200
        started = time.monotonic()
        assert client.put(f"/api/v1/build/{running}/cancel/").status_code == 200
        assert wait_for_build(client, running, timeout=20)["status"] == "CANCELED"
        assert time.monotonic() - started < 10

        # the queued build's message still arrives; the worker must not run it
        result = AsyncResult(build_task_id(queued), app=queue)
        assert "CANCELED" in result.get(timeout=30)
        build = client.get(f"/api/v1/build/{queued}/").json()["data"]
        assert build["status"] == "CANCELED" and build["started_on"] is None
    finally:
        worker.stop()


@pytest.mark.parametrize("broker", ["sql"], indirect=True)
def test_a_build_whose_message_is_lost_still_runs(
    conda_store, store_settings, config_file, tmp_path, monkeypatch
) -> None:
    """The server cannot reach its broker: the POST still succeeds and a worker finds the build."""
    silence_the_doorbell(monkeypatch)
    worker = WorkerProcess(config_file, tmp_path / "worker.log").start()
    try:
        with client_cut_off_from_the_broker(store_settings) as client:
            login(client)
            started = time.monotonic()
            build_id = submit(client, FAST.format(n=0))
            assert time.monotonic() - started < 5
            build = wait_for_build(client, build_id, timeout=60)
        assert build["status"] == "COMPLETED", build
        assert "started from the database" in worker.output()
    finally:
        worker.stop()


@pytest.mark.parametrize("broker", ["sql"], indirect=True)
def test_the_doorbell_starts_a_build_before_its_message_and_the_message_follows_it(
    client, queue, conda_store, config_file, tmp_path
) -> None:
    login(client)
    worker = WorkerProcess(config_file, tmp_path / "worker.log").start()
    try:
        wait_for_doorbell(conda_store)
        build_id = submit(client, FAST.format(n=0))
        build = wait_for_build(client, build_id)
        assert build["status"] == "COMPLETED", build
        assert f"build {build_id} started at the doorbell's ring" in worker.output()
        # the task that arrived later waited for the build instead of claiming it again
        assert AsyncResult(build_task_id(build_id), app=queue).get(timeout=30) == "COMPLETED"
    finally:
        worker.stop()


@pytest.mark.parametrize("broker", ["sql"], indirect=True)
def test_the_doorbell_alone_starts_a_build_at_once(
    conda_store, store_settings, config_file, tmp_path
) -> None:
    """The server's broker is unreachable: the ring still starts the build within moments,
    long before a worker would look for lost messages in the database."""
    from conda_store_server.worker.supervisor import UNANNOUNCED_AFTER_SECONDS

    worker = WorkerProcess(config_file, tmp_path / "worker.log").start()
    try:
        wait_for_doorbell(conda_store)
        with client_cut_off_from_the_broker(store_settings) as client:
            login(client)
            build_id = submit(client, FAST.format(n=0))
            build = wait_for_build(client, build_id, lambda b: b["started_on"] is not None, timeout=30)
            assert build["status"] in ("BUILDING", "COMPLETED"), build
            waited = parse_time(build["started_on"]) - parse_time(build["scheduled_on"])
            assert waited.total_seconds() < UNANNOUNCED_AFTER_SECONDS / 4, build
            assert wait_for_build(client, build_id, timeout=60)["status"] == "COMPLETED"
        assert f"build {build_id} started at the doorbell's ring" in worker.output()
    finally:
        worker.stop()


def parse_time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.rstrip("Z"))
