"""Build logs while the build runs: lines readable within a second on local and S3 storage, grown by
appends only, kept whole (with the reason) however a build ends, and followed as Server-Sent Events."""

from __future__ import annotations

import io
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import WorkerProcess, login, submit, wait_for_build
from live import live_server
from slow_channel import SlowChannel
from test_s3_storage import s3_settings
from test_supervision import build_process_of
from traitlets.config import Config

from conda_store_server.build.logs import BuildLog, LogShipper, spool_path
from conda_store_server.server.auth import AuthenticationToken
from conda_store_server.storage import LocalStorage, LogRead, S3Storage, Storage

SPEC = "name: slow\ndependencies:\n  - hello-tool\n"
SOLVING = "solving ['hello-tool']"


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """SQLite only: these tests are about storage and processes (the database is tested elsewhere)."""
    yield f"sqlite:///{tmp_path / 'conda-store.sqlite'}"


@pytest.fixture
def slow_channel(demo_channel: Path) -> Iterator[SlowChannel]:
    with SlowChannel(demo_channel, delay=60) as channel:
        yield channel


@pytest.fixture(params=["local"])
def storage_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def store_settings(
    request: pytest.FixtureRequest,
    store_settings: dict[str, Any],
    slow_channel: SlowChannel,
    storage_kind: str,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    store_settings["CondaStore"]["conda_default_channels"] = [slow_channel.url]
    store_settings["CondaStore"].update(overrides)
    if storage_kind == "s3":  # moto is started only for the tests that ask for S3
        endpoint = request.getfixturevalue("s3_endpoint")
        store_settings["CondaStore"]["storage_class"] = "conda_store_server.storage.S3Storage"
        store_settings["S3Storage"] = s3_settings(endpoint, f"logs-{uuid.uuid4().hex[:12]}")
    return store_settings


def wait_until(predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(message)


def logs_of(client: Any, build_id: int) -> str:
    """The text of `/logs/`; a complete log on S3 is a redirect to its presigned URL."""
    response = client.get(f"/api/v1/build/{build_id}/logs/", follow_redirects=False)
    if response.status_code == 307:
        response = httpx.get(response.headers["location"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def spool_text(conda_store: Any, build_id: int) -> str:
    try:
        return spool_path(conda_store.store_directory, build_id).read_text()
    except FileNotFoundError:
        return ""


def log_key(client: Any, build_id: int) -> str:
    build = client.get(f"/api/v1/build/{build_id}/").json()["data"]
    return next(a["key"] for a in build["build_artifacts"] if a["artifact_type"] == "LOGS")


def wait_sealed(client: Any, conda_store: Any, build_id: int) -> None:
    key = log_key(client, build_id)
    wait_until(lambda: conda_store.storage.log_is_sealed(key), 10, f"build {build_id}: log never sealed")


def _containing(text: str, part: str) -> str | None:
    return text if part in text else None


def last_line(text: str) -> str:
    return text.rstrip("\n").rsplit("\n", 1)[-1]


# ------------------------------------------------------------------------------ storage
def _local(tmp_path: Path) -> LocalStorage:
    return LocalStorage(config=Config({"LocalStorage": {"storage_path": str(tmp_path / "storage")}}))


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return _local(tmp_path)
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Storage(config=Config({"S3Storage": s3_settings(endpoint, f"unit-{uuid.uuid4().hex[:12]}")}))


def test_a_log_is_appended_read_from_offsets_and_sealed(storage: Storage) -> None:
    key = "logs/build.log"
    assert storage.read_log(key) == LogRead(b"", False)
    storage.append(key, b"one\n")
    storage.append(key, b"two\nthree\n")
    assert storage.read_log(key).data == b"one\ntwo\nthree\n"
    assert storage.read_log(key, 4).data == b"two\nthree\n"
    assert storage.read_log(key, 6).data == b"o\nthree\n"
    assert storage.read_log(key, 14).data == b""
    assert storage.get(key) == b"one\ntwo\nthree\n" and storage.exists(key)
    assert not storage.log_is_sealed(key)
    storage.seal_log(key)
    assert storage.read_log(key, 8) == LogRead(b"three\n", True)
    assert storage.log_is_sealed(key) and storage.get(key) == b"one\ntwo\nthree\n"
    storage.seal_log(key)  # again: nothing changes
    assert storage.read_log(key).data == b"one\ntwo\nthree\n"
    storage.delete(key)
    assert not storage.exists(key) and storage.read_log(key) == LogRead(b"", False)


@pytest.mark.parametrize("storage", ["s3"], indirect=True)  # a local log is a file appended in place
def test_s3_appends_are_new_objects_and_the_seal_composes_them(storage: S3Storage) -> None:
    key = "logs/b.log"
    client, bucket = storage.internal_client, storage.bucket_name

    def objects() -> dict[str, str]:
        return {o.object_name: o.etag for o in client.list_objects(bucket, prefix=key, recursive=True)}

    storage.append(key, b"a\n")
    first = objects()
    storage.append(key, b"b\n")
    second = objects()
    assert key not in second  # nothing is written at the key while the log grows
    assert len(second) == 2 and all(second[name] == etag for name, etag in first.items())  # never rewritten
    # what a reader sees at each step of a seal (record, composed object, parts deleted): every
    # line once, whenever it lists the log
    parts = sorted(second)
    record = json.dumps({"size": 4, "through": parts[-1]}).encode()
    client.put_object(bucket, key + ".sealed", io.BytesIO(record), len(record))
    assert storage.read_log(key).data == b"a\nb\n"
    client.put_object(bucket, key, io.BytesIO(b"a\nb\n"), 4)
    assert storage.read_log(key).data == b"a\nb\n" and storage.read_log(key, 2).data == b"b\n"
    client.remove_object(bucket, parts[0])
    assert storage.read_log(key).data == b"a\nb\n"
    storage.seal_log(key)
    assert set(objects()) == {key, key + ".sealed"}
    assert client.get_object(bucket, key).read() == b"a\nb\n" and storage.log_is_sealed(key)
    # an append after a seal follows it
    storage.append(key, b"c\n")
    assert storage.read_log(key).data == b"a\nb\nc\n" and not storage.log_is_sealed(key)
    storage.seal_log(key)
    assert set(objects()) == {key, key + ".sealed"} and storage.get(key) == b"a\nb\nc\n"


def test_the_shipper_appends_complete_lines_and_finishes_a_cut_line(tmp_path: Path) -> None:
    storage = _local(tmp_path)
    store = str(tmp_path / "store")
    shipper = LogShipper(storage, store)
    shipper.start(7)
    log = BuildLog(spool_path(store, 7))
    log.write("first\nsecond\rthird")
    assert shipper.ship(7, "logs/7.log") > 0
    shipped = storage.read_log("logs/7.log").data.decode()
    assert [line.split("] ", 1)[1] for line in shipped.splitlines()] == ["first", "second", "third"]
    # a process killed in the middle of a line: the complete lines now, the cut one when it ends
    with open(spool_path(store, 7), "ab") as handle:
        handle.write(b"[00:00:00] fourth\n[00:00:00] fif")
    shipper.ship(7, "logs/7.log")
    assert storage.read_log("logs/7.log").data.decode().endswith("fourth\n")
    assert shipper.ship(7, "logs/7.log") == 0  # nothing shipped twice
    shipper.finish(7, "logs/7.log")
    assert storage.read_log("logs/7.log").data.decode().endswith("fourth\n[00:00:00] fif\n")
    assert not spool_path(store, 7).exists()
    log.close()


# ------------------------------------------------------------------------------ builds
@pytest.mark.parametrize("storage_kind", ["local", "s3"], indirect=True)
def test_lines_are_readable_within_a_second_while_building_then_kept_on_cancel(
    client, conda_store, worker, storage_kind: str
) -> None:
    login(client)
    build_id = submit(client, SPEC)
    logs_of(client, build_id)  # the server's storage client connects (once per process)
    wait_until(lambda: SOLVING in spool_text(conda_store, build_id), 30, "the build never started solving")
    written = time.monotonic()
    text = wait_until(lambda: _containing(logs_of(client, build_id), SOLVING), 5, "never reached /logs/")
    assert time.monotonic() - written < 1.2, "a written line took longer than a second to be readable"
    assert client.get(f"/api/v1/build/{build_id}/").json()["data"]["status"] == "BUILDING"
    assert f"starting build {build_id} of conda environment" in text.splitlines()[0]

    key = log_key(client, build_id)
    storage = conda_store.storage
    if storage_kind == "s3":
        names = {o.object_name for o in storage.internal_client.list_objects(storage.bucket_name, prefix=key)}
        assert key not in names, "the object at the key is written only when the build ends"
    else:
        inode = os.stat(storage.local_path(key)).st_ino

    assert client.put(f"/api/v1/build/{build_id}/cancel/").status_code == 200
    assert wait_for_build(client, build_id, timeout=20)["status"] == "CANCELED"
    final = wait_until(lambda: storage.log_is_sealed(key) and logs_of(client, build_id), 10, "never sealed")
    assert final.startswith(text), "earlier bytes of the log changed"
    assert last_line(final).endswith(f"build {build_id} marked CANCELED: canceled by request")
    if storage_kind == "local":
        assert os.stat(storage.local_path(key)).st_ino == inode, "the log file was replaced, not appended"
    else:
        redirect = client.get(f"/api/v1/build/{build_id}/logs/", follow_redirects=False)
        assert redirect.status_code == 307 and httpx.get(redirect.headers["location"]).text == final
        assert not list(storage.internal_client.list_objects(storage.bucket_name, prefix=f"{key}.parts/"))
    assert not spool_path(conda_store.store_directory, build_id).exists()


def test_lines_written_just_before_the_build_process_is_killed_are_kept(client, conda_store, worker) -> None:
    login(client)
    build_id = submit(client, SPEC)
    wait_until(lambda: SOLVING in spool_text(conda_store, build_id), 30, "the build never started solving")
    os.kill(build_process_of(worker), signal.SIGKILL)  # at once: before the line was shipped, most likely
    build = wait_for_build(client, build_id, timeout=20)
    assert build["status"] == "FAILED"
    wait_sealed(client, conda_store, build_id)
    final = logs_of(client, build_id)
    assert SOLVING in final
    assert last_line(final).endswith("ended unexpectedly (killed by signal SIGKILL); see the log")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"conda_max_solve_time": 2}, "conda_max_solve_time (2 s)"),
        # long enough for the build process to start and write its first lines on a busy machine
        ({"build_timeout": 8}, "marked FAILED: the build exceeded CondaStore.build_timeout (8 s)"),
    ],
)
def test_a_timed_out_build_keeps_its_lines_and_ends_with_the_reason(
    client, conda_store, worker, reason: str
) -> None:
    login(client)
    build_id = submit(client, SPEC)
    assert wait_for_build(client, build_id, timeout=60)["status"] == "FAILED"
    wait_sealed(client, conda_store, build_id)
    final = logs_of(client, build_id)
    lines = final.splitlines()
    assert f"starting build {build_id}" in lines[0] and SOLVING in final
    assert reason in lines[-1], final


