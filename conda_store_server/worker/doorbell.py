"""A local wake-up for idle workers: whoever queues a build rings every worker of its host.

The broker's news takes a poll to arrive (50 ms over the SQL transport, the embedded default),
which is most of the wait between a POST and its build starting. Workers sharing the store
directory with the server (the standalone server, any single-host deployment) each listen on a
datagram socket in `<store_directory>/.doorbell/<hostname>/`; the process that committed a
build sends one empty datagram to each, and a woken worker claims QUEUED builds from the
database for its free slots. The ring carries nothing: the database stays the truth, and a ring
that is lost, late or sent by anyone else only makes a worker look at the queue. Builds on other
hosts, or with a store the server cannot see, still arrive through the broker.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import uuid

log = logging.getLogger(__name__)

__all__ = ["Doorbell", "ring"]

#: longest path `bind`/`sendto` take for a socket (sun_path holds 108 bytes, NUL included)
_SOCKET_PATH_MAX = 100


def doorbell_directory(store_directory: str) -> str:
    """Per host: sockets on a shared file system cannot be reached from another machine, and a
    ring refused there must not remove a socket that works on its own host."""
    return os.path.join(store_directory, ".doorbell", socket.gethostname())


def _address(directory: str, name: str, directory_fd: int) -> str:
    """The socket's path, through the directory's descriptor when the path is too long to bind."""
    path = os.path.join(directory, name)
    return path if len(os.fsencode(path)) <= _SOCKET_PATH_MAX else f"/proc/self/fd/{directory_fd}/{name}"


class Doorbell:
    """One worker's socket; `wait` says whether it rang (all waiting rings are taken at once)."""

    def __init__(self, store_directory: str) -> None:
        self.directory = doorbell_directory(store_directory)
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self.name = f"{uuid.uuid4().hex}.sock"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        directory_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._socket.bind(_address(self.directory, self.name, directory_fd))
        except OSError:
            self._socket.close()
            raise
        finally:
            os.close(directory_fd)
        self._socket.setblocking(False)
        self._poll = select.poll()
        self._poll.register(self._socket, select.POLLIN)

    def wait(self, timeout: float) -> bool:
        if not self._poll.poll(timeout * 1000):
            return False
        with contextlib.suppress(BlockingIOError):
            while True:  # a burst of rings asks for one look at the queue
                self._socket.recv(16)
        return True

    def interrupt(self) -> None:
        """Wake a thread in `wait` now (its worker is stopping)."""
        _send(self.directory, [self.name])

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.directory, self.name))
        self._socket.close()


def ring(store_directory: str) -> None:
    """Wake this host's workers; never fails. A socket nobody listens on any more (its worker was
    killed) is removed."""
    directory = doorbell_directory(store_directory)
    try:
        names = [name for name in os.listdir(directory) if name.endswith(".sock")]
    except OSError:
        return
    if names:
        _send(directory, names)


def _send(directory: str, names: list[str]) -> None:
    try:
        directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.setblocking(False)
            for name in names:
                try:
                    sender.sendto(b"", _address(directory, name, directory_fd))
                except BlockingIOError:
                    pass  # rung already, and not yet answered
                except ConnectionRefusedError:
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(directory, name))
                except OSError as error:
                    if error.errno not in (errno.ENOENT, errno.EACCES, errno.EPERM):
                        log.debug("could not ring worker socket %s: %s", name, error)
    finally:
        os.close(directory_fd)
