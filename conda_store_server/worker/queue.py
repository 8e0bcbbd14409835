"""The Celery application: the server sends build tasks through it, the worker consumes them.

Celery carries the news that a build is waiting; the database stays the truth. A task only asks
a worker to claim one build (a conditional update), so a message delivered twice, late or never
changes nothing: a lost message is made up for by workers claiming builds left QUEUED too long.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from celery import Celery

from conda_store_server.worker.doorbell import ring

if TYPE_CHECKING:
    from kombu import Connection

    from conda_store_server.app import CondaStore

log = logging.getLogger(__name__)

BUILD_TASK = "task_build_conda_environment"
QUEUE = "conda-store"
SQL_BROKER_POLL_SECONDS = 0.05
PUBLISH_ATTEMPTS = 2
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def build_task_id(build_id: int) -> str:
    return f"build-{build_id}"


def uses_sql_broker(broker_url: str) -> bool:
    return broker_url.startswith(("sqla+", "sqlalchemy+"))


def make_celery(conda_store: CondaStore) -> Celery:
    broker_url = conda_store.celery_broker_url
    if uses_sql_broker(broker_url):
        # kombu only reads the SQL transport's polling interval from the class (toolchain notes):
        # the default 1 s would add a second to every build's start.
        from kombu.transport import sqlalchemy as sql_transport

        sql_transport.Transport.polling_interval = SQL_BROKER_POLL_SECONDS
    app = Celery(
        "conda_store",
        broker=broker_url,
        backend=conda_store.celery_results_backend,
        set_as_current=False,
    )
    app.conf.update(
        task_default_queue=QUEUE,
        task_track_started=True,
        result_extended=True,
        result_expires=7 * 24 * 3600,
        # one message per free build slot: a busy worker does not hoard builds another could run
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        # the SQL transport has no fan-out exchange, which remote control needs
        worker_enable_remote_control=not uses_sql_broker(broker_url),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
    )
    return app


def prepare_broker(connection: Connection, broker_url: str) -> None:
    """Create the SQL transport's tables now (kombu creates them on a channel's first use)."""
    if uses_sql_broker(broker_url):
        _ = connection.default_channel.session


def dispatch_builds(conda_store: CondaStore, build_ids: list[int]) -> None:
    """Announce committed builds; a broker outage only delays them (workers also poll the database).

    This host's idle workers are woken first (`doorbell`): they claim the builds while the
    message is still being published.
    """
    ring(conda_store.store_directory)
    app = conda_store.celery_app
    for build_id in build_ids:
        try:
            _publish(app, build_id)
        except Exception as error:  # noqa: BLE001 - any broker failure must not fail the request
            log.warning(
                "build %s stays QUEUED until a worker finds it in the database: the broker "
                "(CondaStore.celery_broker_url) refused the task: %s",
                build_id,
                error,
            )


def _publish(app: Celery, build_id: int) -> None:
    """Publish, once more on failure: a worker may be creating the SQL broker's tables at once."""
    for attempt in range(PUBLISH_ATTEMPTS):
        try:
            app.send_task(
                BUILD_TASK,
                args=[build_id],
                task_id=build_task_id(build_id),
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
            )
            return
        except Exception:
            if attempt == PUBLISH_ATTEMPTS - 1:
                raise