def test_a_failed_build_keeps_its_lines_and_the_solver_explanation(
    client, conda_store, worker, slow_channel
) -> None:
    slow_channel.delay = 0
    login(client)
    build_id = submit(client, "name: broken\ndependencies:\n  - no-such-package\n")
    assert wait_for_build(client, build_id)["status"] == "FAILED"
    wait_sealed(client, conda_store, build_id)
    final = logs_of(client, build_id)
    assert "solving ['no-such-package']" in final
    assert last_line(final).split("] ", 1)[1].startswith("build failed: ")
    assert "no-such-package" in last_line(final)


def test_a_killed_worker_loses_no_line_and_the_next_worker_adds_the_reason(
    client, conda_store, config_file, tmp_path, slow_channel
) -> None:
    login(client)
    first = WorkerProcess(config_file, tmp_path / "first.log").start()
    try:
        build_id = submit(client, SPEC)
        wait_until(lambda: SOLVING in spool_text(conda_store, build_id), 30, "it never started solving")
        assert first.process is not None
        os.kill(first.process.pid, signal.SIGKILL)  # lines still in the spool, not yet shipped
        first.process.wait()
    finally:
        first.stop()
    slow_channel.delay = 0
    second = WorkerProcess(config_file, tmp_path / "second.log").start()
    try:
        build = wait_for_build(client, build_id, timeout=90)
        assert build["status"] == "COMPLETED", logs_of(client, build_id)
    finally:
        second.stop()
    final = logs_of(client, build_id)
    interrupted = final.index(f"build {build_id} was interrupted: its worker ")
    assert 0 <= final.index(SOLVING) < interrupted, final
    assert "is no longer running; queued again (attempt 2 of 3)" in final[interrupted:].splitlines()[0]
    assert final.rindex(f"starting build {build_id} ") > interrupted
    assert f"build {build_id} COMPLETED" in final


