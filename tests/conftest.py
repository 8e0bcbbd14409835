"""Fixtures: a demo channel, a fresh store on SQLite and PostgreSQL, a real worker, an API client.

Services are never silently skipped in CI: with CI=true a missing PostgreSQL fails the run.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from live import free_port
from sqlalchemy import create_engine, text
from traitlets.config import Config

from conda_store_server.app import CondaStore
from conda_store_server.server.app import CondaStoreServer
from conda_store_server.testing.channel import build_demo_channel
from conda_store_server.testing.pypi import PyPIIndex, build_wheels, demo_wheels, serve_index

POSTGRES_URL = os.environ.get("CONDA_STORE_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("CONDA_STORE_TEST_REDIS", "redis://127.0.0.1:6379/11")
RABBITMQ_URL = os.environ.get("CONDA_STORE_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//")
IN_CI = os.environ.get("CI", "").lower() == "true"
BUILD_WAIT_SECONDS = 120


@pytest.fixture(scope="session")
def demo_channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_channel(tmp_path_factory.mktemp("channels") / "demo")


def require_service(name: str, url: str) -> None:
    """Skip without the service on a developer's machine; in CI its absence fails the run."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=2).close()
    except OSError as error:
        if IN_CI:
            pytest.fail(f"{name} is required in CI and is not reachable at {url}: {error}")
        pytest.skip(f"{name} not reachable at {url}: {error}")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback, shared by the tests (each uses a bucket of its own)."""
    from conda_store_server.testing.s3 import s3_server

    try:
        with s3_server() as endpoint:
            yield endpoint
    except RuntimeError as error:
        if IN_CI:
            pytest.fail(f"the S3 server is required in CI: {error}")
        pytest.skip(str(error))


def _postgres_database() -> Iterator[str]:
    admin_url = f"{POSTGRES_URL}/postgres"
    name = f"cs_test_{uuid.uuid4().hex[:12]}"
    try:
        engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI and is not reachable at {admin_url}: {error}")
        pytest.skip(f"PostgreSQL not reachable at {admin_url}: {error}")
    try:
        yield f"{POSTGRES_URL}/{name}"
    finally:
        with engine.connect() as connection:
            connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                {"name": name},
            )
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'conda-store.sqlite'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def store_settings(tmp_path: Path, database_url: str, demo_channel: Path) -> dict[str, dict[str, Any]]:
    """Trait values of the store under test; tests may change them before the store is made."""
    return {
        "CondaStore": {
            "database_url": database_url,
            "store_directory": str(tmp_path / "store"),
            "conda_default_channels": [demo_channel.as_uri()],
            "storage_threshold": 0,
            "build_artifacts": ["LOCKFILE", "YAML", "CONDA_PACK"],
            "conda_indexed_channels": [],  # no network here; tests that index set their own
        },
        "LocalStorage": {"storage_path": str(tmp_path / "storage")},
        "AuthenticationBackend": {"secret": "test-secret-" + "0123456789abcdef" * 3},
    }


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo wheels of conda_store_server.testing.pypi, built once per session."""
    return build_wheels(tmp_path_factory.mktemp("wheels"), demo_wheels())


@pytest.fixture
def index_options() -> dict[str, Any]:
    """Options of `serve_index` (tests override it: basic auth, ...)."""
    return {}


@pytest.fixture
def index(wheels: Path, index_options: dict[str, Any]) -> Iterator[PyPIIndex]:
    """A PEP 503 index of the demo wheels on loopback."""
    with serve_index(wheels, **index_options) as index:
        yield index


