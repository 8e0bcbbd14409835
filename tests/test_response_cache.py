"""List pages kept until the database changes: never older than the database, whoever wrote."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from conftest import login, submit
from fastapi.testclient import TestClient
from sqlalchemy import text
from test_api_listing import names, token_for

from conda_store_server.app import CondaStore
from conda_store_server.server import auth
from conda_store_server.server.auth import AuthenticationBackend, AuthenticationToken
from conda_store_server.server.response_cache import DatabaseVersion, FreshVersions, ResponseCache

ADMIN = {"*/*": ["admin"]}


def _cache(client: TestClient) -> Any:
    return client.app.state.list_cache


def _headers(client: TestClient, bindings: dict[str, list[str]], namespace: str = "bob") -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(client, bindings, namespace)}"}


def _write_elsewhere(database_url: str, statement: str) -> None:
    """A commit by another process, as a worker or a command-line tool makes one."""
    code = (
        "import sys; from sqlalchemy import create_engine, text\n"
        "engine = create_engine(sys.argv[1])\n"
        "with engine.begin() as connection: connection.execute(text(sys.argv[2]))\n"
    )
    subprocess.run([sys.executable, "-c", code, database_url, statement], check=True, timeout=60)


def test_the_version_changes_with_every_commit_and_only_then(conda_store: CondaStore) -> None:
    version = DatabaseVersion(conda_store.engine)
    assert version.supported
    with conda_store.session() as session:
        first = version.read()
    with conda_store.session() as session:
        session.execute(text("SELECT count(*) FROM environment")).scalar()
        assert version.read() == first  # reading changes nothing
    _write_elsewhere(
        conda_store.database_url, "INSERT INTO namespace (name, metadata_) VALUES ('fresh', '{}')"
    )
    with conda_store.session() as session:
        second = version.read()
    assert second != first
    with conda_store.session() as session:  # this process's own commits count too
        session.execute(text("UPDATE namespace SET metadata_ = '{\"a\": 1}' WHERE name = 'fresh'"))
    with conda_store.session() as session:
        assert version.read() != second
    version.close()


def test_a_kept_page_is_served_until_any_process_writes(client: TestClient, conda_store: CondaStore) -> None:
    login(client)
    submit(client, "name: first\ndependencies: [python]\n", namespace="team")
    headers = _headers(client, ADMIN)
    cache = _cache(client)
    assert cache.enabled
    path = "/api/v1/environment/"
    listed = client.get(path, headers=headers)
    hits = cache.pages.hits
    again = client.get(path, headers=headers)
    assert cache.pages.hits == hits + 1
    assert again.content == listed.content and again.headers["content-type"] == "application/json"
    assert again.headers["deprecation"] == listed.headers["deprecation"]

    _write_elsewhere(conda_store.database_url, "UPDATE environment SET description = 'changed elsewhere'")
    changed = client.get(path, headers=headers).json()["data"]
    assert [e["description"] for e in changed] == ["changed elsewhere"]
    # and through this server: a new environment is listed at once
    submit(client, "name: second\ndependencies: [python]\n", namespace="team")
    assert names(client.get(path, headers=headers)) == ["team/first", "team/second"]
    assert names(client.get("/api/v2/environment/", headers=headers)) == ["team/first", "team/second"]


def test_pages_are_kept_per_caller_and_query(client: TestClient) -> None:
    login(client)
    submit(client, "name: mine\ndependencies: [python]\n", namespace="team")
    submit(client, "name: theirs\ndependencies: [python]\n", namespace="other")
    client.cookies.clear()
    admin, team = _headers(client, ADMIN), _headers(client, {"team/*": ["viewer"]})
    for _ in range(2):  # the second round is served from the cache
        assert names(client.get("/api/v1/environment/", headers=admin)) == ["other/theirs", "team/mine"]
        assert names(client.get("/api/v1/environment/", headers=team)) == ["team/mine"]
        assert names(client.get("/api/v1/environment/?namespace=other", headers=admin)) == ["other/theirs"]
        anonymous = client.get("/api/v1/environment/")
        assert anonymous.status_code == 200 and names(anonymous) == []
        sorted_desc = client.get("/api/v1/environment/?order=desc", headers=admin)
        assert names(sorted_desc) == ["team/mine", "other/theirs"]
    # an error is never kept
    assert client.get("/api/v1/environment/?jwt=forged", headers=admin).status_code == 400
    assert client.get("/api/v1/environment/?jwt=forged", headers=admin).status_code == 400


@pytest.mark.parametrize("server_settings", [{"list_cache_bytes": 0}])
def test_a_zero_budget_keeps_nothing(client: TestClient, server_settings: dict[str, Any]) -> None:
    cache = _cache(client)
    assert not cache.enabled
    for _ in range(2):
        assert client.get("/api/v1/namespace/").status_code == 200
    assert cache.pages.hits == cache.pages.misses == 0


def test_least_recently_used_pages_go_first_beyond_the_budget() -> None:
    cache = ResponseCache(max_bytes=800)
    for key in range(10):
        cache.put(key, "v1", b"x" * 100)
    assert cache.size_bytes == 800
    assert cache.get(0, "v1") is None and cache.get(1, "v1") is None  # the oldest two went
    assert cache.get(2, "v1") is not None
    cache.put(10, "v1", b"y" * 100)  # 2 was just used: 3 goes
    assert cache.get(2, "v1") is not None and cache.get(3, "v1") is None
    assert cache.get(10, "v2") is None  # another version is a miss
    cache.put("big", "v1", b"z" * 101)  # more than an eighth of the budget: not kept
    assert cache.get("big", "v1") is None and cache.size_bytes <= 800


# ------------------------------------------------------------------ kept pages answered before routing
def _count_routed(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every routed API request makes a session (get_session); a page the shortcut answers does not."""
    conda_store = client.app.state.conda_store
    made = [0]
    factory = conda_store.session_factory

    def counting() -> Any:
        made[0] += 1
        return factory()

    monkeypatch.setattr(conda_store, "session_factory", counting)
    return made


