"""An S3 server on a loopback port (moto's standalone server), for tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _moto_server_command() -> list[str]:
    beside_python = os.path.join(os.path.dirname(sys.executable), "moto_server")
    command = beside_python if os.path.exists(beside_python) else shutil.which("moto_server")
    if command is None:
        raise RuntimeError("moto_server is not installed: pip install 'moto[server]'")
    return [command]


@contextmanager
def s3_server(timeout: float = 30) -> Iterator[str]:
    """Start moto_server; yields its `host:port` and stops it afterwards."""
    port = _free_port()
    process = subprocess.Popen(
        [*_moto_server_command(), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto_server did not listen on port {port} within {timeout} s"
                    ) from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
