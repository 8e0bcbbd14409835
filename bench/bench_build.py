"""Build latency: POST a specification → COMPLETED, against a bare py-rattler solve + install.

One run does everything and cleans up after itself::

    /work/venv/bin/python bench/bench_build.py            # 7 rounds, writes nothing outside /tmp
    /work/venv/bin/python bench/bench_build.py --steps    # + time each pipeline step in the worker
    /work/venv/bin/python bench/bench_build.py --steps --update-benchmarks   # rewrite the figures
                                                                             # block of BENCHMARKS.md

1. Generates an offline channel (``conda_store_server.testing.channel``): the demo ``python``
   wrapper plus ~120 packages in dependency chains (compiled-looking binary payloads,
   text/data files, noarch:python modules with entry points, older versions the solver must
   skip). The specification asks for a handful of top-level packages whose closure is ~100
   packages and tens of MB.
2. Starts a real ``conda-store-server`` (uvicorn on 127.0.0.1, SQLite, LocalStorage,
   ``build_artifacts = ["LOCKFILE"]``) and a real ``conda-store-worker`` as subprocesses.
3. Warms the package cache the store uses (``<store_directory>/.pkgs``) with one bare rattler
   install, then runs one untimed warm-up build through the service.
4. For each round, interleaved so that drift affects both sides alike:
   - baseline: a fresh ``python`` subprocess that times ``rattler.solve`` (new Gateway with the
     store's repodata cache dir, same channel, same specs, platforms [host, noarch], detected
     virtual packages) + ``rattler.install`` into a fresh prefix with the same warm cache.
     The time is measured inside the subprocess, i.e. without interpreter start-up and imports;
   - service: POST /api/v1/specification/ (a new environment name each round, so each is a new
     build) and poll GET /api/v1/build/{id}/ every 20 ms until COMPLETED.
5. Prints medians, the ratio (goal ≤ 1.2), the environment size and a breakdown of the service
   time from the build row timestamps and the build log; with ``--steps`` the worker is started
   with ``install_step_timer`` and every pipeline step of the build children is timed too.

Before each measurement the page cache is synced (``os.sync``) so that one side does not pay
for the other's write-back. Other work on the machine (a test suite running beside it) shows up
directly in the figures: run it on an otherwise idle machine.

Every measurement that touches rattler runs in its own subprocess: rattler's async runtime is
never used in this process, which only forks/execs subprocesses.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GOAL_RATIO = 1.2
GOAL_OVERHEAD_SECONDS = 0.100  # POST → COMPLETED minus bare solve + install
POLL_SECONDS = 0.02
BUILD_TIMEOUT_SECONDS = 120
SERVER_START_TIMEOUT_SECONDS = 60
SCRIPT = Path(__file__).resolve()
REPO_ROOT = SCRIPT.parent.parent

# ---------------------------------------------------------------------------------------------
# The channel
# ---------------------------------------------------------------------------------------------

N_CLOSURE = 100  # default packages in the closure of the top-level specs (python included)
N_TOP = 5  # top-level packages the specification asks for
N_OLD_VERSIONS = 15  # older versions the solver has to skip
N_UNRELATED = 5  # packages nobody depends on
NOARCH_PYTHON_SHARE = 0.35
WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
    "sigma tau upsilon phi chi psi omega array buffer cache driver engine frame graph handle "
    "index kernel layer matrix node object parser query record stream table vector widget "
    "return import from def class self if else elif for while with try except raise yield "
    "lambda None True False int float str bytes list dict set tuple len range print"
).split()


def _text(rng: random.Random, size: int) -> str:
    words = rng.choices(WORDS, k=max(1, size // 6))
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    return "\n".join(lines)[:size] + "\n"


def _payload_sizes(rng: random.Random, n_files: int, total: int) -> list[int]:
    weights = [rng.paretovariate(1.3) for _ in range(n_files)]
    scale = total / sum(weights)
    return [max(200, int(w * scale)) for w in weights]


def channel_packages(seed: int, target_mb: float, closure: int = N_CLOSURE) -> tuple[list[Any], list[str]]:
    """The PackageSpecs of the benchmark channel and the top-level specs of the environment."""
    from conda_store_server.testing.channel import PackageSpec, python_package

    rng = random.Random(seed)
    python = python_package()
    names = [
        f"bench-{kind}{i:03d}"
        for i, kind in enumerate(rng.choice(("lib", "tool", "data")) for _ in range(closure - 1))
    ]
    noarch_python = {name for name in names[10:] if rng.random() < NOARCH_PYTHON_SHARE}
    # dependency DAG over names (lower index = lower in the stack); every non-top package has a
    # dependent, so the closure of the top N_TOP packages is all of them
    depends: dict[str, set[str]] = {name: set() for name in names}
    for i, name in enumerate(names):
        if i > 0:
            for j in rng.sample(range(i), k=min(i, rng.randint(1, 3))):
                depends[name].add(names[j])
    # every package below the top ones gets a dependent, so all are in the closure
    for i, name in enumerate(names[:-N_TOP]):
        if not any(name in depends[other] for other in names[i + 1 :]):
            depends[names[rng.randint(i + 1, len(names) - 1)]].add(name)

    versions = {name: f"{rng.randint(1, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}" for name in names}
    budget = target_mb * 1e6
    # long-tailed package sizes, like a real environment (a few big ones, many small ones)
    shares = [rng.paretovariate(1.1) for _ in names]
    package_bytes = {name: int(budget * s / sum(shares)) for name, s in zip(names, shares, strict=True)}

    def make(name: str, version: str, build_number: int = 0) -> Any:
        size = max(20_000, package_bytes[name])
        n_files = max(3, min(600, int(size / 12_000)))
        sizes = _payload_sizes(rng, n_files, size)
        deps = tuple(sorted(f"{d} >={versions[d].split('.')[0]}" for d in depends[name]))
        module = name.replace("-", "_")
        if name in noarch_python:
            files = {
                f"{module}/{f'sub{k % 4}/' if k > 3 else ''}m{k:03d}.py": _text(rng, s)
                for k, s in enumerate(sizes)
            }
            files[f"{module}/__init__.py"] = (
                f'__version__ = "{version}"\n\ndef main():\n    print("{name}")\n'
            )
            return PackageSpec(
                name=name,
                version=version,
                build=f"py_{build_number}",
                build_number=build_number,
                noarch="python",
                depends=("python >=3.8", *deps),
                python_site_packages=files,
                entry_points=(f"{name} = {module}:main",) if rng.random() < 0.3 else (),
                summary=f"Benchmark Python package {name}",
            )
        files: dict[str, bytes | str] = {}
        for k, s in enumerate(sizes):
            if k % 3 == 0:
                files[f"lib/{module}/lib{k:03d}.so"] = rng.randbytes(s)
            elif k % 3 == 1:
                files[f"share/{module}/data{k:03d}.txt"] = _text(rng, s)
            else:
                files[f"include/{module}/h{k:03d}.h"] = _text(rng, s)
        files[f"bin/{name}"] = f"#!/bin/sh\necho {name} {version}\n"
        return PackageSpec(
            name=name,
            version=version,
            build=f"h{rng.randrange(16**7):07x}_{build_number}",
            build_number=build_number,
            depends=deps,
            files=files,
            executables=frozenset({f"bin/{name}"}),
            summary=f"Benchmark library {name}",
        )

    specs = [python] + [make(name, versions[name]) for name in names]
    for name in rng.sample(names, N_OLD_VERSIONS):
        major, minor, patch = versions[name].split(".")
        specs.append(make(name, f"{int(major) - 1}.{minor}.{patch}"))  # below every `>=major`
    for i in range(N_UNRELATED):
        name = f"bench-unrelated{i}"
        depends[name] = {names[rng.randrange(len(names))]}
        versions[name] = "1.0.0"
        package_bytes[name] = 200_000
        specs.append(make(name, "1.0.0"))
    top = [f"{name} >={versions[name].split('.')[0]}" for name in names[-N_TOP:]]
    return specs, ["python", *top]


def make_channel(channel_dir: Path, seed: int, target_mb: float, closure: int = N_CLOSURE) -> dict[str, Any]:
    from conda_package_handling import conda_fmt

    from conda_store_server.testing.channel import build_channel

    # At conda-build's level 19 this channel takes ~40 s to generate instead of ~6 s; the cache
    # is warm in every measurement, so the compression level of the archives does not matter.
    conda_fmt.ZSTD_COMPRESS_LEVEL = 3
    started = time.monotonic()
    packages, top = channel_packages(seed, target_mb, closure)
    build_channel(channel_dir, packages)
    archives = list(channel_dir.glob("*/*.conda"))
    return {
        "channel_packages": len(archives),
        "channel_mb": sum(p.stat().st_size for p in archives) / 1e6,
        "specs": top,
        "seconds": time.monotonic() - started,
    }


# ---------------------------------------------------------------------------------------------
# The baseline (runs in its own subprocess)
# ---------------------------------------------------------------------------------------------


def baseline(channel: str, specs: list[str], cache: str, repodata_cache: str, prefix: str) -> dict[str, Any]:
    import asyncio

    import rattler

    async def run() -> dict[str, Any]:
        started = time.perf_counter()
        gateway = rattler.Gateway(cache_dir=Path(repodata_cache))
        records = await rattler.solve(
            [channel],
            [rattler.MatchSpec(s) for s in specs],
            gateway=gateway,
            platforms=[str(rattler.Subdir.current()), "noarch"],
            virtual_packages=rattler.VirtualPackage.detect(),
        )
        solved = time.perf_counter()
        await rattler.install(
            records,
            Path(prefix),
            cache_dir=Path(cache),
            show_progress=False,
            execute_link_scripts=False,
        )
        installed = time.perf_counter()
        return {
            "solve": solved - started,
            "install": installed - solved,
            "total": installed - started,
            "records": len(records),
        }

    return asyncio.run(run())


def run_baseline(args: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "_baseline", json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
    )
    if result.returncode != 0:
        raise RuntimeError(f"baseline failed:\n{result.stdout}\n{result.stderr}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["process"] = time.perf_counter() - started
    return figures


# ---------------------------------------------------------------------------------------------
# Optional step timer (--steps): runs inside the worker, wraps pipeline functions
# ---------------------------------------------------------------------------------------------

STEP_FUNCTIONS = (
    ("conda_store_server.build.pipeline", "_plan"),
    ("conda_store_server.build.solve", "solve"),
    ("conda_store_server.build.lockfile", "to_conda_lock"),
    ("conda_store_server.build.pipeline", "_store_artifact"),
    ("conda_store_server.build.lockfile", "from_conda_lock"),
    ("conda_store_server.build.install", "check_installed_paths"),
    ("conda_store_server.build.pipeline", "apply_ownership"),
    ("conda_store_server.build.pipeline", "_record_packages"),
    ("conda_store_server.build.pipeline", "_complete"),
    ("conda_store_server.build.pipeline", "_make_artifacts"),
    ("conda_store_server.build.pipeline", "record_build_storage"),
    ("conda_store_server.disk_usage", "measure_prefix"),
    ("conda_store_server.disk_usage", "_owners"),
    ("conda_store_server.build.pipeline", "apply_retention_after_build"),
    ("conda_store_server.build.pipeline", "ship_log"),
    ("conda_store_server.build.pipeline", "link_current_build"),
    ("conda_store_server.build.pipeline", "get_build"),
    ("conda_store_server.build.install", "check_entry_points"),
    ("conda_store_server.build.install", "touch_entries"),
    ("conda_store_server.build.pipeline", "_install_conda"),
    ("conda_store_server.build.pipeline", "_build"),
)


STEPS_FILE_ENV = "CONDA_STORE_BENCH_STEPS_FILE"


def install_step_timer(out_path: str) -> None:
    """Time the pipeline steps of every build this worker runs; one JSON line per event.

    Runs in the worker: it records when each build child is asked for, and makes the fork
    server (which the worker starts later, with this environment) import this module, which
    then wraps the pipeline in every build child (see the end of this file).
    """
    supervisor = importlib.import_module("conda_store_server.worker.supervisor")
    start = supervisor.Supervisor._start

    def timed_start(self: Any, build_id: int) -> Any:
        _write_step_record(out_path, {"build_id": build_id, "fork_called": time.time()})
        return start(self, build_id)

    supervisor.Supervisor._start = timed_start
    supervisor.FORK_SERVER_PRELOAD = (*supervisor.FORK_SERVER_PRELOAD, SCRIPT.stem)
    os.environ[STEPS_FILE_ENV] = out_path
    # the fork server ignores this process's sys.path (Python 3.11), not the environment
    search_path = [str(SCRIPT.parent), os.environ.get("PYTHONPATH")]
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, search_path))


def _write_step_record(out_path: str, record: dict[str, Any]) -> None:
    with open(out_path, "a") as out:
        out.write(json.dumps(record) + "\n")


def install_child_step_timer(out_path: str) -> None:
    """In the fork server: wrap module attributes (the pipeline calls its helpers through their
    modules), so the real build children are measured. Names that no longer exist are skipped
    and reported, so the benchmark keeps working while the pipeline changes.
    """
    import asyncio
    import functools

    steps: dict[str, float] = {}
    missing: list[str] = []

    def wrap(module: Any, name: str, label: str) -> None:
        function = getattr(module, name, None)
        if function is None:
            missing.append(f"{module.__name__}.{name}")
            return
        if asyncio.iscoroutinefunction(function):

            @functools.wraps(function)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await function(*args, **kwargs)
                finally:
                    steps[label] = steps.get(label, 0.0) + time.perf_counter() - started

            setattr(module, name, timed_async)
        else:

            @functools.wraps(function)
            def timed(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    steps[label] = steps.get(label, 0.0) + time.perf_counter() - started

            setattr(module, name, timed)

    for module_name, name in STEP_FUNCTIONS:
        wrap(importlib.import_module(module_name), name, name)

    install = importlib.import_module("conda_store_server.build.install")
    real_rattler = getattr(install, "rattler", None)
    if real_rattler is not None:

        class RattlerProxy:
            def __getattr__(self, attribute: str) -> Any:
                return getattr(real_rattler, attribute)

        proxy = RattlerProxy()
        proxy.install = real_rattler.install  # type: ignore[attr-defined]
        install.rattler = proxy
        wrap(proxy, "install", "rattler.install")  # type: ignore[arg-type]

    pipeline = importlib.import_module("conda_store_server.build.pipeline")
    supervisor = importlib.import_module("conda_store_server.worker.supervisor")
    wrap(supervisor.StoreRecipe, "make", "StoreRecipe.make")  # the child's config and CondaStore
    run_build, run_and_exit = pipeline.run_build, supervisor._run_and_exit

    def timed_run_build(conda_store: Any, build_id: int) -> Any:
        started = time.perf_counter()
        try:
            return run_build(conda_store, build_id)
        finally:
            _write_step_record(
                out_path,
                {
                    "build_id": build_id,
                    "run_build": time.perf_counter() - started,
                    "steps": steps,
                    "child_entry": steps.get("_child_entry"),
                },
            )

    def timed_run_and_exit(recipe: Any, build_id: int, conda_store: Any = None) -> Any:
        steps.clear()  # what a waiting process did before its build arrived is not the build's
        steps["_child_entry"] = time.time()
        return run_and_exit(recipe, build_id, conda_store)

    # both build targets (a new process, or one waiting for its build) call it through the
    # module: children of this fork server find the timed one
    pipeline.run_build = timed_run_build
    supervisor._run_and_exit = timed_run_and_exit
    if missing:
        _write_step_record(out_path, {"missing": missing})


def step_figures(path: Path, build_ids: set[int]) -> tuple[dict[int, dict[str, float]], list[str]]:
    """Per timed build: each wrapped step, run_build as a whole and fork → child running."""
    forks: dict[int, float] = {}
    figures: dict[int, dict[str, float]] = {}
    missing: list[str] = []
    if not path.exists():
        return figures, ["the worker wrote no step times"]
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "missing" in record:
            missing = record["missing"]
        elif "fork_called" in record:
            forks[record["build_id"]] = record["fork_called"]
        elif record["build_id"] in build_ids:
            steps = {k: v for k, v in record["steps"].items() if k != "_child_entry"}
            steps["run_build"] = record["run_build"]
            if record.get("child_entry") and record["build_id"] in forks:
                steps["start → build in its process"] = record["child_entry"] - forks[record["build_id"]]
            figures[record["build_id"]] = steps
    return figures, missing


# ---------------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """A real server and worker on a fresh store; both stopped by `stop`."""

    def __init__(
        self, root: Path, channel_uri: str, steps_file: Path | None = None, broker_url: str | None = None
    ) -> None:
        self.root = root
        self.steps_file = steps_file
        self.store_directory = root / "store"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen[bytes]] = []
        settings = {
            "CondaStore": {
                "database_url": f"sqlite:///{root / 'conda-store.sqlite'}",
                "store_directory": str(self.store_directory),
                "conda_default_channels": [channel_uri],
                "storage_threshold": 0,
                "build_artifacts": ["LOCKFILE"],
                # the embedded default (the database as Celery's broker) unless one is named
                **({"celery_broker_url": broker_url} if broker_url else {}),
            },
            "LocalStorage": {"storage_path": str(root / "storage")},
            "AuthenticationBackend": {"secret": "bench-secret-" + "0123456789abcdef" * 3},
        }
        self.config_file = root / "conda_store_config.py"
        self.config_file.write_text(
            "".join(
                f"c.{cls}.{trait} = {value!r}\n"
                for cls, traits in settings.items()
                for trait, value in traits.items()
            )
        )

    def _spawn(self, name: str, arguments: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        process = subprocess.Popen(
            [sys.executable, *arguments], stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT
        )
        log.close()
        self.processes.append(process)
        return process

    def start(self) -> None:
        self._spawn(
            "server",
            [
                "-c",
                "from conda_store_server.server.app import main; main()",
                f"--config={self.config_file}",
                "--CondaStoreServer.address=127.0.0.1",
                f"--CondaStoreServer.port={self.port}",
            ],
        )
        self._wait_for_server()
        # after the server: it has migrated the database, so the two never migrate at once
        if self.steps_file is None:
            worker = ["-m", "conda_store_server.worker"]
        else:
            worker = [
                "-c",
                f"import sys; sys.path.insert(0, {str(SCRIPT.parent)!r}); import bench_build; "
                f"bench_build.install_step_timer({str(self.steps_file)!r}); "
                "from conda_store_server.worker.app import main; main()",
            ]
        self._spawn("worker", [*worker, f"--config={self.config_file}"])

    def _wait_for_server(self) -> None:
        import httpx

        deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.processes[0].poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.log('server')}")
            try:
                if httpx.get(f"{self.url}/api/v1/", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server did not start:\n{self.log('server')}")

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def service_build(
    client: Any, name: str, specs: list[str], poll_seconds: float = POLL_SECONDS
) -> dict[str, Any]:
    specification = "name: " + name + "\ndependencies:\n" + "".join(f"  - {s}\n" for s in specs)
    posted_at = datetime.datetime.now(datetime.UTC)
    started = time.perf_counter()
    response = client.post("/api/v1/specification/", json={"specification": specification})
    post_seconds = time.perf_counter() - started
    response.raise_for_status()
    build_id = response.json()["data"]["build_id"]
    polls = not_found = 0
    while True:
        answer = client.get(f"/api/v1/build/{build_id}/")
        polls += 1
        if answer.status_code == 404 and not_found < 50:
            # the POST can answer before its transaction is committed; see BENCHMARKS.md
            not_found += 1
            time.sleep(POLL_SECONDS)
            continue
        answer.raise_for_status()
        build = answer.json()["data"]
        if build["status"] in ("COMPLETED", "FAILED", "CANCELED"):
            break
        if time.perf_counter() - started > BUILD_TIMEOUT_SECONDS:
            raise RuntimeError(f"build {build_id} is still {build['status']}")
        time.sleep(poll_seconds)
    total = time.perf_counter() - started
    logs = client.get(f"/api/v1/build/{build_id}/logs/").text
    if build["status"] != "COMPLETED":
        raise RuntimeError(f"build {build_id} {build['status']}: {build['status_info']}\n{logs}")
    started_on, ended_on = parse_time(build["started_on"]), parse_time(build["ended_on"])

    def logged(pattern: str) -> float | None:
        match = re.search(pattern, logs)
        return float(match.group(1)) if match else None

    prefix = next((a["key"] for a in build["build_artifacts"] if a["artifact_type"] == "DIRECTORY"), None)
    return {
        "build_id": build_id,
        "total": total,
        "post": post_seconds,
        "polls": polls,
        "not_found": not_found,
        # POST → the worker claimed the build (queue wait, includes the worker's poll interval)
        "queued": (started_on - posted_at).total_seconds() if started_on else None,
        # claim → the child process marked it COMPLETED (fork, solve, lockfile, install, record)
        "running": (ended_on - started_on).total_seconds() if started_on and ended_on else None,
        # COMPLETED in the database → observed by the client
        "observed_after": (posted_at + datetime.timedelta(seconds=total) - ended_on).total_seconds()
        if ended_on
        else None,
        "solve": logged(r"solved in ([0-9.]+) s"),
        "install": logged(r"installed in ([0-9.]+) s"),
        "pipeline": logged(r"finished in ([0-9.]+) s"),
        "size": build["size"],
        "prefix": prefix,
    }


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def prefix_size(prefix: str) -> dict[str, float]:
    """Apparent and on-disk size of a prefix, counting each hard-linked inode once (like du)."""
    seen: set[tuple[int, int]] = set()
    apparent = blocks = files = 0
    for root, directories, names in os.walk(prefix):
        for name in directories + names:
            info = os.lstat(os.path.join(root, name))
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            apparent += info.st_size
            blocks += info.st_blocks * 512
            files += name in names
    return {"apparent_mb": apparent / 1e6, "disk_mb": blocks / 1e6, "files": files}


def median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [row[key] for row in rows if row.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, unit: str = "s", digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} {unit}".rstrip()


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores{' (' + model + ')' if model else ''}, "
        f"{platform.system()} {platform.machine()}, Python {platform.python_version()}"
    )


def report(result: dict[str, Any]) -> str:
    b, s = result["baseline"], result["service"]
    bm, sm = median(b, "total"), median(s, "total")
    ratio = sm / bm
    size = result["size"]
    lines = [
        f"date: {result['date']}   machine: {result['machine']}",
        f"py-rattler {result['rattler']}; rounds: {len(s)} (interleaved, after one warm-up each)",
        f"channel: {result['channel']['channel_packages']} packages, "
        f"{result['channel']['channel_mb']:.1f} MB of archives (generated in "
        f"{result['channel']['seconds']:.1f} s)",
        f"environment: {result['records']} packages, {size['files']} files, "
        f"{size['apparent_mb']:.1f} MB ({size['disk_mb']:.1f} MB on disk, hard links counted once)",
        f"specs: {' '.join(result['specs'])}",
        f"Celery broker: {result.get('broker') or 'the database (embedded default)'}",
        "",
        f"{'':34}{'median':>10}{'min':>10}{'max':>10}",
    ]

    def row(label: str, rows: list[dict[str, Any]], key: str) -> None:
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            lines.append(
                f"{label:34}{statistics.median(values):>10.3f}{min(values):>10.3f}{max(values):>10.3f}"
            )

    row("baseline solve + install (s)", b, "total")
    row("  solve", b, "solve")
    row("  install", b, "install")
    row("  (subprocess incl. start-up)", b, "process")
    row("service POST → COMPLETED (s)", s, "total")
    row("  POST request", s, "post")
    row("  POST → claimed by worker", s, "queued")
    row("  claimed → COMPLETED (child)", s, "running")
    row("    solve (build log)", s, "solve")
    row("    install (build log)", s, "install")
    steps = result.get("steps") or {}
    if steps:
        lines.append("  step times in the build child (--steps):")
        names = sorted(
            {name for figures in steps.values() for name in figures},
            key=lambda name: -statistics.median([f[name] for f in steps.values() if name in f]),
        )
        rows = list(steps.values())
        for name in names:
            row(f"    {name}", rows, name)
        for missing in result.get("steps_missing") or []:
            lines.append(f"    (not timed, no longer exists: {missing})")
    row("  COMPLETED → observed by client", s, "observed_after")
    stale = sum(1 for r in s if r.get("not_found"))
    if stale:
        lines.append(
            f"(GET /api/v1/build/<id>/ answered 404 right after the POST in {stale} of "
            f"{len(s)} builds: the POST answers before its transaction commits)"
        )
    lines += [
        "",
        f"overhead of the service (difference of the medians): {sm - bm:.3f} s   goal ≤ "
        f"{GOAL_OVERHEAD_SECONDS:.3f} s: {'met' if sm - bm <= GOAL_OVERHEAD_SECONDS else 'NOT met'}",
        f"ratio service / baseline (medians): {ratio:.2f}   goal ≤ {GOAL_RATIO}: "
        f"{'met' if ratio <= GOAL_RATIO else 'NOT met'}",
    ]
    result["ratio"] = ratio
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


BENCHMARKS_FILE = REPO_ROOT / "BENCHMARKS.md"


def update_benchmarks(table: str, command: str, script: str = "bench_build.py") -> bool:
    """Replace the figures between `script`'s markers in BENCHMARKS.md (every benchmark has its
    own block); False when there are none."""
    begin_mark = f"<!-- {script}: begin (rewritten by --update-benchmarks) -->"
    text = BENCHMARKS_FILE.read_text() if BENCHMARKS_FILE.exists() else ""
    begin, end = text.find(begin_mark), text.find(f"<!-- {script}: end -->")
    if begin < 0 or end < begin:
        return False
    block = f"{begin_mark}\n```text\n$ {command}\n{table}\n```\n"
    BENCHMARKS_FILE.write_text(text[:begin] + block + text[end:])
    return True


def settle() -> None:
    os.sync()
    time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per side (default 7)")
    parser.add_argument(
        "--size-mb",
        type=float,
        default=90.0,
        help="approximate uncompressed payload of the channel's packages",
    )
    parser.add_argument(
        "--packages",
        type=int,
        default=N_CLOSURE,
        help=f"packages in the environment, python included (default {N_CLOSURE}; at least {N_TOP + 1})",
    )
    parser.add_argument(
        "--broker",
        metavar="URL",
        help="Celery broker of the service, e.g. redis://127.0.0.1:6379/14 (default: the database)",
    )
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=POLL_SECONDS,
        help="seconds between two GET /api/v1/build/<id>/ (default 0.02)",
    )
    parser.add_argument(
        "--steps", action="store_true", help="time each pipeline step inside the worker's build children"
    )
    parser.add_argument(
        "--update-benchmarks",
        action="store_true",
        help="replace the figures block of BENCHMARKS.md (between its markers) with this run's",
    )
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    arguments = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="cs-bench-build-"))
    service: Service | None = None
    try:
        print(f"working in {root}", flush=True)
        channel_dir = root / "channel"
        made = subprocess.run(
            [
                sys.executable,
                str(SCRIPT),
                "_channel",
                str(channel_dir),
                str(arguments.seed),
                str(arguments.size_mb),
                str(arguments.packages),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=REPO_ROOT,
        )
        if made.returncode != 0:
            raise RuntimeError(f"channel generation failed:\n{made.stdout}\n{made.stderr}")
        channel = json.loads(made.stdout.strip().splitlines()[-1])
        specs = channel["specs"]
        print(
            f"channel: {channel['channel_packages']} packages, {channel['channel_mb']:.1f} MB, "
            f"{channel['seconds']:.1f} s",
            flush=True,
        )

        channel_uri = channel_dir.as_uri()
        steps_file = root / "steps.jsonl" if arguments.steps else None
        service = Service(root, channel_uri, steps_file, arguments.broker)
        service.start()
        store = service.store_directory
        baseline_args = {
            "channel": channel_uri,
            "specs": specs,
            "cache": str(store / ".pkgs"),
            "repodata_cache": str(store / ".repodata"),
        }
        (root / "baseline").mkdir()

        warm = run_baseline({**baseline_args, "prefix": str(root / "baseline" / "warm")})
        print(
            f"warm-up baseline (fills the package cache): {warm['total']:.2f} s, {warm['records']} packages",
            flush=True,
        )

        import httpx

        with httpx.Client(base_url=service.url, timeout=30) as client:
            client.post("/login/", json={"username": "bench", "password": "password"}).raise_for_status()
            first = service_build(client, "bench-warmup", specs)
            print(f"warm-up service build: {first['total']:.2f} s", flush=True)
            baseline_rows, service_rows = [], []
            for i in range(arguments.rounds):
                # each measurement starts with no dirty pages left over from the previous one
                settle()
                baseline_rows.append(
                    run_baseline({**baseline_args, "prefix": str(root / "baseline" / f"r{i}")})
                )
                settle()
                service_rows.append(service_build(client, f"bench-{i}", specs, arguments.poll_interval))
                print(
                    f"round {i + 1}/{arguments.rounds}: baseline "
                    f"{baseline_rows[-1]['total']:.3f} s, service {service_rows[-1]['total']:.3f} s",
                    flush=True,
                )

        result = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "rattler": _rattler_version(),
            "channel": channel,
            "specs": specs,
            "broker": arguments.broker,
            "records": warm["records"],
            "size": prefix_size(service_rows[-1]["prefix"]),
            "baseline": baseline_rows,
            "service": service_rows,
        }
        if steps_file is not None:
            result["steps"], result["steps_missing"] = step_figures(
                steps_file, {row["build_id"] for row in service_rows}
            )
        table = report(result)
        print()
        print(table)
        if arguments.update_benchmarks:
            command = "python bench/bench_build.py " + " ".join(sys.argv[1:])
            if update_benchmarks(table, command.strip()):
                print(f"updated {BENCHMARKS_FILE}")
            else:
                print(f"{BENCHMARKS_FILE} has no figures block to update")
        if arguments.json:
            arguments.json.write_text(json.dumps(result, indent=2, default=str))
    finally:
        if service is not None:
            service.stop()
        if arguments.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _rattler_version() -> str:
    from importlib.metadata import version

    try:
        return version("py-rattler")
    except Exception:  # noqa: BLE001 - informational only
        return "unknown"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_channel":
        sys.path.insert(0, str(REPO_ROOT))
        channel = make_channel(Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
        print(json.dumps(channel))
    elif len(sys.argv) > 1 and sys.argv[1] == "_baseline":
        print(json.dumps(baseline(**json.loads(sys.argv[2]))))
        sys.stdout.flush()
        os._exit(0)  # rattler's runtime threads may abort a normal interpreter exit
    else:
        main()


if __name__ == SCRIPT.stem and os.environ.get(STEPS_FILE_ENV):
    # imported by the worker's fork server (install_step_timer asked it to)
    install_child_step_timer(os.environ[STEPS_FILE_ENV])
