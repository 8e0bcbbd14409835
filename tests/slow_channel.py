"""A channel served over loopback HTTP whose metadata answers slowly: builds that stay busy."""

from __future__ import annotations

import functools
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class SlowChannel:
    def __init__(self, directory: Path, delay: float) -> None:
        self.delay = delay
        handler = functools.partial(_Handler, directory=str(directory), channel=self)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> SlowChannel:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(SimpleHTTPRequestHandler):
    def __init__(self, *args: object, channel: SlowChannel, **kwargs: object) -> None:
        self.channel = channel
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def do_GET(self) -> None:
        if "repodata" in self.path:
            deadline = time.monotonic() + self.channel.delay
            while time.monotonic() < deadline:
                time.sleep(0.05)
        try:
            super().do_GET()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *_: object) -> None:
        pass