def test_a_kept_page_is_answered_before_routing(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    login(client)
    submit(client, "name: first\ndependencies: [python]\n", namespace="team")
    client.cookies.clear()
    headers = _headers(client, ADMIN)
    routed = _count_routed(client, monkeypatch)
    first = client.get("/api/v1/environment/?size=10", headers=headers)
    assert first.status_code == 200 and routed[0] == 1
    again = client.get("/api/v1/environment/?size=10", headers=headers)
    assert routed[0] == 1, "the kept page went through the routes"
    assert again.content == first.content
    assert again.headers["content-length"] == str(len(first.content))
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["deprecation"] == "True"
    # anything else is routed: another query, another caller, a page never kept, HEAD (which
    # these routes do not answer)
    client.get("/api/v1/environment/?size=11", headers=headers)
    client.get("/api/v1/environment/?size=10", headers=_headers(client, {"team/*": ["viewer"]}))
    client.get("/api/v1/environment/?size=10")
    assert routed[0] == 4
    assert client.head("/api/v1/environment/?size=10", headers=headers).status_code == 405


@pytest.mark.parametrize("server_settings", [{"cors_allow_origins": ["https://hub.example.org"]}])
def test_a_kept_page_carries_the_cors_headers(client: TestClient, server_settings: dict[str, Any]) -> None:
    headers = {**_headers(client, ADMIN), "Origin": "https://hub.example.org"}
    hits = _cache(client).pages.hits
    for _ in range(2):
        response = client.get("/api/v1/namespace/", headers=headers)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://hub.example.org"
    assert _cache(client).pages.hits == hits + 1
    refused = client.get("/api/v1/namespace/", headers={**headers, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in refused.headers


def test_a_kept_page_is_not_served_once_its_token_expired(client: TestClient) -> None:
    login(client)
    submit(client, "name: first\ndependencies: [python]\n", namespace="team")
    client.cookies.clear()
    backend = client.app.state.authentication.authentication
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=2)
    token = backend.encrypt_token(AuthenticationToken("bob", {"*/*": ["admin"]}, exp=expires))
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(2):  # the second from the kept page, the token from the verified ones
        assert names(client.get("/api/v1/environment/", headers=headers)) == ["team/first"]
    time.sleep(max(0.0, expires.timestamp() - time.time()) + 1.05)  # exp is whole seconds
    assert backend.decrypt_token(token) is None
    assert names(client.get("/api/v1/environment/", headers=headers)) == []  # anonymous now


def test_a_page_filtered_by_a_token_is_never_kept(client: TestClient) -> None:
    """`?jwt=` is valid only until that token expires: a kept page would outlive it."""
    headers = _headers(client, ADMIN)
    filter_token = token_for(client, {"team/*": ["viewer"]})
    cache = _cache(client)
    hits = cache.pages.hits
    for _ in range(2):
        assert client.get(f"/api/v1/environment/?jwt={filter_token}", headers=headers).status_code == 200
    assert cache.pages.hits == hits


def test_fresh_versions_answers_each_request_with_a_read_started_after_it_asked() -> None:
    started: list[threading.Event] = []
    release: list[threading.Event] = []

    def read() -> int:
        started.append(threading.Event())
        release.append(threading.Event())
        started[-1].set()
        release[-1].wait(10)
        return len(release)

    async def scenario() -> None:
        versions = FreshVersions(read)
        first = asyncio.ensure_future(versions.read())
        await asyncio.to_thread(lambda: _wait_for(started, 1))
        # asked while read 1 runs: served by read 2, and so is a third asking meanwhile
        second, third = asyncio.ensure_future(versions.read()), asyncio.ensure_future(versions.read())
        gone = asyncio.ensure_future(versions.read())
        await asyncio.sleep(0)
        gone.cancel()  # a request that went away does not stop the others' read
        release[0].set()
        assert await first == 1
        await asyncio.to_thread(lambda: _wait_for(started, 2))
        assert not second.done()
        release[1].set()
        assert (await second, await third) == (2, 2)
        assert len(started) == 2  # three requests, one read
        versions.close()

    asyncio.run(scenario())


def _wait_for(events: list[threading.Event], count: int) -> None:
    deadline = time.monotonic() + 10
    while len(events) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    events[count - 1].wait(10)


def test_a_verified_token_is_kept_and_a_forged_one_never(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = AuthenticationBackend(secret="the first secret, long enough for HS256")
    token = backend.encrypt_token(AuthenticationToken("bob", {"bob/*": ["viewer"]}))
    verified = []
    decode = auth.jwt.decode
    monkeypatch.setattr(auth.jwt, "decode", lambda *a, **k: verified.append(a[0]) or decode(*a, **k))
    for _ in range(3):
        assert backend.decrypt_token(token).role_bindings == {"bob/*": ["viewer"]}
    assert verified == [token]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert backend.decrypt_token(forged) is None and backend.decrypt_token(forged) is None
    assert verified == [token, forged, forged]
    backend.secret = "another secret, long enough for HS256 too"  # what the first signed is invalid
    assert backend.decrypt_token(token) is None


def test_an_expired_predefined_token_is_refused() -> None:
    past = datetime.datetime(2020, 1, 1)  # naive: UTC
    future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    backend = AuthenticationBackend(
        secret="a secret long enough for HS256 signatures",
        predefined_tokens={
            "old": {"primary_namespace": "svc", "exp": past},
            "old-number": {"exp": int(past.replace(tzinfo=datetime.UTC).timestamp())},
            "current": {"primary_namespace": "svc", "role_bindings": {"*/*": ["viewer"]}, "exp": future},
            "forever": {"primary_namespace": "svc"},
        },
    )
    assert backend.decrypt_token("old") is None and backend.decrypt_token("old-number") is None
    assert backend.decrypt_token("current").role_bindings == {"*/*": ["viewer"]}
    assert backend.decrypt_token("forever").primary_namespace == "svc"


def test_a_polled_build_is_kept_until_its_worker_writes(client: TestClient, conda_store: CondaStore) -> None:
    """Clients poll a build while it runs: its page is kept between the worker's writes, and a
    reader without the right to it is never answered from what another caller was given."""
    login(client)
    build_id = submit(client, "name: polled\ndependencies: [python]\n", namespace="team")
    client.cookies.clear()
    headers = _headers(client, ADMIN)
    cache = _cache(client)
    path = f"/api/v1/build/{build_id}/"
    first = client.get(path, headers=headers)
    assert first.status_code == 200 and first.json()["data"]["status"] == "QUEUED"
    hits = cache.pages.hits
    assert client.get(path, headers=headers).content == first.content
    assert cache.pages.hits == hits + 1
    assert client.get(path, headers=_headers(client, {"other/*": ["viewer"]})).status_code == 403

    _write_elsewhere(conda_store.database_url, f"UPDATE build SET status = 'BUILDING' WHERE id = {build_id}")
    assert client.get(path, headers=headers).json()["data"]["status"] == "BUILDING"
