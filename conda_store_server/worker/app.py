"""`conda-store-worker`: runs supervised builds (CondaStoreWorker traits from the seed)."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from traitlets import Bool, Integer, List, Unicode

from conda_store_server.app import CondaStore
from conda_store_server.application import BaseApplication
from conda_store_server.storage import LocalStorage, S3Storage
from conda_store_server.worker.supervisor import Supervisor, die_with_parent


class CondaStoreWorker(BaseApplication):
    name = "conda-store-worker"
    description = "Build conda environments queued by conda-store-server."

    classes = [CondaStore, LocalStorage, S3Storage]
    aliases = {
        **BaseApplication.aliases,
        "config": "BaseApplication.config_file",
        "concurrency": "CondaStoreWorker.concurrency",
    }

    watch_paths = List(
        Unicode(),
        [],
        config=True,
        help="Environment files, or directories of them, built into the filesystem namespace.",
    )
    concurrency = Integer(
        None,
        allow_none=True,
        config=True,
        help="How many builds run at once on this worker. Default: the number of CPUs.",
    )

    stop_with_parent = Bool(
        False,
        config=True,
        help="Stop when the process that started this worker exits (set by "
        "`conda-store-server --standalone`, so no worker outlives its server).",
    )

    def start(self) -> None:
        if self.stop_with_parent:
            parent = os.getppid()
            die_with_parent(signal.SIGTERM)
            if os.getppid() != parent:
                return
        conda_store = self.make_conda_store()
        conda_store.ensure_database()
        concurrency = self.concurrency or os.cpu_count() or 1
        supervisor = Supervisor(conda_store, concurrency=concurrency)
        stop = threading.Event()

        def request_stop(signum: int, _frame: Any) -> None:
            self.log.info("signal %s received: stopping running builds and exiting", signum)
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        self.log.info(
            "worker %s ready: %d build slot(s), database %s",
            supervisor.worker_id,
            concurrency,
            conda_store.engine.url.render_as_string(hide_password=True),
        )
        supervisor.run(stop.is_set)


def main(argv: list[str] | None = None) -> None:
    CondaStoreWorker.main(argv)


if __name__ == "__main__":
    main()
