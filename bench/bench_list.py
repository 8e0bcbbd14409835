"""List latency over 10,000 environments: our server alone, or side by side with the original.

    .venv/bin/python bench/bench_list.py                 # SQLite and PostgreSQL, ~7 min
    .venv/bin/python bench/bench_list.py --databases sqlite --seconds 5 --concurrency 4 --workers 2
    .venv/bin/python bench/bench_list.py --side-by-side [--update-benchmarks]   # ~1 h

For each database: seeds 10,000 environments (each with a specification and a completed current
build) straight into a fresh database, starts a real ``conda-store-server`` subprocess on
loopback (once per ``--workers`` value: CondaStoreServer.workers), and drives it from this
process with an asyncio httpx load generator (an admin token, N concurrent connections per
``--concurrency`` value, random v1 pages of 100 and v2 cursor walks). Reports throughput and
p50/p99 per route against the same server's ``GET /api/v1/`` (the baseline: a request that does
no database work), measured alone and again *while* the list load runs: if list requests
blocked the event loop, that second figure would grow with them. Goal: list p99 < 50 ms.

``--side-by-side`` (issue 15): ours and the original conda-store-server 2025.2.2 (a throwaway
venv, original_server.py) on the same rows (seed_shape.py) in each one's own schema, every list
route loaded by Debian's ``wrk`` at 1, 4, 16 and 64 connections, rounds interleaved (ours,
original, ours, ...); ratios, p99 and the spread of the rounds (list_report.py), optionally into
BENCHMARKS.md. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import functools
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from bench_build import BENCHMARKS_FILE, machine, update_benchmarks
from bench_pip import load_and_conditions
from list_report import MARKER_SCRIPT, SECTION, Cell, Results, ensure_section, goals, row, table
from original_server import (
    DEFAULT_VENV,
    ensure_venv,
    original_token,
    seed_original,
    start_original,
    stop,
    wait_until_serving,
    write_original_config,
)
from seed_shape import (
    ENVIRONMENTS,
    NAMESPACES,
    PACKAGES_BUILD_ID,
    SEQUENCED_TABLES,
    environment_rows,
    package_rows,
    postgresql_sequence_statements,
)
from sqlalchemy import create_engine, insert, text
from throwaway_database import throwaway_database
from wrk_load import run_wrk, wrk_binary

from conda_store_server.db.models import (
    Build,
    BuildStatus,
    CondaChannel,
    CondaPackage,
    CondaPackageBuild,
    Environment,
    Namespace,
    Specification,
    build_conda_package_build,
)
from conda_store_server.db.session import upgrade_database

SECRET = "bench-secret-" + "0123456789abcdef" * 3
SEARCH = "77"  # environment or namespace names containing it: 280 of 10,000 environments


def seed(database_url: str, packages: bool = False) -> None:
    """seed_shape's environments (and, with `packages`, its channel and packages) into our schema."""
    engine = create_engine(database_url)
    upgrade_database(engine)
    rows = environment_rows()
    tables: dict[str, Any] = {
        "namespace": Namespace,
        "specification": Specification,
        "environment": Environment,
        "build": Build,
    }
    if packages:
        rows.update(package_rows())
        tables.update(
            conda_channel=CondaChannel,
            conda_package=CondaPackage,
            conda_package_build=CondaPackageBuild,
            build_conda_package_build=build_conda_package_build,
        )
    for build in rows["build"]:
        build["status"] = BuildStatus[build["status"]]
    with engine.begin() as connection:
        for name, table in tables.items():
            connection.execute(insert(table), rows[name])
        connection.execute(text("UPDATE environment SET current_build_id = id"))
        if engine.dialect.name == "postgresql":
            sequenced = tuple(t for t in SEQUENCED_TABLES if t in tables)
            for statement in postgresql_sequence_statements(sequenced):
                connection.execute(text(statement))
    engine.dispose()
    vacuum(database_url)


