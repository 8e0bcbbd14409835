"""Container images: the image step of a build against conda-pack of the same environment.

One run does everything in this process (no service: the image step is a library call) and
cleans up after itself::

    .venv/bin/python bench/bench_images.py                       # 5 rounds, ~20 s
    .venv/bin/python bench/bench_images.py --update-benchmarks   # rewrite its block of
                                                                 # BENCHMARKS.md

1. Generates an offline channel (``conda_store_server.testing.channel``) of ``--packages``
   packages (default 40) of ~``--size-mb`` MB in all (default 50): per package a mix of
   incompressible ``.so``-like bytes and compressible text, plus one text file with the prefix
   placeholder (so both installs rewrite prefixes). One package has a second version and one
   extra package exists, for the one-package changes.
2. Solves the environment with py-rattler and installs it as a build does
   (``conda_store_server.build.install.install``, warm package cache), everything in one
   directory on one disk; the storage is a ``LocalStorage`` there too.
3. Serves a two-layer base image from a real ``docker-registry`` on loopback
   (``conda_store_server.testing.registry``), as the image step pulls one.
4. For each round, interleaved, after ``os.sync()``:
   - baseline: ``conda_pack_archive(prefix, scratch)``, the build's existing archive artifact;
   - cold image: ``ImageWriter(storage, package_cache, scratch, log).write(ImageRequest(...))``
     into a fresh storage (every layer and the base image's blobs written);
   - warm image: the same request for a new build of the same lockfile into that storage
     (every layer reused).
   Goal: cold image / conda-pack ≤ 1.0 (medians).
5. One-package change: a first image into a fresh storage, then the image of an environment
   whose one package has another version (and, separately, of one with one package added);
   ``Image.bytes_written`` of the second against the first's. Goal ≤ 5 %.
6. Where the time of a cold image goes: the writer's phases are wrapped with timers (the second
   rattler install into scratch, listing the units, the layers, the storage copy, the base
   image pull) and, inside ``write_layer``, the time spent in gzip is told apart from the rest
   (reading the files, tar, sha256). Layers are written on every core, so the per-layer
   figures are thread-seconds and add up to more than the wall time of the layer phase.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import gzip
import inspect
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
REPO_ROOT = SCRIPT.parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(SCRIPT.parent))

from bench_build import BENCHMARKS_FILE, _text, machine, prefix_size, settle, update_benchmarks  # noqa: E402

GOAL_RATIO = 1.0
GOAL_CHANGE_SHARE = 0.05
IMAGE_PREFIX = "/opt/conda"
MAX_LAYERS = 100
CHANGED = "bench-img017"  # the package whose version changes
ADDED = "bench-img-extra"  # the package added
INCOMPRESSIBLE_SHARE = 0.45  # of each package's bytes; the rest is text


# ---------------------------------------------------------------------------------------------
# The channel
# ---------------------------------------------------------------------------------------------


def _package(rng: random.Random, name: str, version: str, size: int) -> Any:
    """One arch-specific package of about `size` bytes, files of 20-200 kB."""
    from conda_store_server.testing.channel import TEXT_PLACEHOLDER, PackageSpec

    module = name.replace("-", "_")
    files: dict[str, bytes | str] = {}
    binary = int(size * INCOMPRESSIBLE_SHARE)
    written = k = 0
    while written < size:
        chunk = min(rng.randint(20_000, 200_000), max(size - written, 1_000))
        if written < binary:
            content: bytes | str = rng.randbytes(chunk)
            files[f"lib/{module}/lib{k:03d}.so"] = content
        else:
            content = _text(rng, chunk)  # words: a little shorter than asked for
            files[f"share/{module}/data{k:03d}.txt"] = content
        written += len(content)
        k += 1
    files[f"bin/{name}"] = f"#!/bin/sh\necho {name} {version}\n"
    config = f"prefix={TEXT_PLACEHOLDER}\nname={name}\nversion={version}\n"
    return PackageSpec(
        name=name,
        version=version,
        build="h0_0",
        files=files,
        text_prefix_files={f"etc/{module}.conf": config},
        executables=frozenset({f"bin/{name}"}),
        summary=f"Image benchmark package {name}",
    )


def channel_packages(seed: int, n_packages: int, size_mb: float) -> tuple[list[Any], list[str], int]:
    """The PackageSpecs, the package names of the environment, and the average package size."""
    rng = random.Random(seed)
    names = [f"bench-img{i:03d}" for i in range(n_packages)]
    if CHANGED not in names:
        raise SystemExit(f"--packages must be at least {int(CHANGED[-3:]) + 1} (package {CHANGED} changes)")
    average = int(size_mb * 1e6 / n_packages)
    shares = {name: rng.uniform(0.4, 1.6) for name in names}
    scale = average * n_packages / sum(shares.values())  # the environment is --size-mb exactly
    sizes = {name: int(share * scale) for name, share in shares.items()}
    sizes[CHANGED] = average  # the changed and the added package are of average size
    specs = [_package(rng, name, "1.0.0", sizes[name]) for name in names]
    specs.append(_package(rng, CHANGED, "1.1.0", average))
    specs.append(_package(rng, ADDED, "1.0.0", average))
    return specs, names, average


def make_channel(channel_dir: Path, seed: int, n_packages: int, size_mb: float) -> dict[str, Any]:
    from conda_package_handling import conda_fmt

    from conda_store_server.testing.channel import build_channel

    conda_fmt.ZSTD_COMPRESS_LEVEL = 3  # only the generation time depends on it (warm cache)
    started = time.monotonic()
    specs, names, average = channel_packages(seed, n_packages, size_mb)
    build_channel(channel_dir, specs)
    archives = list(channel_dir.glob("*/*.conda"))
    return {
        "names": names,
        "average_mb": average / 1e6,
        "channel_packages": len(archives),
        "channel_mb": sum(p.stat().st_size for p in archives) / 1e6,
        "seconds": time.monotonic() - started,
    }


async def solve(channel_dir: Path, specs: list[str], repodata_cache: Path) -> list[Any]:
    import rattler

    return await rattler.solve(
        [str(channel_dir)],
        [rattler.MatchSpec(spec) for spec in specs],
        gateway=rattler.Gateway(cache_dir=repodata_cache),
        platforms=[str(rattler.Subdir.current()), "noarch"],
        virtual_packages=rattler.VirtualPackage.detect(),
    )


# ---------------------------------------------------------------------------------------------
# Timers around the image writer's phases
# ---------------------------------------------------------------------------------------------


class PhaseTimer:
    """Adds up wall seconds per label, from any thread (the layers are written in a pool)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def add(self, label: str, seconds: float) -> None:
        with self._lock:
            self.seconds[label] += seconds
            self.calls[label] += 1

    def reset(self) -> dict[str, float]:
        with self._lock:
            taken = dict(self.seconds)
            self.seconds.clear()
            self.calls.clear()
        return taken

    def wrap(self, owner: Any, name: str, label: str) -> None:
        real = getattr(owner, name)
        if inspect.iscoroutinefunction(real):

            @functools.wraps(real)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await real(*args, **kwargs)
                finally:
                    self.add(label, time.perf_counter() - started)

            setattr(owner, name, timed_async)
            return

        @functools.wraps(real)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - started)

        setattr(owner, name, timed)


