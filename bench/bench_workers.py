"""Scale-out throughput and worker memory: builds through Celery (Redis) on PostgreSQL.

    /work/venv/bin/python bench/bench_workers.py            # 20 builds on 1 then 2 workers, RSS over 100

1. Builds the offline demo channel, creates a throwaway PostgreSQL database and a store in a
   temporary directory (LocalStorage, artifacts LOCKFILE + YAML + CONDA_PACK), Redis as broker
   and result backend.
2. Throughput: submits 20 environments at once (20 builds in one transaction, announced to the
   workers through Celery after commit) and times until all are COMPLETED, first with one
   worker, then with two (each `--concurrency=1`). Prints both wall times and the ratio
   (baseline = one worker; 2 workers on this 2-core machine can at best halve it).
3. Memory: one worker builds 100 environments one batch after another; its resident set size
   (VmRSS of the worker process, builds run in forked children) after build 1 and after build
   100, and the growth (goal ≤ 10 %).

Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379. Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from throwaway_database import throwaway_database
from traitlets.config import Config

REDIS_URL = "redis://127.0.0.1:6379/12"
GOAL_RSS_GROWTH = 0.10
SPEC = "name: {name}\ndependencies:\n  - hello-py\n"


def worker_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_worker(config_file: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "conda_store_server.worker", f"--config={config_file}", "--concurrency=1"],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=30)


def submit(conda_store: Any, names: list[str]) -> list[int]:
    from conda_store_server.service import register_environment
    from conda_store_server.specification import parse_specification

    with conda_store.session() as session:
        builds = [
            register_environment(session, conda_store, "bench", parse_specification(SPEC.format(name=name)))
            for name in names
        ]
        return [build.id for build in builds if build is not None]


def wait_completed(conda_store: Any, build_ids: list[int], timeout: float = 600) -> float:
    from conda_store_server.db.models import Build, BuildStatus

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with conda_store.session() as session:
            rows = dict(session.execute(select(Build.id, Build.status).where(Build.id.in_(build_ids))).all())
        unfinished = [i for i, status in rows.items() if status in (BuildStatus.QUEUED, BuildStatus.BUILDING)]
        if not unfinished:
            bad = {i: s.value for i, s in rows.items() if s != BuildStatus.COMPLETED}
            if bad:
                raise RuntimeError(f"builds did not complete: {bad}")
            return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"builds still running after {timeout} s")


def throughput(conda_store: Any, config_file: Path, workdir: Path, n_workers: int, n_builds: int) -> float:
    workers = [
        start_worker(config_file, workdir / f"throughput-{n_workers}-{k}.log") for k in range(n_workers)
    ]
    try:
        time.sleep(3)  # workers connected before the clock starts
        names = [f"t{n_workers}-{uuid.uuid4().hex[:6]}-{k}" for k in range(n_builds)]
        started = time.monotonic()
        wait_completed(conda_store, submit(conda_store, names))
        return time.monotonic() - started
    finally:
        stop(workers)


def memory(conda_store: Any, config_file: Path, workdir: Path, n_builds: int, batch: int) -> tuple[int, int]:
    worker = start_worker(config_file, workdir / "memory.log")
    try:
        time.sleep(3)
        wait_completed(conda_store, submit(conda_store, ["m-first"]))
        after_first = worker_rss_kib(worker.pid)
        done = 1
        while done < n_builds:
            count = min(batch, n_builds - done)
            wait_completed(conda_store, submit(conda_store, [f"m-{done + k}" for k in range(count)]))
            done += count
        return after_first, worker_rss_kib(worker.pid)
    finally:
        stop([worker])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--builds", type=int, default=20)
    parser.add_argument("--memory-builds", type=int, default=100)
    args = parser.parse_args()

    from conda_store_server.app import CondaStore
    from conda_store_server.testing.channel import build_demo_channel

    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        workdir = Path(tmp)
        with throwaway_database("postgresql", workdir) as database_url:
            channel = build_demo_channel(workdir / "channel")
            settings: dict[str, dict[str, Any]] = {
                "CondaStore": {
                    "database_url": database_url,
                    "redis_url": REDIS_URL,
                    "store_directory": str(workdir / "store"),
                    "conda_default_channels": [channel.as_uri()],
                    "conda_indexed_channels": [],
                    "build_artifacts": ["LOCKFILE", "YAML", "CONDA_PACK"],
                    "storage_threshold": 0,
                },
                "LocalStorage": {"storage_path": str(workdir / "storage")},
            }
            config_file = workdir / "conda_store_config.py"
            config_file.write_text(
                "".join(f"c.{k}.{t} = {v!r}\n" for k, traits in settings.items() for t, v in traits.items())
            )
            conda_store = CondaStore(config=Config(settings))
            conda_store.ensure_database()
            conda_store.celery_app.control.purge()
            # warm the package cache: the throughput runs then compare like with like
            throughput(conda_store, config_file, workdir, 1, 1)

            one = throughput(conda_store, config_file, workdir, 1, args.builds)
            two = throughput(conda_store, config_file, workdir, 2, args.builds)
            first, last = memory(conda_store, config_file, workdir, args.memory_builds, batch=10)
            from conda_store_server.db.models import Build

            with conda_store.session() as session:
                total = session.scalar(select(func.count()).select_from(Build))
            conda_store.engine.dispose()

    growth = (last - first) / first
    print(f"{args.builds} builds, 1 worker : {one:6.1f} s  ({args.builds / one:.2f} builds/s)")
    print(f"{args.builds} builds, 2 workers: {two:6.1f} s  ({args.builds / two:.2f} builds/s)")
    print(f"ratio 2 workers / 1 worker (wall time): {two / one:.2f}  (ideal on 2 cores: 0.50)")
    print(
        f"worker RSS after build 1: {first / 1024:.1f} MiB, after build {args.memory_builds}: "
        f"{last / 1024:.1f} MiB, growth {growth:+.1%} (goal <= {GOAL_RSS_GROWTH:.0%})"
    )
    print(f"builds in the database: {total}, all COMPLETED")


if __name__ == "__main__":
    main()
