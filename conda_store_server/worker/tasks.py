"""The worker's Celery side: the build task, bound to the supervisor, and the worker class."""

from __future__ import annotations

from types import FrameType
from typing import Any

from celery import Celery, platforms
from celery.exceptions import WorkerShutdown

from conda_store_server.worker.queue import BUILD_TASK
from conda_store_server.worker.supervisor import Supervisor


def register_build_task(celery: Celery, supervisor: Supervisor) -> None:
    @celery.task(name=BUILD_TASK, ignore_result=False)
    def build_conda_environment(build_id: int) -> str:
        """Run one build to its end; the result is its final status (or why it did not run)."""
        return supervisor.run_build(build_id)


def prompt_shutdown_worker(celery: Celery) -> type:
    """Celery's worker class, stopping at SIGTERM without finishing its current broker poll.

    Celery's own handler only sets a flag that the consumer loop reads between polls; over the
    SQL broker a poll lasts 2 s, so a stopped worker (or standalone server) lingered for seconds.
    Raising the same exception the loop would raise ends the poll at once; a message caught
    mid-delivery is not lost for good, as workers claim builds left QUEUED from the database.
    """

    class Worker(celery.Worker):  # type: ignore[name-defined,misc]
        def install_platform_tweaks(self, worker: Any) -> None:
            super().install_platform_tweaks(worker)
            celery_handler = platforms.signals["SIGTERM"]

            def stop_now(signum: int, frame: FrameType | None) -> None:
                if callable(celery_handler):
                    celery_handler(signum, frame)
                raise WorkerShutdown(0)

            platforms.signals["SIGTERM"] = stop_now

    return Worker
