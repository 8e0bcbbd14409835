"""Builds are never stuck: solve and wall-clock limits, cancel, and a worker killed mid-build."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from conftest import WorkerProcess, login, submit, wait_for_build
from slow_channel import SlowChannel

SPEC = "name: slow\ndependencies:\n  - hello-tool\n"


@pytest.fixture
def slow_channel(demo_channel) -> Any:
    with SlowChannel(demo_channel, delay=60) as channel:
        yield channel


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def store_settings(store_settings, slow_channel, overrides):
    store_settings["CondaStore"]["conda_default_channels"] = [slow_channel.url]
    store_settings["CondaStore"].update(overrides)
    return store_settings


def building(build: dict[str, Any]) -> bool:
    return build["status"] != "QUEUED"


@pytest.mark.parametrize("overrides", [{"conda_max_solve_time": 2}])
def test_solve_over_its_time_limit_fails_with_that_reason(client, worker) -> None:
    login(client)
    build = wait_for_build(client, submit(client, SPEC), timeout=60)
    assert build["status"] == "FAILED"
    assert "conda_max_solve_time (2 s)" in build["status_info"]
    assert "conda_max_solve_time" in client.get(f"/api/v1/build/{build['id']}/logs/").text


@pytest.mark.parametrize("overrides", [{"build_timeout": 3}])
def test_build_over_its_wall_clock_limit_is_stopped(client, worker) -> None:
    login(client)
    build = wait_for_build(client, submit(client, SPEC), timeout=60)
    assert build["status"] == "FAILED"
    assert "build_timeout (3 s)" in build["status_info"]


def test_cancel_a_running_build(client, worker) -> None:
    login(client)
    build_id = submit(client, SPEC)
    wait_for_build(client, build_id, building, timeout=30)
    started = time.monotonic()
    response = client.put(f"/api/v1/build/{build_id}/cancel/")
    assert response.status_code == 200, response.text
    build = wait_for_build(client, build_id, timeout=20)
    assert build["status"] == "CANCELED"
    assert time.monotonic() - started < 10
    assert "canceled" in client.get(f"/api/v1/build/{build_id}/logs/").text
    again = client.put(f"/api/v1/build/{build_id}/cancel/")
    assert again.status_code == 409 and "CANCELED" in again.json()["message"]


def test_cancel_a_queued_build_means_it_never_runs(client, config_file, tmp_path) -> None:
    login(client)
    build_id = submit(client, SPEC)
    assert client.put(f"/api/v1/build/{build_id}/cancel/").status_code == 200
    assert client.get(f"/api/v1/build/{build_id}/").json()["data"]["status"] == "CANCELED"
    worker = WorkerProcess(config_file, tmp_path / "worker.log").start()
    try:
        time.sleep(2)
        build = client.get(f"/api/v1/build/{build_id}/").json()["data"]
        assert build["status"] == "CANCELED" and build["started_on"] is None
    finally:
        worker.stop()


def test_worker_killed_mid_build_is_recovered_by_the_next_worker(client, config_file, tmp_path) -> None:
    login(client)
    first = WorkerProcess(config_file, tmp_path / "first.log").start()
    build_id = submit(client, SPEC)
    wait_for_build(client, build_id, building, timeout=30)
    assert first.process is not None
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait()

    second = WorkerProcess(config_file, tmp_path / "second.log").start()
    try:
        build = wait_for_build(client, build_id, timeout=30)
        assert build["status"] == "FAILED"
        assert "stopped responding" in build["status_info"] or "abandoned" in build["status_info"]
        assert "abandoned" in client.get(f"/api/v1/build/{build_id}/logs/").text
    finally:
        second.stop()


def test_a_build_whose_process_cannot_start_fails_at_once_with_that_reason(client, conda_store) -> None:
    from conda_store_server.worker.supervisor import StoreRecipe, Supervisor

    class BrokenForkServer:
        """What the worker sees when its fork server has died."""

        def Process(self, **_: Any) -> Any:  # noqa: N802 - multiprocessing's context API
            class Unstartable:
                exitcode = None

                def start(self) -> None:
                    raise OSError("fork server unreachable")

            return Unstartable()

    login(client)
    build_id = submit(client, "name: unstartable\ndependencies: [python]\n")
    supervisor = Supervisor(conda_store, StoreRecipe(()), concurrency=1)
    supervisor._context = BrokenForkServer()  # type: ignore[assignment]
    assert supervisor.run_build(build_id) == "FAILED"
    assert supervisor.running == {}
    build = client.get(f"/api/v1/build/{build_id}/").json()["data"]
    assert build["status"] == "FAILED"
    assert "could not start a process for this build (fork server unreachable)" in build["status_info"]
