"""`CondaStoreServer.workers`: several server processes on one socket, one secret, one shutdown."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import ServerProcess

from conda_store_server.server.auth import load_or_create_secret


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(child) for child in handle.read().split()]


def serving_children(pid: int) -> list[int]:
    """uvicorn's server processes (multiprocessing's spawn children), not its resource tracker."""
    result = []
    for child in children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as handle:
                if b"spawn_main" in handle.read():
                    result.append(child)
        except FileNotFoundError:
            pass
    return result


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_two_server_processes_serve_one_deployment_and_stop_together(
    config_file: Path, tmp_path: Path
) -> None:
    server = ServerProcess(config_file, tmp_path / "server.log", "--CondaStoreServer.workers=2")
    server.start()
    try:
        assert server.process is not None
        processes = serving_children(server.process.pid)
        assert len(processes) == 2, server.log_path.read_text()

        # A new connection per request lands on either process: the login cookie signed by one
        # must be accepted by both (one secret, created once in the store).
        login = httpx.post(f"{server.url}/login/", json={"username": "alice", "password": "password"})
        assert login.status_code == 200, login.text
        cookies = dict(login.cookies)
        for _ in range(20):
            response = httpx.get(f"{server.url}/api/v1/permission/", cookies=cookies)
            assert response.json()["data"]["authenticated"] is True
        created = httpx.post(f"{server.url}/api/v1/namespace/lab/", cookies=cookies)
        assert created.status_code == 200, created.text
        for _ in range(10):
            listed = httpx.get(f"{server.url}/api/v1/namespace/", cookies=cookies).json()["data"]
            assert "lab" in [namespace["name"] for namespace in listed]

        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=30) == 0
        assert "Traceback" not in server.log_path.read_text()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in processes) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in processes)
    finally:
        server.stop()


def test_concurrent_starters_agree_on_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "store" / ".secret"
    secrets: list[str] = []
    start = threading.Barrier(16)

    def starter() -> None:
        start.wait()
        secrets.append(load_or_create_secret(str(path)))

    threads = [threading.Thread(target=starter) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(secrets)) == 1 and len(secrets[0]) == 64
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(path.parent) == [".secret"]  # no draft left behind


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_ctrl_c_stops_a_single_server_process_cleanly(config_file: Path, tmp_path: Path) -> None:
    server = ServerProcess(config_file, tmp_path / "server.log")
    server.start()
    try:
        assert server.process is not None
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=30) == 0
        assert "Traceback" not in server.log_path.read_text(), server.log_path.read_text()
    finally:
        server.stop()
