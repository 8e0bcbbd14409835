"""One load run with Debian's `wrk`, parsed: requests/s, p50/p99, errors.

A native load generator: the Python benchmark process would otherwise compete with the server's
interpreter for the 2 cores it measures on.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx/3xx responses + socket errors (connect, read, write, timeout)


def wrk_binary() -> str:
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("wrk is not installed: `apt-get install wrk` (Debian's package, /usr/bin/wrk)")
    return binary


def milliseconds(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if match is None:
        raise ValueError(f"wrk latency {value!r} has no known unit")
    return float(match.group(1)) * UNITS[match.group(2)]


def parse(output: str) -> WrkResult:
    """wrk's --latency report; missing lines mean the run produced no figure, which is an error."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output has no line matching {pattern!r}:\n{output}")
        return match

    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if sockets:
        errors += sum(int(n) for n in sockets.groups())
    return WrkResult(
        requests_per_second=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=milliseconds(find(r"^\s+50%\s+(\S+)").group(1)),
        p99_ms=milliseconds(find(r"^\s+99%\s+(\S+)").group(1)),
        requests=int(find(r"^\s+(\d+) requests in").group(1)),
        errors=errors,
    )


UNIQUE_QUERIES = """
local counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function request()
  counter = counter + 1
  return wrk.format(nil, wrk.path .. "{separator}bench={nonce}-" .. tid .. "-" .. counter)
end
"""


def run_wrk(
    url: str,
    token: str,
    connections: int,
    seconds: float,
    timeout_s: float = 30,
    unique_queries: bool = False,
) -> WrkResult:
    """Two threads (one with one connection: wrk needs a connection per thread). The timeout is
    long so that slow responses are measured rather than dropped from the distribution. With
    `unique_queries` every request carries a query parameter of its own (`bench=...`, which the
    list routes ignore), so that no server can answer it from a cache of pages."""
    threads = min(2, connections)
    command = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={round(timeout_s)}s",
        "--latency",
        "-H",
        f"Authorization: Bearer {token}",
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if unique_queries:
            separator = "&" if urlsplit(url).query else "?"
            script.write(UNIQUE_QUERIES.format(separator=separator, nonce=uuid.uuid4().hex[:8]))
            script.flush()
            command += ["-s", script.name]
        completed = subprocess.run(
            [*command, url], capture_output=True, text=True, timeout=seconds + timeout_s + 30
        )
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr.strip()}")
    return parse(completed.stdout)
