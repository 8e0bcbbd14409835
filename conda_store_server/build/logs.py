"""Build logs: written line by line to a spool file, shipped to storage in batches, never rewritten.

The build process writes every line straight into its spool file (one `write` each, no buffer in
the process), `<store_directory>/.build-logs/<build id>.log`. Its supervisor, in the worker,
appends what is new to the LOGS artifact every FLUSH_INTERVAL_SECONDS (`LogShipper`): a build
killed by a signal, however abruptly, has already handed over every line it wrote, and the
supervisor ships the rest before it appends the reason the build ended and seals the log. A
worker killed itself leaves the spool and the offset it had shipped up to (`<spool>.shipped`);
the worker that recovers the build on the same machine ships the rest. The storage decides how
an append is stored (a file append, or a part object on S3); nothing here rewrites a log.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conda_store_server.storage import Storage

__all__ = ["FLUSH_INTERVAL_SECONDS", "BuildLog", "LogShipper", "spool_path", "stamped"]

FLUSH_INTERVAL_SECONDS = 0.5
SPOOL_DIRECTORY = ".build-logs"
# at most this much of a spool is appended at once (a burst of output becomes several batches)
MAX_BATCH_BYTES = 4 * 1024 * 1024


def spool_path(store_directory: str, build_id: int) -> Path:
    """Where the build process of `build_id` writes its lines on this machine."""
    return Path(store_directory) / SPOOL_DIRECTORY / f"{int(build_id)}.log"


def stamped(text: str) -> bytes:
    """`text` as log lines, each with the time it was written; carriage returns end lines too
    (progress output), so that no stored line holds one."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S")
    lines = text.rstrip("\r\n").splitlines() or [""]
    return "".join(f"[{stamp}] {line}\n" for line in lines).encode()


class BuildLog:
    """The build process's side: every line is in the spool file as soon as `write` returns."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        data = stamped(line)
        with self._lock:
            while data:  # a regular file takes it in one call; a full disk may take it in pieces
                data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class LogShipper:
    """The supervisor's side: appends the new lines of its builds' spools to their LOGS artifacts.

    `ship` is called by a timer thread for every running build; `finish` once its process is
    gone, before the supervisor writes why the build ended. One lock orders them, so no byte is
    appended twice; the offset shipped so far is kept beside the spool for a worker that
    recovers the build after this one was killed.
    """

    def __init__(self, storage: Storage, store_directory: str) -> None:
        self.storage = storage
        self.store_directory = store_directory
        self._lock = threading.Lock()

    def connect(self) -> None:
        """Open the storage connection now (an S3 client checks its bucket on first use), so that
        the first lines of the first build are not delayed by it."""
        self.storage.read_log(f"{SPOOL_DIRECTORY}/connect.log")

    def start(self, build_id: int) -> None:
        """A new attempt of the build starts here: a spool left by an earlier one on this machine
        (its worker died and another machine recovered the build) is not this attempt's."""
        with self._lock:
            path = spool_path(self.store_directory, build_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            _offset_path(path).unlink(missing_ok=True)

    def ship(self, build_id: int, key: str) -> int:
        """Append the complete lines written since the last call; the number of bytes appended.

        The build process calls it too, just before it records that the build ended, so that a
        reader who sees the final status finds every line before it; a lock on the spool keeps
        the two processes from appending the same bytes.
        """
        path = spool_path(self.store_directory, build_id)
        with self._lock, _spool_lock(path):
            return self._ship(path, key, whole=False)

    def finish(self, build_id: int, key: str) -> int:
        """Ship everything left (a last line cut short by a kill included) and drop the spool."""
        path = spool_path(self.store_directory, build_id)
        with self._lock, _spool_lock(path) as lock_path:
            shipped = self._ship(path, key, whole=True)
            path.unlink(missing_ok=True)
            _offset_path(path).unlink(missing_ok=True)
            lock_path.unlink(missing_ok=True)  # the build process has ended: no one waits on it
            return shipped

    def _ship(self, path: Path, key: str, whole: bool) -> int:
        total = 0
        offset = _shipped_offset(path)
        while True:
            try:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read(MAX_BATCH_BYTES)
            except FileNotFoundError:
                return total
            full = len(chunk) == MAX_BATCH_BYTES
            if whole and not full:
                piece = chunk
                # the line a killed process was writing ends here
                payload = piece + b"\n" if piece and not piece.endswith(b"\n") else piece
            else:
                piece = chunk[: chunk.rfind(b"\n") + 1] or (chunk if full else b"")  # a huge line: cut
                payload = piece
            if not piece:
                return total
            self.storage.append(key, payload)
            offset += len(piece)
            _offset_path(path).write_text(str(offset))
            total += len(payload)
            if not full:
                return total


@contextmanager
def _spool_lock(path: Path) -> Iterator[Path]:
    """An exclusive lock on a spool, between the build process and its supervisor."""
    lock_path = path.with_name(path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield lock_path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _offset_path(path: Path) -> Path:
    return path.with_name(path.name + ".shipped")


def _shipped_offset(path: Path) -> int:
    try:
        return int(_offset_path(path).read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0
