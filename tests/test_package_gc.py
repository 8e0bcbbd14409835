"""Package-cache garbage collection: only unused entries go, never under a running build."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import login, submit, wait_for_build
from traitlets import TraitError
from traitlets.config import Config

from conda_store_server.app import CondaStore
from conda_store_server.db.models import BuildArtifact, BuildArtifactType
from conda_store_server.package_gc import cache_lease
from conda_store_server.periodic.package_cache import (
    CollectionReport,
    collect_conda_cache,
    collect_image_blobs,
    collect_package_caches,
)
from conda_store_server.service import register_environment
from conda_store_server.specification import CondaSpecification

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

SPECIFICATIONS = (
    ("hello-py", "bin/python", "-c", "import hello_py, tinylib; hello_py.main()"),
    ("hello-tool", "bin/hello-tool"),
    ("curl", "bin/curl"),
    ("python, tinylib, {pip: [pipgreet]}", "bin/python", "-c", "import pipgreet; print(pipgreet.greet('x'))"),
)


@pytest.fixture
def with_index(store_settings, index) -> None:
    """pip builds too (uv's cache is pruned while they run); before the store is made."""
    store_settings["CondaStore"]["pypi_index_url"] = index.authenticated_index_url


def prefix_of(build: dict) -> Path:
    return Path(next(a["key"] for a in build["build_artifacts"] if a["artifact_type"] == "DIRECTORY"))


def check_environment_works(build: dict, command: tuple[str, ...]) -> None:
    prefix = prefix_of(build)
    result = subprocess.run([str(prefix / command[0]), *command[1:]], capture_output=True, text=True)
    assert result.returncode == 0, (build["id"], result.stderr)


def cache_entries(conda_store: CondaStore) -> set[str]:
    root = Path(conda_store.package_cache_directory)
    return (
        {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        if root.is_dir()
        else set()
    )


# ------------------------------------------------------------------ with real builds
@sqlite_only
def test_collections_racing_real_builds_never_break_them(with_index, client, worker, conda_store) -> None:
    """Collections run back to back while builds link the very packages that keep becoming unused
    (each round's environments are deleted): every build completes and its environment runs."""
    login(client)
    stop = threading.Event()
    reports: list[CollectionReport] = []
    failures: list[BaseException] = []

    def collect_forever() -> None:
        while not stop.is_set():
            try:
                reports.append(collect_package_caches(conda_store))
            except BaseException as error:  # noqa: BLE001 - reported by the test
                failures.append(error)
                return

    collector = threading.Thread(target=collect_forever, name="gc-race")
    collector.start()
    try:
        for round_number in range(4):
            built = []
            for index, (package, *command) in enumerate(SPECIFICATIONS):
                name = f"race-{round_number}-{index}"
                built.append((name, submit(client, f"name: {name}\ndependencies: [{package}]\n"), command))
            for _name, build_id, command in built:
                build = wait_for_build(client, build_id)
                assert build["status"] == "COMPLETED", client.get(f"/api/v1/build/{build_id}/logs/").text
                check_environment_works(build, tuple(command))
            for name, _build_id, _command in built:
                assert client.delete(f"/api/v1/environment/alice/{name}/").status_code == 200
    finally:
        stop.set()
        collector.join(60)
    assert not failures, failures
    freed = sum(report.freed["conda"].packages for report in reports)
    assert freed > 0, "the collections never removed anything: the race was not exercised"
    assert not [report.skipped for report in reports if report.skipped]
    # with every environment deleted, one more collection leaves an empty cache
    collect_package_caches(conda_store)
    assert cache_entries(conda_store) == set()


@sqlite_only
def test_worker_collects_on_schedule_and_metrics_count_it(
    store_settings, client, conda_store, config_file, tmp_path: Path
) -> None:
    from conftest import WorkerProcess, write_config

    store_settings["CondaStore"]["package_cache_gc_interval"] = 1
    write_config(config_file, store_settings)
    worker = WorkerProcess(config_file, tmp_path / "worker.log").start()
    try:
        login(client)
        kept = wait_for_build(client, submit(client, "name: kept\ndependencies: [hello-tool]\n"))
        gone = wait_for_build(client, submit(client, "name: gone\ndependencies: [curl]\n"))
        assert kept["status"] == gone["status"] == "COMPLETED"
        curl_entries = {name for name in cache_entries(conda_store) if name.startswith(("curl-", "libcurl-"))}
        assert curl_entries
        assert client.delete("/api/v1/environment/alice/gone/").status_code == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and curl_entries & cache_entries(conda_store):
            time.sleep(0.5)
        assert not curl_entries & cache_entries(conda_store), worker.output()
        assert any(name.startswith("hello-tool-") for name in cache_entries(conda_store))
        check_environment_works(kept, ("bin/hello-tool",))
        metrics = client.get("/metrics").text
        line = next(
            line
            for line in metrics.splitlines()
            if line.startswith('conda_store_package_cache_freed_packages_total{cache="conda"}')
        )
        assert float(line.split()[-1]) >= len(curl_entries)
        assert 'conda_store_package_cache_freed_bytes_total{cache="image"}' in metrics
    finally:
        worker.stop()


@sqlite_only
def test_ownership_keeps_packages_shared_between_environments(
    store_settings, client, conda_store, config_file, tmp_path
):
    """default_uid/gid: both environments link one owned copy per file; the cache stays the service's."""
    from conftest import WorkerProcess, write_config

    store_settings["CondaStore"].update(default_uid=4321, default_gid=4322, default_permissions="755")
    write_config(config_file, store_settings)
    worker = WorkerProcess(config_file, tmp_path / "worker.log").start()
    try:
        login(client)
        first = wait_for_build(client, submit(client, "name: owned-a\ndependencies: [hello-py]\n"))
        second = wait_for_build(client, submit(client, "name: owned-b\ndependencies: [hello-py]\n"))
        assert first["status"] == second["status"] == "COMPLETED", worker.output()
    finally:
        worker.stop()
    relative = next(prefix_of(first).glob("lib/python*/site-packages/tinylib/__init__.py")).relative_to(
        prefix_of(first)
    )
    a, b = prefix_of(first) / relative, prefix_of(second) / relative
    cached = Path(
        conda_store.package_cache_directory, "tinylib-1.0.0-0", "site-packages", "tinylib", "__init__.py"
    )
    assert os.stat(a).st_ino == os.stat(b).st_ino  # shared, not copied per build
    assert (os.stat(a).st_uid, os.stat(a).st_gid) == (4321, 4322)
    assert oct(os.stat(a).st_mode & 0o777) == oct(0o644)
    assert os.stat(cached).st_ino != os.stat(a).st_ino
    assert os.stat(cached).st_uid == os.getuid()  # the cache is still the service's
    for build in (first, second):
        assert os.stat(prefix_of(build)).st_uid == 4321
        check_environment_works(build, SPECIFICATIONS[0][1:])

    for name in ("owned-a", "owned-b"):
        assert client.delete(f"/api/v1/environment/alice/{name}/").status_code == 200
    report = collect_package_caches(conda_store)
    assert report.freed["conda"].packages >= 3
    owned = Path(f"{conda_store.package_cache_directory}-owned")
    assert not any(path.is_file() for path in owned.rglob("*"))


# ------------------------------------------------------------------ the rules, on a synthetic cache
def make_entry(cache: Path, name: str, size: int, used_at: float) -> None:
    (cache / name / "info").mkdir(parents=True)
    (cache / name / "info" / "data").write_bytes(b"x" * size)
    (cache / f"{name}.lock").write_bytes(b"lock")
    os.utime(cache / name, (used_at, used_at))


def make_prefix(root: Path, name: str, entries: list[str]) -> str:
    meta = root / name / "conda-meta"
    meta.mkdir(parents=True)
    for entry in entries:
        (meta / f"{entry}.json").write_text(json.dumps({"name": entry}))
    return str(root / name)


def test_unused_entries_go_and_used_ones_stay(tmp_path: Path) -> None:
    cache = tmp_path / ".pkgs"
    for index, name in enumerate(("a-1-0", "b-1-0", "c-1-0")):
        make_entry(cache, name, 100, 1000.0 + index)
    prefixes = [make_prefix(tmp_path, "env1", ["a-1-0"])]
    report = CollectionReport()
    collect_conda_cache(str(cache), lambda: prefixes, None, report)
    assert sorted(p.name for p in cache.iterdir()) == ["a-1-0", "a-1-0.lock"]
    assert (report.freed["conda"].packages, report.freed["conda"].bytes) == (2, 200)
    assert not list(tmp_path.glob(".pkgs-trash-*"))


def test_record_named_otherwise_points_at_its_entry(tmp_path: Path) -> None:
    cache = tmp_path / ".pkgs"
    make_entry(cache, "x-1-0", 10, 1000.0)
    meta = tmp_path / "env" / "conda-meta"
    meta.mkdir(parents=True)
    (meta / "renamed.json").write_text(json.dumps({"extracted_package_dir": str(cache / "x-1-0")}))
    collect_conda_cache(str(cache), lambda: [str(tmp_path / "env")], None, CollectionReport())
    assert (cache / "x-1-0").is_dir()


def test_bound_evicts_least_recently_used_unused_entries_only(tmp_path: Path) -> None:
    cache = tmp_path / ".pkgs"
    make_entry(cache, "old-1-0", 100, 1000.0)
    make_entry(cache, "mid-1-0", 100, 2000.0)
    make_entry(cache, "new-1-0", 100, 3000.0)
    make_entry(cache, "used-1-0", 500, 10.0)  # the oldest, but a live prefix links it
    prefixes = [make_prefix(tmp_path, "env", ["used-1-0"])]
    report = CollectionReport()
    collect_conda_cache(str(cache), lambda: prefixes, 700, report)
    assert {p.name for p in cache.iterdir() if p.is_dir()} == {"used-1-0", "mid-1-0", "new-1-0"}
    assert report.conda_cache_bytes == 800
    # a bound below what live prefixes use removes every unused entry, never a used one
    collect_conda_cache(str(cache), lambda: prefixes, 1, CollectionReport())
    assert {p.name for p in cache.iterdir() if p.is_dir()} == {"used-1-0"}


def test_prefix_linked_while_waiting_for_the_lease_is_seen(tmp_path: Path) -> None:
    """A build that links while the collector reads prefixes holds the lease; once it is done the
    collector re-reads the prefixes that changed and keeps what the build linked."""
    cache = tmp_path / ".pkgs"
    make_entry(cache, "late-1-0", 10, 1000.0)
    prefix = make_prefix(tmp_path, "env", [])
    calls = 0
    linked = threading.Event()

    def prefixes() -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:  # between the unlocked read and the lease, a build links late-1-0

            def build() -> None:
                with cache_lease(str(cache)):
                    linked.set()
                    time.sleep(0.5)
                    Path(prefix, "conda-meta", "late-1-0.json").write_text("{}")

            threading.Thread(target=build).start()
            linked.wait(5)
        return [prefix]

    collect_conda_cache(str(cache), prefixes, None, CollectionReport())
    assert (cache / "late-1-0").is_dir()


def test_collector_gives_up_while_builds_hold_the_lease(tmp_path: Path) -> None:
    cache = tmp_path / ".pkgs"
    make_entry(cache, "a-1-0", 10, 1000.0)
    report = CollectionReport()
    with cache_lease(str(cache)):
        collect_conda_cache(str(cache), list, None, report, lease_timeout=0.3)
    assert (cache / "a-1-0").is_dir()
    assert report.skipped and "next run" in report.skipped[0]


@sqlite_only
def test_image_blobs_no_live_build_names_are_removed(conda_store) -> None:
    storage = conda_store.storage
    for digest in ("sha256:live", "sha256:orphan", "sha256:base"):
        storage.set(f"docker/blobs/{digest}", b"blob " + digest.encode())
    storage.set(
        "docker/base/record.json",
        json.dumps({"config_digest": "sha256:base", "layers": [], "manifest_digest": "m"}).encode(),
    )
    with conda_store.session() as session:
        build = register_environment(
            session,
            conda_store,
            "alice",
            CondaSpecification.model_validate({"name": "img", "dependencies": []}),
        )
        session.add(
            BuildArtifact(
                build_id=build.id, artifact_type=BuildArtifactType.DOCKER_BLOB, key="docker/blobs/sha256:live"
            )
        )
    report = CollectionReport()
    collect_image_blobs(conda_store, time.time() + 1, report)
    assert storage.exists("docker/blobs/sha256:live")
    assert not storage.exists("docker/blobs/sha256:orphan")
    assert not storage.exists("docker/blobs/sha256:base")
    assert not storage.exists("docker/base/record.json")  # its blobs are gone: it would only fail
    assert report.freed["image"].packages == 2
    # a blob written after the collection started (an image being written) is left alone
    storage.set("docker/blobs/sha256:new", b"new")
    collect_image_blobs(conda_store, time.time() - 60, CollectionReport())
    assert storage.exists("docker/blobs/sha256:new")


@pytest.mark.parametrize("trait", ["package_cache_max_bytes", "package_cache_gc_interval"])
def test_negative_bounds_are_refused(trait: str) -> None:
    with pytest.raises(TraitError, match=trait):
        CondaStore(config=Config({"CondaStore": {trait: -1}}))


def test_blob_listing_reads_s3_too(s3_endpoint: str) -> None:
    """Blobs are collected on S3 as on local storage: the listing gives keys and write times."""
    import uuid

    from test_s3_storage import s3_settings

    from conda_store_server.periodic.package_cache import blob_listing
    from conda_store_server.storage import S3Storage

    storage = S3Storage(config=Config({"S3Storage": s3_settings(s3_endpoint, f"gc-{uuid.uuid4().hex[:12]}")}))
    storage.set("docker/blobs/sha256:one", b"1")
    storage.set("docker/blobs/sha256:two", b"22")
    storage.set("lockfile/other.json", b"{}")
    listing = blob_listing(storage, "docker/blobs/")
    assert sorted(listing) == ["docker/blobs/sha256:one", "docker/blobs/sha256:two"]
    assert all(abs(written - time.time()) < 300 for written in listing.values())


def test_the_python_copy_uv_runs_goes_with_its_entry(tmp_path: Path) -> None:
    """`<cache>-uv-python/<entry>` (build/shared_python.py) is removed with the entry it copies."""
    cache = tmp_path / ".pkgs"
    for name in ("python-3.11.7-0", "python-3.12.1-0"):
        make_entry(cache, name, 100, 1000.0)
        copy = tmp_path / ".pkgs-uv-python" / name / "bin"
        copy.mkdir(parents=True)
        (copy / "python3").write_bytes(b"p" * 50)
        (copy.parent / "lib").symlink_to(cache / name / "info")
    prefixes = [make_prefix(tmp_path, "env", ["python-3.12.1-0"])]
    report = CollectionReport()
    collect_conda_cache(str(cache), lambda: prefixes, None, report)
    assert sorted(p.name for p in (tmp_path / ".pkgs-uv-python").iterdir()) == ["python-3.12.1-0"]
    assert report.freed["conda"].bytes >= 150  # the entry and its copy
