"""Supervised builds: run each claimed build in its own child process, never leave one stuck.

The database is the queue's truth. Celery tasks (or this supervisor itself, woken by the
doorbell of its host or looking for builds whose message was lost) claim a QUEUED build with a
conditional update, so two workers never take the same build; the build then runs in a child
forked into its own process group. A monitor thread, every few seconds: proves running builds
are alive (heartbeat), kills those canceled or over their wall-clock limit, settles the status of
those whose child is gone, and runs the deployment's periodic work when the database says it is
this worker's turn.

A build is not failed by what happens to its worker: a worker that is stopped (a restart, a
deploy) gives its running builds back to the queue, and any worker gives back the builds whose
worker died (its heartbeat stopped). They are built again from the start by the next worker that
claims them, up to MAX_BUILD_INTERRUPTIONS times; then they end FAILED, saying why.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from conda_store_server import discarded_prefixes
from conda_store_server.build.keys import artifact_key, build_key, identity_of
from conda_store_server.build.logs import FLUSH_INTERVAL_SECONDS, LogShipper, spool_path, stamped
from conda_store_server.db.models import UNFINISHED_STATUSES, Build, BuildStatus, utcnow
from conda_store_server.db.session import refresh_query_statistics
from conda_store_server.exception import BuildPathError, NotFoundError
from conda_store_server.periodic import claim_run
from conda_store_server.periodic.retention import run_storage_lifecycle
from conda_store_server.periodic.storage import record_storage_metrics
from conda_store_server.service import get_build, kept_artifacts, prefix_of, purge_build_files
from conda_store_server.settings import get_settings
from conda_store_server.worker.doorbell import Doorbell
from conda_store_server.worker.watch_paths import register_watched_environments

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from conda_store_server.app import CondaStore

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_SECONDS = 2.0
STALE_AFTER_SECONDS = 15.0
KILL_GRACE_SECONDS = 3.0
# a QUEUED build nobody claimed for this long lost its message (broker restart, dead worker,
# server stopped between commit and publish): an idle worker claims it from the database
UNANNOUNCED_AFTER_SECONDS = 10.0
RECOVER_BUILDS_EVERY_SECONDS = 5.0
# after a waiting build process could not be started (its fork server is being replaced, say)
WAITING_PROCESS_RETRY_SECONDS = 10.0
WATCH_PATHS_EVERY_SECONDS = 10.0
STORAGE_METRICS_EVERY_SECONDS = 60.0
QUERY_STATISTICS_EVERY_SECONDS = 3600.0
INDEX_CHANNELS_EVERY_SECONDS = 3600.0
STORAGE_LIFECYCLE_EVERY_SECONDS = 600.0
# the interruption (its worker stopped or died) that ends a build FAILED instead of queued again:
# a build that itself brings its workers down (memory, disk) must not circle the queue forever
MAX_BUILD_INTERRUPTIONS = 3
# a build process killed by a stop signal nobody here sent was most likely signalled together with
# its worker (systemd stops a whole cgroup, a terminal a whole process group): the worker's own
# signal gets this long to arrive, and then the build is interrupted, not crashed
WORKER_STOP_GRACE_SECONDS = 1.0
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGHUP})
PR_SET_PDEATHSIG = 1
FORK_SERVER_PRELOAD = (
    "conda_store_server.worker.app",
    "conda_store_server.worker.supervisor",
    "conda_store_server.build.pipeline",
    "conda_store_server.periodic.channels",
    "conda_store_server.periodic.package_cache",
    "conda_store_server.worker.fork_server_warmup",
)


@dataclass
class RunningBuild:
    build_id: int
    process: BaseProcess
    started: float = field(default_factory=time.monotonic)
    # the outcome decided for a build stopped here; QUEUED means it is given back to the queue
    stopping_reason: tuple[BuildStatus, str] | None = None
    kill_sent_at: float | None = None
    found_dead_at: float | None = None
    final_status: str = ""
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class WaitingProcess:
    """A build process started before its build, connected and warmed while the worker is idle:
    a build handed to it starts without the fork (~7 ms) and a fresh process's first queries."""

    process: BaseProcess
    handover: Connection  # the supervisor's end: a build id, or None to end it


@dataclass(frozen=True)
class StoreRecipe:
    """How a build child makes its own CondaStore: the worker's command line, read again.

    Children come from a fork server, not from the worker, so they receive this picklable
    recipe instead of the worker's objects (a config file may hold functions, which do not
    pickle; the file itself is simply loaded again).
    """

    argv: tuple[str, ...]

    def make(self) -> CondaStore:
        from conda_store_server.app import CondaStore
        from conda_store_server.worker.app import CondaStoreWorker

        application = CondaStoreWorker()
        application.initialize(list(self.argv))
        return CondaStore(parent=application, log=application.log)


