"""Export an environment with its history from one deployment, import it into another."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    WorkerProcess,
    _postgres_database,
    login,
    submit,
    wait_for_build,
    write_config,
)
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from traitlets.config import Config

from conda_store_server.app import CondaStore
from conda_store_server.db.models import Build, Environment
from conda_store_server.server.app import CondaStoreServer
from conda_store_server.server.auth import AuthenticationToken

sqlite_source = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@dataclass
class Deployment:
    conda_store: CondaStore
    client: TestClient
    worker: WorkerProcess
    config_file: Path


@contextmanager
def other_deployment(
    tmp_path: Path, store_settings: dict[str, dict[str, Any]], database_url: str, name: str = "target"
) -> Iterator[Deployment]:
    """A second, independent deployment (its own database, store, storage and worker)."""
    settings = copy.deepcopy(store_settings)
    settings["CondaStore"].update(database_url=database_url, store_directory=str(tmp_path / f"{name}-store"))
    settings["LocalStorage"] = {"storage_path": str(tmp_path / f"{name}-storage")}
    conda_store = CondaStore(config=Config(settings))
    conda_store.ensure_database()
    config_file = write_config(tmp_path / f"{name}_config.py", settings)
    worker = WorkerProcess(config_file, tmp_path / f"{name}-worker.log").start()
    server = CondaStoreServer(config=Config({**settings, "CondaStoreServer": {}}))
    try:
        with TestClient(server.create_app(conda_store)) as client:
            yield Deployment(conda_store, client, worker, config_file)
    finally:
        worker.stop()
        conda_store.engine.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _postgres_database()


def builds_of(client: TestClient, namespace: str, name: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/build/?namespace={namespace}&name={name}&size=100")
    assert response.status_code == 200, response.text
    return sorted(response.json()["data"], key=lambda build: build["id"])


def history(client: TestClient) -> dict[str, Any]:
    """Three builds: a completed one, a failed one, and the current one (completed)."""
    login(client)
    first = wait_for_build(client, submit(client, "name: moved\ndependencies: [hello-py]\n"))
    failed = wait_for_build(client, submit(client, "name: moved\ndependencies: [no-such-package]\n"))
    current = wait_for_build(client, submit(client, "name: moved\ndependencies: [hello-tool, curl]\n"))
    assert (first["status"], failed["status"], current["status"]) == ("COMPLETED", "FAILED", "COMPLETED")
    response = client.get("/api/v1/environment/alice/moved/export/")
    assert response.status_code == 200, response.text
    assert "attachment" in response.headers["content-disposition"]
    return response.json()


def lockfile(client: TestClient, build_id: int) -> dict[str, Any]:
    response = client.get(f"/api/v1/build/{build_id}/lockfile/")
    assert response.status_code == 200, response.text
    return json.loads(response.text)


def packages(client: TestClient, build_id: int) -> list[tuple[str, str]]:
    response = client.get(f"/api/v1/build/{build_id}/packages/?size=100")
    assert response.status_code == 200, response.text
    return sorted((p["name"], p["version"]) for p in response.json()["data"])


def pins(lock: dict[str, Any]) -> list[tuple[str, str, str]]:
    return sorted((p["name"], p["version"], p["url"]) for p in lock["package"])


@sqlite_source
def test_sqlite_export_imported_into_postgresql_keeps_builds_and_lockfiles(
    client, worker, store_settings, tmp_path: Path, postgres_url: str
) -> None:
    bundle = history(client)
    assert (bundle["format"], bundle["version"], bundle["kind"]) == ("conda-store-bundle", 1, "environment")
    source = builds_of(client, "alice", "moved")
    [exported] = bundle["environments"]
    assert [b["id"] for b in exported["builds"]] == [b["id"] for b in source]
    assert exported["current_build_id"] == source[-1]["id"]
    assert all(b["logs"] for b in exported["builds"])

    with other_deployment(tmp_path, store_settings, postgres_url) as target:
        assert target.conda_store.engine.dialect.name == "postgresql"
        login(target.client)
        response = target.client.post("/api/v1/environment/import/", content=json.dumps(bundle))
        assert response.status_code == 200, response.text
        [imported] = response.json()["data"]["environments"]
        restoring = imported["restoring_build_id"]
        restored = wait_for_build(target.client, restoring)
        assert restored["status"] == "COMPLETED", target.client.get(f"/api/v1/build/{restoring}/logs/").text
        environment = target.client.get("/api/v1/environment/alice/moved/").json()["data"]
        assert environment["current_build_id"] == restoring

        moved = builds_of(target.client, "alice", "moved")
        assert [b["status"] for b in moved] == [b["status"] for b in source]
        assert [b["scheduled_on"] for b in moved[:-1]] == [b["scheduled_on"] for b in source[:-1]]
        assert [b["ended_on"] for b in moved[:2]] == [b["ended_on"] for b in source[:2]]
        assert moved[0]["archived"] is True and moved[1]["archived"] is False  # failed: nothing to archive
        for old, new in zip(source, moved, strict=True):
            spec = target.client.get(f"/api/v1/build/{new['id']}/").json()["data"]["specification"]
            assert (
                spec["spec"]
                == client.get(f"/api/v1/build/{old['id']}/").json()["data"]["specification"]["spec"]
            )
            if old["status"] == "COMPLETED":
                assert lockfile(target.client, new["id"]) == lockfile(client, old["id"])
        # the rebuilt current build installed exactly what its lockfile says
        assert pins(lockfile(target.client, restoring)) == pins(lockfile(client, source[-1]["id"]))
        assert packages(target.client, restoring) == packages(client, source[-1]["id"]) != []
        # the history's logs came along
        assert (
            target.client.get(f"/api/v1/build/{moved[1]['id']}/logs/").text == exported["builds"][1]["logs"]
        )
        # archived history is restorable from its lockfile
        restore = target.client.post(f"/api/v1/build/{moved[0]['id']}/restore/")
        assert restore.status_code == 200, restore.text
        again = wait_for_build(target.client, moved[0]["id"])
        assert again["status"] == "COMPLETED"
        assert pins(lockfile(target.client, moved[0]["id"])) == pins(lockfile(client, source[0]["id"]))


def counts(conda_store: CondaStore) -> tuple[int, int]:
    with conda_store.session() as session:
        return (
            session.scalar(select(func.count()).select_from(Environment)) or 0,
            session.scalar(select(func.count()).select_from(Build)) or 0,
        )


def small_bundle(lock: dict[str, Any] | None = None) -> dict[str, Any]:
    """A bundle of one failed build (nothing to rebuild): imports without a worker."""
    return {
        "format": "conda-store-bundle",
        "version": 1,
        "kind": "environment",
        "exported_on": "2026-01-01T00:00:00",
        "conda_store_version": "test",
        "environments": [
            {
                "namespace": "alice",
                "name": "small",
                "description": "imported",
                "current_build_id": None,
                "builds": [
                    {
                        "id": 7,
                        "status": "FAILED",
                        "status_info": "it failed there",
                        "scheduled_on": "2026-01-01T00:00:00",
                        "started_on": "2026-01-01T00:00:01",
                        "ended_on": "2026-01-01T00:00:02",
                        "specification": {
                            "name": "small",
                            "spec": {"name": "small", "dependencies": ["hello-py"]},
                            "is_lockfile": False,
                        },
                        "lockfile": lock,
                        "logs": "line one\nline two\n",
                    }
                ],
            }
        ],
    }


def broken(change) -> dict[str, Any]:
    bundle = small_bundle()
    change(bundle)
    return bundle


def _set(path: list[Any], value: Any):
    def change(bundle: dict[str, Any]) -> None:
        target = bundle
        for part in path[:-1]:
            target = target[part]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return change


ENV = ["environments", 0]
BUILD = [*ENV, "builds", 0]
BAD_BUNDLES = {
    "not an object": [1, 2],
    "wrong format": broken(_set(["format"], "something-else")),
    "future version": broken(_set(["version"], 2)),
    "no environments": broken(_set(["environments"], [])),
    "missing builds": broken(_set([*ENV, "builds"], KeyError)),
    "unknown field": broken(_set([*ENV, "colour"], "blue")),
    "bad environment name": broken(_set([*ENV, "name"], "a/b")),
    "bad namespace name": broken(_set([*ENV, "namespace"], "..")),
    "unknown status": broken(_set([*BUILD, "status"], "DONE")),
    "bad timestamp": broken(_set([*BUILD, "scheduled_on"], "yesterday")),
    "negative size": broken(_set([*BUILD, "size"], -1)),
    "logs not text": broken(_set([*BUILD, "logs"], 5)),
    "bad specification": broken(_set([*BUILD, "specification", "spec"], {"dependencies": "python"})),
    "bad lockfile": broken(_set([*BUILD, "lockfile"], {"version": 1, "package": "none"})),
    "current build missing": broken(_set([*ENV, "current_build_id"], 99)),
    "current build failed": broken(_set([*ENV, "current_build_id"], 7)),
    "repeated build ids": broken(
        lambda b: b["environments"][0]["builds"].append(b["environments"][0]["builds"][0])
    ),
    "deployment bundle": broken(_set(["kind"], "deployment")),
}


@sqlite_source
@pytest.mark.parametrize("case", sorted(BAD_BUNDLES))
def test_bad_bundles_are_a_400_and_create_nothing(client, conda_store, case: str) -> None:
    login(client)
    before = counts(conda_store)
    response = client.post("/api/v1/environment/import/", content=json.dumps(BAD_BUNDLES[case]))
    assert response.status_code == 400, (case, response.text)
    assert response.json()["message"]
    assert counts(conda_store) == before


@sqlite_source
def test_bad_requests_are_refused_and_create_nothing(client, conda_store) -> None:
    login(client)
    before = counts(conda_store)
    assert client.post("/api/v1/environment/import/", content=b"{not json").status_code == 400
    assert client.post("/api/v1/environment/import/", content=b"").status_code == 400
    response = client.post("/api/v1/environment/import/?namespace=a%2Fb", content=json.dumps(small_bundle()))
    assert response.status_code == 400, response.text

    def chunks():
        for _ in range(41):
            yield b" " * (1024 * 1024)

    too_large = client.post("/api/v1/environment/import/", content=chunks())
    assert too_large.status_code == 413, too_large.text
    assert counts(conda_store) == before


@sqlite_source
def test_a_lockfile_the_policy_refuses_is_a_400(client, conda_store) -> None:
    login(client)
    lock = {
        "version": 1,
        "metadata": {
            "content_hash": {"linux-64": "x"},
            "channels": [{"url": "https://elsewhere.example/channel", "used_env_vars": []}],
            "platforms": ["linux-64"],
            "sources": ["environment.yml"],
        },
        "package": [
            {
                "name": "evil",
                "version": "1.0",
                "manager": "conda",
                "platform": "linux-64",
                "dependencies": {},
                "url": "http://127.0.0.1:1/evil-1.0-0.conda",
                "hash": {"md5": "0" * 32, "sha256": "0" * 64},
                "category": "main",
                "optional": False,
            }
        ],
    }
    before = counts(conda_store)
    response = client.post("/api/v1/environment/import/", content=json.dumps(small_bundle(lock)))
    assert response.status_code == 400, response.text
    assert "refused by this deployment" in response.json()["message"]
    assert counts(conda_store) == before


@sqlite_source
def test_import_into_another_namespace_needs_create_there(client, conda_store) -> None:
    anonymous = client.post("/api/v1/environment/import/", content=json.dumps(small_bundle()))
    assert anonymous.status_code in (401, 403)
    backend = client.app.state.authentication.authentication
    token = backend.encrypt_token(AuthenticationToken("alice", {"alice/*": ["admin"]}))
    other = client.post(
        "/api/v1/environment/import/?namespace=bob",
        content=json.dumps(small_bundle()),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert other.status_code == 403, other.text
    login(client)
    response = client.post("/api/v1/environment/import/", content=json.dumps(small_bundle()))
    assert response.status_code == 200, response.text
    [imported] = response.json()["data"]["environments"]
    assert imported["restoring_build_id"] is None
    [build] = builds_of(client, "alice", "small")
    assert (build["status"], build["status_info"], build["ended_on"]) == (
        "FAILED",
        "it failed there",
        "2026-01-01T00:00:02",
    )
    assert client.get(f"/api/v1/build/{build['id']}/logs/").text == "line one\nline two\n"
    assert client.get("/api/v1/environment/alice/small/").json()["data"]["description"] == "imported"
    # the same import again: the environment exists
    before = counts(conda_store)
    again = client.post("/api/v1/environment/import/", content=json.dumps(small_bundle()))
    assert again.status_code == 409, again.text
    assert counts(conda_store) == before
    # exporting needs read access
    client.post("/logout/")
    assert client.get("/api/v1/environment/alice/small/export/").status_code in (401, 403)
    login(client)
    assert client.get("/api/v1/environment/alice/nothing/export/").status_code == 404
