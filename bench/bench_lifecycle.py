"""Storage lifecycle at scale: package-cache collection over 10,000 cached packages and 1,000
prefixes, and GET /api/v1/usage/ over 10,000 environments.

    .venv/bin/python bench/bench_lifecycle.py                       # SQLite, ~1-2 min
    .venv/bin/python bench/bench_lifecycle.py --databases sqlite postgresql --update-benchmarks

Collection: a fresh store whose database holds 1,000 completed builds (100 environments in each
of 10 namespaces); their prefixes are made on disk at the paths the service computes, each with
the `conda-meta` records of 20 packages and one hard link per package file into the package
cache, as rattler leaves them. The cache holds 10,000 entries of 3 files each; the prefixes use
about 7,000 of them, the rest are unused. `collect_package_caches` (the periodic job itself:
prefixes listed from the database, the lease, removal, image blobs, counters) runs once without
a bound (every unused entry goes) and, on a fresh copy, once with `package_cache_max_bytes` set
to keep half of the unused bytes (every entry measured, least recently used go first).
Reported: wall time, how long the exclusive lease was held (builds could not start linking),
Python's peak allocation (tracemalloc) and the process's peak RSS.

Usage: the 10,000 environments of bench_list.py's seed, each build with 3 storage groups (its
private bytes and two of 500 shared package keys), then GET /api/v1/usage/ as an admin through
the app in process (no network), p50/p99 of 30 requests after one warm-up.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

from bench_build import update_benchmarks
from bench_list import seed as seed_environments
from sqlalchemy import create_engine, insert, text
from throwaway_database import throwaway_database

from conda_store_server.app import CondaStore
from conda_store_server.db.models import (
    Build,
    BuildStatus,
    BuildStorageGroup,
    Environment,
    Namespace,
    Specification,
)
from conda_store_server.db.session import upgrade_database
from conda_store_server.periodic.package_cache import collect_package_caches, live_prefixes

CACHED_PACKAGES = 10_000
PREFIXES = 1_000
NAMESPACES = 10
PACKAGES_PER_PREFIX = 20
FILES_PER_PACKAGE = 3
USED_POOL = 7_000
SHARED_KEYS = 500


def seed_builds(database_url: str) -> None:
    engine = create_engine(database_url)
    upgrade_database(engine)
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    with engine.begin() as connection:
        connection.execute(
            insert(Namespace), [{"id": n + 1, "name": f"ns-{n}", "metadata_": {}} for n in range(NAMESPACES)]
        )
        connection.execute(
            insert(Specification),
            [
                {"id": b + 1, "name": f"env-{b}", "spec": {"name": f"env-{b}"}, "sha256": uuid.uuid4().hex}
                for b in range(PREFIXES)
            ],
        )
        connection.execute(
            insert(Environment),
            [{"id": b + 1, "namespace_id": b % NAMESPACES + 1, "name": f"env-{b}"} for b in range(PREFIXES)],
        )
        connection.execute(
            insert(Build),
            [
                {
                    "id": b + 1,
                    "specification_id": b + 1,
                    "environment_id": b + 1,
                    "status": BuildStatus.COMPLETED,
                    "scheduled_on": now,
                    "started_on": now,
                    "ended_on": now,
                    "build_key_version": 2,
                }
                for b in range(PREFIXES)
            ],
        )
        connection.execute(text("UPDATE environment SET current_build_id = id"))
    engine.dispose()


def make_store(root: Path, database_url: str) -> CondaStore:
    from traitlets.config import Config

    return CondaStore(
        config=Config(
            {
                "CondaStore": {"database_url": database_url, "store_directory": str(root / "store")},
                "LocalStorage": {"storage_path": str(root / "storage")},
            }
        )
    )


def make_cache_and_prefixes(conda_store: CondaStore, seed: int) -> tuple[int, set[str]]:
    import random

    chooser = random.Random(seed)
    cache = Path(conda_store.package_cache_directory)
    names = [f"pkg{index:05d}-1.0-0" for index in range(CACHED_PACKAGES)]
    now = time.time()
    for position, name in enumerate(names):
        (cache / name / "info").mkdir(parents=True)
        (cache / name / "info" / "index.json").write_text(json.dumps({"name": name}))
        for number in range(FILES_PER_PACKAGE - 1):
            (cache / name / f"file{number}.txt").write_bytes(b"x" * (512 + position % 1024))
        (cache / f"{name}.lock").write_bytes(b"")
        used_at = now - (CACHED_PACKAGES - position)
        os.utime(cache / name, (used_at, used_at))
    used: set[str] = set()
    prefixes = live_prefixes(conda_store)
    for prefix in prefixes:
        meta = Path(prefix, "conda-meta")
        meta.mkdir(parents=True)
        for name in chooser.sample(names[:USED_POOL], PACKAGES_PER_PREFIX):
            used.add(name)
            files = [f"share/{name}/file{n}.txt" for n in range(FILES_PER_PACKAGE - 1)]
            (meta / f"{name}.json").write_text(
                json.dumps({"name": name, "files": files, "extracted_package_dir": str(cache / name)})
            )
            Path(prefix, "share", name).mkdir(parents=True)
            for number in range(FILES_PER_PACKAGE - 1):
                os.link(cache / name / f"file{number}.txt", Path(prefix, "share", name, f"file{number}.txt"))
    return len(prefixes), used


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_collection(database: str, bound: bool, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-gc-") as directory:
        root = Path(directory)
        with throwaway_database(database, root) as database_url:
            seed_builds(database_url)
            conda_store = make_store(root, database_url)
            prefixes, used = make_cache_and_prefixes(conda_store, seed)
            cache = Path(conda_store.package_cache_directory)
            cache_bytes = tree_bytes(cache)
            unused_bytes = sum(tree_bytes(entry) for entry in cache.iterdir() if entry.name not in used)
            if bound:  # keep half of the unused packages' bytes as a warm cache
                conda_store.package_cache_max_bytes = cache_bytes - unused_bytes // 2
            os.sync()
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            tracemalloc.start()
            started = time.perf_counter()
            report = collect_package_caches(conda_store)
            elapsed = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            left = sum(1 for p in Path(conda_store.package_cache_directory).iterdir() if p.is_dir())
            conda_store.engine.dispose()
    return {
        "database": database,
        "bound": bound,
        "prefixes": prefixes,
        "used": len(used),
        "seconds": elapsed,
        "lease_seconds": report.lease_seconds,
        "removed": report.freed["conda"].packages,
        "left": left,
        "peak_mib": peak / 2**20,
        "rss_mib": rss_after / 1024,
        "rss_growth_mib": (rss_after - rss_before) / 1024,
    }


def seed_storage_groups(database_url: str) -> None:
    engine = create_engine(database_url)
    rows = []
    for build in range(1, 10_001):
        rows.append({"build_id": build, "key": f"private:{build}", "bytes": 4096})
        rows.append({"build_id": build, "key": f"shared-{build % SHARED_KEYS:03d}", "bytes": 1_000_000})
        rows.append({"build_id": build, "key": f"shared-{(build * 7) % SHARED_KEYS:03d}-b", "bytes": 500_000})
    with engine.begin() as connection:
        connection.execute(insert(BuildStorageGroup), rows)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))
    engine.dispose()


def bench_usage(database: str, requests: int) -> dict[str, Any]:
    from fastapi.testclient import TestClient
    from traitlets.config import Config

    from conda_store_server.server.app import CondaStoreServer
    from conda_store_server.server.auth import AuthenticationToken

    secret = "bench-secret-" + "0123456789abcdef" * 3
    with tempfile.TemporaryDirectory(prefix="bench-usage-") as directory:
        root = Path(directory)
        with throwaway_database(database, root) as database_url:
            seed_environments(database_url)
            seed_storage_groups(database_url)
            settings = {
                "CondaStore": {"database_url": database_url, "store_directory": str(root / "store")},
                "LocalStorage": {"storage_path": str(root / "storage")},
                "AuthenticationBackend": {"secret": secret},
            }
            conda_store = CondaStore(config=Config(settings))
            conda_store.ensure_database()
            server = CondaStoreServer(config=Config({**settings, "CondaStoreServer": {}}))
            latencies = []
            with TestClient(server.create_app(conda_store)) as client:
                backend = client.app.state.authentication.authentication
                token = backend.encrypt_token(AuthenticationToken("root", {"*/*": ["admin"]}))
                headers = {"Authorization": f"Bearer {token}"}
                first = client.get("/api/v1/usage/", headers=headers)
                assert first.status_code == 200, first.text
                namespaces = len(first.json()["data"])
                for _ in range(requests):
                    started = time.perf_counter()
                    response = client.get("/api/v1/usage/", headers=headers)
                    latencies.append(time.perf_counter() - started)
                    assert response.status_code == 200
            conda_store.engine.dispose()
    ordered = sorted(latencies)
    return {
        "database": database,
        "namespaces": namespaces,
        "has_bytes": "bytes_on_disk" in first.json()["data"][next(iter(first.json()["data"]))],
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000,
    }


def table(collections: list[dict[str, Any]], usages: list[dict[str, Any]]) -> str:
    lines = [
        f"package-cache collection: {CACHED_PACKAGES} cached packages, {PREFIXES} prefixes "
        f"({PACKAGES_PER_PREFIX} packages each)",
        f"{'database':<11}{'bound':<7}{'used':>6}{'removed':>9}{'left':>7}{'wall s':>9}{'lease s':>9}"
        f"{'py peak MiB':>13}{'RSS MiB':>9}",
    ]
    for c in collections:
        lines.append(
            f"{c['database']:<11}{'yes' if c['bound'] else 'none':<7}{c['used']:>6}{c['removed']:>9}"
            f"{c['left']:>7}{c['seconds']:>9.2f}{c['lease_seconds']:>9.2f}{c['peak_mib']:>13.1f}"
            f"{c['rss_mib']:>9.0f}"
        )
    lines.append("")
    lines.append("GET /api/v1/usage/ over 10,000 environments (50 namespaces, 3 storage groups per build)")
    lines.append(f"{'database':<11}{'p50 ms':>9}{'p99 ms':>9}  bytes_on_disk")
    for u in usages:
        lines.append(f"{u['database']:<11}{u['p50_ms']:>9.1f}{u['p99_ms']:>9.1f}  {u['has_bytes']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--databases", nargs="+", default=["sqlite"], choices=["sqlite", "postgresql"])
    parser.add_argument("--requests", type=int, default=30, help="timed usage requests (default 30)")
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    parser.add_argument(
        "--update-benchmarks", action="store_true", help="rewrite this block of BENCHMARKS.md"
    )
    arguments = parser.parse_args()
    collections = [
        bench_collection(d, bound, arguments.seed) for d in arguments.databases for bound in (False, True)
    ]
    usages = [bench_usage(d, arguments.requests) for d in arguments.databases]
    result = table(collections, usages)
    print(result)
    if arguments.json:
        arguments.json.write_text(json.dumps({"collections": collections, "usage": usages}, indent=2))
    if arguments.update_benchmarks:
        command = "python bench/bench_lifecycle.py " + " ".join(sys.argv[1:])
        if not update_benchmarks(result, command.strip(), "bench_lifecycle.py"):
            print("BENCHMARKS.md has no bench_lifecycle.py block; add its markers first", file=sys.stderr)


if __name__ == "__main__":
    main()