def uv_processes(cache_dir: str) -> list[int]:
    """Running uv processes that use `cache_dir` (this test's store)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if arguments and arguments[0].endswith(b"uv") and cache_dir.encode() in arguments:
            found.append(int(entry.name))
    return found


def allow_channels(store_settings: dict[str, dict[str, Any]], *channels: str) -> None:
    """Let specifications name `channels` (e.g. a loopback test server) as an administrator
    would: as allowed channels, beside the default ones. Unconfigured local or loopback
    channels are refused (see `conda_store_server.fetch_policy.check_channels`)."""
    traits = store_settings["CondaStore"]
    traits["conda_allowed_channels"] = [*traits["conda_default_channels"], *channels]


def write_config(path: Path, settings: dict[str, dict[str, Any]]) -> Path:
    lines = [
        f"c.{cls}.{trait} = {value!r}" for cls, traits in settings.items() for trait, value in traits.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def conda_store(store_settings: dict[str, dict[str, Any]]) -> Iterator[CondaStore]:
    store = CondaStore(config=Config(store_settings))
    store.ensure_database()
    yield store
    store.engine.dispose()


@pytest.fixture
def config_file(tmp_path: Path, store_settings: dict[str, dict[str, Any]], conda_store: CondaStore) -> Path:
    return write_config(tmp_path / "conda_store_config.py", store_settings)


class WorkerProcess:
    """A real `conda-store-worker` process (tests kill, restart and inspect it)."""

    def __init__(self, config_file: Path, log_path: Path) -> None:
        self.config_file = config_file
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *arguments: str, env: dict[str, str] | None = None) -> WorkerProcess:
        """Start the worker; `env` replaces its environment (by default it inherits this one)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child process owns it
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conda_store_server.worker",
                f"--config={self.config_file}",
                *arguments,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class ServerProcess:
    """`conda-store-server` as operators run it: its own process, restartable on the same port."""

    def __init__(self, config_file: Path, log_path: Path, *arguments: str) -> None:
        self.config_file = config_file
        self.log_path = log_path
        self.arguments = arguments
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from conda_store_server.server.app import main; main()",
                    f"--config={self.config_file}",
                    "--CondaStoreServer.address=127.0.0.1",
                    f"--CondaStoreServer.port={self.port}",
                    *self.arguments,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/v1/", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        pytest.fail(f"the server did not start:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def worker(config_file: Path, tmp_path: Path) -> Iterator[WorkerProcess]:
    process = WorkerProcess(config_file, tmp_path / "worker.log").start()
    yield process
    process.stop()


@pytest.fixture
def server_settings() -> dict[str, Any]:
    return {}


@pytest.fixture
def client(
    conda_store: CondaStore,
    store_settings: dict[str, dict[str, Any]],
    server_settings: dict[str, Any],
) -> Iterator[TestClient]:
    server = CondaStoreServer(config=Config({**store_settings, "CondaStoreServer": server_settings}))
    app = server.create_app(conda_store)
    with TestClient(app) as test_client:
        yield test_client


def login(client: TestClient, username: str = "alice", password: str = "password") -> None:
    response = client.post("/login/", json={"username": username, "password": password})
    assert response.status_code == 200, response.text


def submit(client: TestClient, specification: str, namespace: str | None = None) -> int:
    body: dict[str, Any] = {"specification": specification}
    if namespace:
        body["namespace"] = namespace
    response = client.post("/api/v1/specification/", json=body)
    assert response.status_code == 200, response.text
    return response.json()["data"]["build_id"]


def artifact_ready(kind: str) -> Callable[[dict[str, Any]], bool]:
    """For `wait_for_build`: the build has an artifact of `kind`, or it ended without one."""
    return lambda build: build["status"] in ("FAILED", "CANCELED") or any(
        artifact["artifact_type"] == kind for artifact in build["build_artifacts"]
    )


def unpack_archive(client: TestClient, build_id: int, target: Path) -> Path:
    """Download the build's conda-pack archive, unpack it at `target` and run its conda-unpack."""
    archive = client.get(f"/api/v1/build/{build_id}/archive/")
    assert archive.status_code == 200, archive.text
    target.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(target, filter="tar")
    subprocess.run([str(target / "bin" / "conda-unpack")], check=True, capture_output=True)
    return target


def wait_for_build(
    client: TestClient,
    build_id: int,
    until: Callable[[dict[str, Any]], bool] | None = None,
    timeout: float = BUILD_WAIT_SECONDS,
) -> dict[str, Any]:
    """Poll until the build is final (or `until` holds); fail with the log if it never gets there."""
    until = until or (lambda build: build["status"] in ("COMPLETED", "FAILED", "CANCELED"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        build = client.get(f"/api/v1/build/{build_id}/").json()["data"]
        if until(build):
            return build
        time.sleep(0.2)
    logs = client.get(f"/api/v1/build/{build_id}/logs/").text
    pytest.fail(f"build {build_id} did not reach the expected state in {timeout} s: {build}\n{logs}")
