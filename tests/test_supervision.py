"""Builds are never stuck: solve and wall-clock limits, cancel, and a worker stopped or killed
mid-build, which gives the build back to the queue (a bounded number of times) instead of failing it."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import WorkerProcess, login, submit, wait_for_build
from slow_channel import SlowChannel
from sqlalchemy import update

from conda_store_server.db.models import Build, BuildStatus, utcnow
from conda_store_server.service import get_build, prefix_of
from conda_store_server.worker.supervisor import (
    MAX_BUILD_INTERRUPTIONS,
    STALE_AFTER_SECONDS,
    recover_stale_builds,
)

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


def logs_of(client: Any, build_id: int) -> str:
    return client.get(f"/api/v1/build/{build_id}/logs/").text


def interruptions_of(conda_store: Any, build_id: int) -> int:
    with conda_store.session() as session:
        return get_build(session, build_id).interruptions


def build_process_of(worker: WorkerProcess, timeout: float = 10) -> int:
    """The pid of the worker's build process: a descendant that leads a session of its own."""
    assert worker.process is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parents, sessions = {}, {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except (OSError, ValueError):
                continue  # not a process, or one that just ended
            parents[int(entry.name)], sessions[int(entry.name)] = int(fields[1]), int(fields[3])
        for pid, session in sessions.items():
            ancestor = parents.get(pid)
            while ancestor and ancestor != worker.process.pid:
                ancestor = parents.get(ancestor)
            if session == pid and ancestor == worker.process.pid:
                return pid
        time.sleep(0.1)
    pytest.fail(f"no build process under worker {worker.process.pid}")


def dead_pid() -> int:
    """The pid of a process that has ended (for a worker id that names a dead worker)."""
    probe = subprocess.Popen(["true"])
    probe.wait()
    return probe.pid


def mark_building(conda_store: Any, build_id: int, worker_id: str, heartbeat: datetime.datetime) -> None:
    """What a worker's claim leaves in the database (the worker itself is not needed to recover)."""
    with conda_store.session() as session:
        session.execute(
            update(Build)
            .where(Build.id == build_id)
            .values(
                status=BuildStatus.BUILDING, worker_id=worker_id, started_on=heartbeat, heartbeat_on=heartbeat
            )
        )


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


def test_cancel_a_running_build(client, worker, conda_store) -> None:
    login(client)
    build_id = submit(client, SPEC)
    wait_for_build(client, build_id, building, timeout=30)
    with conda_store.session() as session:
        prefix = Path(prefix_of(conda_store, get_build(session, build_id)))
    prefix.mkdir(parents=True)  # as if the install had begun: the solve waits on the slow channel
    (prefix / "partial").write_text("")
    started = time.monotonic()
    response = client.put(f"/api/v1/build/{build_id}/cancel/")
    assert response.status_code == 200, response.text
    build = wait_for_build(client, build_id, timeout=20)
    assert build["status"] == "CANCELED"
    assert time.monotonic() - started < 10
    assert "canceled" in client.get(f"/api/v1/build/{build_id}/logs/").text
    assert not prefix.exists()
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


def test_a_worker_stopped_mid_build_gives_it_back_and_the_next_worker_builds_it(
    client, conda_store, config_file, tmp_path, slow_channel
) -> None:
    login(client)
    first = WorkerProcess(config_file, tmp_path / "first.log").start()
    try:
        build_id = submit(client, SPEC)
        wait_for_build(client, build_id, building, timeout=30)
        assert first.process is not None
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(timeout=20) == 0
    finally:
        first.stop()
    build = client.get(f"/api/v1/build/{build_id}/").json()["data"]
    assert build["status"] == "QUEUED", build
    assert build["started_on"] is None
    assert "was stopped; queued again (attempt 2 of 3)" in build["status_info"]
    assert interruptions_of(conda_store, build_id) == 1

    slow_channel.delay = 0
    second = WorkerProcess(config_file, tmp_path / "second.log").start()
    try:
        build = wait_for_build(client, build_id, timeout=90)
        assert build["status"] == "COMPLETED", logs_of(client, build_id)
    finally:
        second.stop()
    logs = logs_of(client, build_id)
    interrupted = logs.index(f"build {build_id} was interrupted: its worker ")
    assert "was stopped; queued again (attempt 2 of 3)" in logs[interrupted:].splitlines()[0]
    assert logs.rindex(f"starting build {build_id} ") > interrupted, logs
    assert f"build {build_id} COMPLETED" in logs


def test_a_worker_killed_mid_build_leaves_it_to_the_next_worker(
    client, conda_store, config_file, tmp_path, slow_channel
) -> None:
    login(client)
    first = WorkerProcess(config_file, tmp_path / "first.log").start()
    try:
        build_id = submit(client, SPEC)
        wait_for_build(client, build_id, building, timeout=30)
        child = build_process_of(first)
        assert first.process is not None
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait()
    finally:
        first.stop()
    # its build process ends with it: it must not race the rebuild
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists(), f"build process {child} outlived its worker"
    # what a worker killed while installing leaves: a half-made prefix, cleared before the rebuild
    with conda_store.session() as session:
        prefix = Path(prefix_of(conda_store, get_build(session, build_id)))
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "half-installed").write_text("from the killed worker")

    slow_channel.delay = 0
    second = WorkerProcess(config_file, tmp_path / "second.log").start()
    try:
        build = wait_for_build(client, build_id, timeout=90)
        assert build["status"] == "COMPLETED", logs_of(client, build_id)
    finally:
        second.stop()
    assert "is no longer running; queued again (attempt 2 of 3)" in logs_of(client, build_id)
    assert interruptions_of(conda_store, build_id) == 1
    assert not (prefix / "half-installed").exists()
    assert (prefix / "conda-meta").is_dir()