#: The worker's command line (JSON), for the fork server it starts; never inherited by a build
RECIPE_VARIABLE = "CONDA_STORE_BUILD_RECIPE"
#: The CondaStore the fork server made for its worker's recipe, inherited by every build child
_prepared: tuple[StoreRecipe, CondaStore] | None = None


def prepare_store_in_fork_server() -> None:
    """In the fork server (`fork_server_warmup`): make the CondaStore its worker's builds use,
    and run the queries every build starts with, so that no child repeats either.

    A child otherwise reads the configuration again (~15 ms), and its first queries pay for
    connecting and for SQLAlchemy compiling them (~30 ms). The connection is closed before any
    fork: children open their own. Anything failing here leaves the children to make their own.
    """
    global _prepared
    text = os.environ.pop(RECIPE_VARIABLE, None)
    if not text:
        return
    try:
        recipe = StoreRecipe(tuple(json.loads(text)))
        conda_store = recipe.make()
        _run_first_queries(conda_store)
        conda_store.engine.dispose()
    except (Exception, SystemExit):  # a configuration may exit: the fork server must live on
        log.warning("the fork server could not prepare the builds' CondaStore", exc_info=True)
        return
    _prepared = (recipe, conda_store)


def _run_first_queries(conda_store: CondaStore) -> None:
    with conda_store.session() as session:
        with contextlib.suppress(NotFoundError):  # the newest build, so that every part runs
            get_build(session, session.scalar(select(func.max(Build.id))) or 0)
        get_settings(session, conda_store)


def _store_for(recipe: StoreRecipe) -> CondaStore:
    """The fork server's CondaStore when it was made from this recipe, else a new one."""
    if _prepared is not None and _prepared[0] == recipe:
        conda_store = _prepared[1]
        conda_store.engine.dispose(close=False)  # nothing the fork server held is used here
        return conda_store
    return recipe.make()


