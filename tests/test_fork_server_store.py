"""Build children inherit the CondaStore their fork server made from the worker's command line
(configuration read once, first queries compiled once), and never the command line itself."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from conftest import WorkerProcess, login, submit, wait_for_build

from conda_store_server.worker import supervisor
from conda_store_server.worker.supervisor import RECIPE_VARIABLE, StoreRecipe


@pytest.fixture
def unprepared(monkeypatch):
    monkeypatch.setattr(supervisor, "_prepared", None)
    monkeypatch.delenv(RECIPE_VARIABLE, raising=False)


def test_the_fork_server_prepares_the_store_of_its_recipe(config_file, monkeypatch, unprepared) -> None:
    recipe = StoreRecipe((f"--config={config_file}",))
    monkeypatch.setenv(RECIPE_VARIABLE, json.dumps(list(recipe.argv)))
    supervisor.prepare_store_in_fork_server()

    assert RECIPE_VARIABLE not in os.environ  # not for any build process to inherit
    assert supervisor._prepared is not None and supervisor._prepared[0] == recipe
    prepared = supervisor._prepared[1]
    assert prepared.engine.pool.checkedin() == 0  # no connection kept across the forks
    assert supervisor._store_for(recipe) is prepared
    other = supervisor._store_for(StoreRecipe((f"--config={config_file}", "--log-level=DEBUG")))
    assert other is not prepared and other.store_directory == prepared.store_directory


def test_a_store_that_cannot_be_prepared_leaves_the_children_to_make_theirs(
    tmp_path, monkeypatch, unprepared, caplog
) -> None:
    """Each child then reads the configuration itself, and fails the build saying why."""
    broken = tmp_path / "broken_config.py"
    broken.write_text("raise RuntimeError('broken on purpose')\n")
    monkeypatch.setenv(RECIPE_VARIABLE, json.dumps([f"--config={broken}"]))
    supervisor.prepare_store_in_fork_server()
    assert supervisor._prepared is None and RECIPE_VARIABLE not in os.environ
    assert "could not prepare the builds' CondaStore" in caplog.text


def test_a_real_workers_builds_use_the_prepared_store(client, config_file, tmp_path) -> None:
    marker = tmp_path / "hook-calls"
    config_file.write_text(
        config_file.read_text()
        + (
            "def hook(conda_store, environment):\n"
            "    import os, sys\n"
            "    prepared = sys.modules['conda_store_server.worker.supervisor']._prepared\n"
            "    inherited = 'CONDA_STORE_BUILD_RECIPE' in os.environ\n"
            f"    open({str(marker)!r}, 'a').write(f'{{prepared is not None and prepared[1] is conda_store}} "
            "{inherited}\\n')\n"
            "c.CondaStore.post_update_environment_build_hook = hook\n"
        )
    )
    worker = WorkerProcess(config_file, tmp_path / "worker.log").start()
    try:
        login(client)
        for name in ("first", "second"):
            build = wait_for_build(client, submit(client, f"name: {name}\ndependencies: [libzlib]\n"))
            assert build["status"] == "COMPLETED", build["status_info"]
    finally:
        worker.stop()
    assert Path(marker).read_text() == "True False\nTrue False\n"


def _waiting_processes(worker: WorkerProcess) -> list[int]:
    return [int(pid) for pid in re.findall(r"process (\d+) waits for the next build", worker.output())]


def _wait_for_waiting_process(worker: WorkerProcess, count: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while len(found := _waiting_processes(worker)) < count:
        assert time.monotonic() < deadline, f"no process waits for a build:\n{worker.output()}"
        time.sleep(0.05)
    return found[count - 1]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_builds_start_in_a_process_that_was_waiting_for_them(client, config_file, tmp_path) -> None:
    """Started and connected while the worker was idle; another waits after each build, and the
    last one ends with its worker."""
    worker = WorkerProcess(config_file, tmp_path / "worker.log").start()
    try:
        login(client)
        for n in range(2):
            waiting = _wait_for_waiting_process(worker, n + 1)
            build_id = submit(client, f"name: waited-{n}\ndependencies: [libzlib]\n")
            build = wait_for_build(client, build_id)
            assert build["status"] == "COMPLETED", build["status_info"]
            assert f"build {build_id} started in process {waiting} (waiting for it)" in worker.output()
        last = _wait_for_waiting_process(worker, 3)
        assert _alive(last)
    finally:
        worker.stop()
    deadline = time.monotonic() + 10
    while _alive(last):
        assert time.monotonic() < deadline, "the waiting process outlived its worker"
        time.sleep(0.05)


def test_a_build_is_never_handed_to_a_waiting_process_that_ended(conda_store) -> None:
    """It was killed while it waited (out of memory, say): the build gets a process of its own."""
    import multiprocessing

    class Ended:
        exitcode = -9
        pid = 12345

    supervisor_ = supervisor.Supervisor(conda_store, StoreRecipe(()), concurrency=1)
    receiving, sending = multiprocessing.Pipe(duplex=False)
    supervisor_._waiting = supervisor.WaitingProcess(Ended(), sending)  # type: ignore[arg-type]
    assert supervisor_._hand_to_waiting(5) is None
    assert supervisor_._waiting is None and sending.closed
    receiving.close()
