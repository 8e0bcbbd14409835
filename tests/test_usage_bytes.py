"""Bytes on disk per namespace: measured once per build, hard links counted once, live and archived."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import login, submit, wait_for_build
from fastapi.testclient import TestClient
from sqlalchemy import delete, event, func, select, update

from conda_store_server import retention
from conda_store_server.app import CondaStore
from conda_store_server.db.models import Build, BuildStatus, BuildStorageGroup, Environment, utcnow
from conda_store_server.db.session import QUEUED_BUILDS
from conda_store_server.disk_usage import (
    NamespaceBytes,
    measure_prefix,
    namespace_bytes,
    record_build_storage,
)
from conda_store_server.periodic.retention import measure_unmeasured_builds
from conda_store_server.server.auth import AuthenticationToken
from conda_store_server.service import (
    create_build,
    ensure_namespace,
    ensure_specification,
    get_build,
    insert_once,
    prefix_of,
)
from conda_store_server.specification import CondaSpecification

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def linked_prefix(root: Path, cache: Path, private: int) -> Path:
    """A prefix as an install makes it: the package's files hard-linked from the cache, one file
    copied (as a prefix replacement does), a symbolic link, and its conda-meta record."""
    for relative in ("lib/liba.so", "share/a.txt"):
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(cache / relative, target)
    os.link(cache / "lib/liba.so", root / "lib/liba-again.so")  # the same inode twice
    write(root / "etc/a.conf", private)
    (root / "bin").mkdir()
    (root / "bin/a").symlink_to("../lib/liba.so")
    files = ["lib/liba.so", "lib/liba-again.so", "share/a.txt", "etc/a.conf", "bin/a"]
    write(root / "conda-meta/a-1.0-0.json", 0).write_text(json.dumps({"name": "a", "files": files}))
    return root


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    write(tmp_path / "cache/lib/liba.so", 1000)
    write(tmp_path / "cache/share/a.txt", 500)
    return tmp_path / "cache"


def test_a_prefix_splits_into_its_own_files_and_shared_groups(tmp_path: Path, cache: Path) -> None:
    one = linked_prefix(tmp_path / "one", cache, 300)
    two = linked_prefix(tmp_path / "two", cache, 200)
    private_one, groups_one = measure_prefix(str(one))
    private_two, groups_two = measure_prefix(str(two))
    record = (one / "conda-meta/a-1.0-0.json").stat().st_size
    assert private_one == 300 + record and private_two == 200 + record
    assert list(groups_one.values()) == [1500]  # liba.so once, though linked twice in the prefix
    assert groups_one == groups_two  # the same cached inodes: the same key
    assert measure_prefix(str(tmp_path / "missing")) == (0, {})

    # a package extracted again (other inodes) is stored twice on disk: another key
    fresh = tmp_path / "fresh-cache"
    write(fresh / "lib/liba.so", 1000)
    write(fresh / "share/a.txt", 500)
    _, groups_three = measure_prefix(str(linked_prefix(tmp_path / "three", fresh, 1)))
    assert groups_three.keys().isdisjoint(groups_one.keys())


def rows(conda_store: CondaStore, namespace: str, name: str, count: int) -> list[int]:
    """`count` COMPLETED builds of one environment (rows only: their prefixes are made by the test)."""
    with conda_store.session() as session:
        ns = ensure_namespace(session, namespace)
        specification = ensure_specification(session, CondaSpecification(name=name, dependencies=["python"]))
        environment = insert_once(
            session,
            Environment,
            {"namespace_id": ns.id, "name": name, "description": ""},
            ("namespace_id", "name"),
        )
        builds = [create_build(session, conda_store, environment, specification) for _ in range(count)]
        session.info.pop(QUEUED_BUILDS, None)
        for build in builds:
            build.status, build.ended_on = BuildStatus.COMPLETED, utcnow()
        environment.current_build_id = builds[-1].id
        return [build.id for build in builds]


def test_namespace_bytes_count_hard_links_once_live_and_archived(
    conda_store: CondaStore, tmp_path: Path, cache: Path
) -> None:
    first, second, failed = rows(conda_store, "lab", "env", 3)
    (elsewhere,) = rows(conda_store, "other", "env", 1)
    prefixes = {
        build_id: linked_prefix(tmp_path / str(build_id), cache, private)
        for build_id, private in ((first, 300), (second, 200), (failed, 50), (elsewhere, 100))
    }
    record = (prefixes[first] / "conda-meta/a-1.0-0.json").stat().st_size
    with conda_store.session() as session:
        for build_id, prefix in prefixes.items():
            record_build_storage(session, build_id, str(prefix))
        session.execute(update(Build).where(Build.id == failed).values(status=BuildStatus.FAILED))

    def usage() -> dict[str, NamespaceBytes]:
        with conda_store.session() as session:
            return namespace_bytes(session)

    assert usage() == {
        "lab": NamespaceBytes(live=300 + 200 + 2 * record + 1500, archived=0),
        "other": NamespaceBytes(live=100 + record + 1500, archived=0),  # its own namespace: counted there too
    }
    with conda_store.session() as session:
        retention.archive_build(session, conda_store, first)
    # the shared group is still used by a live build: it stays live
    assert usage()["lab"] == NamespaceBytes(live=200 + record + 1500, archived=300 + record)
    with conda_store.session() as session:
        get_build(session, second).deleted_on = utcnow()
    assert usage()["lab"] == NamespaceBytes(live=0, archived=300 + record + 1500)

    # the usage is read by one query, whatever the number of builds, and no prefix is walked
    statements: list[str] = []
    event.listen(conda_store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    for prefix in prefixes.values():
        for path in prefix.rglob("*"):
            if path.is_file() and not path.is_symlink():
                path.unlink()
    with conda_store.session() as session:
        statements.clear()
        assert namespace_bytes(session, "other") == {"other": NamespaceBytes(live=100 + record + 1500)}
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1


def unique_bytes(*prefixes: str) -> int:
    """Bytes of the regular files of these prefixes, each inode once (walked here, independently)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for prefix in prefixes:
        for directory, _, files in os.walk(prefix):
            for name in files:
                status = os.lstat(os.path.join(directory, name))
                if os.path.isfile(os.path.join(directory, name)) and not os.path.islink(
                    os.path.join(directory, name)
                ):
                    if (status.st_dev, status.st_ino) not in seen:
                        seen.add((status.st_dev, status.st_ino))
                        total += status.st_size
    return total


