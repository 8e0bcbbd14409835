"""The doorbell: whoever queues a build wakes the idle workers of its host at once."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from conda_store_server.worker.doorbell import Doorbell, doorbell_directory, ring


def test_a_ring_wakes_the_worker_and_a_burst_asks_once(tmp_path: Path) -> None:
    doorbell = Doorbell(str(tmp_path))
    try:
        assert not doorbell.wait(0)
        for _ in range(5):
            ring(str(tmp_path))
        assert doorbell.wait(1.0)
        assert not doorbell.wait(0)  # the burst was taken in one go
    finally:
        doorbell.close()
    assert os.listdir(doorbell_directory(str(tmp_path))) == []


def test_every_worker_of_the_host_is_rung(tmp_path: Path) -> None:
    doorbells = [Doorbell(str(tmp_path)) for _ in range(3)]
    try:
        ring(str(tmp_path))
        assert all(doorbell.wait(1.0) for doorbell in doorbells)
    finally:
        for doorbell in doorbells:
            doorbell.close()


def test_the_socket_of_a_killed_worker_is_removed_by_the_next_ring(tmp_path: Path) -> None:
    directory = doorbell_directory(str(tmp_path))
    os.makedirs(directory)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(os.path.join(directory, "dead.sock"))
    dead.close()  # its file stays, as a killed worker's would
    living = Doorbell(str(tmp_path))
    try:
        ring(str(tmp_path))
        assert living.wait(1.0)
        assert sorted(os.listdir(directory)) == [living.name]
    finally:
        living.close()


def test_a_store_path_too_long_for_a_socket_still_rings(tmp_path: Path) -> None:
    store = tmp_path / ("deep-" * 30)
    store.mkdir()
    assert len(os.fsencode(doorbell_directory(str(store)))) > 108
    doorbell = Doorbell(str(store))
    try:
        ring(str(store))
        assert doorbell.wait(1.0)
        doorbell.interrupt()
        assert doorbell.wait(1.0)
    finally:
        doorbell.close()


def test_ringing_where_no_worker_listens_changes_nothing(tmp_path: Path) -> None:
    ring(str(tmp_path))
    ring(str(tmp_path / "missing"))
    assert list(tmp_path.iterdir()) == []
    assert os.path.basename(doorbell_directory(str(tmp_path))) == socket.gethostname()