PHASES = (
    # (module, attribute owner, function, label); the labels appear in the report in this order
    ("conda_store_server.images.builder", None, "pull_base_image", "base image pull"),
    ("conda_store_server.images.builder", "ImageWriter", "_install", "rattler install into scratch"),
    ("conda_store_server.images.contents", None, "conda_units", "list conda units"),
    ("conda_store_server.images.contents", None, "environment_unit", "conda-meta unit"),
    ("conda_store_server.images.builder", "ImageWriter", "_layers", "layers (wall, on every core)"),
    ("conda_store_server.images.builder", None, "write_layer", "  write_layer (thread-s)"),
    ("conda_store_server.images.builder", "ImageWriter", "_store_file", "  storage copy (thread-s)"),
)
GZIP_LABEL = "    of which gzip (thread-s)"


def install_timers(timer: PhaseTimer) -> None:
    import importlib

    from conda_store_server.images import layers

    for module_name, owner_name, function, label in PHASES:
        module = importlib.import_module(module_name)
        timer.wrap(getattr(module, owner_name) if owner_name else module, function, label)
    # Inside write_layer the tar stream passes through a _HashingWriter into the GzipFile: the
    # time of that inner call is compression (plus writing the compressed bytes, a small part).
    real_write = layers._HashingWriter.write

    def write(self: Any, data: Any) -> int:
        if isinstance(self.target, gzip.GzipFile):
            started = time.perf_counter()
            self.sha256.update(data)
            self.size += len(data)
            gz_started = time.perf_counter()
            self.target.write(data)
            done = time.perf_counter()
            timer.add(GZIP_LABEL, done - gz_started)
            timer.add("    of which sha256 (thread-s)", gz_started - started)
            return len(data)
        return real_write(self, data)

    layers._HashingWriter.write = write  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------