def prefix(conda_store: CondaStore, build_id: int) -> str:
    with conda_store.session() as session:
        return prefix_of(conda_store, get_build(session, build_id))


@SQLITE
def test_usage_and_metrics_report_bytes_on_disk_per_namespace(
    client: TestClient, worker, conda_store: CondaStore
) -> None:
    login(client)
    one = wait_for_build(client, submit(client, "name: one\ndependencies: [hello-py 1.1.0]\n", "lab"))
    two = wait_for_build(client, submit(client, "name: two\ndependencies: [hello-py 1.1.0, curl]\n", "lab"))
    old = wait_for_build(client, submit(client, "name: two\ndependencies: [hello-py 1.0.0]\n", "lab"))
    assert one["status"] == two["status"] == old["status"] == "COMPLETED"
    p_one, p_two, p_old = (prefix(conda_store, b["id"]) for b in (one, two, old))

    usage = client.get("/api/v1/usage/").json()["data"]["lab"]
    expected = unique_bytes(p_one, p_two, p_old)
    assert usage["bytes_on_disk"] == expected
    assert expected < unique_bytes(p_one) + unique_bytes(p_two) + unique_bytes(p_old)  # links shared
    assert usage["archived_bytes"] == 0
    assert usage["num_environments"] == 2 and usage["num_builds"] == 3  # the original's counts stay
    metrics = client.get("/metrics").text
    assert f'conda_store_namespace_bytes_on_disk{{namespace="lab"}} {float(expected)}' in metrics

    # archiving frees the bytes only that build held
    with conda_store.session() as session:
        retention.archive_build(session, conda_store, two["id"])
    usage = client.get("/api/v1/usage/").json()["data"]["lab"]
    assert usage["bytes_on_disk"] == unique_bytes(p_one, p_old)
    assert usage["archived_bytes"] > 0
    metrics = client.get("/metrics").text
    assert (
        f'conda_store_namespace_archived_bytes{{namespace="lab"}} {float(usage["archived_bytes"])}' in metrics
    )

    # a caller who sees one environment is told the bytes of that environment only
    backend = client.app.state.authentication.authentication
    token = backend.encrypt_token(AuthenticationToken("viewer", {"lab/one": ["viewer"]}))
    client.cookies.clear()
    seen = client.get("/api/v1/usage/", headers={"Authorization": f"Bearer {token}"}).json()["data"]
    assert seen["lab"]["bytes_on_disk"] == unique_bytes(p_one)

    # builds measured before this version are measured by the periodic pass
    with conda_store.session() as session:
        session.execute(delete(BuildStorageGroup).where(BuildStorageGroup.build_id == one["id"]))
        total = session.scalar(select(func.count()).select_from(BuildStorageGroup))
    assert total > 0
    assert measure_unmeasured_builds(conda_store) == [one["id"]]
    login(client)
    assert client.get("/api/v1/usage/").json()["data"]["lab"]["bytes_on_disk"] == unique_bytes(p_one, p_old)
    assert measure_unmeasured_builds(conda_store) == []
