"""Build logs: appended to storage in batches while the build runs, never rewritten whole."""

from __future__ import annotations

import datetime
import threading
import time

from conda_store_server.storage import Storage

FLUSH_INTERVAL_SECONDS = 0.5


class BuildLog:
    """Collects lines and appends them to the LOGS artifact at most every half second."""

    def __init__(self, storage: Storage, key: str) -> None:
        self._storage = storage
        self._key = key
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()

    def write(self, line: str) -> None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S")
        with self._lock:
            self._pending.extend(f"[{stamp}] {part}\n" for part in line.rstrip("\n").split("\n"))
        if time.monotonic() - self._last_flush >= FLUSH_INTERVAL_SECONDS:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            self._last_flush = time.monotonic()
        if pending:
            self._storage.append(self._key, "".join(pending).encode())
