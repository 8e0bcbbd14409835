"""Build retention, archive and restore: real builds, real prefixes, the layered settings."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import login, submit, wait_for_build
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from traitlets import TraitError

from conda_store_server import discarded_prefixes, retention, service
from conda_store_server.app import CondaStore
from conda_store_server.build.pipeline import run_build
from conda_store_server.db.models import (
    Build,
    BuildArtifact,
    BuildArtifactType,
    BuildStatus,
    Environment,
    utcnow,
)
from conda_store_server.db.session import QUEUED_BUILDS
from conda_store_server.exception import ConflictError
from conda_store_server.periodic import retention as retention_sweep
from conda_store_server.periodic.retention import run_storage_lifecycle
from conda_store_server.server.auth import AuthenticationToken
from conda_store_server.settings import set_settings
from conda_store_server.specification import CondaSpecification
from conda_store_server.worker.supervisor import StoreRecipe, Supervisor

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def build_of(client: TestClient, build_id: int) -> dict[str, Any]:
    return client.get(f"/api/v1/build/{build_id}/").json()["data"]


def artifact_types(build: dict[str, Any]) -> set[str]:
    return {artifact["artifact_type"] for artifact in build["build_artifacts"]}


def prefix_of(conda_store: CondaStore, build_id: int) -> str:
    with conda_store.session() as session:
        return service.prefix_of(conda_store, service.get_build(session, build_id))


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail("the condition did not hold in time")


def build_ids(client: TestClient, **query: Any) -> list[int]:
    response = client.get("/api/v1/build/", params=query)
    assert response.status_code == 200, response.text
    return sorted(build["id"] for build in response.json()["data"])


def installed(prefix: str) -> list[tuple[str, str]]:
    records = [json.loads(path.read_text()) for path in Path(prefix, "conda-meta").glob("*.json")]
    return sorted((record["name"], record["version"]) for record in records)


def three_builds(client: TestClient, name: str) -> list[dict[str, Any]]:
    """Three completed builds of one environment, oldest first, each a different specification."""
    builds = []
    for dependencies in ("[hello-py 1.0.0]", "[hello-py 1.1.0]", "[hello-py 1.1.0, curl]"):
        build = wait_for_build(client, submit(client, f"name: {name}\ndependencies: {dependencies}\n"))
        assert build["status"] == "COMPLETED", build
        builds.append(build)
    return builds


@SQLITE
def test_retention_count_archives_the_oldest_and_a_rollback_restores_it(
    client: TestClient, worker, conda_store: CondaStore
) -> None:
    login(client)
    assert client.put("/api/v1/setting/alice/kept/", json={"build_retention_count": 2}).status_code == 200
    first, second, third = three_builds(client, "kept")
    lock_before = client.get(f"/api/v1/build/{first['id']}/lockfile/").content
    packages_before = client.get(f"/api/v1/build/{first['id']}/packages/").json()["data"]
    first_prefix = prefix_of(conda_store, first["id"])

    # archived right after the third build completed: the newest two stay live
    wait_until(lambda: build_of(client, first["id"])["archived"])
    archived = build_of(client, first["id"])
    assert archived["archived_on"] is not None and archived["status"] == "COMPLETED"
    assert artifact_types(archived) == {"LOCKFILE", "YAML", "LOGS"}  # CONDA_PACK and DIRECTORY gone
    assert not os.path.exists(first_prefix)
    assert client.get(f"/api/v1/build/{first['id']}/lockfile/").content == lock_before
    assert client.get(f"/api/v1/build/{first['id']}/yaml/").status_code == 200
    assert "COMPLETED" in client.get(f"/api/v1/build/{first['id']}/logs/").text
    assert client.get(f"/api/v1/build/{first['id']}/archive/").status_code == 404
    assert not build_of(client, second["id"])["archived"] and not build_of(client, third["id"])["archived"]
    assert build_ids(client, archived="true", name="kept") == [first["id"]]
    assert build_ids(client, archived="false", name="kept") == [second["id"], third["id"]]

    # a rollback to the archived build restores it first, then makes it current
    response = client.put("/api/v1/environment/alice/kept/", json={"build_id": first["id"]})
    assert response.status_code == 200, response.text
    assert "restored" in response.json()["message"]
    environment = client.get("/api/v1/environment/alice/kept/").json()["data"]
    assert environment["current_build_id"] == third["id"]  # unchanged until the restore completes
    restored = wait_for_build(client, first["id"], lambda b: b["status"] == "COMPLETED" and not b["archived"])
    assert restored["archived_on"] is None
    wait_until(
        lambda: (
            client.get("/api/v1/environment/alice/kept/").json()["data"]["current_build_id"] == first["id"]
        )
    )
    # the same lockfile, the same packages, installed again into the build's own prefix
    assert client.get(f"/api/v1/build/{first['id']}/lockfile/").content == lock_before
    assert client.get(f"/api/v1/build/{first['id']}/packages/").json()["data"] == packages_before
    assert prefix_of(conda_store, first["id"]) == first_prefix
    assert installed(first_prefix) == sorted((p["name"], p["version"]) for p in packages_before)
    link = Path(conda_store.store_directory, "alice", "envs", "kept")
    assert os.path.realpath(link) == os.path.realpath(first_prefix)
    # the restore's log is shipped after COMPLETED is visible (the supervisor sends its last lines)
    wait_until(lambda: "restored from its lockfile" in client.get(f"/api/v1/build/{first['id']}/logs/").text)
    assert "no solve needed" in client.get(f"/api/v1/build/{first['id']}/logs/").text
    # the restored build completed last: now the second build is the one past the count
    wait_until(lambda: build_of(client, second["id"])["archived"])
    assert not build_of(client, third["id"])["archived"]


@SQLITE
def test_restore_route_cancel_and_every_refusal(client: TestClient, worker, conda_store: CondaStore) -> None:
    login(client)
    first = wait_for_build(client, submit(client, "name: back\ndependencies: [hello-py 1.0.0]\n"))
    second = wait_for_build(client, submit(client, "name: back\ndependencies: [hello-py 1.1.0]\n"))
    assert first["status"] == second["status"] == "COMPLETED"

    refused = client.post(f"/api/v1/build/{first['id']}/restore/")
    assert refused.status_code == 409 and "not archived" in refused.json()["message"]
    assert client.post("/api/v1/build/987654/restore/").status_code == 404
    assert client.post("/api/v1/build/not-a-number/restore/").status_code in (400, 422)
    with conda_store.session() as session:
        with pytest.raises(ConflictError, match="current build"):
            retention.archive_build(session, conda_store, second["id"])
    with conda_store.session() as session:
        retention.archive_build(session, conda_store, first["id"])
    with conda_store.session() as session:
        with pytest.raises(ConflictError, match="already archived"):
            retention.archive_build(session, conda_store, first["id"])

    # without the editor's permission: 403 and nothing queued
    client.cookies.clear()
    backend = client.app.state.authentication.authentication
    viewer = backend.encrypt_token(AuthenticationToken("viewer", {"alice/*": ["viewer"]}))
    forbidden = client.post(
        f"/api/v1/build/{first['id']}/restore/", headers={"Authorization": f"Bearer {viewer}"}
    )
    assert forbidden.status_code == 403
    login(client)
    assert build_of(client, first["id"])["status"] == "COMPLETED"

    # a restore is a normal build: canceled while queued (no worker running), it stays archived
    worker.stop()
    queued = client.post(f"/api/v1/build/{first['id']}/restore/")
    assert queued.status_code == 200, queued.text
    assert queued.json()["data"] == {"build_id": first["id"]}
    assert build_of(client, first["id"])["status"] == "QUEUED"
    again = client.post(f"/api/v1/build/{first['id']}/restore/")
    assert again.status_code == 409 and "already being restored" in again.json()["message"]
    assert client.put(f"/api/v1/build/{first['id']}/cancel/").status_code == 200
    canceled = build_of(client, first["id"])
    assert canceled["status"] == "CANCELED" and canceled["archived"]
    worker.start()
    assert client.post(f"/api/v1/build/{first['id']}/restore/").status_code == 200
    restored = wait_for_build(client, first["id"])
    assert restored["status"] == "COMPLETED" and not restored["archived"]
    assert os.path.isdir(prefix_of(conda_store, first["id"]))
    # restored without a rollback: the environment stays on its current build
    assert client.get("/api/v1/environment/alice/back/").json()["data"]["current_build_id"] == second["id"]

    client.delete(f"/api/v1/build/{first['id']}/")
    with conda_store.session() as session:
        with pytest.raises(ConflictError, match="deleted"):
            retention.archive_build(session, conda_store, first["id"])


def fake_build(
    conda_store: CondaStore,
    session,
    environment,
    specification,
    status: BuildStatus,
    days_ago: float,
) -> Build:
    """A finished build row with a real prefix and stored artifacts (the policy tests need no solve)."""
    build = service.create_build(session, conda_store, environment, specification)
    session.info.pop(QUEUED_BUILDS, None)  # nothing for a worker to take
    build.status = status
    build.ended_on = utcnow() - datetime.timedelta(days=days_ago)
    if status == BuildStatus.COMPLETED:
        prefix = service.prefix_of(conda_store, build)
        Path(prefix, "conda-meta").mkdir(parents=True)
        Path(prefix, "conda-meta", "history").write_text("fake\n")
        session.add(BuildArtifact(build=build, artifact_type=BuildArtifactType.DIRECTORY, key=prefix))
        for kind, key in (
            (BuildArtifactType.LOCKFILE, "lockfile"),
            (BuildArtifactType.CONDA_PACK, "archive"),
        ):
            stored = f"{key}/{build.id}"
            conda_store.storage.set(stored, json.dumps({"build": build.id}).encode())
            session.add(BuildArtifact(build=build, artifact_type=kind, key=stored))
    session.flush()
    return build


def history(conda_store: CondaStore, name: str, rows: list[tuple[BuildStatus, float]], current: int | None):
    """An environment `alice/name` with builds (status, days since it ended), oldest first."""
    with conda_store.session() as session:
        namespace = service.ensure_namespace(session, "alice")
        specification = service.ensure_specification(
            session, CondaSpecification(name=name, dependencies=["python"])
        )
        environment = service.insert_once(
            session,
            Environment,
            {"namespace_id": namespace.id, "name": name, "description": ""},
            ("namespace_id", "name"),
        )
        builds = [fake_build(conda_store, session, environment, specification, s, d) for s, d in rows]
        if current is not None:
            environment.current_build_id = builds[current].id
        return environment.id, [b.id for b in builds]


def archived_ids(conda_store: CondaStore, ids: list[int]) -> list[int]:
    with conda_store.session() as session:
        return sorted(
            session.scalars(select(Build.id).where(Build.id.in_(ids), Build.archived_on.is_not(None)))
        )


def test_retention_never_archives_current_unfinished_newest_or_failed(conda_store: CondaStore) -> None:
    C, F, X, Q = BuildStatus.COMPLETED, BuildStatus.FAILED, BuildStatus.CANCELED, BuildStatus.QUEUED
    # oldest first: the current build is the oldest one (a rollback), the newest completed is [4]
    environment_id, ids = history(
        conda_store, "policy", [(C, 40), (C, 30), (F, 25), (C, 20), (C, 10), (X, 5), (Q, 0)], current=0
    )
    with conda_store.session() as session:
        set_settings(session, conda_store, {"build_retention_count": 1}, "alice", "policy")
    assert run_storage_lifecycle(conda_store) == [ids[3], ids[1]]
    assert archived_ids(conda_store, ids) == [ids[1], ids[3]]
    for build_id in (ids[1], ids[3]):
        assert not os.path.exists(prefix_of(conda_store, build_id))
        assert conda_store.storage.exists(f"lockfile/{build_id}")
        assert not conda_store.storage.exists(f"archive/{build_id}")
    for kept in (ids[0], ids[4]):
        assert os.path.isdir(prefix_of(conda_store, kept))
        assert conda_store.storage.exists(f"archive/{kept}")
    with conda_store.session() as session:
        statuses = dict(session.execute(select(Build.id, Build.status).where(Build.id.in_(ids))).all())
        kinds = set(
            session.scalars(select(BuildArtifact.artifact_type).where(BuildArtifact.build_id == ids[1]))
        )
    assert [statuses[i] for i in ids] == [C, C, F, C, C, X, Q]  # statuses untouched
    assert kinds == {BuildArtifactType.LOCKFILE, BuildArtifactType.LOGS}
    assert run_storage_lifecycle(conda_store) == []  # nothing more to do: idempotent


def test_a_workers_first_pass_deletes_what_failed_and_canceled_builds_left_installed(
    conda_store: CondaStore,
) -> None:
    """As a store written before builds discarded their prefix as they ended still holds."""
    C, F, X, Q = BuildStatus.COMPLETED, BuildStatus.FAILED, BuildStatus.CANCELED, BuildStatus.QUEUED
    _, ids = history(conda_store, "leftovers", [(F, 9), (X, 8), (C, 7), (Q, 0), (F, 6)], current=2)
    for build_id in ids[:4]:  # the last FAILED build never got as far as installing
        Path(prefix_of(conda_store, build_id), "bin").mkdir(parents=True, exist_ok=True)
        Path(prefix_of(conda_store, build_id), "bin", "python").write_text("half installed\n")

    run_storage_lifecycle(conda_store)  # a later pass of a worker leaves them (no walk every time)
    assert all(os.path.isdir(prefix_of(conda_store, build_id)) for build_id in ids[:4])

    assert retention_sweep.discard_leftover_prefixes(conda_store, batch=1) == [ids[0], ids[1]]
    assert not os.path.exists(prefix_of(conda_store, ids[0]))
    assert not os.path.exists(prefix_of(conda_store, ids[1]))
    assert os.path.isdir(prefix_of(conda_store, ids[2]))  # COMPLETED, the current build
    assert os.path.isdir(prefix_of(conda_store, ids[3]))  # QUEUED: its worker will replace it
    with conda_store.session() as session:
        statuses = dict(session.execute(select(Build.id, Build.status).where(Build.id.in_(ids))).all())
    assert [statuses[i] for i in ids] == [F, X, C, Q, F]
    assert retention_sweep.discard_leftover_prefixes(conda_store) == []
    trash = Path(conda_store.store_directory, discarded_prefixes.DIRECTORY_NAME)
    assert list(trash.iterdir()) == []

    Path(prefix_of(conda_store, ids[4]), "lib").mkdir(parents=True)
    run_storage_lifecycle(conda_store, look_for_leftovers=True)  # as a worker's first pass runs it
    assert not os.path.exists(prefix_of(conda_store, ids[4]))


def test_retention_days_by_namespace_with_environment_override(conda_store: CondaStore) -> None:
    C = BuildStatus.COMPLETED
    _, old = history(conda_store, "old", [(C, 40), (C, 20), (C, 3), (C, 2)], current=3)
    _, young = history(conda_store, "young", [(C, 40), (C, 20), (C, 3)], current=2)
    with conda_store.session() as session:
        set_settings(session, conda_store, {"build_retention_days": 7.5}, "alice")
        set_settings(session, conda_store, {"build_retention_days": 30}, "alice", "young")
    run_storage_lifecycle(conda_store)
    assert archived_ids(conda_store, old) == old[:2]
    assert archived_ids(conda_store, young) == young[:1]

    # count and days together: a build goes when either rule says so; the newest always stays
    _, both = history(conda_store, "both", [(C, 100), (C, 90), (C, 1), (C, 0.5)], current=None)
    with conda_store.session() as session:
        set_settings(
            session, conda_store, {"build_retention_count": 3, "build_retention_days": 0.1}, "alice", "both"
        )
    run_storage_lifecycle(conda_store)
    assert archived_ids(conda_store, both) == both[:3]


def test_retention_by_deployment_trait_and_none_keeps_everything(conda_store: CondaStore) -> None:
    C = BuildStatus.COMPLETED
    _, ids = history(conda_store, "all", [(C, 400), (C, 300), (C, 200)], current=2)
    assert run_storage_lifecycle(conda_store) == []  # default None: keep all, as today
    conda_store.build_retention_count = 2
    assert run_storage_lifecycle(conda_store) == [ids[0]]


def test_the_periodic_pass_runs_once_per_period_for_the_deployment(conda_store: CondaStore) -> None:
    C = BuildStatus.COMPLETED
    _, ids = history(conda_store, "periodic", [(C, 3), (C, 2), (C, 1)], current=2)
    conda_store.build_retention_count = 1
    first = Supervisor(conda_store, StoreRecipe(()), concurrency=1)
    second = Supervisor(conda_store, StoreRecipe(()), concurrency=1)
    first._storage_lifecycle_when_due()
    second._storage_lifecycle_when_due()
    assert first._lifecycle is not None and second._lifecycle is None  # claimed by the first
    first._lifecycle.join(30)
    assert archived_ids(conda_store, ids) == ids[:2]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"build_retention_count": 0},
            "build_retention_count (completed builds kept per environment) must be at least 1",
        ),
        ({"build_retention_count": -3}, "must be at least 1"),
        ({"build_retention_count": 1.5}, "must be an integer or null"),
        ({"build_retention_count": "3"}, "must be an integer or null, not '3'"),
        ({"build_retention_count": True}, "must be an integer or null, not True"),
        (
            {"build_retention_days": 0},
            "build_retention_days (days a completed build stays live) must be greater than 0",
        ),
        ({"build_retention_days": -1.5}, "must be greater than 0"),
        ({"build_retention_days": "30d"}, "must be a number or null"),
        ({"build_retention_days": [30]}, "must be a number or null"),
    ],
)
def test_bad_retention_settings_are_400_and_change_nothing(client: TestClient, body, message) -> None:
    login(client)
    before = client.get("/api/v1/setting/alice/env/").json()["data"]
    for path in ("/api/v1/setting/", "/api/v1/setting/alice/", "/api/v1/setting/alice/env/"):
        response = client.put(path, json=body)
        assert response.status_code == 400, response.text
        assert message in response.json()["message"]
    assert client.get("/api/v1/setting/alice/env/").json()["data"] == before


def test_retention_settings_are_layered_and_read_back(client: TestClient) -> None:
    login(client)
    base = client.get("/api/v1/setting/").json()["data"]
    assert base["build_retention_count"] is None and base["build_retention_days"] is None
    assert client.put("/api/v1/setting/alice/", json={"build_retention_count": 4}).status_code == 200
    assert client.put("/api/v1/setting/alice/env/", json={"build_retention_days": 2.5}).status_code == 200
    env = client.get("/api/v1/setting/alice/env/").json()["data"]
    assert env["build_retention_count"] == 4 and env["build_retention_days"] == 2.5
    assert client.get("/api/v1/setting/other/").json()["data"]["build_retention_count"] is None
    # null lifts the limit again
    assert client.put("/api/v1/setting/alice/", json={"build_retention_count": None}).status_code == 200
    assert client.get("/api/v1/setting/alice/env/").json()["data"]["build_retention_count"] is None


@pytest.mark.parametrize(
    ("trait", "value"),
    [
        ("build_retention_count", 0),
        ("build_retention_days", 0.0),
        ("build_retention_days", float("nan")),
        ("max_environments", -1),
        ("max_storage_bytes", -5),
    ],
)
def test_bad_lifecycle_traits_name_the_trait(trait: str, value: Any) -> None:
    with pytest.raises(TraitError, match=f"c.CondaStore.{trait} "):
        CondaStore(**{trait: value})


def test_a_restore_that_cannot_read_its_lockfile_fails_with_the_reason(conda_store: CondaStore) -> None:
    C = BuildStatus.COMPLETED
    _, ids = history(conda_store, "lost", [(C, 2), (C, 1)], current=1)
    with conda_store.session() as session:
        retention.archive_build(session, conda_store, ids[0])
    conda_store.storage.delete(f"lockfile/{ids[0]}")
    with conda_store.session() as session:
        retention.restore_build(session, conda_store, ids[0])
        session.info.pop(QUEUED_BUILDS, None)
        session.execute(update(Build).where(Build.id == ids[0]).values(status=BuildStatus.BUILDING))
    assert run_build(conda_store, ids[0]) == BuildStatus.FAILED
    with conda_store.session() as session:
        build = session.get(Build, ids[0])
        assert build.archived_on is not None  # still archived: it can be restored once fixed
        assert "lockfile of build" in build.status_info


class TestPipRestore:
    """A build with `pip:` dependencies comes back from its lockfile with the same pip files."""

    @pytest.fixture
    def database_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'conda-store.sqlite'}"

    @pytest.fixture
    def store_settings(self, store_settings, index):
        store_settings["CondaStore"]["pypi_index_url"] = index.authenticated_index_url
        return store_settings

    def test_restore_reinstalls_the_locked_pip_packages(
        self, client: TestClient, worker, conda_store
    ) -> None:
        login(client)
        spec = "name: piprestore\ndependencies:\n  - python\n  - tinylib\n  - pip:\n    - pipgreet[fancy]\n"
        first = wait_for_build(client, submit(client, spec))
        assert first["status"] == "COMPLETED", client.get(f"/api/v1/build/{first['id']}/logs/").text
        second = wait_for_build(client, submit(client, "name: piprestore\ndependencies: [python]\n"))
        assert second["status"] == "COMPLETED"
        lock_before = client.get(f"/api/v1/build/{first['id']}/lockfile/").content
        pip_before = [p for p in json.loads(lock_before)["package"] if p["manager"] == "pip"]
        assert pip_before
        with conda_store.session() as session:
            retention.archive_build(session, conda_store, first["id"])
        prefix = prefix_of(conda_store, first["id"])
        assert not os.path.exists(prefix)

        assert client.post(f"/api/v1/build/{first['id']}/restore/").status_code == 200
        restored = wait_for_build(client, first["id"])
        assert restored["status"] == "COMPLETED", client.get(f"/api/v1/build/{first['id']}/logs/").text
        assert client.get(f"/api/v1/build/{first['id']}/lockfile/").content == lock_before
        log = client.get(f"/api/v1/build/{first['id']}/logs/").text
        assert log.count("resolving pip requirements") == 1  # only the first build resolved
        code = "import importlib.metadata as m; print(sorted((d.name, d.version) for d in m.distributions()))"
        listed = subprocess.run(
            [f"{prefix}/bin/python", "-c", code], capture_output=True, text=True, check=True
        )
        for package in pip_before:
            assert repr((package["name"], package["version"])) in listed.stdout or (
                repr((package["name"].replace("-", "_"), package["version"])) in listed.stdout
            )


def test_archiving_removes_the_image_but_keeps_blobs_other_builds_use(conda_store: CondaStore) -> None:
    from test_registry_v2 import sha, write_image

    C = BuildStatus.COMPLETED
    _, (shared, unique, current) = history(conda_store, "image", [(C, 3), (C, 2), (C, 1)], current=2)
    first = write_image(conda_store, shared, b"same layer")
    write_image(conda_store, current, b"same layer")
    only = write_image(conda_store, unique, b"a layer of its own")
    storage = conda_store.storage
    with conda_store.session() as session:
        retention.archive_build(session, conda_store, shared)
        retention.archive_build(session, conda_store, unique)
    assert not storage.exists(f"docker/manifest/{first['key']}")
    assert not storage.exists(f"docker/manifest/{only['key']}")
    for blob in (first["manifest"], first["config"], first["layer"]):
        assert storage.exists(f"docker/blobs/{sha(blob)}")  # the current build's image needs them
    assert not storage.exists(f"docker/blobs/{sha(only['layer'])}")
    with conda_store.session() as session:
        kinds = {
            build_id: set(
                session.scalars(select(BuildArtifact.artifact_type).where(BuildArtifact.build_id == build_id))
            )
            for build_id in (shared, unique, current)
        }
    assert kinds[shared] == kinds[unique] == {BuildArtifactType.LOCKFILE, BuildArtifactType.LOGS}
    assert BuildArtifactType.DOCKER_MANIFEST in kinds[current]


@pytest.mark.parametrize("value", ["maybe", "", "2", "archived"])
def test_a_bad_archived_filter_is_a_422_naming_it(client: TestClient, value: str) -> None:
    login(client)
    response = client.get("/api/v1/build/", params={"archived": value})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "archived"]