# The measurements
# ---------------------------------------------------------------------------------------------


class Bench:
    """Everything one run shares: the channel, the installed prefixes, the base image."""

    def __init__(self, root: Path, base_reference: str, timer: PhaseTimer) -> None:
        self.root = root
        self.base_reference = base_reference
        self.timer = timer
        self.package_cache = root / "pkgs"
        self.builds = 0
        self.log_lines: list[str] = []

    @contextmanager
    def scratch(self) -> Iterator[Path]:
        path = Path(tempfile.mkdtemp(prefix="scratch-", dir=self.root))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def storage(self) -> Any:
        from conda_store_server.storage import LocalStorage

        path = Path(tempfile.mkdtemp(prefix="storage-", dir=self.root))
        return LocalStorage(storage_path=str(path))

    def install(self, records: list[Any], name: str) -> Path:
        from conda_store_server.build.install import install

        prefix = self.root / "envs" / name
        asyncio.run(install(records, str(prefix), str(self.package_cache)))
        return prefix

    def request(self, records: list[Any], prefix: Path, environment: str) -> Any:
        import rattler

        from conda_store_server.images.builder import ImageRequest

        self.builds += 1
        host = str(rattler.Subdir.current())
        return ImageRequest(
            build_id=self.builds,
            build_key=f"{self.builds:08x}-{environment}",
            namespace="bench",
            environment=environment,
            built_prefix=str(prefix),
            lockfile_sha256=f"{self.builds:064x}",  # a new build each time (labels differ)
            base_reference=self.base_reference,
            image_prefix=IMAGE_PREFIX,
            max_layers=MAX_LAYERS,
            records_by_platform={host: records},
            host_platform=host,
        )

    def image(self, storage: Any, request: Any) -> tuple[Any, float, dict[str, float]]:
        from conda_store_server.images.builder import ImageWriter

        with self.scratch() as scratch:
            self.timer.reset()
            started = time.perf_counter()
            image = ImageWriter(storage, str(self.package_cache), scratch, self.log_lines.append).write(
                request
            )
            seconds = time.perf_counter() - started
            return image, seconds, self.timer.reset()

    def conda_pack(self, prefix: Path) -> tuple[float, int]:
        from conda_store_server.build.artifacts import conda_pack_archive

        with self.scratch() as scratch:
            started = time.perf_counter()
            output = conda_pack_archive(str(prefix), str(scratch))
            seconds = time.perf_counter() - started
            return seconds, os.path.getsize(output)


def layer_bytes(storage: Any, image: Any) -> tuple[int, int, int]:
    """(number of environment layers, their compressed bytes, the base layers' bytes) of a
    single-platform image; the config's history says which layers are the environment's."""
    manifest = json.loads(image.content)
    sizes = [layer["size"] for layer in manifest["layers"]]
    config = json.loads(storage.get(f"docker/blobs/{manifest['config']['digest']}"))
    n_env = sum(1 for entry in config["history"] if entry.get("comment") == "conda-store layer")
    n_base = len(sizes) - n_env
    return n_env, sum(sizes[n_base:]), sum(sizes[:n_base])


def change_case(
    bench: Bench, first: tuple[list[Any], Path], second: tuple[list[Any], Path]
) -> dict[str, Any]:
    storage = bench.storage()
    image_a, seconds_a, _ = bench.image(storage, bench.request(first[0], first[1], "first"))
    image_b, seconds_b, _ = bench.image(storage, bench.request(second[0], second[1], "second"))
    layers_a = json.loads(image_a.content)["layers"]
    layers_b = json.loads(image_b.content)["layers"]
    new_layers = {layer["digest"] for layer in layers_b} - {layer["digest"] for layer in layers_a}
    return {
        "first_bytes": image_a.bytes_written,
        "second_bytes": image_b.bytes_written,
        "share": image_b.bytes_written / image_a.bytes_written,
        "first_seconds": seconds_a,
        "second_seconds": seconds_b,
        "new_layers": len(new_layers),
        "new_layer_bytes": sum(layer["size"] for layer in layers_b if layer["digest"] in new_layers),
    }


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _row(label: str, values: list[float], digits: int = 3) -> str:
    return (
        f"{label:44}{statistics.median(values):>10.{digits}f}"
        f"{min(values):>10.{digits}f}{max(values):>10.{digits}f}"
    )


