"""A scaled-out deployment survives its faults: server + 2 workers on PostgreSQL, Redis and S3.

Builds run at once on both workers; a worker is killed mid-build (its build goes back to the queue
and is built again), a running and a queued build are canceled, the server restarts mid-queue;
every build must end in a final state, with the artifacts of the completed ones in S3.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from conftest import REDIS_URL, ServerProcess, WorkerProcess, allow_channels, require_service, write_config
from slow_channel import SlowChannel
from sqlalchemy import select

from conda_store_server.db.models import Build

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

FINAL = {"COMPLETED", "FAILED", "CANCELED"}


@pytest.fixture
def slow_channel(demo_channel) -> Iterator[SlowChannel]:
    with SlowChannel(demo_channel, delay=120) as channel:
        yield channel


@pytest.fixture
def store_settings(store_settings, s3_endpoint, slow_channel):
    allow_channels(store_settings, slow_channel.url)
    require_service("redis", REDIS_URL)
    redis.Redis.from_url(REDIS_URL).flushdb()  # no message or result of an earlier test
    store_settings["CondaStore"].update(
        redis_url=REDIS_URL,
        storage_class="conda_store_server.storage.S3Storage",
    )
    store_settings["S3Storage"] = {
        "internal_endpoint": s3_endpoint,
        "external_endpoint": s3_endpoint,
        "access_key": "testing",
        "secret_key": "testing",
        "bucket_name": f"scale-{uuid.uuid4().hex[:12]}",
        "internal_secure": False,
        "external_secure": False,
    }
    return store_settings


def wait_until(client: httpx.Client, build_id: int, statuses: set[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    build: dict[str, Any] = {}
    while time.monotonic() < deadline:
        build = client.get(f"/api/v1/build/{build_id}/").json()["data"]
        if build["status"] in statuses:
            return build
        time.sleep(0.2)
    pytest.fail(f"build {build_id} not in {statuses} after {timeout} s: {build}")


def stored_artifacts(client: httpx.Client, build_id: int, timeout: float = 60) -> dict[str, str]:
    """Artifact keys by type, once the archive (made after the build COMPLETED) is there too."""
    deadline = time.monotonic() + timeout
    kinds: dict[str, str] = {}
    while time.monotonic() < deadline:
        build = client.get(f"/api/v1/build/{build_id}/").json()["data"]
        kinds = {artifact["artifact_type"]: artifact["key"] for artifact in build["build_artifacts"]}
        if "CONDA_PACK" in kinds:
            break
        time.sleep(0.2)
    return kinds


def test_faults_leave_no_build_stuck(store_settings, conda_store, slow_channel, tmp_path) -> None:
    config_file = write_config(tmp_path / "conda_store_config.py", store_settings)
    server = ServerProcess(config_file, tmp_path / "server.log")
    workers = [WorkerProcess(config_file, tmp_path / f"worker-{n}.log") for n in (1, 2)]
    server.start()
    for worker in workers:
        worker.start("--concurrency=1")
    client = httpx.Client(base_url=server.url, timeout=30)
    try:
        login = client.post("/login/", json={"username": "alice", "password": "password"})
        assert login.status_code == 200, login.text

        def submit(name: str, channel: str | None = None) -> int:
            channels = f"channels: [{channel}]\n" if channel else ""
            spec = f"name: {name}\n{channels}dependencies:\n  - hello-py\n"
            response = client.post("/api/v1/specification/", json={"specification": spec})
            assert response.status_code == 200, response.text
            return response.json()["data"]["build_id"]

        # one slow build on each worker, then a queue behind them
        doomed, canceled = submit("doomed", slow_channel.url), submit("canceled", slow_channel.url)
        for build_id in (doomed, canceled):
            wait_until(client, build_id, {"BUILDING"}, timeout=30)
        queued = [submit(f"queued-{n}") for n in range(3)]
        withdrawn = submit("withdrawn")
        assert client.put(f"/api/v1/build/{withdrawn}/cancel/").status_code == 200

        # SIGKILL the worker running `doomed`: back in the queue within 30 s, to be built again
        with conda_store.session() as session:
            doomed_worker_id = session.scalar(select(Build.worker_id).where(Build.id == doomed))
        victim = next(w for w in workers if w.process and f":{w.process.pid}:" in (doomed_worker_id or ""))
        assert victim.process is not None
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait()
        killed_at = time.monotonic()
        requeued = wait_until(client, doomed, {"QUEUED"} | FINAL, timeout=30)
        assert requeued["status"] == "QUEUED", requeued
        assert "is no longer running; queued again (attempt 2 of 3)" in requeued["status_info"], requeued
        assert time.monotonic() - killed_at < 30
        slow_channel.delay = 0  # its rebuild is quick; `canceled` still waits on its request

        # the server restarts mid-queue: nothing is lost, the session cookie still works
        server.stop()
        server.start()
        assert client.get(f"/api/v1/build/{queued[0]}/").status_code == 200

        # cancel the build running on the surviving worker, restart the killed worker
        assert client.put(f"/api/v1/build/{canceled}/cancel/").status_code == 200
        assert wait_until(client, canceled, FINAL, timeout=15)["status"] == "CANCELED"
        victim.start("--concurrency=1")

        for build_id in [doomed, *queued]:
            build = wait_until(client, build_id, FINAL, timeout=120)
            assert build["status"] == "COMPLETED", client.get(f"/api/v1/build/{build_id}/logs/").text
            kinds = stored_artifacts(client, build_id)
            assert {"LOCKFILE", "LOGS", "YAML", "CONDA_PACK"} <= set(kinds), kinds
            for kind in ("LOCKFILE", "LOGS", "YAML", "CONDA_PACK"):
                assert conda_store.storage.exists(kinds[kind]), kinds[kind]
        withdrawn_build = client.get(f"/api/v1/build/{withdrawn}/").json()["data"]
        assert withdrawn_build["status"] == "CANCELED" and withdrawn_build["started_on"] is None

        # both workers took part (the victim ran `doomed` until it was killed), every build is final
        with conda_store.session() as session:
            rows = session.execute(select(Build.id, Build.status, Build.worker_id)).all()
        assert all(status.value in FINAL for _, status, _ in rows), rows
        ran_on = {worker_id for _, _, worker_id in rows if worker_id} | {doomed_worker_id}
        assert len({worker_id.split(":")[1] for worker_id in ran_on}) >= 2, ran_on
    finally:
        client.close()
        for worker in workers:
            worker.stop()
        server.stop()