def build_process_context() -> multiprocessing.context.ForkServerContext:
    """Build children are forked from a single-threaded fork server started with the worker.

    The worker itself runs threads (Celery's pool, the broker connection, the monitor); a fork
    taken while one of them holds a C library's lock (SQLite's, for one) hangs the child on
    its first use of that library. The fork server never runs a thread, and has the pipeline
    imported already, so a child starts in milliseconds.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(FORK_SERVER_PRELOAD))
    return context


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Supervisor:
    def __init__(
        self,
        conda_store: CondaStore,
        recipe: StoreRecipe,
        concurrency: int,
        poll_interval: float = 0.05,
        worker_id: str | None = None,
        watch_paths: Sequence[str] = (),
        doorbell: bool = True,
    ) -> None:
        self.conda_store = conda_store
        self.recipe = recipe
        self.concurrency = max(1, concurrency)
        self.poll_interval = poll_interval
        self.worker_id = worker_id or new_worker_id()
        self.watch_paths = list(watch_paths)
        self.running: dict[int, RunningBuild] = {}
        self._slots = threading.Condition()
        self._stopping = False
        self._last_heartbeat = 0.0
        self._context = build_process_context()
        self._indexer: BaseProcess | None = None
        self._collector: BaseProcess | None = None
        self._lifecycle: threading.Thread | None = None
        # periodic job (or the next waiting build process) -> monotonic time it can be due
        self._not_before: dict[str, float] = {}
        # build logs: the children write spool files, a thread of this process ships them
        self._logs = LogShipper(conda_store.storage, conda_store.store_directory)
        self._log_keys: dict[int, str] = {}
        self._shipping: threading.Thread | None = None
        self._shipping_stopped = threading.Event()
        self._waiting: WaitingProcess | None = None
        self._wants_doorbell = doorbell
        self._doorbell: Doorbell | None = None
        self._answering: threading.Thread | None = None

    # ------------------------------------------------------------------ the Celery task's side
    def run_build(self, build_id: int) -> str:
        """Claim this build and supervise it to its end; the final status, or why it did not run.

        Blocks the calling task thread for the build's duration, so that Celery counts the
        slot as busy and takes no more messages than this worker has free slots. A build this
        supervisor started already (its doorbell rang before the message came) is followed.
        """
        with self._slots:
            running = self.running.get(build_id)
            if running is None or running.stopping_reason is not None:
                while len(self.running) >= self.concurrency and not self._stopping:
                    self._slots.wait(1.0)
                if self._stopping:
                    return "not started: the worker is shutting down (the build stays QUEUED)"
                if not self._claim(build_id):
                    return f"not started: {self._status_of(build_id)}"
                running = self._start(build_id)
        running.done.wait()
        return running.final_status

    def start_fork_server(self) -> None:
        """Start it now, so that the first build does not wait for its imports, nor for its
        CondaStore (`prepare_store_in_fork_server`): the recipe reaches the fork server in its
        environment, which it clears before it forks anything."""
        from multiprocessing import forkserver

        os.environ[RECIPE_VARIABLE] = json.dumps(list(self.recipe.argv))
        try:
            forkserver.ensure_running()
        finally:
            os.environ.pop(RECIPE_VARIABLE, None)

    # ------------------------------------------------------------------ the monitor thread
    def run(self, should_stop: Callable[[], bool]) -> None:
        self._start_shipping()
        recover_stale_builds(self.conda_store)
        self._listen_for_doorbell()
        while not should_stop():
            try:
                self.step()
            except Exception:
                # a database or storage hiccup must not end supervision: retry on the next step
                log.exception("supervision step failed; retrying")
                time.sleep(1.0)
            time.sleep(self.poll_interval)
        self.shutdown()

    def step(self) -> None:
        self._reap()
        self._keep_a_process_waiting()
        now = time.monotonic()
        if now - self._last_heartbeat >= HEARTBEAT_INTERVAL_SECONDS:
            self._last_heartbeat = now
            self._heartbeat()
            self._periodic_work()
            self._claim_waiting(UNANNOUNCED_AFTER_SECONDS)
        self._enforce_limits()
        self._check_requests()

    def shutdown(self) -> None:
        """Stop every running build and give it back to the queue: a restart must not fail builds,
        and a stopped worker must not leave them BUILDING."""
        with self._slots:
            self._stopping = True
            self._slots.notify_all()
            waiting, self._waiting = self._waiting, None
            for running in self.running.values():
                if running.stopping_reason is None:  # a cancel or a timeout under way keeps its outcome
                    running.stopping_reason = (BuildStatus.QUEUED, f"its worker {self.worker_id} was stopped")
                _kill(running)
        if waiting is not None:
            _end_waiting(waiting)
        for child in (self._indexer, self._collector):
            if child is not None and child.is_alive():
                child.terminate()
                child.join(KILL_GRACE_SECONDS)
        # SIGTERM, then SIGKILL after the grace period: every child is gone within seconds, and
        # every task thread waiting on its build is released, so Celery's shutdown can finish
        deadline = time.monotonic() + KILL_GRACE_SECONDS * 3
        while self.running and time.monotonic() < deadline:
            try:
                self._reap()
            except Exception:
                # the database may be what is failing: the children are still killed below
                log.exception("settling stopped builds failed")
            self._enforce_limits()
            time.sleep(0.05)
        for running in list(self.running.values()):
            log.error(
                "build %s (process %s) did not stop; it stays BUILDING until recovery gives it back",
                running.build_id,
                running.process.pid,
            )
            running.final_status = BuildStatus.BUILDING.value
            running.done.set()
        self._shipping_stopped.set()
        if self._shipping is not None:
            self._shipping.join(KILL_GRACE_SECONDS)
        if self._answering is not None and self._doorbell is not None:
            self._doorbell.interrupt()
            self._answering.join(KILL_GRACE_SECONDS)
        if self._doorbell is not None:
            self._doorbell.close()

    # ------------------------------------------------------------------ claiming and starting
    def _claim(self, build_id: int) -> bool:
        """Take a QUEUED build (callers hold `_slots`). Not one whose earlier process is still
        being stopped here: recovery may have given it back while this worker looked dead."""
        if build_id in self.running:
            return False
        now = utcnow()
        with self.conda_store.session() as session:
            return bool(
                session.execute(
                    update(Build)
                    .where(
                        Build.id == build_id,
                        Build.status == BuildStatus.QUEUED,
                        Build.deleted_on.is_(None),
                    )
                    .values(
                        status=BuildStatus.BUILDING,
                        started_on=now,
                        heartbeat_on=now,
                        worker_id=self.worker_id,
                    )
                    .execution_options(synchronize_session=False)
                ).rowcount
            )

    def _status_of(self, build_id: int) -> str:
        with self.conda_store.session() as session:
            status = session.scalar(select(Build.status).where(Build.id == build_id))
        return f"build {build_id} is {status.value}" if status else f"build {build_id} does not exist"

    def _claim_waiting(self, waited_seconds: float | None) -> None:
        """Idle slots take QUEUED builds from the database, oldest first: those that waited
        `waited_seconds` (their message was lost), or any when the doorbell rang (None)."""
        with self._slots:
            free = self.concurrency - len(self.running)
            if free <= 0 or self._stopping:
                return
            waiting = select(Build.id).where(Build.status == BuildStatus.QUEUED, Build.deleted_on.is_(None))
            if waited_seconds is not None:
                cutoff = utcnow() - datetime.timedelta(seconds=waited_seconds)
                waiting = waiting.where(Build.scheduled_on < cutoff)
            with self.conda_store.session() as session:
                candidates = session.scalars(waiting.order_by(Build.id).limit(free)).all()
            for build_id in candidates:
                if self._claim(build_id):
                    if waited_seconds is None:
                        log.info("build %s started at the doorbell's ring", build_id)
                    else:
                        log.info(
                            "build %s had waited %s s unclaimed: started from the database",
                            build_id,
                            waited_seconds,
                        )
                    self._start(build_id)

    def _listen_for_doorbell(self) -> None:
        if not self._wants_doorbell:
            return
        try:
            self._doorbell = Doorbell(self.conda_store.store_directory)
        except OSError as error:
            log.info("no doorbell (builds arrive through the broker alone): %s", error)
            return
        self._answering = threading.Thread(target=self._answer_doorbell, name="doorbell", daemon=True)
        self._answering.start()

    def _answer_doorbell(self) -> None:
        assert self._doorbell is not None
        while not self._stopping:
            try:
                if self._doorbell.wait(1.0):
                    self._claim_waiting(None)
            except Exception:
                log.exception("answering the doorbell failed; the broker still brings builds")
                time.sleep(1.0)

    def _start(self, build_id: int) -> RunningBuild:
        process = self._context.Process(
            target=_child_main,
            args=(self.recipe, build_id),
            name=f"build-{build_id}",
            daemon=False,
        )
        running = RunningBuild(build_id, process)
        handed = None
        try:
            self._logs.start(build_id)
            handed = self._hand_to_waiting(build_id)
            if handed is None:
                process.start()
            else:
                running.process = handed
        except Exception as error:  # noqa: BLE001 - e.g. the fork server died: the build must not stay BUILDING
            # not the build's fault: multiprocessing starts a new fork server for the next process
            log.exception("build %s: no build process could be started", build_id)
            running.stopping_reason = (
                BuildStatus.QUEUED,
                f"its worker {self.worker_id} could not start a process for it ({error})",
            )
            running.final_status = self._settle(running)
            running.done.set()
            return running
        self.running[build_id] = running
        how = " (waiting for it)" if handed is not None else ""
        log.info("build %s started in process %s%s", build_id, running.process.pid, how)
        self._start_shipping()
        return running

    def _hand_to_waiting(self, build_id: int) -> BaseProcess | None:
        """The waiting process, now running this build; None when there is none alive."""
        waiting, self._waiting = self._waiting, None
        if waiting is None:
            return None
        try:
            if waiting.process.exitcode is not None:
                raise BrokenPipeError("it ended")
            waiting.handover.send(build_id)
        except (OSError, ValueError) as error:
            log.info(
                "the waiting build process %s is gone (%s): a new one runs build %s",
                waiting.process.pid,
                error,
                build_id,
            )
            waiting.handover.close()
            if waiting.process.exitcode is None:
                waiting.process.kill()  # not joined: its fork server reaps it
            return None
        waiting.handover.close()
        return waiting.process

    def _keep_a_process_waiting(self) -> None:
        """Only while no build runs: its warm-up must not slow a build down."""
        if self._waiting is not None or self.running or self._stopping:
            return
        if time.monotonic() < self._not_before.get("waiting process", 0.0):
            return
        receiving, sending = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_waiting_child_main, args=(self.recipe, receiving), name="build-waiting", daemon=False
        )
        try:
            process.start()
        except Exception:  # noqa: BLE001 - builds then start in processes of their own, as before
            log.warning("no build process could be started ahead of its build", exc_info=True)
            self._not_before["waiting process"] = time.monotonic() + WAITING_PROCESS_RETRY_SECONDS
            sending.close()
            return
        finally:
            receiving.close()
        with self._slots:
            if self._stopping:
                _end_waiting(WaitingProcess(process, sending))
            else:
                self._waiting = WaitingProcess(process, sending)
                log.info("process %s waits for the next build", process.pid)

    # ------------------------------------------------------------------ logs
    def _start_shipping(self) -> None:
        """The thread that ships the running builds' logs (with supervision, or the first build):
        storage that answers slowly delays logs, never heartbeats or cancels."""
        with self._slots:
            if self._shipping is None and not self._shipping_stopped.is_set():
                self._shipping = threading.Thread(target=self._ship_logs, name="build-logs", daemon=True)
                self._shipping.start()

    def _ship_logs(self) -> None:
        try:
            self._logs.connect()
        except Exception:
            log.exception("the storage of build logs is not reachable yet")
        while not self._shipping_stopped.wait(FLUSH_INTERVAL_SECONDS):
            for build_id in list(self.running):
                try:
                    self._logs.ship(build_id, self._log_key(build_id))
                except Exception:
                    # storage or database unavailable: the lines wait in the spool for the next round
                    log.exception("the log of build %s could not be shipped; retrying", build_id)
                    time.sleep(1.0)

    def _log_key(self, build_id: int) -> str:
        if build_id not in self._log_keys:
            with self.conda_store.session() as session:
                self._log_keys[build_id] = log_key(get_build(session, build_id))
        return self._log_keys[build_id]

    # ------------------------------------------------------------------ supervision
    def _heartbeat(self) -> None:
        """Only for builds this worker still holds: one recovery gave back may run elsewhere now."""
        build_ids = list(self.running)
        if not build_ids:
            return
        with self.conda_store.session() as session:
            session.execute(
                update(Build)
                .where(
                    Build.id.in_(build_ids),
                    Build.status == BuildStatus.BUILDING,
                    Build.worker_id == self.worker_id,
                )
                .values(heartbeat_on=utcnow())
                .execution_options(synchronize_session=False)
            )

    def _enforce_limits(self) -> None:
        limit = self.conda_store.build_timeout
        for running in list(self.running.values()):
            if running.stopping_reason is None and time.monotonic() - running.started > limit:
                running.stopping_reason = (
                    BuildStatus.FAILED,
                    f"the build exceeded CondaStore.build_timeout ({limit} s) and was stopped",
                )
                _kill(running)
            elif running.kill_sent_at and time.monotonic() - running.kill_sent_at > KILL_GRACE_SECONDS:
                _kill(running, signal.SIGKILL)

    def _check_requests(self) -> None:
        """Cancel and delete are rows in the database, so they reach the build on any broker.

        So does the news that the build is no longer this worker's: recovery elsewhere took this
        worker for dead (its heartbeat went stale) and gave the build back to the queue. Its
        process stops at once, before it could finish a build another worker may be running.
        """
        build_ids = list(self.running)
        if not build_ids:
            return
        with self.conda_store.session() as session:
            rows = session.execute(
                select(Build.id, Build.cancel_requested_on, Build.deleted_on, Build.worker_id).where(
                    Build.id.in_(build_ids)
                )
            ).all()
        for build_id, cancel_requested_on, deleted_on, worker_id in rows:
            running = self.running.get(build_id)
            if running is None or running.stopping_reason is not None:
                continue
            if worker_id != self.worker_id:
                log.warning("build %s was given to another worker while it ran here: stopping it", build_id)
                # nothing is written for it: _settle only decides the builds this worker holds
                running.stopping_reason = (BuildStatus.QUEUED, "given to another worker")
                _kill(running)
            elif cancel_requested_on or deleted_on:
                running.stopping_reason = (BuildStatus.CANCELED, "canceled by request")
                _kill(running)

    # ------------------------------------------------------------------ periodic work
    def _periodic_work(self) -> None:
        """Each job runs once per period for the whole deployment: the database picks the worker."""
        if self._due("recover-builds", RECOVER_BUILDS_EVERY_SECONDS):
            recover_stale_builds(self.conda_store)
        if self.watch_paths and self._due("watch-paths", WATCH_PATHS_EVERY_SECONDS):
            register_watched_environments(self.conda_store, self.watch_paths)
        if self._due("storage-metrics", STORAGE_METRICS_EVERY_SECONDS):
            record_storage_metrics(self.conda_store)
        if self._due("query-statistics", QUERY_STATISTICS_EVERY_SECONDS):
            refresh_query_statistics(self.conda_store.engine)
        self._index_channels_when_due()
        self._collect_package_caches_when_due()
        self._storage_lifecycle_when_due()

    def _storage_lifecycle_when_due(self) -> None:
        """In a thread: removing prefixes takes long, and heartbeats must not wait for it."""
        if self._lifecycle is not None and self._lifecycle.is_alive():
            return
        if self._due("storage-lifecycle", STORAGE_LIFECYCLE_EVERY_SECONDS):
            first = self._lifecycle is None  # this worker's first pass also looks for leftovers
            self._lifecycle = threading.Thread(
                target=_storage_lifecycle,
                args=(self.conda_store, first),
                name="storage-lifecycle",
                daemon=True,
            )
            self._lifecycle.start()

    def _due(self, name: str, every_seconds: float) -> bool:
        """The database is asked only once the job can be due: the next run time read at the
        last attempt is remembered, so an hourly job costs no query every heartbeat."""
        if time.monotonic() < self._not_before.get(name, 0.0):
            return False
        try:
            with self.conda_store.session() as session:
                claim = claim_run(session, name, every_seconds)
        except Exception:
            log.exception("periodic work %s could not be scheduled", name)
            return False
        wait = (claim.next_run_at - utcnow()).total_seconds()
        self._not_before[name] = time.monotonic() + min(max(wait, 0.0), every_seconds)
        return claim.claimed

    def _index_channels_when_due(self) -> None:
        """In a child, as builds: this process never runs rattler."""
        if self._indexer is not None:
            if self._indexer.is_alive():
                return
            self._indexer.join()
            self._indexer = None
        if not self.conda_store.conda_indexed_channels:
            return
        if self._due("index-channels", INDEX_CHANNELS_EVERY_SECONDS):
            self._indexer = self._context.Process(
                target=_index_child_main, args=(self.recipe,), name="index-channels", daemon=False
            )
            self._indexer.start()

    def _collect_package_caches_when_due(self) -> None:
        """In a child, as indexing: removing thousands of files must not delay heartbeats."""
        if self._collector is not None:
            if self._collector.is_alive():
                return
            self._collector.join()
            self._collector = None
        interval = self.conda_store.package_cache_gc_interval
        if interval and "package-cache-gc" not in self._not_before:
            # not at start-up: a worker starting beside a freshly warmed cache leaves it warm
            self._not_before["package-cache-gc"] = time.monotonic() + interval
            return
        if interval and self._due("package-cache-gc", interval):
            self._collector = self._context.Process(
                target=_collect_child_main, args=(self.recipe,), name="package-cache-gc", daemon=False
            )
            self._collector.start()

    def _reap(self) -> None:
        for build_id, running in list(self.running.items()):
            if running.process.is_alive() or self._may_be_stopping_with_its_worker(running):
                continue
            running.process.join()
            running.final_status = self._settle(running)
            with self._slots:
                del self.running[build_id]
                self._slots.notify_all()
            running.done.set()

    def _may_be_stopping_with_its_worker(self, running: RunningBuild) -> bool:
        """True for a moment after a build process was killed by a stop signal this worker did not
        send: when the worker's own stop follows, the build is given back instead of failed."""
        exitcode = running.process.exitcode
        if self._stopping or running.stopping_reason is not None or exitcode is None or exitcode >= 0:
            return False
        if -exitcode not in STOP_SIGNALS:
            return False  # a crash (SIGSEGV, SIGABRT, ...) is the build's own
        now = time.monotonic()
        running.found_dead_at = running.found_dead_at or now
        return now - running.found_dead_at < WORKER_STOP_GRACE_SECONDS

    def _settle(self, running: RunningBuild) -> str:
        """The child is gone: whatever it did not finish is decided here, and deleted builds purged.

        Only for a build this worker still holds: recovery elsewhere may have given it back to
        the queue (this worker looked dead), and another worker may be building it now.
        """
        exitcode = running.process.exitcode
        status, reason = running.stopping_reason or (
            BuildStatus.FAILED,
            f"the build process ended unexpectedly ({_describe_exit(exitcode)}); see the log",
        )
        discarded = None
        with self.conda_store.session() as session:
            build = get_build(session, running.build_id)
            if build.worker_id == self.worker_id:
                # every line the process wrote comes before the reason it ended
                _ship_rest(self._logs, build)
                if status == BuildStatus.QUEUED:
                    ended = _give_back(self.conda_store, session, build, reason)
                else:
                    ended = status if _end(self.conda_store, session, build, status, reason) else None
                discarded = _discard_if_unfinished(self.conda_store, build, ended)
                _seal_if_final(self.conda_store, build)
                _purge_if_deleted(self.conda_store, session, build)
            final = build.status.value
        discarded_prefixes.delete_in_background(discarded)
        self._log_keys.pop(running.build_id, None)
        log.info("build %s ended here: %s", running.build_id, final)
        return final


