"""Supervised builds: claim queued builds, run each in its own child process, never leave one stuck.

The database is the queue and the truth. A worker claims a QUEUED build with a conditional
update (so two workers never take the same build), forks a child into its own process group,
and from then on, every few seconds: proves the build is alive (heartbeat), kills it when it is
canceled or exceeds its wall-clock limit, and settles its status when the child is gone. Any
worker marks FAILED the builds whose heartbeat stopped: their worker died.
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import multiprocessing
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from conda_store_server.build.keys import artifact_key, build_key, identity_of
from conda_store_server.db.models import Build, BuildStatus, utcnow
from conda_store_server.periodic import claim_run
from conda_store_server.service import get_build, kept_artifacts, purge_build_files

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from conda_store_server.app import CondaStore

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_SECONDS = 2.0
STALE_AFTER_SECONDS = 15.0
KILL_GRACE_SECONDS = 3.0
INDEX_CHANNELS_EVERY_SECONDS = 3600.0
PR_SET_PDEATHSIG = 1


@dataclass
class RunningBuild:
    build_id: int
    process: BaseProcess
    started: float = field(default_factory=time.monotonic)
    stopping_reason: tuple[BuildStatus, str] | None = None
    kill_sent_at: float | None = None


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Supervisor:
    def __init__(
        self,
        conda_store: CondaStore,
        concurrency: int,
        poll_interval: float = 0.05,
        worker_id: str | None = None,
    ) -> None:
        self.conda_store = conda_store
        self.concurrency = max(1, concurrency)
        self.poll_interval = poll_interval
        self.worker_id = worker_id or new_worker_id()
        self.running: dict[int, RunningBuild] = {}
        self._last_heartbeat = 0.0
        self._context = multiprocessing.get_context("fork")
        self._indexer: BaseProcess | None = None

    # ------------------------------------------------------------------ the loop
    def run(self, should_stop: Callable[[], bool]) -> None:
        recover_stale_builds(self.conda_store)
        while not should_stop():
            self.step()
            time.sleep(self.poll_interval)
        self.shutdown()

    def step(self) -> None:
        self._reap()
        now = time.monotonic()
        if now - self._last_heartbeat >= HEARTBEAT_INTERVAL_SECONDS:
            self._last_heartbeat = now
            self._heartbeat()
            recover_stale_builds(self.conda_store)
            self._index_channels_when_due()
        self._enforce_limits()
        self._check_requests()
        while len(self.running) < self.concurrency:
            build_id = self._claim()
            if build_id is None:
                break
            self._start(build_id)

    def shutdown(self) -> None:
        """Stop every running build; a stopped worker must not leave builds BUILDING."""
        for running in self.running.values():
            running.stopping_reason = (
                BuildStatus.FAILED,
                "the worker running this build was shut down; rebuild the environment",
            )
            _kill(running)
        if self._indexer is not None and self._indexer.is_alive():
            self._indexer.terminate()
            self._indexer.join(KILL_GRACE_SECONDS)
        deadline = time.monotonic() + KILL_GRACE_SECONDS * 2
        while self.running and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)

    # ------------------------------------------------------------------ claiming and starting
    def _claim(self) -> int | None:
        with self.conda_store.session() as session:
            candidates = session.scalars(
                select(Build.id)
                .where(Build.status == BuildStatus.QUEUED, Build.deleted_on.is_(None))
                .order_by(Build.id)
                .limit(self.concurrency)
            ).all()
            for build_id in candidates:
                now = utcnow()
                claimed = session.execute(
                    update(Build)
                    .where(Build.id == build_id, Build.status == BuildStatus.QUEUED)
                    .values(
                        status=BuildStatus.BUILDING,
                        started_on=now,
                        heartbeat_on=now,
                        worker_id=self.worker_id,
                    )
                    .execution_options(synchronize_session=False)
                ).rowcount
                if claimed:
                    return build_id
        return None

    def _start(self, build_id: int) -> None:
        process = self._context.Process(
            target=_child_main,
            args=(self.conda_store, build_id),
            name=f"build-{build_id}",
            daemon=False,
        )
        process.start()
        self.running[build_id] = RunningBuild(build_id, process)
        log.info("build %s started in process %s", build_id, process.pid)

    # ------------------------------------------------------------------ supervision
    def _heartbeat(self) -> None:
        if not self.running:
            return
        with self.conda_store.session() as session:
            session.execute(
                update(Build)
                .where(Build.id.in_(list(self.running)), Build.status == BuildStatus.BUILDING)
                .values(heartbeat_on=utcnow())
                .execution_options(synchronize_session=False)
            )

    def _enforce_limits(self) -> None:
        limit = self.conda_store.build_timeout
        for running in self.running.values():
            if running.stopping_reason is None and time.monotonic() - running.started > limit:
                running.stopping_reason = (
                    BuildStatus.FAILED,
                    f"the build exceeded CondaStore.build_timeout ({limit} s) and was stopped",
                )
                _kill(running)
            elif running.kill_sent_at and time.monotonic() - running.kill_sent_at > KILL_GRACE_SECONDS:
                _kill(running, signal.SIGKILL)

    def _check_requests(self) -> None:
        if not self.running:
            return
        with self.conda_store.session() as session:
            rows = session.execute(
                select(Build.id, Build.cancel_requested_on, Build.deleted_on).where(
                    Build.id.in_(list(self.running))
                )
            ).all()
        for build_id, cancel_requested_on, deleted_on in rows:
            running = self.running[build_id]
            if running.stopping_reason is None and (cancel_requested_on or deleted_on):
                running.stopping_reason = (BuildStatus.CANCELED, "canceled by request")
                _kill(running)

    def _index_channels_when_due(self) -> None:
        """Once per period for the whole deployment, in a child: this process never runs rattler."""
        if self._indexer is not None:
            if self._indexer.is_alive():
                return
            self._indexer.join()
            self._indexer = None
        if not self.conda_store.conda_indexed_channels:
            return
        with self.conda_store.session() as session:
            due = claim_run(session, "index-channels", INDEX_CHANNELS_EVERY_SECONDS)
        if due:
            self._indexer = self._context.Process(
                target=_index_child_main, args=(self.conda_store,), name="index-channels", daemon=False
            )
            self._indexer.start()

    def _reap(self) -> None:
        for build_id, running in list(self.running.items()):
            if running.process.is_alive():
                continue
            running.process.join()
            del self.running[build_id]
            self._settle(running)

    def _settle(self, running: RunningBuild) -> None:
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
        log.info("build %s ended: %s", running.build_id, status.value if changed else "settled by child")


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
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    if running.kill_sent_at is None:
        running.kill_sent_at = time.monotonic()


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


def _index_child_main(conda_store: CondaStore) -> None:
    die_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    conda_store.dispose()
    from conda_store_server.periodic.channels import index_channels

    code = 0
    try:
        index_channels(conda_store)
    except BaseException:
        log.exception("indexing the channels failed")
        code = 1
    finally:
        logging.shutdown()
    os._exit(code)  # as a build child: rattler's runtime threads must not be finalized


def _child_main(conda_store: CondaStore, build_id: int) -> None:
    os.setsid()
    die_with_parent()  # a build must not outlive its worker
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    conda_store.dispose()
    from conda_store_server.build.pipeline import run_build

    code = 0
    try:
        run_build(conda_store, build_id)
    except BaseException:
        log.exception("build %s crashed", build_id)
        code = 1
    finally:
        logging.shutdown()
    # rattler's runtime threads abort the interpreter at a normal exit; leave without finalizing.
    os._exit(code)
