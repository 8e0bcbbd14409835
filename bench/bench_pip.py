"""Pip builds: a conda + pip specification POSTed → COMPLETED, against bare py-rattler + bare uv.

One run does everything and cleans up after itself::

    .venv/bin/python bench/bench_pip.py                       # 9 rounds, ~25-40 s
    .venv/bin/python bench/bench_pip.py --update-benchmarks   # rewrite the figures block of
                                                              # BENCHMARKS.md

1. Builds the demo conda channel (``conda_store_server.testing.channel``; the conda part is
   python, tinylib, hello-py and curl: 6 packages) and 19 pure-Python wheels
   (``conda_store_server.testing.pypi``) of 11 projects, 9 of which the specification's 3 pip
   requirements pull in through dependencies between them (older versions to skip, an extra,
   a Windows-only marker, a requirement that conda's ``tinylib`` meets while the index offers a
   newer one): ~200 modules, 1.5 MB installed. A thread of this process serves them as a
   PEP 503 index on loopback.
2. Starts a real ``conda-store-server`` and ``conda-store-worker`` (``bench_build.Service``:
   SQLite, LocalStorage, ``build_artifacts = ["LOCKFILE"]``) with
   ``CondaStore.pypi_index_url`` set to that index. The worker wraps the pipeline's functions
   in its build children (``bench_build.install_step_timer``, plus the functions listed in
   ``PIP_STEPS`` and the two uv subprocesses), because the build log gives only "resolved in"
   for the pip step and its timestamps have a resolution of one second.
3. Warms the caches: one baseline (conda package cache ``<store>/.pkgs``, uv cache
   ``<store>/.uv-cache``), then one untimed service build.
4. For each round, interleaved (baseline, service, ...), after ``os.sync()``:
   - baseline: a fresh ``python`` subprocess runs ``bench_build.baseline`` (rattler solve +
     install of the conda part into a fresh prefix, timed inside it) and then, timed around the
     subprocess, bare ``uv pip install --python <prefix>/bin/python --index-url <index>
     --cache-dir <store>/.uv-cache --no-config <requirements>`` (the same uv binary, cache and
     index as the service's);
   - service: POST /api/v1/specification/ (a new environment name each round) and poll
     GET /api/v1/build/{id}/ every 20 ms until COMPLETED (``bench_build.service_build``).
5. Prints medians of the totals and their ratio, and of the pip step alone: the service's
   ``_pip_install`` (interpreter inspection, ``uv pip compile`` to pylock.toml, ``uv pip install
   --no-deps --require-hashes``, both given the package cache's copy of the python, the
   scripts' shebangs made the environment's, reading back the installed metadata) against the
   bare ``uv pip install``; the goal is that the pip step adds no more than 20 % (ratio ≤ 1.2).
   Checks that both sides installed the same pip distributions and that no wheel was
   downloaded in the timed rounds (warm caches).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import types
from pathlib import Path
from typing import Any

import bench_build
from bench_build import (
    BENCHMARKS_FILE,
    machine,
    median,
    prefix_size,
    service_build,
    settle,
    step_figures,
    update_benchmarks,
)

SCRIPT = Path(__file__).resolve()
REPO_ROOT = SCRIPT.parent.parent
GOAL_RATIO = 1.2
BASELINE_TIMEOUT_SECONDS = 120

CONDA_SPECS = ["python", "tinylib", "hello-py", "curl"]
PIP_REQUIREMENTS = ["benchweb>=2", "benchcli", "benchsettings[yaml]"]

# ---------------------------------------------------------------------------------------------
# The wheels
# ---------------------------------------------------------------------------------------------

#: name -> (versions, newest first; Requires-Dist of every version; extras; modules in the newest)
PROJECTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], dict[str, tuple[str, ...]], int]] = {
    "benchweb": (("2.1.0", "1.4.0"), ("benchhttp>=1.2", "benchtemplates>=3", "benchsettings"), {}, 45),
    "benchhttp": (("1.3.0", "1.2.0", "0.9.0"), ("benchurl>=2", "benchcerts"), {}, 30),
    "benchurl": (("2.0.1", "1.9.0"), (), {}, 25),
    "benchcerts": (("2024.1.0",), (), {}, 4),
    "benchtemplates": (("3.1.0", "2.0.0"), ("benchmarkup>=2",), {}, 35),
    "benchmarkup": (("2.1.0", "1.0.0"), (), {}, 8),
    # tinylib>=1.0: met by the conda package tinylib 1.0.0 (the index's 2.0.0 must not shadow it)
    "benchsettings": (("0.8.0",), ("tinylib>=1.0",), {"yaml": ("benchyaml>=6",)}, 12),
    "benchyaml": (("6.0.1", "5.4.0"), (), {}, 20),
    "benchcli": (("8.1.7", "7.0.0"), ('benchcolor ; sys_platform == "win32"',), {}, 18),
    "benchcolor": (("0.4.6",), (), {}, 6),  # Windows only: never installed here
    "tinylib": (("2.0.0",), (), {}, 1),
}


def wheel_specs(seed: int) -> list[Any]:
    from conda_store_server.testing.pypi import WheelSpec

    rng = random.Random(seed)
    specs = []
    for name, (versions, requires, extras, n_modules) in PROJECTS.items():
        for position, version in enumerate(versions):
            count = n_modules if position == 0 else max(1, n_modules // 2)
            modules = {f"{name}/__init__.py": f'__version__ = "{version}"\n'}
            for k in range(1, count):
                directory = f"sub{k % 3}/" if k > 6 else ""
                modules[f"{name}/{directory}m{k:03d}.py"] = bench_build._text(rng, rng.randint(800, 16_000))
            specs.append(WheelSpec(name, version, modules, requires, extras, f"Benchmark project {name}"))
    return specs


def make_inputs(root: Path, seed: int) -> dict[str, Any]:
    """The conda channel and the wheel directory; runs in a subprocess (rattler's indexer)."""
    from conda_store_server.testing.channel import build_demo_channel
    from conda_store_server.testing.pypi import build_wheels

    started = time.monotonic()
    build_demo_channel(root / "channel")
    wheels = build_wheels(root / "wheels", wheel_specs(seed))
    files = list(wheels.glob("*.whl"))
    return {
        "wheels": len(files),
        "wheels_kb": sum(p.stat().st_size for p in files) / 1e3,
        "seconds": time.monotonic() - started,
    }


# ---------------------------------------------------------------------------------------------
# The baseline (its own subprocess: rattler's runtime never runs in this process)
# ---------------------------------------------------------------------------------------------


def uv_command(prefix: str, index_url: str, cache: str, requirements: list[str]) -> list[str]:
    import uv

    python = os.path.join(prefix, "bin", "python")
    arguments = ["pip", "install", "--python", python, "--index-url", index_url, "--cache-dir", cache]
    return [uv.find_uv_bin(), *arguments, "--no-config", *requirements]


def baseline(arguments: dict[str, Any]) -> dict[str, Any]:
    figures = bench_build.baseline(
        arguments["channel"],
        arguments["specs"],
        arguments["cache"],
        arguments["repodata_cache"],
        arguments["prefix"],
    )
    command = uv_command(arguments["prefix"], arguments["index_url"], arguments["uv_cache"], arguments["pip"])
    environment = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    started = time.perf_counter()
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=environment,
        stdin=subprocess.DEVNULL,
        cwd=arguments["prefix"],
    )
    figures["uv"] = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"uv failed:\n{result.stdout}\n{result.stderr}")
    figures["conda"] = figures["total"]
    figures["total"] += figures["uv"]
    figures["uv_output"] = result.stderr
    return figures


