"""The original conda-store-server beside ours: its throwaway venv, the stub `conda`, a process.

The venv (default /tmp/bench-original-venv) holds `conda-store-server==2025.2.2` from PyPI and is
reused while its marker file names that requirement. The original imports `conda` at start-up
(`conda.base.context.context.subdir` for its Settings defaults, and a few names that the build
actions import at module level); conda itself is not on PyPI, so the venv gets a stub package
`conda` with exactly those names: `context.subdir` has a value, every other name raises if it is
ever used. Its list routes never use them.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

REQUIREMENT = "conda-store-server==2025.2.2"
DEFAULT_VENV = Path("/tmp/bench-original-venv")
BENCH = Path(__file__).resolve().parent
MARKER = ".bench-original"

# module -> names it must define (found by starting the original's server without conda)
STUB_NAMES: dict[str, list[str]] = {
    "conda.base.constants": ["PACKAGE_CACHE_MAGIC_FILE"],
    "conda.common.path": ["expand", "strip_pkg_extension"],
    "conda.core.package_cache_data": [
        "PackageCacheRecord",
        "PackageRecord",
        "getsize",
        "read_index_json",
        "write_as_json_to_file",
    ],
    "conda.core.prefix_data": ["PrefixData"],
    "conda.gateways.disk.update": ["touch"],
    "conda.gateways.logging": [],
    "conda.models.dist": ["Dist"],
}
UNAVAILABLE = '''

class _Unavailable:
    """Stands for a conda name the original imports but its list routes never call."""

    def __init__(self, name):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.name}: the benchmark's stub conda has no implementation")

'''


def conda_subdir() -> str:
    machine = {"x86_64": "64", "amd64": "64", "aarch64": "aarch64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    system = {"linux": "linux", "darwin": "osx"}.get(sys.platform, sys.platform)
    return f"{system}-{machine}"


def write_conda_stub(site_packages: Path) -> None:
    """Rewritten on every run (it is a few small files), so the stub always matches this file."""
    root = site_packages / "conda"
    shutil.rmtree(root, ignore_errors=True)
    modules = {"conda.base.context": None, **STUB_NAMES}
    for module in modules:
        parts = module.split(".")
        for depth in range(1, len(parts)):
            package = site_packages.joinpath(*parts[:depth])
            package.mkdir(parents=True, exist_ok=True)
            (package / "__init__.py").touch()
    (root / "__init__.py").write_text('"""Benchmark stub of conda (bench/original_server.py)."""\n')
    (root / "base" / "context.py").write_text(
        f"import types\n\ncontext = types.SimpleNamespace(subdir={conda_subdir()!r})\n"
    )
    for module, names in STUB_NAMES.items():
        body = UNAVAILABLE + "".join(f"{name} = _Unavailable({name!r})\n" for name in names)
        if module == "conda.base.constants":
            body = 'PACKAGE_CACHE_MAGIC_FILE = "urls.txt"\n'
        site_packages.joinpath(*module.split(".")).with_suffix(".py").write_text(body)


def ensure_venv(venv: Path = DEFAULT_VENV) -> Path:
    """The venv's python, creating the venv (~30 s from PyPI) unless its marker matches."""
    python = venv / "bin" / "python"
    marker = venv / MARKER
    if not (python.exists() and marker.exists() and marker.read_text().strip() == REQUIREMENT):
        shutil.rmtree(venv, ignore_errors=True)
        print(f"creating {venv} with {REQUIREMENT} (pip, from PyPI)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        installed = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", REQUIREMENT],
            capture_output=True,
            text=True,
        )
        if installed.returncode != 0:
            raise RuntimeError(f"pip install {REQUIREMENT} failed:\n{installed.stderr[-4000:]}")
        marker.write_text(REQUIREMENT + "\n")
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    write_conda_stub(site_packages)
    return python


def original_environment(home: Path) -> dict[str, str]:
    """No PYTHONPATH (ours must not shadow it); its data directory (platformdirs) in `home`."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment.update({"HOME": str(home), "XDG_DATA_HOME": str(home / "data")})
    return environment


def run_inside(python: Path, home: Path, *arguments: str) -> str:
    """Runs original_seed.py with the venv's python; its stdout."""
    completed = subprocess.run(
        [str(python), str(BENCH / "original_seed.py"), *arguments],
        env=original_environment(home),
        cwd=home,
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0:
        error = completed.stderr
        if len(error) > 6000:  # SQLAlchemy repeats every parameter row; keep the cause and the end
            error = error[:3000] + "\n...\n" + error[-3000:]
        raise RuntimeError(f"original_seed.py {arguments[0]} failed:\n{error}")
    return completed.stdout.strip()


def seed_original(python: Path, home: Path, database_url: str) -> None:
    run_inside(python, home, "seed", database_url)


def original_token(python: Path, home: Path, secret: str) -> str:
    return run_inside(python, home, "token", secret)


def write_original_config(directory: Path, database_url: str, secret: str, port: int) -> Path:
    """Its own trait names (CondaStore, LocalStorage, AuthenticationBackend, CondaStoreServer);
    log level WARNING (30) so that uvicorn writes no access log, as ours."""
    config = directory / "original_config.py"
    config.write_text(
        f"c.CondaStore.database_url = {database_url!r}\n"
        f"c.CondaStore.store_directory = {str(directory / 'state')!r}\n"
        f"c.LocalStorage.storage_path = {str(directory / 'storage')!r}\n"
        f"c.AuthenticationBackend.secret = {secret!r}\n"
        "c.CondaStoreServer.address = '127.0.0.1'\n"
        f"c.CondaStoreServer.port = {port}\n"
        "c.CondaStoreServer.log_level = 30\n"
        "c.CondaStoreServer.enable_ui = False\n"
    )
    return config


def start_original(python: Path, directory: Path, config: Path, port: int) -> subprocess.Popen[bytes]:
    log = (directory / "original_server.log").open("wb")
    server = subprocess.Popen(
        [str(python.parent / "conda-store-server"), f"--config={config}"],
        env=original_environment(directory),
        cwd=directory,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_until_serving(f"http://127.0.0.1:{port}", server, directory / "original_server.log")
    return server


def wait_until_serving(
    url: str, server: subprocess.Popen[bytes], log: Path | None, seconds: float = 90
) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            httpx.get(f"{url}/api/v1/", timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline or server.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
                raise RuntimeError(f"the server at {url} did not start\n{tail}") from None
            time.sleep(0.2)


def stop(server: subprocess.Popen[bytes]) -> None:
    """The original's server joins a worker-watching thread that never ends once uvicorn has
    stopped, so SIGTERM is followed by SIGKILL of its process group after a grace period."""
    if server.poll() is not None:
        return
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
