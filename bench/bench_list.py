"""List latency: GET /api/v1/environment/ and /api/v2/environment/ over 10,000 environments.

    /work/venv/bin/python bench/bench_list.py                 # SQLite and PostgreSQL, ~7 min
    /work/venv/bin/python bench/bench_list.py --databases sqlite --seconds 5 --concurrency 4 --workers 2

For each database: seeds 10,000 environments (each with a specification and a completed current
build) straight into a fresh database, starts a real ``conda-store-server`` subprocess on
loopback (once per ``--workers`` value: CondaStoreServer.workers), and drives it from this
process with an asyncio httpx load generator (an admin token, N concurrent connections per
``--concurrency`` value, random v1 pages of 100 and v2 cursor walks). Reports throughput and
p50/p99 per route against the same server's ``GET /api/v1/`` (the baseline: a request that does
no database work), measured alone and again *while* the list load runs: if list requests
blocked the event loop, that second figure would grow with them. Goal: list p99 < 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, insert, text
from throwaway_database import throwaway_database

from conda_store_server.db.models import Build, BuildStatus, Environment, Namespace, Specification
from conda_store_server.db.session import upgrade_database

ENVIRONMENTS = 10_000
NAMESPACES = 50
SECRET = "bench-secret-" + "0123456789abcdef" * 3


def seed(database_url: str) -> None:
    engine = create_engine(database_url)
    upgrade_database(engine)
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    with engine.begin() as connection:
        connection.execute(
            insert(Namespace),
            [{"id": n + 1, "name": f"team-{n:02d}", "metadata_": {}} for n in range(NAMESPACES)],
        )
        connection.execute(
            insert(Specification),
            [
                {
                    "id": e + 1,
                    "name": f"env-{e:05d}",
                    "spec": {"name": f"env-{e:05d}", "dependencies": ["python"]},
                    "sha256": uuid.uuid4().hex,
                    "created_on": now,
                }
                for e in range(ENVIRONMENTS)
            ],
        )
        connection.execute(
            insert(Environment),
            [
                {"id": e + 1, "namespace_id": e % NAMESPACES + 1, "name": f"env-{e:05d}"}
                for e in range(ENVIRONMENTS)
            ],
        )
        connection.execute(
            insert(Build),
            [
                {
                    "id": e + 1,
                    "specification_id": e + 1,
                    "environment_id": e + 1,
                    "status": BuildStatus.COMPLETED,
                    "size": 1000,
                    "scheduled_on": now,
                    "started_on": now,
                    "ended_on": now,
                }
                for e in range(ENVIRONMENTS)
            ],
        )
        connection.execute(text("UPDATE environment SET current_build_id = id"))
        if engine.dialect.name == "postgresql":
            for table in ("namespace", "specification", "environment", "build"):
                connection.execute(text(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))"))
    if engine.dialect.name == "postgresql":
        # What autovacuum does within a minute of a bulk load: statistics for the planner and
        # the visibility map that lets COUNT read the index alone. Measuring before it would
        # measure a state a deployment leaves in its first minute.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))
    engine.dispose()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def load(
    client: httpx.AsyncClient, make_path: Any, seconds: float, concurrency: int
) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def one_connection() -> None:
        nonlocal errors
        cursor = None
        while time.monotonic() < deadline:
            path, params = make_path(cursor)
            started = time.perf_counter()
            response = await client.get(path, params=params)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors += 1
            elif path.startswith("/api/v2/"):  # only cursor walks need the body parsed
                body = response.json()
                cursor = None if not body["data"] else body["cursor"]

    await asyncio.gather(*(one_connection() for _ in range(concurrency)))
    return latencies, errors


def v1_page(_cursor: Any) -> tuple[str, dict[str, Any]]:
    return "/api/v1/environment/", {"page": random.randint(1, ENVIRONMENTS // 100), "size": 100}


def v2_walk(cursor: str | None) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {"limit": 100}
    if cursor:
        params["cursor"] = cursor
    return "/api/v2/environment/", params


def status(_cursor: Any) -> tuple[str, dict[str, Any]]:
    return "/api/v1/", {}


def report(name: str, latencies: list[float], errors: int, seconds: float) -> dict[str, float]:
    figures = {
        "requests/s": len(latencies) / seconds,
        "p50 ms": statistics.median(latencies) * 1000,
        "p99 ms": percentile(latencies, 0.99) * 1000,
    }
    print(
        f"  {name:44} {figures['requests/s']:8.1f} req/s   p50 {figures['p50 ms']:6.1f} ms"
        f"   p99 {figures['p99 ms']:6.1f} ms   errors {errors}"
    )
    return figures


async def measure(url: str, token: str, seconds: float, concurrencies: list[int]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=max(concurrencies) + 2)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:
        await load(client, v1_page, 1, max(concurrencies))  # warm-up
        alone = report("GET /api/v1/ (baseline, alone)", *await load(client, status, seconds, 1), seconds)
        for concurrency in concurrencies:
            for name, route in (
                ("GET /api/v1/environment/ (random pages of 100)", v1_page),
                ("GET /api/v2/environment/ (cursor walks, 100)", v2_walk),
            ):
                listing = load(client, route, seconds, concurrency)
                probe = load(client, status, seconds, 1)
                (list_latencies, list_errors), (probe_latencies, probe_errors) = await asyncio.gather(
                    listing, probe
                )
                report(f"{name}, {concurrency} connections", list_latencies, list_errors, seconds)
                during = report("  GET /api/v1/ meanwhile", probe_latencies, probe_errors, seconds)
                print(f"    baseline p99 while listing / alone: {during['p99 ms'] / alone['p99 ms']:.2f}")


def run(database: str, seconds: float, concurrencies: list[int], workers: list[int]) -> None:
    directory = Path(tempfile.mkdtemp(prefix="cs-bench-list-"))
    try:
        with throwaway_database(database, directory) as database_url:
            started = time.monotonic()
            seed(database_url)
            print(
                f"{database}: seeded {ENVIRONMENTS} environments in {NAMESPACES} namespaces "
                f"({time.monotonic() - started:.1f} s)"
            )
            for processes in workers:
                print(f"{database}, CondaStoreServer.workers={processes}:")
                serve_and_measure(database_url, directory, seconds, concurrencies, processes)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def serve_and_measure(
    database_url: str, directory: Path, seconds: float, concurrencies: list[int], workers: int
) -> None:
    port = 20000 + random.randint(0, 9999)
    config = directory / "config.py"
    config.write_text(
        f"c.CondaStore.database_url = {database_url!r}\n"
        f"c.CondaStore.store_directory = {str(directory / 'store')!r}\n"
        f"c.AuthenticationBackend.secret = {SECRET!r}\n"
        f"c.CondaStoreServer.address = '127.0.0.1'\nc.CondaStoreServer.port = {port}\n"
        f"c.CondaStoreServer.workers = {workers}\n"
        "c.CondaStoreServer.log_level = 'WARNING'\n"
    )
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "conda-store-server"), f"--config={config}"],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/api/v1/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.1)
        from conda_store_server.server.auth import AuthenticationBackend, AuthenticationToken

        token = AuthenticationBackend(secret=SECRET).encrypt_token(
            AuthenticationToken("bench", {"*/*": ["admin"]})
        )
        asyncio.run(measure(url, token, seconds, concurrencies))
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--databases", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"]
    )
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 2, 4, 8], help="connections; each is a row"
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="CondaStoreServer.workers; each is a run"
    )
    arguments = parser.parse_args()
    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC   cores: {os.cpu_count()}")
    for database in arguments.databases:
        run(database, arguments.seconds, arguments.concurrency, arguments.workers)


if __name__ == "__main__":
    main()