def run_baseline(arguments: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "_baseline", json.dumps(arguments)],
        capture_output=True,
        text=True,
        timeout=BASELINE_TIMEOUT_SECONDS,
    )
    if result.returncode != 0:
        raise RuntimeError(f"baseline failed:\n{result.stdout}\n{result.stderr}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["process"] = time.perf_counter() - started
    figures.update(uv_reported(figures.pop("uv_output"), "bare"))
    return figures


def uv_reported(output: str, side: str) -> dict[str, float]:
    """What uv says it took ("Resolved 10 packages in 12ms", "Installed 9 packages in 5ms")."""
    found = {}
    for verb in ("Resolved", "Prepared", "Installed", "Audited"):
        match = re.search(rf"{verb} \d+ packages? in ([0-9.]+)(ms|s)\b", output)
        if match:
            found[f"{side} uv: {verb.lower()}"] = float(match[1]) / (1000 if match[2] == "ms" else 1)
    return found


# ---------------------------------------------------------------------------------------------
# Step timer: bench_build's, with the functions of the pip step added
# ---------------------------------------------------------------------------------------------

PIP_STEPS_ENV = "CONDA_STORE_BENCH_PIP_STEPS_FILE"
PROXY_MODULE = "bench_pip_steps"

#: (module, function, label) wrapped in the build children besides bench_build's STEP_FUNCTIONS:
#: the pip step and its parts, and a few steps the conda-only benchmark does not time
PIP_STEPS = (
    ("conda_store_server.build.pipeline", "_pip_install", "pip step (_pip_install)"),
    ("conda_store_server.build.pip", "inspect_interpreter", "pip.inspect_interpreter"),
    ("conda_store_server.build.pip", "resolve", "pip.resolve"),
    ("conda_store_server.build.pip", "conda_distributions", "pip.conda_distributions"),
    ("conda_store_server.build.pip", "install", "pip.install"),
    ("conda_store_server.build.pip", "with_dependencies", "pip.with_dependencies"),
    ("conda_store_server.build.pip", "check_installed_files", "pip.check_installed_files"),
    ("conda_store_server.build.shared_python", "relocate", "shared_python.relocate"),
    ("conda_store_server.build.pipeline", "_store_lockfile", "_store_lockfile"),
    ("conda_store_server.build.pipeline", "_lock", "_lock (conda solve + checks)"),
    ("conda_store_server.build.install", "install", "install.install (conda)"),
    # called twice: at the start of run_build (the child's first query) and in _complete
    ("conda_store_server.build.pipeline", "get_build", "get_build (both calls)"),
)
UV_LABEL = "uv {} {} (subprocess)"  # pip._run_uv, by uv subcommand


def install_step_timer(out_path: str) -> None:
    """In the worker: bench_build's timer, but the fork server imports this module instead (which
    adds the pip functions to bench_build's list before wrapping)."""
    bench_build.install_step_timer(out_path)
    supervisor = importlib.import_module("conda_store_server.worker.supervisor")
    supervisor.FORK_SERVER_PRELOAD = tuple(
        SCRIPT.stem if name == bench_build.SCRIPT.stem else name for name in supervisor.FORK_SERVER_PRELOAD
    )
    os.environ[PIP_STEPS_ENV] = os.environ.pop(bench_build.STEPS_FILE_ENV)


def install_child_step_timer(out_path: str) -> None:
    """In the fork server. bench_build's wrapper labels a step by its attribute name, so each
    function is called through an attribute of a proxy module named by its label."""
    proxy = types.ModuleType(PROXY_MODULE)
    sys.modules[PROXY_MODULE] = proxy

    def alias(module: Any, name: str, label: str) -> None:
        real = getattr(module, name, None)
        if real is None:
            return  # bench_build reports it as missing
        setattr(proxy, label, real)

        @functools.wraps(real)
        def call(*args: Any, **kwargs: Any) -> Any:
            return getattr(proxy, label)(*args, **kwargs)

        setattr(module, name, call)

    for module_name, name, label in PIP_STEPS:
        alias(importlib.import_module(module_name), name, label)
    pip = importlib.import_module("conda_store_server.build.pip")
    run_uv = getattr(pip, "_run_uv", None)
    labels = []
    if run_uv is not None:
        for command in ("compile", "install"):
            labels.append(UV_LABEL.format("pip", command))
            setattr(proxy, labels[-1], run_uv)

        def by_command(arguments: list[str], *args: Any, **kwargs: Any) -> Any:
            function = getattr(proxy, UV_LABEL.format(*arguments[:2]), run_uv)
            return function(arguments, *args, **kwargs)

        pip._run_uv = by_command
    bench_build.STEP_FUNCTIONS = (
        *bench_build.STEP_FUNCTIONS,
        *((PROXY_MODULE, label) for _, _, label in PIP_STEPS),
        *((PROXY_MODULE, label) for label in labels),
    )
    bench_build.install_child_step_timer(out_path)


class PipService(bench_build.Service):
    """bench_build's server and worker, with the index configured and the pip step timer."""

    def __init__(self, root: Path, channel_uri: str, index_url: str, steps_file: Path) -> None:
        super().__init__(root, channel_uri, steps_file)
        with self.config_file.open("a") as config:
            config.write(f"c.CondaStore.pypi_index_url = {index_url!r}\n")

    def _spawn(self, name: str, arguments: list[str]) -> subprocess.Popen[bytes]:
        if name == "worker":
            config = [argument for argument in arguments if argument.startswith("--config=")]
            arguments = [
                "-c",
                f"import sys; sys.path.insert(0, {str(SCRIPT.parent)!r}); import {SCRIPT.stem}; "
                f"{SCRIPT.stem}.install_step_timer({str(self.steps_file)!r}); "
                "from conda_store_server.worker.app import main; main()",
                *config,
            ]
        return super()._spawn(name, arguments)


# ---------------------------------------------------------------------------------------------
# Measuring and reporting
# ---------------------------------------------------------------------------------------------


def pip_installed(prefix: str) -> dict[str, str]:
    """name-version -> INSTALLER of every distribution in the prefix's site-packages."""
    found = {}
    for dist_info in Path(prefix).glob("lib/python*/site-packages/*.dist-info"):
        installer = dist_info / "INSTALLER"
        found[dist_info.name.removesuffix(".dist-info")] = (
            installer.read_text().strip() if installer.exists() else "conda"
        )
    return found


def service_round(client: Any, name: str, specs: list[str], poll_interval: float) -> dict[str, Any]:
    figures = service_build(client, name, specs, poll_interval)
    logs = client.get(f"/api/v1/build/{figures['build_id']}/logs/").text
    match = re.search(r"resolved in ([0-9.]+) s", logs)
    figures["pip_resolved_log"] = float(match[1]) if match else None
    figures.update(uv_reported(logs, "service"))
    return figures


def report(result: dict[str, Any]) -> str:
    b, s, steps = result["baseline"], result["service"], result["steps"]
    for row in s:
        row.update(steps.get(row["build_id"], {}))
    service_pip = [row.get("pip step (_pip_install)") for row in s]
    if None in service_pip:
        raise RuntimeError("the worker did not time the pip step of every build (see steps_missing)")
    total_ratio = median(s, "total") / median(b, "total")
    pip_ratio = median(s, "pip step (_pip_install)") / median(b, "uv")
    lines = [
        f"date: {result['date']}   machine: {result['machine']}",
        f"load average before the run: {result['load']}; {result['conditions']}",
        f"uv {result['uv']}, py-rattler {result['rattler']}; rounds: {len(s)} "
        "(interleaved, after one warm-up each)",
        f"conda: {' '.join(result['conda_specs'])} -> {result['records']} packages (demo channel)",
        f"pip: {' '.join(result['pip'])} -> {len(result['pip_installed'])} distributions; index on "
        f"loopback, {result['inputs']['wheels']} wheels, {result['inputs']['wheels_kb']:.0f} kB",
        *textwrap.wrap(", ".join(result["pip_installed"]), 96, initial_indent="  ", subsequent_indent="  "),
        f"environment: {result['size']['files']} files, {result['size']['apparent_mb']:.1f} MB; "
        f"wheels downloaded during the timed rounds: {result['downloads']}",
        "",
        f"{'':42}{'median':>10}{'min':>10}{'max':>10}",
    ]

    def row(label: str, rows: list[dict[str, Any]], key: str) -> None:
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            lines.append(
                f"{label:42}{statistics.median(values):>10.3f}{min(values):>10.3f}{max(values):>10.3f}"
            )

    row("baseline rattler + uv (s)", b, "total")
    row("  rattler solve + install", b, "conda")
    row("  bare uv pip install (subprocess)", b, "uv")
    for key in ("resolved", "prepared", "installed", "audited"):
        row(f"    uv says: {key}", b, f"bare uv: {key}")
    row("  (subprocess incl. start-up)", b, "process")
    row("service POST → COMPLETED (s)", s, "total")
    row("  POST → claimed by worker", s, "queued")
    row("  claimed → COMPLETED (child)", s, "running")
    row("    conda solve (build log)", s, "solve")
    row("    conda install (build log)", s, "install")
    row("    pip step (_pip_install)", s, "pip step (_pip_install)")
    row("      inspect_interpreter", s, "pip.inspect_interpreter")
    row("      resolve", s, "pip.resolve")
    row("        conda_distributions", s, "pip.conda_distributions")
    row("        rest (stub wheels, pylock.toml)", s, "resolve overhead")
    row("        uv pip compile (subprocess)", s, UV_LABEL.format("pip", "compile"))
    for key in ("resolved", "prepared"):
        row(f"          uv says: {key}", s, f"service uv: {key}")
    row("      install", s, "pip.install")
    row("        uv pip install (subprocess)", s, UV_LABEL.format("pip", "install"))
    row("          uv says: installed", s, "service uv: installed")
    row("        relocate (shebangs, RECORD)", s, "shared_python.relocate")
    row("      with_dependencies", s, "pip.with_dependencies")
    row("      check_installed_files", s, "pip.check_installed_files")
    row("      (log: resolved in)", s, "pip_resolved_log")
    shown = {label for _, _, label in PIP_STEPS[:8]}
    shown |= {UV_LABEL.format("pip", command) for command in ("compile", "install")}
    others = sorted(
        {name for figures in steps.values() for name in figures} - shown - {"resolve overhead"},
        key=lambda name: -statistics.median([f[name] for f in steps.values() if name in f]),
    )
    lines.append("    step times in the build child (bench_build's timer):")
    for label in others:
        row(f"      {label}", s, label)
    row("  COMPLETED → observed by client", s, "observed_after")
    for missing in result.get("steps_missing") or []:
        lines.append(f"  (not timed, no longer exists: {missing})")
    lines += [
        "",
        f"total: service / baseline (medians): {total_ratio:.2f}",
        f"pip step: service _pip_install / bare uv pip install (medians): {pip_ratio:.2f}   "
        f"goal ≤ {GOAL_RATIO}: {'met' if pip_ratio <= GOAL_RATIO else 'NOT met'}",
    ]
    result["ratio_total"], result["ratio_pip"] = total_ratio, pip_ratio
    return "\n".join(lines)


def derive(service_rows: list[dict[str, Any]], steps: dict[int, dict[str, float]]) -> None:
    """resolve minus uv compile and conda_distributions (stub wheels, pylock.toml); run_build
    minus its timed steps (sessions, logs, from_conda_lock, removing and creating directories)."""
    for figures in steps.values():
        compile_seconds = figures.get(UV_LABEL.format("pip", "compile"))
        if "pip.resolve" in figures and compile_seconds is not None:
            figures["resolve overhead"] = (
                figures["pip.resolve"] - compile_seconds - figures.get("pip.conda_distributions", 0.0)
            )
        if "run_build" in figures:
            top = (
                "_plan",
                "_lock (conda solve + checks)",
                "install.install (conda)",
                "pip step (_pip_install)",
            )
            top += ("_store_lockfile", "apply_ownership", "_record_packages", "_complete", "_make_artifacts")
            figures["run_build minus the steps above"] = figures["run_build"] - sum(
                figures.get(name, 0.0) for name in top
            )


def load_and_conditions() -> tuple[str, str]:
    """The load average and how many pytest sessions run beside the benchmark."""
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    sessions = 0
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        sessions += any(os.path.basename(part) == b"pytest" for part in argv[:2]) or argv[1:3] == [
            b"-m",
            b"pytest",
        ]
    return (
        load,
        f"{sessions} pytest session(s) running beside it" if sessions else "no pytest session beside it",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds per side (default 9)")
    parser.add_argument("--seed", type=int, default=20241111)
    parser.add_argument("--poll-interval", type=float, default=bench_build.POLL_SECONDS)
    parser.add_argument("--update-benchmarks", action="store_true", help="rewrite BENCHMARKS.md's block")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    arguments = parser.parse_args()

    from conda_store_server.testing.pypi import serve_index

    load, conditions = load_and_conditions()
    root = Path(tempfile.mkdtemp(prefix="cs-bench-pip-"))
    service: PipService | None = None
    try:
        print(f"working in {root}", flush=True)
        made = subprocess.run(
            [sys.executable, str(SCRIPT), "_inputs", str(root), str(arguments.seed)],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=REPO_ROOT,
        )
        if made.returncode != 0:
            raise RuntimeError(f"building the channel and wheels failed:\n{made.stdout}\n{made.stderr}")
        inputs = json.loads(made.stdout.strip().splitlines()[-1])
        print(f"channel and {inputs['wheels']} wheels built in {inputs['seconds']:.1f} s", flush=True)
        pip_entry = "pip:\n" + "".join(f"    - {requirement}\n" for requirement in PIP_REQUIREMENTS)
        specs = [*CONDA_SPECS, pip_entry.rstrip("\n")]

        with serve_index(root / "wheels") as index:
            channel_uri = (root / "channel").as_uri()
            service = PipService(root, channel_uri, index.index_url, root / "steps.jsonl")
            service.start()
            store = service.store_directory
            baseline_args = {
                "channel": channel_uri,
                "specs": CONDA_SPECS,
                "cache": str(store / ".pkgs"),
                "repodata_cache": str(store / ".repodata"),
                "uv_cache": str(store / ".uv-cache"),
                "index_url": index.index_url,
                "pip": PIP_REQUIREMENTS,
            }
            (root / "baseline").mkdir()
            warm = run_baseline({**baseline_args, "prefix": str(root / "baseline" / "warm")})
            print(f"warm-up baseline (fills both caches): {warm['total']:.2f} s", flush=True)

            import httpx

            with httpx.Client(base_url=service.url, timeout=30) as client:
                client.post("/login/", json={"username": "bench", "password": "password"}).raise_for_status()
                first = service_round(client, "bench-pip-warmup", specs, arguments.poll_interval)
                print(f"warm-up service build: {first['total']:.2f} s", flush=True)
                downloads = sum(index.downloads.values())
                baseline_rows, service_rows = [], []
                for i in range(arguments.rounds):
                    settle()
                    baseline_rows.append(
                        run_baseline({**baseline_args, "prefix": str(root / "baseline" / f"r{i}")})
                    )
                    settle()
                    service_rows.append(
                        service_round(client, f"bench-pip-{i}", specs, arguments.poll_interval)
                    )
                    print(
                        f"round {i + 1}/{arguments.rounds}: baseline {baseline_rows[-1]['total']:.3f} s "
                        f"(uv {baseline_rows[-1]['uv']:.3f} s), service {service_rows[-1]['total']:.3f} s",
                        flush=True,
                    )
                downloads = sum(index.downloads.values()) - downloads

        # both sides must have installed the same thing, or the comparison means nothing
        bare = pip_installed(str(root / "baseline" / f"r{arguments.rounds - 1}"))
        served = pip_installed(service_rows[-1]["prefix"])
        if bare != served:
            raise RuntimeError(f"the two sides installed different distributions:\n{bare}\n{served}")
        steps, steps_missing = step_figures(root / "steps.jsonl", {row["build_id"] for row in service_rows})
        derive(service_rows, steps)
        result = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "load": load,
            "conditions": conditions,
            "uv": _version("uv"),
            "rattler": _version("py-rattler"),
            "inputs": inputs,
            "conda_specs": CONDA_SPECS,
            "pip": PIP_REQUIREMENTS,
            "records": warm["records"],
            "pip_installed": sorted(name for name, installer in bare.items() if installer == "uv"),
            "conda_installed": sorted(name for name, installer in bare.items() if installer != "uv"),
            "size": prefix_size(service_rows[-1]["prefix"]),
            "downloads": downloads,
            "baseline": baseline_rows,
            "service": service_rows,
            "steps": steps,
            "steps_missing": steps_missing,
        }
        table = report(result)
        print()
        print(table)
        if arguments.update_benchmarks:
            command = ("python bench/bench_pip.py " + " ".join(sys.argv[1:])).strip()
            done = update_benchmarks(table, command, "bench_pip.py")
            print(f"updated {BENCHMARKS_FILE}" if done else f"{BENCHMARKS_FILE} has no bench_pip.py block")
        if arguments.json:
            arguments.json.write_text(json.dumps(result, indent=2, default=str))
    finally:
        if service is not None:
            service.stop()
        if arguments.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _version(distribution: str) -> str:
    from importlib.metadata import version

    try:
        return version(distribution)
    except Exception:  # noqa: BLE001 - informational only
        return "unknown"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_inputs":
        sys.path.insert(0, str(REPO_ROOT))
        print(json.dumps(make_inputs(Path(sys.argv[2]), int(sys.argv[3]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "_baseline":
        print(json.dumps(baseline(json.loads(sys.argv[2]))))
        sys.stdout.flush()
        os._exit(0)  # rattler's runtime threads may abort a normal interpreter exit
    else:
        main()


if __name__ == SCRIPT.stem and os.environ.get(PIP_STEPS_ENV):
    # imported by the worker's fork server (install_step_timer asked it to)
    install_child_step_timer(os.environ[PIP_STEPS_ENV])
