"""Behaviour only visible over a real socket: what a response announces is already committed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from live import live_server
from sqlalchemy import event

from conda_store_server.app import CondaStore


@pytest.fixture
def live_url(conda_store: CondaStore, store_settings: dict[str, dict[str, Any]]) -> Iterator[str]:
    with live_server(conda_store, store_settings) as url:
        yield url


def test_a_created_build_is_readable_as_soon_as_the_post_answers(
    conda_store: CondaStore, live_url: str
) -> None:
    # A slow commit widens the window in which a response sent before its commit would be
    # followed by a read that cannot find what the response announced.
    def slow_commit(session: Any) -> None:
        time.sleep(0.3)

    event.listen(conda_store.session_factory, "before_commit", slow_commit)
    try:
        with httpx.Client(base_url=live_url, timeout=30) as client:
            login = client.post("/login/", json={"username": "alice", "password": "password"})
            assert login.status_code == 200, login.text
            for number in range(3):
                created = client.post(
                    "/api/v1/specification/",
                    json={"specification": f"name: visible-{number}\ndependencies: [hello-py]\n"},
                )
                assert created.status_code == 200, created.text
                build_id = created.json()["data"]["build_id"]
                read = client.get(f"/api/v1/build/{build_id}/")
                assert read.status_code == 200, read.text
    finally:
        event.remove(conda_store.session_factory, "before_commit", slow_commit)
