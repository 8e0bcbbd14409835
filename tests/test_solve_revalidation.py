"""A channel served by a plain static HTTP server keeps solving after its cached metadata ages.

Python's http.server answers a revalidation with a bare `304 Not Modified`, which rattler 0.28
cannot use for a sharded index (rattler issue #2719): builds failed from the moment the cached
index went stale, about five seconds after the first solve.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conda_store_server.build import solve
from conda_store_server.testing.channel import host_subdir


class _Quiet(http.server.SimpleHTTPRequestHandler):
    answers: list[tuple[str, int]] = []

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.answers.append((self.path, int(code)))


@pytest.fixture
def static_channel(demo_channel: Path, tmp_path: Path) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """The demo channel, its files modified just now: a cache's heuristic freshness is a tenth
    of a file's age, so the index is revalidated within seconds, not minutes."""
    channel = tmp_path / "channel"
    shutil.copytree(demo_channel, channel)
    for path in channel.rglob("*"):
        os.utime(path)
    handler = type("Handler", (_Quiet,), {"answers": []})
    serve = functools.partial(handler, directory=str(channel))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", handler.answers
    finally:
        server.shutdown()
        server.server_close()


def test_a_stale_sharded_index_answered_with_a_bare_304_still_solves(static_channel, tmp_path):
    url, answers = static_channel
    cache = str(tmp_path / "repodata-cache")
    first = asyncio.run(solve.solve([url], ["hello-py"], [host_subdir()], cache, 60))
    deadline = time.monotonic() + 30
    while not any(code == 304 and "repodata_shards" in path for path, code in answers):
        assert time.monotonic() < deadline, f"the index was never revalidated: {answers}"
        time.sleep(1)
        again = asyncio.run(solve.solve([url], ["hello-py"], [host_subdir()], cache, 60))
        assert sorted(r.name.normalized for r in again[host_subdir()]) == sorted(
            r.name.normalized for r in first[host_subdir()]
        )
