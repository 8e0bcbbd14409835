"""What a build that ends FAILED or CANCELED installed is moved out of the way before its status
commits, then deleted; nothing outside the store is touched, and only the claim's own worker
ends a build (builds that fail or are canceled mid-way are covered in test_pip_builds and
test_supervision)."""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path

import pytest
from conftest import login, submit
from sqlalchemy import update

from conda_store_server import discarded_prefixes
from conda_store_server.build import pipeline
from conda_store_server.db.models import Build, BuildStatus, utcnow
from conda_store_server.exception import BuildPathError
from conda_store_server.periodic.retention import run_storage_lifecycle
from conda_store_server.service import get_build, prefix_of
from conda_store_server.worker import supervisor


def make_prefix(path: Path) -> Path:
    (path / "lib" / "python3.11").mkdir(parents=True)
    (path / "lib" / "python3.11" / "module.py").write_text("x = 1\n")
    (path / "bin").mkdir()
    os.symlink("../lib/python3.11/module.py", path / "bin" / "link")
    return path


def test_a_prefix_in_the_store_is_moved_into_the_discarded_directory(tmp_path) -> None:
    store = tmp_path / "store"
    prefix = make_prefix(store / "namespace" / "build-1")
    moved = discarded_prefixes.discard(str(store), str(prefix))
    assert moved is not None and not prefix.exists()
    assert Path(moved).parent == (store / discarded_prefixes.DIRECTORY_NAME).resolve()
    assert (Path(moved) / "lib" / "python3.11" / "module.py").read_text() == "x = 1\n"
    discarded_prefixes.delete(moved)
    assert not os.path.lexists(moved)
    assert discarded_prefixes.discard(str(store), str(prefix)) is None  # nothing left to move


def test_nothing_outside_the_store_is_touched(tmp_path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    outside = make_prefix(tmp_path / "elsewhere")
    os.symlink(outside, store / "link-out")
    assert discarded_prefixes.discard(str(store), str(outside)) is None
    assert discarded_prefixes.discard(str(store), str(store / "link-out")) is None
    climbing = store / "namespace" / ".." / ".." / "elsewhere"
    assert discarded_prefixes.discard(str(store), str(climbing)) is None
    assert (outside / "lib" / "python3.11" / "module.py").exists()


def test_a_prefix_on_another_filesystem_is_deleted_where_it_is(tmp_path, monkeypatch) -> None:
    store = tmp_path / "store"
    prefix = make_prefix(store / "namespace" / "build-2")

    def cross_device(source: str, target: str) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(discarded_prefixes.os, "rename", cross_device)
    assert discarded_prefixes.discard(str(store), str(prefix)) is None
    assert not prefix.exists()


def test_empty_deletes_whatever_was_left(tmp_path) -> None:
    store = tmp_path / "store"
    assert discarded_prefixes.empty(str(store)) == 0
    for index in range(3):
        discarded_prefixes.discard(str(store), str(make_prefix(store / "ns" / f"build-{index}")))
    assert discarded_prefixes.empty(str(store)) == 3
    assert list((store / discarded_prefixes.DIRECTORY_NAME).iterdir()) == []


def test_the_storage_lifecycle_pass_empties_the_discarded_directory(conda_store) -> None:
    store = Path(conda_store.store_directory)
    left = discarded_prefixes.discard(str(store), str(make_prefix(store / "ns" / "crashed")))
    assert left is not None
    run_storage_lifecycle(conda_store)
    assert not os.path.lexists(left)


@pytest.mark.parametrize("claimed_by", ["worker-a", None])
def test_a_build_process_ends_only_a_build_its_own_worker_holds(client, conda_store, claimed_by) -> None:
    login(client)
    build_id = submit(client, "name: claimed\ndependencies: [python]\n")
    with conda_store.session() as session:
        session.execute(
            update(Build)
            .where(Build.id == build_id)
            .values(status=BuildStatus.BUILDING, worker_id=claimed_by, started_on=utcnow())
        )
    with conda_store.session() as session:
        plan = pipeline._plan(session, conda_store, get_build(session, build_id))
    assert plan.worker_id == claimed_by
    prefix = make_prefix(Path(plan.prefix))

    # recovered meanwhile and claimed by another worker, now installing into the same prefix
    pipeline._mark_failed(conda_store, dataclasses.replace(plan, worker_id="worker-b"), "too late")
    with conda_store.session() as session:
        assert get_build(session, build_id).status == BuildStatus.BUILDING
    assert prefix.exists()

    pipeline._mark_failed(conda_store, plan, "the pip requirements cannot be installed")
    with conda_store.session() as session:
        build = get_build(session, build_id)
        assert (build.status, build.status_info) == (
            BuildStatus.FAILED,
            "the pip requirements cannot be installed",
        )
    assert not prefix.exists()
    assert list(Path(conda_store.store_directory, discarded_prefixes.DIRECTORY_NAME).iterdir()) == []


def test_a_build_whose_path_is_too_long_to_install_has_nothing_to_discard(client, conda_store) -> None:
    """Such a build fails before installing; ending it must not fail on computing its path."""
    login(client)
    build_id = submit(client, "name: longpath\ndependencies: [python]\n")
    conda_store.build_directory = "{store_directory}/" + "deep/" * 60 + "{namespace}"
    with conda_store.session() as session:
        build = get_build(session, build_id)
        with pytest.raises(BuildPathError):
            prefix_of(conda_store, build)
        assert supervisor._discard_if_unfinished(conda_store, build, BuildStatus.FAILED) is None
