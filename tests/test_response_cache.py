"""List pages kept until the database changes: never older than the database, whoever wrote."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from conftest import login, submit
from fastapi.testclient import TestClient
from sqlalchemy import text
from test_api_listing import names, token_for

from conda_store_server.app import CondaStore
from conda_store_server.server.response_cache import DatabaseVersion, ResponseCache

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