# ------------------------------------------------------------------------------ the stream
def events(response: httpx.Response) -> Iterator[dict[str, str]]:
    """Server-Sent Events of a streamed response: {"id", "data", "event"} or {"comment"}."""
    event: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            field, _, value = line.partition(":")
            event[field] = value.removeprefix(" ")


Event = dict[str, str]


def read_until_end(stream: Iterator[Event]) -> tuple[list[Event], dict[str, Any], list[str]]:
    lines, comments = [], []
    for event in stream:
        if "comment" in event:
            comments.append(event["comment"])
        elif event.get("event") == "end":
            return lines, json.loads(event["data"]), comments
        else:
            lines.append(event)
    pytest.fail(f"the stream ended without an end event after {len(lines)} lines")


@contextmanager
def logged_in(url: str, prefix: str = "") -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post(f"{prefix}/login/", json={"username": "alice", "password": "password"})
        assert response.status_code == 200, response.text
        yield client


def test_the_stream_delivers_the_lines_in_order_resumes_and_ends(
    conda_store, store_settings, worker, slow_channel
) -> None:
    slow_channel.delay = 1
    prefix = "/conda-store"
    server = live_server(conda_store, store_settings, {"url_prefix": prefix})
    with server as url, logged_in(url, prefix) as http:
        response = http.post(f"{prefix}/api/v1/specification/", json={"specification": SPEC})
        build_id = response.json()["data"]["build_id"]
        stream = f"{prefix}/api/v1/build/{build_id}/logs/stream"
        with http.stream("GET", stream) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines, end, _ = read_until_end(events(response))
        assert end["status"] == "COMPLETED" and end["status_info"] is None
        log = http.get(f"{prefix}/api/v1/build/{build_id}/logs/", follow_redirects=True).content
        assert "".join(f"{event['data']}\n" for event in lines).encode() == log
        offsets = [int(event["id"]) for event in lines]
        assert offsets[-1] == len(log)
        assert all(log[offset - 1 : offset] == b"\n" for offset in offsets)
        assert f"starting build {build_id}" in lines[0]["data"]
        assert f"build {build_id} COMPLETED" in log.decode()

        # resumed from an event id (a reconnecting EventSource) or an offset: only what follows
        middle = len(lines) // 2
        with http.stream("GET", stream, headers={"Last-Event-ID": lines[middle]["id"]}) as response:
            assert read_until_end(events(response))[0] == lines[middle + 1 :]
        with http.stream("GET", stream, params={"offset": offsets[1]}) as response:
            assert read_until_end(events(response))[0] == lines[2:]
        assert http.get(stream, headers={"Last-Event-ID": "abc"}).status_code == 400
        assert http.get(stream, params={"offset": -1}).status_code == 422


