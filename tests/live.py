"""A real server on a loopback port, for tests that need a socket (clients, browsers, proxies)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from traitlets.config import Config

from conda_store_server.app import CondaStore
from conda_store_server.server.app import CondaStoreServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(config: uvicorn.Config) -> Iterator[str]:
    """Run uvicorn in a thread of this process; yields its base URL (no trailing slash)."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the live server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{config.host}:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def live_server(
    conda_store: CondaStore, settings: dict[str, Any], server_settings: dict[str, Any] | None = None
) -> Iterator[str]:
    """Serve the app in a thread of this process; yields its base URL (no trailing slash)."""
    port = free_port()
    options = {**(server_settings or {}), "address": "127.0.0.1", "port": port, "log_level": "WARNING"}
    application = CondaStoreServer(config=Config({**settings, "CondaStoreServer": options}))
    with serve(application.uvicorn_config(application.create_app(conda_store))) as url:
        yield url
