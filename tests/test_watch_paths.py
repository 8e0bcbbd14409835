"""watch_paths: environment files become builds in the filesystem namespace, changed files only."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import WorkerProcess, login, wait_for_build
from sqlalchemy import func, select

from conda_store_server.db.models import Build
from conda_store_server.worker.watch_paths import register_watched_environments

ENVIRONMENT = "name: {name}\ndependencies:\n  - {package}\n"


def build_count(conda_store) -> int:
    with conda_store.session() as session:
        return session.scalar(select(func.count()).select_from(Build))


def test_new_and_changed_files_are_built_unchanged_ones_not(conda_store, tmp_path: Path, caplog) -> None:
    watched = tmp_path / "environments"
    watched.mkdir()
    (watched / "one.yaml").write_text(ENVIRONMENT.format(name="one", package="hello-py"))
    (watched / "two.yml").write_text(ENVIRONMENT.format(name="two", package="hello-tool"))
    (watched / "notes.txt").write_text("not an environment")
    (watched / "broken.yaml").write_text("name: [unclosed\n")
    single = tmp_path / "single.yaml"
    single.write_text(ENVIRONMENT.format(name="single", package="hello-py"))
    paths = [str(watched), str(single), str(tmp_path / "missing")]

    first = register_watched_environments(conda_store, paths)
    assert len(first) == 3
    assert "broken.yaml" in caplog.text and "missing" in caplog.text
    assert register_watched_environments(conda_store, paths) == []  # nothing changed
    assert build_count(conda_store) == 3

    (watched / "one.yaml").write_text(ENVIRONMENT.format(name="one", package="hello-tool"))
    changed = register_watched_environments(conda_store, paths)
    assert len(changed) == 1
    with conda_store.session() as session:
        build = session.get(Build, changed[0])
        assert (build.environment.namespace.name, build.environment.name) == (
            conda_store.filesystem_namespace,
            "one",
        )
    # changing it back is a change again (compared with the latest build, not with any build)
    (watched / "one.yaml").write_text(ENVIRONMENT.format(name="one", package="hello-py"))
    assert len(register_watched_environments(conda_store, paths)) == 1


def test_a_worker_builds_its_watched_files(client, config_file, tmp_path: Path) -> None:
    watched = tmp_path / "environments"
    watched.mkdir()
    (watched / "watched.yaml").write_text(ENVIRONMENT.format(name="watched", package="hello-py"))
    worker = WorkerProcess(config_file, tmp_path / "worker.log").start(
        f"--CondaStoreWorker.watch_paths={[str(watched)]!r}"
    )
    try:
        login(client)
        deadline = time.monotonic() + 90
        environments: list[dict] = []
        while time.monotonic() < deadline:
            environments = client.get("/api/v1/environment/?namespace=filesystem").json()["data"]
            if environments and environments[0]["current_build_id"]:
                break
            time.sleep(0.5)
        assert [e["name"] for e in environments] == ["watched"], worker.output()
        build = wait_for_build(client, environments[0]["current_build_id"])
        assert build["status"] == "COMPLETED"
    finally:
        worker.stop()