def test_the_stream_keeps_the_connection_alive_and_ends_when_the_build_is_canceled(
    conda_store, store_settings, worker
) -> None:
    with live_server(conda_store, store_settings) as url, logged_in(url) as http:
        response = http.post("/api/v1/specification/", json={"specification": SPEC})
        build_id = response.json()["data"]["build_id"]
        with http.stream("GET", f"/api/v1/build/{build_id}/logs/stream") as response:
            seen: list[str] = []
            keepalives: list[float] = []
            started = time.monotonic()
            stream = events(response)
            for event in stream:  # until the build is solving and a keepalive came
                if "comment" in event:
                    assert event["comment"] == "keepalive"
                    keepalives.append(time.monotonic() - started)
                else:
                    seen.append(event["data"])
                if keepalives and any(SOLVING in line for line in seen):
                    break
            assert keepalives[0] >= 14, keepalives  # every 15 s, not more often
            assert http.get(f"/api/v1/build/{build_id}/").json()["data"]["status"] == "BUILDING"
            assert http.put(f"/api/v1/build/{build_id}/cancel/").status_code == 200
            lines, end, _ = read_until_end(stream)
        assert end == {"status": "CANCELED", "status_info": "canceled by request"}
        assert lines[-1]["data"].endswith(f"build {build_id} marked CANCELED: canceled by request")


def test_the_stream_is_refused_as_the_logs_route_is(client, conda_store) -> None:
    login(client)
    build_id = submit(client, "name: private\ndependencies: [python]\n")  # alice's namespace
    backend = client.app.state.authentication.authentication
    token = backend.encrypt_token(AuthenticationToken("bob", {"bob/*": ["admin"]}))
    client.cookies.clear()
    for path in ("logs/", "logs/stream"):
        other = client.get(f"/api/v1/build/{build_id}/{path}", headers={"Authorization": f"Bearer {token}"})
        assert other.status_code == 403, other.text
        assert client.get(f"/api/v1/build/{build_id}/{path}").status_code == 403
        assert client.get(f"/api/v1/build/424242/{path}").status_code == 404


def test_the_stream_stops_reading_when_the_client_goes(conda_store, store_settings, worker) -> None:
    storage = conda_store.storage
    reads: list[float] = []
    read_log = storage.read_log

    def counted(key: str, offset: int = 0) -> Any:
        reads.append(time.monotonic())
        return read_log(key, offset)

    with live_server(conda_store, store_settings) as url, logged_in(url) as http:
        response = http.post("/api/v1/specification/", json={"specification": SPEC})
        build_id = response.json()["data"]["build_id"]
        storage.read_log = counted  # what the stream's polls do, counted (the server shares this store)
        with http.stream("GET", f"/api/v1/build/{build_id}/logs/stream") as response:
            for event in events(response):
                if SOLVING in event.get("data", ""):
                    break
        gone = time.monotonic()
        time.sleep(3)
        assert len(reads) >= 1
        assert [t for t in reads if t > gone + 1.0] == [], "the stream went on polling after its client left"
        assert http.get(f"/api/v1/build/{build_id}/").json()["data"]["status"] == "BUILDING"
