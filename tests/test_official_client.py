"""The official client (`pip install conda-store`) against a live server and a real worker.

Every command of upstream-api §8 that works upstream must work here too; the client is run as
users run it, as the `conda-store` command with its environment variables.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live import live_server

from conda_store_server.app import CondaStore

CLIENT = shutil.which("conda-store", path=os.path.dirname(sys.executable))
SPEC = "name: client-env\ndependencies:\n  - python\n  - hello-py\n"


@pytest.fixture
def server_url(
    conda_store: CondaStore, store_settings: dict[str, dict[str, Any]], worker: Any
) -> Iterator[str]:
    with live_server(conda_store, store_settings) as url:
        # aiohttp's cookie jar ignores cookies set by an IP address: use the name, as users do
        yield url.replace("127.0.0.1", "localhost")


def client_environment(url: str, home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "TMPDIR": str(home),
        "CONDA_STORE_URL": url,
        "CONDA_STORE_AUTH": "basic",
        "CONDA_STORE_USERNAME": "alice",
        "CONDA_STORE_PASSWORD": "password",
    }


def run_client(url: str, *arguments: str, home: Path, timeout: float = 180) -> str:
    assert CLIENT, "the official client is part of the test extra"
    result = subprocess.run(
        [CLIENT, *arguments],
        capture_output=True,
        text=True,
        env=client_environment(url, home),
        timeout=timeout,
        cwd=home,
    )
    assert result.returncode == 0, f"conda-store {' '.join(arguments)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_every_client_command(server_url: str, tmp_path: Path) -> None:
    info = run_client(server_url, "info", home=tmp_path)
    assert "alice" in info

    token = run_client(server_url, "token", home=tmp_path)
    assert token.count(".") == 2, token

    # create through the client's Python API, as notebooks and scripts do
    script = (
        "import asyncio, sys\n"
        "from conda_store import api\n"
        "async def main():\n"
        "    async with api.CondaStoreAPI(sys.argv[1], auth_type='basic') as client:\n"
        "        print(await client.create_environment('alice', sys.argv[2]))\n"
        "asyncio.run(main())\n"
    )
    created = subprocess.run(
        [sys.executable, "-c", script, server_url, SPEC],
        capture_output=True,
        text=True,
        timeout=60,
        env=client_environment(server_url, tmp_path),
    )
    assert created.returncode == 0, created.stderr
    build_id = int(created.stdout.strip())

    run_client(server_url, "wait", str(build_id), "--interval", "1", "--timeout", "180", home=tmp_path)
    run_client(
        server_url, "wait", "alice/client-env", "--artifact", "archive", "--interval", "1", home=tmp_path
    )

    namespaces = json.loads(run_client(server_url, "list", "namespace", "--output", "json", home=tmp_path))
    assert "alice" in {namespace["name"] for namespace in namespaces}
    environments = json.loads(
        run_client(
            server_url,
            "list",
            "environment",
            "--package",
            "python",
            "--package",
            "hello-py",
            "--status",
            "COMPLETED",
            "--artifact",
            "CONDA_PACK",
            "--output",
            "json",
            home=tmp_path,
        )
    )
    assert [environment["name"] for environment in environments] == ["client-env"]
    builds = json.loads(run_client(server_url, "list", "build", "--output", "json", home=tmp_path))
    assert build_id in {build["id"] for build in builds}

    for artifact, suffix in (("yaml", "yaml"), ("lockfile", "lock"), ("archive", "tar.gz")):
        path = Path(
            run_client(server_url, "download", str(build_id), "--artifact", artifact, home=tmp_path).strip()
        )
        assert path.name == f"build-{build_id}.{suffix}" and path.stat().st_size > 0
    logs = tmp_path / "build.log"
    run_client(
        server_url,
        "download",
        str(build_id),
        "--artifact",
        "logs",
        "--output-filename",
        str(logs),
        home=tmp_path,
    )
    assert "installing" in logs.read_text()

    output = run_client(server_url, "run", "alice/client-env", "--", "hello-py", home=tmp_path)
    assert "hello from hello-py" in output


def test_submit_then_wait_on_the_environment(server_url: str, tmp_path: Path) -> None:
    """`conda-store wait ns/env` right after the first submission waits for that build."""
    script = (
        "import asyncio, sys\n"
        "from conda_store import api\n"
        "async def main():\n"
        "    async with api.CondaStoreAPI(sys.argv[1], auth_type='basic') as client:\n"
        "        for text in sys.argv[2:]:\n"
        "            print(await client.create_environment('alice', text))\n"
        "asyncio.run(main())\n"
    )
    good = "name: waited\ndependencies: [hello-tool]\n"
    bad = "name: doomed\ndependencies: [no-such-package]\n"
    created = subprocess.run(
        [sys.executable, "-c", script, server_url, good, bad],
        capture_output=True,
        text=True,
        timeout=60,
        env=client_environment(server_url, tmp_path),
    )
    assert created.returncode == 0, created.stderr
    run_client(server_url, "wait", "alice/waited", "--interval", "1", "--timeout", "120", home=tmp_path)
    failed = subprocess.run(
        [CLIENT or "conda-store", "wait", "alice/doomed", "--interval", "1", "--timeout", "120"],
        capture_output=True,
        text=True,
        env=client_environment(server_url, tmp_path),
        timeout=180,
        cwd=tmp_path,
    )
    assert failed.returncode != 0
    assert "failed" in failed.stdout + failed.stderr


def test_solve_prints_the_solved_packages(server_url: str, tmp_path: Path) -> None:
    """`conda-store solve env.yaml` reads name, version, channel_id and size of each package."""
    (tmp_path / "env.yaml").write_text("name: solved\ndependencies:\n  - hello-py\n")
    table = run_client(server_url, "solve", "env.yaml", home=tmp_path)
    for name in ("hello-py", "python", "tinylib"):
        assert name in table, table
    assert "Total Size:" in table
    packages = json.loads(run_client(server_url, "solve", "env.yaml", "--output", "json", home=tmp_path))
    assert {package["name"] for package in packages} == {"hello-py", "python", "tinylib"}
    assert all({"channel_id", "id", "package_id", "size"} <= set(package) for package in packages)