def report(result: dict[str, Any]) -> str:
    rounds = result["rounds"]
    pack = [r["conda_pack"] for r in rounds]
    cold = [r["cold"] for r in rounds]
    warm = [r["warm"] for r in rounds]
    ratio = statistics.median(cold) / statistics.median(pack)
    warm_ratio = statistics.median(warm) / statistics.median(pack)
    size, channel = result["size"], result["channel"]
    lines = [
        f"date: {result['date']}   machine: {result['machine']}",
        f"py-rattler {result['rattler']}, conda-pack {result['conda_pack_version']}; "
        f"rounds: {len(rounds)} (interleaved: conda-pack, cold image, warm image)",
        f"channel: {channel['channel_packages']} packages, {channel['channel_mb']:.1f} MB of archives "
        f"(generated in {channel['seconds']:.1f} s)",
        f"environment: {result['records']} packages, {size['files']} files, {size['apparent_mb']:.1f} MB "
        f"({INCOMPRESSIBLE_SHARE:.0%} incompressible); image prefix {IMAGE_PREFIX}",
        f"conda-pack archive {result['pack_mb']:.1f} MB; image: {result['layers']} environment layers, "
        f"{result['env_layer_mb']:.1f} MB, on a base of {result['base_layer_mb']:.2f} MB",
        "",
        f"{'':44}{'median':>10}{'min':>10}{'max':>10}",
        _row("conda_pack_archive (s)", pack),
        _row("image, cold storage (s)", cold),
        _row("image, warm storage (s)", warm),
        "  cold image, by phase:",
    ]
    phases = [r["phases"] for r in rounds]
    labels = [label for *_, label in PHASES]
    labels.insert(labels.index("  storage copy (thread-s)"), GZIP_LABEL)
    labels.insert(labels.index("  storage copy (thread-s)"), "    of which sha256 (thread-s)")
    for label in labels:
        values = [p.get(label, 0.0) for p in phases]
        lines.append(_row(f"    {label}", values))
        if label == "    of which sha256 (thread-s)":
            read_tar = [
                p.get("  write_layer (thread-s)", 0.0) - p.get(GZIP_LABEL, 0.0) - p.get(label, 0.0)
                for p in phases
            ]
            lines.append(_row("        rest: read files + tar (thread-s)", read_tar))
    rest = [r["cold"] - sum(r["phases"].get(label, 0.0) for label in TOP_LEVEL) for r in rounds]
    lines.append(_row("    rest (config, manifest, index files)", rest))
    lines.append("")
    for case, label in (("changed", f"{CHANGED} 1.0.0 → 1.1.0"), ("added", f"{ADDED} added")):
        figures = result[case]
        lines += [
            f"one package changed ({label}): second image wrote {figures['second_bytes'] / 1e6:.2f} MB,",
            f"  the first {figures['first_bytes'] / 1e6:.2f} MB (base image blobs included): "
            f"{figures['share']:.1%}   goal ≤ {GOAL_CHANGE_SHARE:.0%}: "
            f"{'met' if figures['share'] <= GOAL_CHANGE_SHARE else 'NOT met'}",
            f"  ({figures['new_layers']} new layers, {figures['new_layer_bytes'] / 1e6:.2f} MB of them; "
            f"written in {figures['second_seconds']:.2f} s)",
        ]
    lines += [
        f"ratio cold image / conda-pack (medians): {ratio:.2f}   goal ≤ {GOAL_RATIO}: "
        f"{'met' if ratio <= GOAL_RATIO else 'NOT met'}",
        f"ratio warm image / conda-pack (medians): {warm_ratio:.2f}",
    ]
    result["ratio"] = ratio
    return "\n".join(lines)


TOP_LEVEL = (
    "base image pull",
    "rattler install into scratch",
    "list conda units",
    "conda-meta unit",
    "layers (wall, on every core)",
)