def vacuum(database_url: str) -> None:
    """PostgreSQL only: what autovacuum does within a minute of a bulk load (statistics for the
    planner, the visibility map that lets COUNT read the index alone). Measuring before it would
    measure a state a deployment leaves in its first minute."""
    engine = create_engine(database_url)
    if engine.dialect.name == "postgresql":
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
    port = free_port()
    server = start_ours(database_url, directory, port, workers)
    try:
        asyncio.run(measure(f"http://127.0.0.1:{port}", admin_token(), seconds, concurrencies))
    finally:
        stop(server)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_ours(database_url: str, directory: Path, port: int, workers: int = 1) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "config.py"
    config.write_text(
        f"c.CondaStore.database_url = {database_url!r}\n"
        f"c.CondaStore.store_directory = {str(directory / 'store')!r}\n"
        f"c.AuthenticationBackend.secret = {SECRET!r}\n"
        f"c.CondaStoreServer.address = '127.0.0.1'\nc.CondaStoreServer.port = {port}\n"
        f"c.CondaStoreServer.workers = {workers}\n"
        "c.CondaStoreServer.log_level = 'WARNING'\n"
    )
    log = directory / "server.log"
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "conda-store-server"), f"--config={config}"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_until_serving(f"http://127.0.0.1:{port}", server, log)
    return server


def admin_token() -> str:
    from conda_store_server.server.auth import AuthenticationBackend, AuthenticationToken

    return AuthenticationBackend(secret=SECRET).encrypt_token(
        AuthenticationToken("bench", {"*/*": ["admin"]})
    )


# ------------------------------------------------------------------ side by side with the original
# name -> (description, path and query); the original serves the same paths (upstream-api.md §2)
ROUTES: dict[str, tuple[str, str]] = {
    "env-v1": ("GET /api/v1/environment/ page 1", "/api/v1/environment/?page=1&size=100"),
    "env-v1-p50": ("v1 environments, page 50", "/api/v1/environment/?page=50&size=100"),
    "env-v1-search": (f"v1 environments ?search={SEARCH}", f"/api/v1/environment/?search={SEARCH}&size=100"),
    "env-v2": ("GET /api/v2/environment/", "/api/v2/environment/?limit=100"),
    "env-v2-search": (f"v2 environments ?search={SEARCH}", f"/api/v2/environment/?search={SEARCH}&limit=100"),
    "builds": ("GET /api/v1/build/ page 1", "/api/v1/build/?page=1&size=100"),
    "namespaces": ("GET /api/v1/namespace/", "/api/v1/namespace/"),
    "packages": ("GET /api/v1/package/ page 1", "/api/v1/package/?page=1&size=100"),
    "build-packages": (
        f"GET /api/v1/build/{PACKAGES_BUILD_ID}/packages/",
        f"/api/v1/build/{PACKAGES_BUILD_ID}/packages/?page=1&size=100",
    ),
}
DESCRIPTIONS = {name: description for name, (description, _path) in ROUTES.items()}