def test_a_build_signalled_with_its_worker_is_given_back(client, conda_store, config_file, tmp_path) -> None:
    """systemd stops a service by signalling every process of its cgroup at once: the build
    process may die before its worker hears of the stop (a busy interpreter runs its signal
    handler late: here 0.3 s); that is an interruption all the same."""
    login(client)
    worker = WorkerProcess(config_file, tmp_path / "worker.log").start()
    try:
        build_id = submit(client, SPEC)
        wait_for_build(client, build_id, building, timeout=30)
        child = build_process_of(worker)
        assert worker.process is not None
        os.kill(child, signal.SIGTERM)
        time.sleep(0.3)
        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(timeout=20) == 0
    finally:
        worker.stop()
    build = client.get(f"/api/v1/build/{build_id}/").json()["data"]
    assert build["status"] == "QUEUED", build
    assert "queued again (attempt 2 of 3)" in logs_of(client, build_id)


def test_a_build_process_killed_while_its_worker_runs_on_fails(client, conda_store, worker) -> None:
    """Not an interruption: the worker is fine, the build's own process died (the OOM killer)."""
    login(client)
    build_id = submit(client, SPEC)
    wait_for_build(client, build_id, building, timeout=30)
    os.kill(build_process_of(worker), signal.SIGKILL)
    build = wait_for_build(client, build_id, timeout=20)
    assert build["status"] == "FAILED"
    assert "ended unexpectedly (killed by signal SIGKILL)" in build["status_info"]
    assert interruptions_of(conda_store, build_id) == 0
    assert worker.process is not None and worker.process.poll() is None