def _version(distribution: str) -> str:
    from importlib.metadata import version

    try:
        return version(distribution)
    except Exception:  # noqa: BLE001 - informational only
        return "unknown"


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def run(arguments: argparse.Namespace, root: Path) -> dict[str, Any]:
    from conda_store_server.testing.registry import DistributionRegistry, make_base_image

    if shutil.which("docker-registry") is None:
        raise SystemExit(
            "docker-registry is not installed (Debian package docker-registry): it serves the base image"
        )
    channel = make_channel(root / "channel", arguments.seed, arguments.packages, arguments.size_mb)
    print(f"channel: {channel['channel_packages']} packages in {channel['seconds']:.1f} s", flush=True)
    names = channel["names"]
    repodata = root / "repodata"
    records = asyncio.run(solve(root / "channel", [f"{n} ==1.0.0" for n in names], repodata))
    changed_specs = [f"{n} ==1.1.0" if n == CHANGED else f"{n} ==1.0.0" for n in names]
    changed_records = asyncio.run(solve(root / "channel", changed_specs, repodata))
    added_records = asyncio.run(solve(root / "channel", [f"{n} ==1.0.0" for n in [*names, ADDED]], repodata))
    timer = PhaseTimer()
    install_timers(timer)
    with DistributionRegistry() as registry:
        make_base_image(registry.url, "library/base", "1")
        bench = Bench(root, f"{registry.host}/library/base:1", timer)
        prefix = bench.install(records, "main")
        changed_prefix = bench.install(changed_records, "changed")
        added_prefix = bench.install(added_records, "added")
        # warm-up: page cache, imports, the base image's registry connection
        pack_seconds, pack_bytes = bench.conda_pack(prefix)
        warm_storage = bench.storage()
        image, _, _ = bench.image(warm_storage, bench.request(records, prefix, "warmup"))
        n_layers, env_bytes, base_bytes = layer_bytes(warm_storage, image)
        rounds = []
        for number in range(arguments.rounds):
            settle()
            pack, _ = bench.conda_pack(prefix)
            settle()
            _, cold, phases = bench.image(bench.storage(), bench.request(records, prefix, "cold"))
            settle()
            _, warm, _ = bench.image(warm_storage, bench.request(records, prefix, "warm"))
            rounds.append({"conda_pack": pack, "cold": cold, "warm": warm, "phases": phases})
            print(
                f"round {number + 1}: conda-pack {pack:.3f} s, "
                f"cold image {cold:.3f} s, warm image {warm:.3f} s",
                flush=True,
            )
        settle()
        changed = change_case(bench, (records, prefix), (changed_records, changed_prefix))
        settle()
        added = change_case(bench, (records, prefix), (added_records, added_prefix))
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "rattler": _version("py-rattler"),
        "conda_pack_version": _version("conda-pack"),
        "channel": {k: v for k, v in channel.items() if k != "names"},
        "records": len(records),
        "size": prefix_size(str(prefix)),
        "pack_mb": pack_bytes / 1e6,
        "layers": n_layers,
        "env_layer_mb": env_bytes / 1e6,
        "base_layer_mb": base_bytes / 1e6,
        "rounds": rounds,
        "changed": changed,
        "added": added,
        "warmup_pack_seconds": pack_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--packages", type=int, default=40, help="packages in the environment (default 40)")
    parser.add_argument("--size-mb", type=float, default=50.0, help="installed size of the environment")
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument(
        "--update-benchmarks", action="store_true", help="rewrite this script's block of BENCHMARKS.md"
    )
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    arguments = parser.parse_args()
    if arguments.rounds < 1:
        parser.error("--rounds must be at least 1")
    root = Path(tempfile.mkdtemp(prefix="cs-bench-images-"))
    try:
        print(f"working in {root}", flush=True)
        result = run(arguments, root)
        table = report(result)
        print()
        print(table)
        if arguments.update_benchmarks:
            command = ("python bench/bench_images.py " + " ".join(sys.argv[1:])).strip()
            done = update_benchmarks(table, command, "bench_images.py")
            print(f"updated {BENCHMARKS_FILE}" if done else f"{BENCHMARKS_FILE} has no bench_images.py block")
        if arguments.json:
            arguments.json.write_text(json.dumps(result, indent=2, default=str))
    finally:
        if arguments.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # rattler's runtime threads may abort a normal interpreter exit
