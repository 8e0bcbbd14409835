"""`conda-store-worker`: a Celery worker whose tasks run supervised builds (traits from the seed)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

from celery import Celery
from celery.signals import worker_shutting_down
from traitlets import Bool, Integer, List, Unicode

from conda_store_server.app import CondaStore
from conda_store_server.application import BaseApplication
from conda_store_server.registry import ContainerRegistry
from conda_store_server.storage import LocalStorage, S3Storage
from conda_store_server.worker.queue import prepare_broker
from conda_store_server.worker.supervisor import StoreRecipe, Supervisor, die_with_parent
from conda_store_server.worker.tasks import prompt_shutdown_worker, register_build_task

BROKER_CHECK_ATTEMPTS = 3


class CondaStoreWorker(BaseApplication):
    name = "conda-store-worker"
    description = "Build conda environments queued by conda-store-server."

    classes = [CondaStore, LocalStorage, S3Storage, ContainerRegistry]
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
        supervisor = Supervisor(
            conda_store,
            StoreRecipe(tuple(self.command_line_arguments())),
            concurrency=concurrency,
            watch_paths=self.watch_paths,
        )
        supervisor.start_fork_server()
        celery = conda_store.celery_app
        register_build_task(celery, supervisor)
        self.check_broker(celery)

        stop = threading.Event()
        monitor = threading.Thread(target=supervisor.run, args=(stop.is_set,), name="supervisor")

        @worker_shutting_down.connect(weak=False)
        def stop_builds(**_: Any) -> None:
            self.log.info("stopping: running builds are stopped and given back to the queue")
            stop.set()

        self.log.info(
            "worker %s ready: %d build slot(s), broker %s, database %s",
            supervisor.worker_id,
            concurrency,
            celery.connection_for_read().as_uri(),
            conda_store.engine.url.render_as_string(hide_password=True),
        )
        monitor.start()
        try:
            prompt_shutdown_worker(celery)(
                pool="threads",
                concurrency=concurrency,
                hostname=f"conda-store-worker@{supervisor.worker_id}",
                loglevel=self.log_level,
                without_gossip=True,
                without_mingle=True,
                without_heartbeat=True,
                quiet=True,
            ).start()
        finally:
            stop.set()
            monitor.join()

    def check_broker(self, celery: Celery) -> None:
        """A wrong broker URL is a start-up error that names the trait to fix, not a silent retry loop.

        The SQL broker's tables are created here, before Celery's consumer starts: a server
        creating them at the same moment makes PostgreSQL refuse one of the two, which the
        consumer would treat as fatal, while a second try here simply finds them.
        """
        error: Exception | None = None
        for _attempt in range(BROKER_CHECK_ATTEMPTS):
            try:
                with celery.connection_for_read() as connection:
                    connection.ensure_connection(max_retries=2, interval_start=0.5, interval_step=0.5)
                    prepare_broker(connection, celery.conf.broker_url)
                return
            except Exception as failure:  # noqa: BLE001 - every transport raises its own errors
                error = failure
                time.sleep(0.5)
        self.log.critical(
            "cannot reach the Celery broker %s (set CondaStore.celery_broker_url or "
            "CondaStore.redis_url): %s",
            celery.connection_for_read().as_uri(),
            error,
        )
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    CondaStoreWorker.main(argv)


if __name__ == "__main__":
    main()