def _worker_is_dead(worker_id: str | None) -> bool:
    """True when the worker ran on this machine and its process no longer exists."""
    host, _, rest = (worker_id or "").partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def recover_stale_builds(conda_store: CondaStore, stale_after: float = STALE_AFTER_SECONDS) -> list[int]:
    """Give back to the queue the BUILDING builds whose worker is gone; the ids of those recovered.

    A worker is gone when its heartbeat stopped, or at once when it ran on this machine and its
    process no longer exists. Its builds keep their `scheduled_on`, so that any worker with a free
    slot claims them from the database at its next heartbeat (see `_claim_unannounced`): no
    message is published from here, as a broker that does not answer would hold up the monitor
    thread and with it this worker's own heartbeats. Cancel-requested (or deleted) builds end
    CANCELED instead, and a build interrupted MAX_BUILD_INTERRUPTIONS times ends FAILED.
    """
    cutoff = utcnow() - datetime.timedelta(seconds=stale_after)
    recovered = []
    discarded = []
    with conda_store.session() as session:
        building = session.scalars(select(Build).where(Build.status == BuildStatus.BUILDING)).all()
        for build in building:
            if _worker_is_dead(build.worker_id):
                why = f"its worker {build.worker_id} is no longer running"
                # on this machine: what its build process wrote and the worker had not shipped
                shipper = LogShipper(conda_store.storage, conda_store.store_directory)
                _ship_rest(shipper, build)
            elif (build.heartbeat_on or build.started_on or cutoff) < cutoff:
                why = (
                    f"its worker {build.worker_id or '(unknown)'} stopped responding "
                    f"(last heartbeat {build.heartbeat_on} UTC)"
                )
            else:
                continue
            ended = _give_back(conda_store, session, build, why)
            if ended is not None:
                recovered.append(build.id)
                discarded.append(_discard_if_unfinished(conda_store, build, ended))
                _seal_if_final(conda_store, build)
                _purge_if_deleted(conda_store, session, build)
    for path in discarded:
        discarded_prefixes.delete_in_background(path)
    return recovered


