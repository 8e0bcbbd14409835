"""What trying the service as a new user found: each test here failed before its fix."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import stat
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ServerProcess, login, submit, wait_for_build, write_config
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.routing import Mount
from traitlets.config import Config, Configurable

from conda_store_server.app import CondaStore
from conda_store_server.db.models import Build, Environment, Namespace
from conda_store_server.limits import MAX_METADATA_BYTES, MAX_SETTING_ITEMS
from conda_store_server.server.app import CondaStoreServer
from conda_store_server.server.ui import static_files
from conda_store_server.service import ensure_default_namespace

COMMANDS = {
    "conda-store-server": "from conda_store_server.server.app import main; main()",
    "conda-store-worker": "from conda_store_server.worker.app import main; main()",
}


def run_command(command: str, *arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", COMMANDS[command], *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "HOME": str(cwd)},
    )


# ------------------------------------------------------------------ configuration files
@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(
    ("content", "line", "expected"),
    [
        (
            "c.CondaStore.store_directory = '/tmp/x'\nfrom conda_store_server.nowhere import Registry\n",
            2,
            "ModuleNotFoundError",
        ),
        ("c.CondaStore.build_key_version = 2\nc.CondaStore.conda_default_channels = [\n", 2, "SyntaxError"),
        ("\n\nc.CondaStore.build_key_version = 7\n", 3, "c.CondaStore.build_key_version"),
        ("c.CondaStore.storage_class = 'conda_store_server.storage.Nope'\n", 1, "could not be imported"),
        ("c.CondaStore.upgrade_db = undefined_name\n", 1, "NameError"),
    ],
)
def test_a_configuration_file_that_fails_stops_the_command(
    command: str, content: str, line: int, expected: str, tmp_path: Path
) -> None:
    path = tmp_path / "conda_store_config.py"
    path.write_text(content)
    result = run_command(command, f"--config={path}", cwd=tmp_path)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()
    assert len(message) == 1, result.stderr  # one message, no traceback
    assert f"{path}, line {line}" in message[0] and expected in message[0] and "Fix:" in message[0]


def test_a_server_option_that_fails_validation_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "conda_store_config.py"
    path.write_text("c.CondaStoreServer.authentication_class = 'conda_store_server.server.auth.Nope'\n")
    result = run_command("conda-store-server", f"--config={path}", cwd=tmp_path)
    assert result.returncode == 1
    assert f"c.CondaStoreServer.authentication_class in {path}, line 1" in result.stderr


def test_a_bad_value_on_the_command_line_is_named(tmp_path: Path) -> None:
    result = run_command("conda-store-worker", "--CondaStore.build_key_version=9", cwd=tmp_path)
    assert result.returncode == 1
    assert "c.CondaStore.build_key_version" in result.stderr and "command line" in result.stderr


def test_every_configurable_of_the_package_is_known_to_the_unknown_name_check() -> None:
    import importlib
    import pkgutil

    import conda_store_server
    from conda_store_server.configuration import DEPLOYMENT_CONFIGURABLES

    found = set()
    for info in pkgutil.walk_packages(conda_store_server.__path__, "conda_store_server."):
        if ".db.migrations" in info.name or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        found |= {
            f"{module.__name__}.{value.__name__}"
            for value in vars(module).values()
            if isinstance(value, type)
            and issubclass(value, Configurable)
            and value.__module__ == module.__name__
        }
    assert found <= set(DEPLOYMENT_CONFIGURABLES)


def test_the_seeds_container_registry_configuration_loads(tmp_path: Path) -> None:
    path = tmp_path / "conda_store_config.py"
    path.write_text(
        "from conda_store_server.registry import ContainerRegistry\n"
        "c.ContainerRegistry.container_registries = {'https://registry-1.docker.io': lambda url: None}\n"
    )
    server = CondaStoreServer()
    server.initialize([f"--config={path}"])
    assert "ContainerRegistry" in server.config


def test_unknown_names_warn_with_the_closest_and_seed_misspellings_apply(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "conda_store_config.py"
    path.write_text(
        "c.CondaStore.store_directry = '/tmp/x'\n"
        "c.CondaStor.build_key_version = 3\n"
        "c.GenericOauthAuthentication.access_scope = 'read:user'\n"
        "c.GithubOAuthAuthentication.jupyterhub_url = 'https://hub.example.org'\n"
        "c.CondaStoreServer.port = 8123\n"
    )
    server = CondaStoreServer()
    server.initialize([f"--config={path}"])
    server.log.propagate = True
    with caplog.at_level(logging.WARNING):
        server.report_configuration()
    assert "c.CondaStore.store_directry" in caplog.text and "c.CondaStore.store_directory?" in caplog.text
    assert "c.CondaStor is not a conda-store-server class" in caplog.text and "CondaStore?" in caplog.text
    assert "c.GenericOAuthAuthentication.access_scope" in caplog.text
    assert "c.JupyterHubOAuthAuthentication.jupyterhub_url" in caplog.text
    assert "CondaStoreServer.port" not in caplog.text  # known options are not reported
    assert server.config.GenericOAuthAuthentication.access_scope == "read:user"
    assert server.config.JupyterHubOAuthAuthentication.jupyterhub_url == "https://hub.example.org"


def test_conda_command_is_reported_only_when_set(caplog: pytest.LogCaptureFixture) -> None:
    for store, reported in ((CondaStore(), False), (CondaStore(conda_command="conda"), True)):
        store.log.propagate = True
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            store.report_conda_command()
        assert ("conda_command" in caplog.text) is reported


def test_the_default_database_follows_the_store_directory(tmp_path: Path) -> None:
    first = CondaStore(store_directory=str(tmp_path / "one"))
    second = CondaStore(store_directory=str(tmp_path / "two"))
    assert first.database_url != second.database_url
    assert first.database_url == f"sqlite:///{tmp_path / 'one' / '.conda-store.sqlite'}"
    assert CondaStore().database_url.endswith("/conda-store/conda-store.sqlite")


def test_the_command_line_takes_port_and_address(tmp_path: Path) -> None:
    server = CondaStoreServer()
    server.initialize(["--port", "8123", "--address", "127.0.0.2"])
    assert (server.port, server.address) == (8123, "127.0.0.2")
    help_text = run_command("conda-store-server", "--help", cwd=tmp_path).stdout
    assert "--port" in help_text and "--address" in help_text


def test_a_port_in_use_is_one_line_and_a_failure(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        result = run_command(
            "conda-store-server",
            "--address=127.0.0.1",
            f"--port={port}",
            f"--CondaStore.store_directory={tmp_path / 'store'}",
            cwd=tmp_path,
        )
    finally:
        taken.close()
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------ the standalone worker's code
def test_the_standalone_worker_runs_only_the_installed_code(tmp_path: Path) -> None:
    """A `conda_store_server/` folder where the server starts must not replace the package."""
    shadow = tmp_path / "conda_store_server"
    shadow.mkdir()
    marker = tmp_path / "shadow-was-imported"
    (shadow / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (shadow / "worker").mkdir()
    (shadow / "worker" / "__init__.py").write_text("")
    (shadow / "worker" / "__main__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    server = CondaStoreServer()
    server.initialize([])
    command = [*server.worker_command(CondaStore()), "--help"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "CondaStoreWorker" in result.stdout
    assert not marker.exists()


# ------------------------------------------------------------------ CORS
def test_no_cross_origin_access_by_default(client: TestClient) -> None:
    response = client.get("/api/v1/", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers
    preflight = client.options(
        "/api/v1/namespace/x/",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "DELETE"},
    )
    assert "access-control-allow-origin" not in preflight.headers


@pytest.mark.parametrize(
    ("settings", "origin", "allowed", "credentials"),
    [
        ({"cors_allow_origins": ["https://hub.example.org"]}, "https://hub.example.org", True, True),
        ({"cors_allow_origins": ["https://hub.example.org"]}, "https://evil.example", False, False),
        ({"cors_allow_origins": ["*"]}, "https://evil.example", True, False),
        ({"cors_allow_origin_regex": ".*"}, "https://evil.example", True, False),
        ({"cors_allow_origin_regex": r"https://.*\.example\.org"}, "https://a.example.org", True, True),
    ],
)
def test_listed_origins_only(
    conda_store: CondaStore, settings: dict[str, Any], origin: str, allowed: bool, credentials: bool
) -> None:
    server = CondaStoreServer(config=Config({"CondaStoreServer": settings}))
    with TestClient(server.create_app(conda_store)) as client:
        headers = client.get("/api/v1/", headers={"Origin": origin}).headers
    assert ("access-control-allow-origin" in headers) is allowed
    if allowed:  # without an allowed origin the browser shows the answer to no page at all
        assert (headers.get("access-control-allow-credentials") == "true") is credentials


# ------------------------------------------------------------------ sizes
def test_oversized_values_are_refused_naming_the_limit(client: TestClient, conda_store: CondaStore) -> None:
    login(client)
    assert client.post("/api/v1/namespace/big/").status_code == 200
    large = {"blob": "x" * MAX_METADATA_BYTES}
    for response in (
        client.put("/api/v1/namespace/big/", json={"metadata": large}),
        client.put("/api/v1/namespace/big/metadata", json=large),
    ):
        assert response.status_code == 413
        assert "namespace metadata" in response.json()["message"] and "64 KiB" in response.json()["message"]
    assert client.get("/api/v1/namespace/big/").json()["data"]["metadata_"] == {}

    packages = [f"pkg{n}" for n in range(MAX_SETTING_ITEMS + 1)]
    response = client.put("/api/v1/setting/big/", json={"conda_included_packages": packages})
    assert response.status_code == 413 and str(MAX_SETTING_ITEMS) in response.json()["message"]
    assert client.get("/api/v1/setting/big/").json()["data"]["conda_included_packages"] == []

    mappings = {f"user{n}/*": ["viewer"] for n in range(1001)}
    assert client.put("/api/v1/namespace/big/", json={"role_mappings": mappings}).status_code == 422


def test_a_422_does_not_echo_a_large_body(client: TestClient) -> None:
    login(client)
    body = {"specification": ["x" * (10 * 1024 * 1024)]}
    response = client.post("/api/v1/specification/", json=body)
    assert response.status_code == 422
    assert len(response.content) < 2000


# ------------------------------------------------------------------ paths and names
def test_a_missing_static_directory_is_a_404(tmp_path: Path) -> None:
    app = Starlette(routes=[Mount("/static", static_files(tmp_path / "missing"))])
    with TestClient(app) as client:
        for path in ("/static/..%2F..%2Fetc%2Fpasswd", "/static/main.js", "/static/"):
            assert client.get(path).status_code == 404, path


@pytest.mark.parametrize("name", ["with space", "tab\there", "caf\u00e9", "nul\x00", "new\nline"])
def test_bad_namespace_names_are_a_400_even_for_an_admin(client: TestClient, name: str) -> None:
    login(client)  # alice is an admin of everything with the Dummy login
    path = f"/api/v1/namespace/{urllib.parse.quote(name, safe='')}/"
    for method in ("GET", "POST", "DELETE"):
        response = client.request(method, path)
        assert response.status_code == 400, (method, response.text)
        assert "Invalid namespace name" in response.json()["message"]


# ------------------------------------------------------------------ defaults the original has
def test_the_default_namespace_exists_from_the_first_start(
    client: TestClient, conda_store: CondaStore
) -> None:
    ensure_default_namespace(conda_store)
    ensure_default_namespace(conda_store)  # idempotent
    names = [n["name"] for n in client.get("/api/v1/namespace/").json()["data"]]
    assert names == ["default"]  # anonymous visitors see it, as the UI's sidebar expects
    login(client)
    response = client.post(
        "/api/v1/namespace/default/role", json={"other_namespace": "default", "role": "viewer"}
    )
    assert response.status_code == 200, response.text


def test_fields_the_original_always_fills(client: TestClient, conda_store: CondaStore) -> None:
    login(client)
    build_id = submit(client, "name: plain\ndependencies: [curl]\n")
    environment = client.get("/api/v1/environment/alice/plain/").json()["data"]
    assert environment["description"] == ""
    assert environment["current_build_id"] == build_id  # the newest build until one completes
    listed = client.get("/api/v1/environment/", params={"name": "plain"}).json()["data"]
    assert listed[0]["description"] == "" and listed[0]["current_build_id"] == build_id

    celery = client.get("/celery")
    assert set(celery.json()) == {
        "availability",
        "stats",
        "registered_tasks",
        "active_tasks",
        "scheduled_tasks",
    }
    missing = client.get("/api/v1/build/424242/docker/")
    assert missing.status_code == 404
    assert missing.headers["Deprecation"] == "True" and "Sunset" in missing.headers
    assert client.get("/api/v1/setting/").json()["data"]["default_permissions"] == "775"


def test_default_permissions_apply_and_the_package_cache_stays_shared(
    client: TestClient, worker: Any
) -> None:
    login(client)
    build = wait_for_build(client, submit(client, "name: modes\ndependencies: [hello-py]\n"))
    assert build["status"] == "COMPLETED", build["status_info"]
    prefix = Path(client.app.state.conda_store.store_directory) / "alice" / "envs" / "modes"
    files = [p for p in prefix.resolve().rglob("*") if p.is_file() and not p.is_symlink()]
    assert files
    for path in files:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode in (0o664, 0o775), (path, oct(mode))
    assert any(path.stat().st_nlink > 1 for path in files), "files are still hard links into the cache"
    assert stat.S_IMODE(prefix.resolve().stat().st_mode) == 0o775


# ------------------------------------------------------------------ concurrency
def test_concurrent_first_submissions_each_get_their_build(
    client: TestClient, conda_store: CondaStore
) -> None:
    cookies = dict(client.cookies)

    def submit_one(_: int) -> int:
        with TestClient(client.app, cookies=cookies) as own:
            body = {"specification": "name: racing\ndependencies: [curl]\n", "namespace": "fresh"}
            return own.post("/api/v1/specification/", json=body).status_code

    login(client)
    cookies = dict(client.cookies)
    with concurrent.futures.ThreadPoolExecutor(max_workers=30) as pool:
        statuses = list(pool.map(submit_one, range(30)))
    assert statuses == [200] * 30
    with conda_store.session() as session:
        namespaces = select(func.count()).select_from(Namespace).where(Namespace.name == "fresh")
        environments = select(func.count()).select_from(Environment).where(Environment.name == "racing")
        assert session.scalar(namespaces) == 1 and session.scalar(environments) == 1
        assert session.scalar(select(func.count()).select_from(Build)) == 30


# ------------------------------------------------------------------ a real server start
def test_a_started_server_lists_the_default_namespace(
    tmp_path: Path, store_settings: dict[str, dict[str, Any]], conda_store: CondaStore
) -> None:
    server = ServerProcess(write_config(tmp_path / "config.py", store_settings), tmp_path / "server.log")
    server.start()
    try:
        names = [n["name"] for n in httpx.get(f"{server.url}/api/v1/namespace/").json()["data"]]
        assert "default" in names
    finally:
        server.stop()