def test_a_build_interrupted_too_often_fails_naming_the_interruptions(client, conda_store) -> None:
    login(client)
    build_id = submit(client, "name: bounded\ndependencies: [python]\n")
    dead_worker = f"{socket.gethostname()}:{dead_pid()}:gone"
    for attempt in range(2, MAX_BUILD_INTERRUPTIONS + 1):
        mark_building(conda_store, build_id, dead_worker, utcnow())
        assert recover_stale_builds(conda_store) == [build_id]
        build = client.get(f"/api/v1/build/{build_id}/").json()["data"]
        assert build["status"] == "QUEUED" and build["started_on"] is None, build
        with conda_store.session() as session:
            row = get_build(session, build_id)
            assert (row.interruptions, row.worker_id, row.heartbeat_on) == (attempt - 1, None, None)
        line = f"is no longer running; queued again (attempt {attempt} of {MAX_BUILD_INTERRUPTIONS})"
        assert line in logs_of(client, build_id)

    # the last time on another machine, whose heartbeat went stale; a fresh one is left alone
    fresh = submit(client, "name: fresh\ndependencies: [python]\n")
    mark_building(conda_store, fresh, "elsewhere:1:alive", utcnow())
    stale = utcnow() - datetime.timedelta(seconds=STALE_AFTER_SECONDS + 5)
    mark_building(conda_store, build_id, "elsewhere:2:gone", stale)
    with conda_store.session() as session:
        prefix = Path(prefix_of(conda_store, get_build(session, build_id)))
    (prefix / "bin").mkdir(parents=True)  # what the interrupted attempts had installed
    (prefix / "bin" / "half-installed").write_text("")
    assert recover_stale_builds(conda_store) == [build_id]
    assert not prefix.exists()
    build = client.get(f"/api/v1/build/{build_id}/").json()["data"]
    assert build["status"] == "FAILED"
    assert build["status_info"].startswith(
        f"the build was interrupted {MAX_BUILD_INTERRUPTIONS} times by its worker stopping "
        "(the last time: its worker elsewhere:2:gone stopped responding"
    )
    assert build["status_info"].endswith("; rebuild it")
    assert "marked FAILED: the build was interrupted 3 times" in logs_of(client, build_id)
    assert client.get(f"/api/v1/build/{fresh}/").json()["data"]["status"] == "BUILDING"


def test_builds_canceled_or_deleted_before_their_worker_died_are_not_queued_again(
    client, conda_store
) -> None:
    login(client)
    canceled = submit(client, "name: withdrawn\ndependencies: [python]\n")
    deleted = submit(client, "name: gone\ndependencies: [python]\n")
    dead_worker = f"{socket.gethostname()}:{dead_pid()}:gone"
    for build_id in (canceled, deleted):
        mark_building(conda_store, build_id, dead_worker, utcnow())
    with conda_store.session() as session:
        prefix = Path(prefix_of(conda_store, get_build(session, deleted)))
        canceled_prefix = Path(prefix_of(conda_store, get_build(session, canceled)))
        namespace = get_build(session, deleted).environment.namespace.name
    prefix.mkdir(parents=True)
    canceled_prefix.mkdir(parents=True)
    assert client.put(f"/api/v1/build/{canceled}/cancel/").status_code == 200
    assert client.delete(f"/api/v1/environment/{namespace}/gone/").status_code == 200

    assert sorted(recover_stale_builds(conda_store)) == [canceled, deleted]
    for build_id in (canceled, deleted):
        with conda_store.session() as session:
            row = get_build(session, build_id)
            assert row.status == BuildStatus.CANCELED, row.status_info
            assert row.status_info.startswith("canceled by request (its worker ")
    assert not prefix.exists() and not canceled_prefix.exists()


def test_a_build_whose_process_cannot_start_is_given_back_until_the_bound(client, conda_store) -> None:
    """The build did not even start: not its fault, and multiprocessing starts a new fork server
    for the next process. It is never left BUILDING, and the bound keeps a broken worker from
    taking it round the queue forever."""
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
    for attempt in range(2, MAX_BUILD_INTERRUPTIONS + 1):
        assert supervisor.run_build(build_id) == "QUEUED"
        assert supervisor.running == {}
        build = client.get(f"/api/v1/build/{build_id}/").json()["data"]
        assert build["status"] == "QUEUED"
        assert "could not start a process for it (fork server unreachable)" in build["status_info"]
        assert f"queued again (attempt {attempt} of {MAX_BUILD_INTERRUPTIONS})" in build["status_info"]
    assert supervisor.run_build(build_id) == "FAILED"
    build = client.get(f"/api/v1/build/{build_id}/").json()["data"]
    assert build["status"] == "FAILED"
    assert f"interrupted {MAX_BUILD_INTERRUPTIONS} times" in build["status_info"]
    assert "could not start a process for it (fork server unreachable)" in build["status_info"]