def _discard_if_unfinished(conda_store: CondaStore, build: Build, ended: BuildStatus | None) -> str | None:
    """Move the prefix of a build this caller has just ended FAILED or CANCELED out of the way
    (`discarded_prefixes`), before the session commits that status; where it went."""
    if ended not in UNFINISHED_STATUSES:
        return None
    try:
        prefix = prefix_of(conda_store, build)
    except BuildPathError:
        return None  # a path too long to install into: nothing was
    return discarded_prefixes.discard(conda_store.store_directory, prefix)


def _give_back(conda_store: CondaStore, session: Session, build: Build, why: str) -> BuildStatus | None:
    """Return a build interrupted by its worker to the queue, to be built again from the start.

    `build` is as this session read it, BUILDING under the claim that was interrupted: the update
    applies only if the row is still so, so that two workers recovering the same build count one
    interruption. A build whose cancel was requested (or which was deleted) ends CANCELED, and
    the MAX_BUILD_INTERRUPTIONS-th interruption ends it FAILED. The new status, or None when the
    build had already moved on. The half-installed prefix is left to the next build, which
    removes a prefix it finds before it installs.
    """
    interruptions = build.interruptions + 1
    values: dict[str, object] = {"interruptions": interruptions}
    if build.cancel_requested_on is not None or build.deleted_on is not None:
        status = BuildStatus.CANCELED
        values["status_info"] = f"canceled by request ({why} before it could stop the build)"
        line = f"build {build.id} marked CANCELED: {values['status_info']}"
    elif interruptions >= MAX_BUILD_INTERRUPTIONS:
        status = BuildStatus.FAILED
        values["status_info"] = (
            f"the build was interrupted {interruptions} times by its worker stopping "
            f"(the last time: {why}); rebuild it"
        )
        line = f"build {build.id} was interrupted: {why}; marked FAILED: {values['status_info']}"
    else:
        status = BuildStatus.QUEUED
        attempt = f"attempt {interruptions + 1} of {MAX_BUILD_INTERRUPTIONS}"
        values["status_info"] = f"interrupted: {why}; queued again ({attempt})"
        values.update(worker_id=None, started_on=None, heartbeat_on=None)
        line = f"build {build.id} was interrupted: {why}; queued again ({attempt})"
    if status.is_final:
        values["ended_on"] = utcnow()
    changed = session.execute(
        update(Build)
        .where(
            Build.id == build.id,
            Build.status == BuildStatus.BUILDING,
            Build.worker_id.is_not_distinct_from(build.worker_id),
            Build.interruptions == build.interruptions,
        )
        .values(status=status, **values)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.refresh(build)
    if not changed:
        return None
    log.info("%s", line)
    _append_log(conda_store, build, line)
    return status


def _end(conda_store: CondaStore, session: Session, build: Build, status: BuildStatus, reason: str) -> bool:
    """Give a build its final status, unless its process (or anyone else) decided it already;
    whether this call decided it."""
    changed = session.execute(
        update(Build)
        .where(Build.id == build.id, Build.status == BuildStatus.BUILDING, Build.worker_id == build.worker_id)
        .values(status=status, ended_on=utcnow(), status_info=reason)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.refresh(build)
    if changed:
        _append_log(conda_store, build, f"build {build.id} marked {status.value}: {reason}")
    return bool(changed)


def _purge_if_deleted(conda_store: CondaStore, session: Session, build: Build) -> None:
    """A deleted build that has ended loses its prefix and the artifacts not kept on deletion."""
    if build.deleted_on is not None and build.status.is_final:
        purge_build_files(conda_store, build, kept_artifacts(session, conda_store))


def log_key(build: Build) -> str:
    return artifact_key("logs", build_key(identity_of(build)))


def _append_log(conda_store: CondaStore, build: Build, line: str) -> None:
    conda_store.storage.append(log_key(build), stamped(line))


def _ship_rest(shipper: LogShipper, build: Build) -> None:
    """Ship a build's spool to its end; a storage failure is logged, never stops the decision."""
    if not spool_path(shipper.store_directory, build.id).exists():
        return
    try:
        shipper.finish(build.id, log_key(build))
    except Exception:
        log.exception("the last lines of build %s could not be shipped", build.id)


def _seal_if_final(conda_store: CondaStore, build: Build) -> None:
    """A build that has ended has its whole log: sealed, so that readers know it is complete."""
    if not build.status.is_final:
        return
    try:
        conda_store.storage.seal_log(log_key(build))
    except Exception:
        log.exception("the log of build %s could not be sealed", build.id)


def _kill(running: RunningBuild, sig: int = signal.SIGTERM) -> None:
    """Signal the build's whole process group (solver threads, packers, pip)."""
    pid = running.process.pid
    if pid is None or running.process.exitcode is not None:
        return  # not started, or ended (and reaped): its pid may already be another process's
    if running.kill_sent_at is None:
        running.kill_sent_at = time.monotonic()  # escalates to SIGKILL if this one is not enough
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        # a child that has not reached its setsid() yet has no group of its own
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "unknown exit"
    if exitcode < 0:
        return f"killed by signal {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel (Linux) to send `sig` when the parent process dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _end_with_worker() -> None:
    """Kill this build process's group as soon as the worker that started it is gone.

    PR_SET_PDEATHSIG names the fork server, not the worker, and the fork server outlives a killed
    worker while any build process runs (each holds a copy of the pipe the fork server watches
    for its client's end). A build left running would race the rebuild that another worker starts
    once the build is given back to the queue, so a thread waits for the worker's end (the
    sentinel multiprocessing hands every child) and kills the group, this process included.
    """
    worker = multiprocessing.parent_process()
    if worker is None:
        return

    def watch() -> None:
        worker.join()
        os.killpg(os.getpid(), signal.SIGKILL)  # the group this process leads since its setsid()

    threading.Thread(target=watch, name="end-with-worker", daemon=True).start()


def _storage_lifecycle(conda_store: CondaStore, look_for_leftovers: bool) -> None:
    try:
        run_storage_lifecycle(conda_store, look_for_leftovers)
    except Exception:
        log.exception("the storage lifecycle pass failed; it runs again next period")


def _index_child_main(recipe: StoreRecipe) -> None:
    from conda_store_server.periodic.channels import index_channels

    _periodic_child(recipe, index_channels, "indexing the channels failed")


def _collect_child_main(recipe: StoreRecipe) -> None:
    from conda_store_server.periodic.package_cache import collect_package_caches

    _periodic_child(
        recipe, collect_package_caches, "collecting the package caches failed; it runs again next period"
    )


def _periodic_child(recipe: StoreRecipe, work: Callable[[CondaStore], object], failure: str) -> None:
    """A periodic job in a child process of its own, ended as a build child is."""
    die_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = 0
    try:
        work(recipe.make())
    except BaseException:
        log.exception(failure)
        code = 1
    finally:
        logging.shutdown()
    os._exit(code)  # as a build child: rattler's runtime threads must not be finalized


def _end_waiting(waiting: WaitingProcess) -> None:
    with contextlib.suppress(OSError, ValueError):
        waiting.handover.send(None)
    waiting.handover.close()
    waiting.process.join(KILL_GRACE_SECONDS)
    if waiting.process.exitcode is None:
        waiting.process.kill()
        waiting.process.join(KILL_GRACE_SECONDS)


def _child_main(recipe: StoreRecipe, build_id: int) -> None:
    os.setsid()
    _become_build_process()
    _run_and_exit(recipe, build_id)


def _waiting_child_main(recipe: StoreRecipe, handover: Connection) -> None:
    """Wait for a build id (None or a closed pipe: end); connected and warmed meanwhile.

    The process leads no session of its own until its build arrives: until then it is no build.
    """
    _become_build_process()
    conda_store: CondaStore | None = None
    try:
        conda_store = _store_for(recipe)
        _run_first_queries(conda_store)
    except (Exception, SystemExit):  # the build makes its own then, and says what fails
        log.debug("warming the waiting build process failed", exc_info=True)
    try:
        build_id = handover.recv()
    except (EOFError, OSError):
        build_id = None
    if build_id is None:
        logging.shutdown()
        os._exit(0)
    os.setsid()
    _run_and_exit(recipe, build_id, conda_store)


def _become_build_process() -> None:
    die_with_parent()  # a build must not outlive its fork server
    _end_with_worker()  # nor its worker
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_and_exit(recipe: StoreRecipe, build_id: int, conda_store: CondaStore | None = None) -> None:
    from conda_store_server.build.pipeline import run_build

    code = 0
    try:
        run_build(conda_store or _store_for(recipe), build_id)
    except BaseException:
        log.exception("build %s crashed", build_id)
        code = 1
    finally:
        logging.shutdown()
    # rattler's runtime threads abort the interpreter at a normal exit; leave without finalizing.
    os._exit(code)
