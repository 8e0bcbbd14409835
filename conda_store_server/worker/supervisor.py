"""Supervised builds: run each claimed build in its own child process, never leave one stuck.

The database is the queue's truth. Celery tasks (or, for builds whose message was lost, this
supervisor itself) claim a QUEUED build with a conditional update, so two workers never take
the same build; the build then runs in a child forked into its own process group. A monitor
thread, every few seconds: proves running builds are alive (heartbeat), kills those canceled or
over their wall-clock limit, settles the status of those whose child is gone, and runs the
deployment's periodic work when the database says it is this worker's turn. Any worker marks
FAILED the builds whose heartbeat stopped: their worker died.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
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

from sqlalchemy import select, update

from conda_store_server.build.keys import artifact_key, build_key, identity_of
from conda_store_server.db.models import Build, BuildStatus, utcnow
from conda_store_server.db.session import refresh_query_statistics
from conda_store_server.periodic import claim_run
from conda_store_server.periodic.storage import record_storage_metrics
from conda_store_server.service import get_build, kept_artifacts, purge_build_files
from conda_store_server.worker.watch_paths import register_watched_environments

if TYPE_CHECKING:
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
WATCH_PATHS_EVERY_SECONDS = 10.0
STORAGE_METRICS_EVERY_SECONDS = 60.0
QUERY_STATISTICS_EVERY_SECONDS = 3600.0
INDEX_CHANNELS_EVERY_SECONDS = 3600.0
PR_SET_PDEATHSIG = 1
FORK_SERVER_PRELOAD = (
    "conda_store_server.worker.app",
    "conda_store_server.worker.supervisor",
    "conda_store_server.build.pipeline",
    "conda_store_server.periodic.channels",
)


@dataclass
class RunningBuild:
    build_id: int
    process: BaseProcess
    started: float = field(default_factory=time.monotonic)
    stopping_reason: tuple[BuildStatus, str] | None = None
    kill_sent_at: float | None = None
    final_status: str = ""
    done: threading.Event = field(default_factory=threading.Event)


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
        self._not_before: dict[str, float] = {}  # periodic job -> monotonic time it can be due

    # ------------------------------------------------------------------ the Celery task's side
    def run_build(self, build_id: int) -> str:
        """Claim this build and supervise it to its end; the final status, or why it did not run.

        Blocks the calling task thread for the build's duration, so that Celery counts the
        slot as busy and takes no more messages than this worker has free slots.
        """
        with self._slots:
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
        """Start it now, so that the first build does not wait for its imports."""
        from multiprocessing import forkserver

        forkserver.ensure_running()

    # ------------------------------------------------------------------ the monitor thread
    def run(self, should_stop: Callable[[], bool]) -> None:
        recover_stale_builds(self.conda_store)
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
        now = time.monotonic()
        if now - self._last_heartbeat >= HEARTBEAT_INTERVAL_SECONDS:
            self._last_heartbeat = now
            self._heartbeat()
            self._periodic_work()
            self._claim_unannounced()
        self._enforce_limits()
        self._check_requests()

    def shutdown(self) -> None:
        """Stop every running build; a stopped worker must not leave builds BUILDING."""
        with self._slots:
            self._stopping = True
            self._slots.notify_all()
            for running in self.running.values():
                running.stopping_reason = (
                    BuildStatus.FAILED,
                    "the worker running this build was shut down; rebuild the environment",
                )
                _kill(running)
        if self._indexer is not None and self._indexer.is_alive():
            self._indexer.terminate()
            self._indexer.join(KILL_GRACE_SECONDS)
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
            log.error("build %s (process %s) did not stop", running.build_id, running.process.pid)
            running.final_status = "FAILED"
            running.done.set()

    # ------------------------------------------------------------------ claiming and starting
    def _claim(self, build_id: int) -> bool:
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

    def _claim_unannounced(self) -> None:
        """Builds whose message was lost still run: idle slots take them from the database."""
        with self._slots:
            free = self.concurrency - len(self.running)
            if free <= 0 or self._stopping:
                return
            cutoff = utcnow() - datetime.timedelta(seconds=UNANNOUNCED_AFTER_SECONDS)
            with self.conda_store.session() as session:
                candidates = session.scalars(
                    select(Build.id)
                    .where(
                        Build.status == BuildStatus.QUEUED,
                        Build.deleted_on.is_(None),
                        Build.scheduled_on < cutoff,
                    )
                    .order_by(Build.id)
                    .limit(free)
                ).all()
            for build_id in candidates:
                if self._claim(build_id):
                    log.info(
                        "build %s had waited %s s unclaimed: started from the database",
                        build_id,
                        UNANNOUNCED_AFTER_SECONDS,
                    )
                    self._start(build_id)

    def _start(self, build_id: int) -> RunningBuild:
        process = self._context.Process(
            target=_child_main,
            args=(self.recipe, build_id),
            name=f"build-{build_id}",
            daemon=False,
        )
        running = RunningBuild(build_id, process)
        try:
            process.start()
        except Exception as error:  # noqa: BLE001 - e.g. the fork server died: the build must not stay BUILDING
            log.exception("build %s: no build process could be started", build_id)
            running.stopping_reason = (
                BuildStatus.FAILED,
                f"the worker could not start a process for this build ({error}); rebuild it",
            )
            running.final_status = self._settle(running)
            running.done.set()
            return running
        self.running[build_id] = running
        log.info("build %s started in process %s", build_id, process.pid)
        return running

    # ------------------------------------------------------------------ supervision
    def _heartbeat(self) -> None:
        build_ids = list(self.running)
        if not build_ids:
            return
        with self.conda_store.session() as session:
            session.execute(
                update(Build)
                .where(Build.id.in_(build_ids), Build.status == BuildStatus.BUILDING)
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
        """Cancel and delete are rows in the database, so they reach the build on any broker."""
        build_ids = list(self.running)
        if not build_ids:
            return
        with self.conda_store.session() as session:
            rows = session.execute(
                select(Build.id, Build.cancel_requested_on, Build.deleted_on).where(Build.id.in_(build_ids))
            ).all()
        for build_id, cancel_requested_on, deleted_on in rows:
            running = self.running.get(build_id)
            if running and running.stopping_reason is None and (cancel_requested_on or deleted_on):
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

    def _reap(self) -> None:
        for build_id, running in list(self.running.items()):
            if running.process.is_alive():
                continue
            running.process.join()
            running.final_status = self._settle(running)
            with self._slots:
                del self.running[build_id]
                self._slots.notify_all()
            running.done.set()

    def _settle(self, running: RunningBuild) -> str:
        """The child is gone: whatever it did not finish is decided here, and deleted builds purged."""
        exitcode = running.process.exitcode
        status, reason = running.stopping_reason or (
            BuildStatus.FAILED,
            f"the build process ended unexpectedly ({_describe_exit(exitcode)}); see the log",
        )
        with self.conda_store.session() as session:
            changed = session.execute(
                update(Build)
                .where(Build.id == running.build_id, Build.status == BuildStatus.BUILDING)
                .values(status=status, ended_on=utcnow(), status_info=reason)
                .execution_options(synchronize_session=False)
            ).rowcount
            build = get_build(session, running.build_id)
            if changed:
                _append_log(self.conda_store, build, f"build {build.id} marked {status.value}: {reason}")
            if build.deleted_on is not None:
                purge_build_files(self.conda_store, build, kept_artifacts(session, self.conda_store))
            final = build.status.value
        log.info("build %s ended: %s", running.build_id, final)
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
    """Mark FAILED the BUILDING builds whose worker is gone.

    A worker is gone when its heartbeat stopped, or at once when it ran on this machine and its
    process no longer exists.
    """
    cutoff = utcnow() - datetime.timedelta(seconds=stale_after)
    recovered = []
    with conda_store.session() as session:
        building = session.scalars(select(Build).where(Build.status == BuildStatus.BUILDING)).all()
        stale = [
            build
            for build in building
            if (build.heartbeat_on or build.started_on or cutoff) < cutoff or _worker_is_dead(build.worker_id)
        ]
        for build in stale:
            reason = (
                f"the worker running this build ({build.worker_id or 'unknown'}) stopped responding "
                f"(last heartbeat {build.heartbeat_on} UTC); the build was abandoned: rebuild it"
            )
            changed = session.execute(
                update(Build)
                .where(Build.id == build.id, Build.status == BuildStatus.BUILDING)
                .values(status=BuildStatus.FAILED, ended_on=utcnow(), status_info=reason)
                .execution_options(synchronize_session=False)
            ).rowcount
            if changed:
                recovered.append(build.id)
                _append_log(conda_store, get_build(session, build.id), reason)
    return recovered


def _append_log(conda_store: CondaStore, build: Build, line: str) -> None:
    key = artifact_key("logs", build_key(identity_of(build)))
    conda_store.storage.append(key, f"[{utcnow():%H:%M:%S}] {line}\n".encode())


def _kill(running: RunningBuild, sig: int = signal.SIGTERM) -> None:
    """Signal the build's whole process group (solver threads, packers, pip)."""
    pid = running.process.pid
    if pid is None:
        return
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


def _index_child_main(recipe: StoreRecipe) -> None:
    die_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from conda_store_server.periodic.channels import index_channels

    code = 0
    try:
        index_channels(recipe.make())
    except BaseException:
        log.exception("indexing the channels failed")
        code = 1
    finally:
        logging.shutdown()
    os._exit(code)  # as a build child: rattler's runtime threads must not be finalized


def _child_main(recipe: StoreRecipe, build_id: int) -> None:
    os.setsid()
    die_with_parent()  # a build must not outlive its worker (nor the fork server, which dies with it)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from conda_store_server.build.pipeline import run_build

    code = 0
    try:
        run_build(recipe.make(), build_id)
    except BaseException:
        log.exception("build %s crashed", build_id)
        code = 1
    finally:
        logging.shutdown()
    # rattler's runtime threads abort the interpreter at a normal exit; leave without finalizing.
    os._exit(code)