@dataclass
class Side:
    name: str
    url: str
    token: str
    server: subprocess.Popen[bytes]
    start: Callable[[], subprocess.Popen[bytes]]  # the same server again, on the same port

    @property
    def process_group(self) -> int:
        return self.server.pid

    def responsive(self) -> bool:
        try:
            return httpx.get(self.url + "/api/v1/", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    def restart(self) -> None:
        stop(self.server)
        self.server = self.start()


def group_cpu_seconds(process_group: int) -> float:
    """CPU time of every process in the group (each server runs in a session of its own)."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == process_group:  # fields after the name: state, ppid, pgrp, ...
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_idle(side: Side, window: float = 0.3, busy: float = 0.1, limit: float = 180) -> float:
    """Waits until the server uses less than `busy` of a core: when wrk stops, the requests still
    in flight go on being computed (a slow server at 64 connections has dozens queued), and the
    other side's next run must not share the machine with them. Returns the seconds waited."""
    started = time.monotonic()
    before = group_cpu_seconds(side.process_group)
    while time.monotonic() - started < limit:
        time.sleep(window)
        after = group_cpu_seconds(side.process_group)
        if after - before < busy * window:
            break
        before = after
    return time.monotonic() - started


def check_routes(sides: list[Side], routes: list[str], unique_queries: bool) -> list[str]:
    """Every route answers 200 with a page on each side (a 401 or 404 would be measured as a
    very fast list), with the extra query parameter too when it is used; differing counts are
    returned as notes, since they change the work."""
    notes = []
    for route in routes:
        counts = {}
        path = ROUTES[route][1] + (("&" if "?" in ROUTES[route][1] else "?") + "bench=check") * unique_queries
        for side in sides:
            headers = {"Authorization": f"Bearer {side.token}"}
            response = httpx.get(side.url + path, headers=headers, timeout=120)
            if response.status_code != 200:
                raise RuntimeError(
                    f"{side.name} {ROUTES[route][1]}: {response.status_code} {response.text[:300]}"
                )
            body = response.json()
            if not body.get("data"):
                raise RuntimeError(f"{side.name} {ROUTES[route][1]}: an empty page: {response.text[:300]}")
            counts[side.name] = (body.get("count"), len(body["data"]))
        if len(set(counts.values())) > 1:
            notes.append(f"{route}: (count, items) differ: {counts}")
    return notes


def side_by_side(
    databases: list[str],
    routes: list[str],
    connections: list[int],
    seconds: float,
    rounds: int,
    ours_only: bool,
    venv: Path,
    unique_queries: bool = False,
) -> tuple[Results, list[str]]:
    wrk_binary()  # fails early, saying how to install it
    python = None if ours_only else ensure_venv(venv)
    results: Results = {}
    notes: list[str] = []
    for database in databases:
        directory = Path(tempfile.mkdtemp(prefix="cs-bench-list-sbs-"))
        sides: list[Side] = []
        try:
            (directory / "ours").mkdir()
            (directory / "original").mkdir()
            with contextlib.ExitStack() as stack:
                ours_url = stack.enter_context(throwaway_database(database, directory / "ours"))
                started = time.monotonic()
                seed(ours_url, packages=True)
                port = free_port()
                start = functools.partial(start_ours, ours_url, directory / "ours", port)
                sides.append(Side("ours", f"http://127.0.0.1:{port}", admin_token(), start(), start))
                if python is not None:
                    original_url = stack.enter_context(throwaway_database(database, directory / "original"))
                    seed_original(python, directory / "original", original_url)
                    vacuum(original_url)
                    port = free_port()
                    config = write_original_config(directory / "original", original_url, SECRET, port)
                    start = functools.partial(start_original, python, directory / "original", config, port)
                    token = original_token(python, directory, SECRET)
                    sides.append(Side("original", f"http://127.0.0.1:{port}", token, start(), start))
                print(f"{database}: seeded and started in {time.monotonic() - started:.1f} s", flush=True)
                notes += [f"{database} {note}" for note in check_routes(sides, routes, unique_queries)]
                results[database] = measure_side_by_side(
                    sides, routes, connections, seconds, rounds, unique_queries, notes, database
                )
                for side in sides:
                    stop(side.server)
        finally:
            for side in sides:
                stop(side.server)
            shutil.rmtree(directory, ignore_errors=True)
    return results, notes


def measure_side_by_side(
    sides: list[Side],
    routes: list[str],
    connections: list[int],
    seconds: float,
    rounds: int,
    unique_queries: bool,
    notes: list[str],
    database: str,
) -> dict[str, dict[int, Cell]]:
    """Per route and connection count, rounds alternate between the sides (ours, original, ours,
    ...), so that both meet the same neighbours on the machine, and each run starts once both
    servers are idle; one short untimed run per route and side warms caches, the connection
    pools and the interpreters first. A server that no longer answers GET /api/v1/ after a run
    is restarted (and noted), so that one hang does not void every later figure."""
    measured: dict[str, dict[int, Cell]] = {}
    for route in routes:
        for side in sides:
            url = side.url + ROUTES[route][1]
            run_wrk(url, side.token, min(4, max(connections)), 1, unique_queries=unique_queries)
            wait_idle(side)
        measured[route] = {}
        for count in connections:
            cell = measured[route][count] = Cell()
            for _ in range(rounds):
                for side in sides:
                    cell.load.append(os.getloadavg()[0])
                    result = run_wrk(
                        side.url + ROUTES[route][1], side.token, count, seconds, unique_queries=unique_queries
                    )
                    cell.load.append(os.getloadavg()[0])
                    (cell.ours if side.name == "ours" else cell.original).append(result)
                    cell.drain[side.name].append(wait_idle(side))
                    if not side.responsive():
                        notes.append(
                            f"{database} {side.name}: stopped answering (GET /api/v1/ within 10 s) after"
                            f" {route} at {count} connections; restarted"
                        )
                        print(f"  {notes[-1]}", flush=True)
                        side.restart()
            print("  " + row(DESCRIPTIONS[route], count, cell), flush=True)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--databases", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"]
    )
    parser.add_argument("--seconds", type=float, default=None, help="per run (default 8; side by side 5)")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 2, 4, 8], help="connections; each is a row"
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="CondaStoreServer.workers; each is a run"
    )
    side = parser.add_argument_group("side by side with the original conda-store-server, loaded by wrk")
    side.add_argument("--side-by-side", action="store_true", help="this mode (implied by the options below)")
    side.add_argument("--routes", nargs="+", choices=list(ROUTES), default=None, help="default: all")
    side.add_argument("--connections", type=int, nargs="+", default=None, help="default: 1 4 16 64")
    side.add_argument("--rounds", type=int, default=None, help="runs per side and cell (default 3)")
    side.add_argument("--ours-only", action="store_true", help="no original: our figures alone")
    side.add_argument(
        "--unique-queries",
        action="store_true",
        help="every request gets a query parameter of its own (bench=<n>, ignored by the routes), so that"
        " no server can answer from a cache of pages",
    )
    side.add_argument("--original-venv", type=Path, default=None, help=f"default {DEFAULT_VENV}")
    side.add_argument(
        "--update-benchmarks", action="store_true", help=f'rewrite "{SECTION}" in BENCHMARKS.md'
    )
    side.add_argument("--json", type=Path, default=None, help="raw figures of every run")
    arguments = parser.parse_args()
    chosen = [
        arguments.routes,
        arguments.connections,
        arguments.rounds,
        arguments.original_venv,
        arguments.json,
        arguments.unique_queries or None,
    ]
    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC   cores: {os.cpu_count()}")
    if not (
        arguments.side_by_side
        or arguments.ours_only
        or arguments.update_benchmarks
        or any(c is not None for c in chosen)
    ):
        for database in arguments.databases:
            run(database, arguments.seconds or 8, arguments.concurrency, arguments.workers)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # servers stopped, databases dropped
    load_before, pytest_sessions = load_and_conditions()
    results, notes = side_by_side(
        arguments.databases,
        arguments.routes or list(ROUTES),
        arguments.connections or [1, 4, 16, 64],
        arguments.seconds or 5,
        arguments.rounds or 3,
        arguments.ours_only,
        arguments.original_venv or DEFAULT_VENV,
        arguments.unique_queries,
    )
    load_after, _ = load_and_conditions()
    summary = "\n".join(
        [
            f"{machine()}; load average {load_before} before, {load_after} after; {pytest_sessions}",
            f"{ENVIRONMENTS} environments, {NAMESPACES} namespaces, wrk -t2 (one thread at -c1),"
            f" {arguments.seconds or 5:g} s per run, {arguments.rounds or 3} rounds per side, "
            + (
                "a unique query per request (no page cache can answer)"
                if arguments.unique_queries
                else "the same URL for every request of a run"
            ),
            "",
            table(results, DESCRIPTIONS),
            "",
            goals(results, DESCRIPTIONS),
            *(["", "notes:", *(f"  {note}" for note in notes)] if notes else []),
        ]
    )
    print("\n" + summary)
    if arguments.json:
        arguments.json.write_text(json.dumps(raw(results), indent=2))
    if arguments.update_benchmarks:
        ensure_section(BENCHMARKS_FILE)
        command = "python bench/bench_list.py " + " ".join(sys.argv[1:])
        if update_benchmarks(summary, command.strip(), MARKER_SCRIPT):
            print(f"updated {BENCHMARKS_FILE}")
        else:
            print(f"{BENCHMARKS_FILE}: no {MARKER_SCRIPT} block to update", file=sys.stderr)


def raw(results: Results) -> dict[str, Any]:
    return {
        database: {
            route: {
                str(count): {
                    "ours": [dataclasses.asdict(r) for r in cell.ours],
                    "original": [dataclasses.asdict(r) for r in cell.original],
                    "load": cell.load,
                    "busy_after_run_s": cell.drain,
                }
                for count, cell in cells.items()
            }
            for route, cells in routes.items()
        }
        for database, routes in results.items()
    }


if __name__ == "__main__":
    main()
