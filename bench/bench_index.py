"""Channel indexing: `index_channels` against rattler reading the same repodata, full and incremental.

    /work/venv/bin/python bench/bench_index.py                       # 20,000 records, SQLite
    /work/venv/bin/python bench/bench_index.py --database postgresql # a throwaway PostgreSQL db

1. Writes a synthetic channel (`linux-64/repodata.json` with ``--records`` package builds of
   ~2,000 names, and an empty `noarch`): indexing reads only repodata, so no archive is needed.
2. Each measurement runs in a fresh subprocess (rattler's runtime never runs in this one) and is
   timed inside it:
   - baseline: `rattler.fetch_repo_data` + `load_all_records` of the channel, the least any
     indexer must do, with a cold cache and with a warm one;
   - first index: `index_channels` into an empty database (cold repodata cache);
   - unchanged: `index_channels` again (warm cache, nothing new);
   - incremental: after 1 % more records are appended to the channel.
3. Prints each time and its ratio to the matching baseline (goal for the unchanged and
   incremental runs: a small multiple of merely reading the repodata).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from throwaway_database import throwaway_database

SCRIPT = Path(__file__).resolve()


def write_channel(channel: Path, records: int, seed: int, extra: int = 0) -> None:
    rng = random.Random(seed)
    packages: dict[str, dict[str, Any]] = {}
    names = [f"pkg-{n:04d}" for n in range(max(1, records // 10))]
    for index in range(records + extra):
        name = names[index % len(names)]
        version = f"{index // len(names) + 1}.{rng.randint(0, 9)}.0"
        build = f"h{rng.randrange(16**8):08x}_0"
        filename = f"{name}-{version}-{build}.conda"
        packages[filename] = {
            "name": name,
            "version": version,
            "build": build,
            "build_number": 0,
            "depends": [f"{rng.choice(names)} >=1"] if rng.random() < 0.7 else [],
            "license": "BSD-3-Clause",
            "license_family": "BSD",
            "md5": uuid.UUID(int=rng.getrandbits(128)).hex,
            "sha256": f"{rng.getrandbits(256):064x}",
            "size": rng.randint(10_000, 5_000_000),
            "subdir": "linux-64",
            "timestamp": 1_700_000_000_000 + index,
        }
    for subdir, content in (("linux-64", packages), ("noarch", {})):
        (channel / subdir).mkdir(parents=True, exist_ok=True)
        repodata = {"info": {"subdir": subdir}, "packages": {}, "packages.conda": content}
        (channel / subdir / "repodata.json").write_text(json.dumps(repodata))


def step(kind: str, channel: str, cache: str, database_url: str) -> dict[str, Any]:
    """Runs in a subprocess: one timed measurement."""
    import asyncio
    import logging

    from traitlets.config import Config

    logging.basicConfig(level=logging.WARNING)
    if kind == "baseline":
        import rattler

        async def read() -> int:
            sparse = await rattler.fetch_repo_data(
                channels=[rattler.Channel(channel)],
                platforms=[rattler.Subdir("linux-64"), rattler.Subdir("noarch")],
                cache_path=Path(cache),
                callback=None,
            )
            return sum(len(repodata.load_all_records()) for repodata in sparse)

        started = time.perf_counter()
        count = asyncio.run(read())
        return {"seconds": time.perf_counter() - started, "records": count}

    from sqlalchemy import func, select

    from conda_store_server.app import CondaStore
    from conda_store_server.db.models import CondaPackageBuild
    from conda_store_server.periodic.channels import index_channels

    conda_store = CondaStore(
        config=Config(
            {
                "CondaStore": {
                    "database_url": database_url,
                    "store_directory": str(Path(cache).parent / "store"),
                    "conda_indexed_channels": [channel],
                    "conda_platforms": ["linux-64"],
                    "upgrade_db": True,
                }
            }
        )
    )
    conda_store.ensure_database()
    # the indexer's cache is the store's repodata cache: point it at the step's cache
    type(conda_store).repodata_cache_directory = property(lambda _self: cache)  # type: ignore[assignment]
    started = time.perf_counter()
    index_channels(conda_store)
    seconds = time.perf_counter() - started
    with conda_store.session() as session:
        count = session.scalar(select(func.count()).select_from(CondaPackageBuild))
    return {"seconds": seconds, "records": count}


def measure(kind: str, channel: Path, cache: Path, database_url: str) -> dict[str, Any]:
    output = subprocess.run(
        [sys.executable, str(SCRIPT), "_step", kind, channel.as_uri(), str(cache), database_url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="cs-bench-index-"))
    try:
        with throwaway_database(args.database, root) as database_url:
            channel = root / "channel"
            write_channel(channel, args.records, args.seed)
            extra = max(1, args.records // 100)

            cold_baseline = measure("baseline", channel, root / "cache-baseline", database_url)
            warm_baseline = measure("baseline", channel, root / "cache-baseline", database_url)
            first = measure("index", channel, root / "cache-index", database_url)
            unchanged = measure("index", channel, root / "cache-index", database_url)
            time.sleep(1.1)  # a newer mtime, so the cache sees the channel changed
            write_channel(channel, args.records, args.seed, extra=extra)
            warm_changed = measure("baseline", channel, root / "cache-baseline", database_url)
            incremental = measure("index", channel, root / "cache-index", database_url)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def line(label: str, result: dict[str, Any], baseline: dict[str, Any]) -> str:
        return (
            f"{label:<42} {result['seconds']:7.3f} s   rattler read {baseline['seconds']:6.3f} s   "
            f"ratio {result['seconds'] / baseline['seconds']:5.2f}   rows {result['records']}"
        )

    print(f"channel: {args.records} records ({args.records // 10} names), database: {args.database}")
    print(line("first index (empty database, cold cache)", first, cold_baseline))
    print(line("unchanged channel (warm cache)", unchanged, warm_baseline))
    print(line(f"incremental (+{extra} records)", incremental, warm_changed))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_step":
        print(json.dumps(step(*sys.argv[2:6])))
        sys.stdout.flush()
        import os

        os._exit(0)  # rattler's runtime threads may abort a normal interpreter exit
    else:
        main()
