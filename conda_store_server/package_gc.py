"""The lease that keeps the shared package caches safe from their garbage collector.

Every step that reads from the conda package cache or the image blobs (installing a build,
applying ownership from the cache, writing an image) holds the lease *shared* while it does;
the collector removes anything only while it holds the lease *exclusively*. So no entry is ever
removed while a build links from it, and whatever a finished step linked is visible to the
collector (in the prefix's `conda-meta`, or in the database's DOCKER_BLOB rows) before it
decides. The lease is an advisory `flock` on a file beside the cache, in the store directory
every worker shares; this module imports nothing of the project so every floor may use it.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "cache_lease",
    "dist_name",
    "exclusive_cache_lease",
    "lease_path",
    "owned_root",
    "touch_entries",
    "uv_python_root",
]

PACKAGE_SUFFIXES = (".conda", ".tar.bz2")


def lease_path(package_cache: str) -> str:
    """`<store>/.pkgs.lease` for the cache `<store>/.pkgs`: outside the cache, so rattler never sees it."""
    return f"{os.path.normpath(package_cache)}.lease"


def owned_root(package_cache: str) -> str:
    """Copies of cache files given another owner (see build/permissions.py), beside the cache."""
    return f"{os.path.normpath(package_cache)}-owned"


def uv_python_root(package_cache: str) -> str:
    """The python packages' copies uv runs (see build/shared_python.py), beside the cache: one
    directory per cache entry, removed with it."""
    return f"{os.path.normpath(package_cache)}-uv-python"


def _open_lease(package_cache: str) -> int:
    path = lease_path(package_cache)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


@contextmanager
def cache_lease(package_cache: str) -> Iterator[None]:
    """Held by builds while they link: waits only while a collection removes entries."""
    descriptor = _open_lease(package_cache)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH)
        yield
    finally:
        os.close(descriptor)


@contextmanager
def exclusive_cache_lease(package_cache: str, timeout: float) -> Iterator[bool]:
    """Whether the collector got the lease within `timeout` seconds (it never waits for ever:
    builds that keep linking postpone a collection, never the other way round)."""
    descriptor = _open_lease(package_cache)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                acquired = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    acquired = False
                    break
                time.sleep(0.05)
        yield acquired
    finally:
        os.close(descriptor)


def dist_name(file_name: str) -> str:
    """The cache entry of a package file: `hello-1.0-0.conda` is extracted to `hello-1.0-0/`."""
    for suffix in PACKAGE_SUFFIXES:
        if file_name.endswith(suffix):
            return file_name[: -len(suffix)]
    return file_name


def touch_entries(package_cache: str, file_names: list[str]) -> None:
    """Stamp the entries a build just used: their mtime is the cache's least-recently-used order."""
    now = time.time()
    for file_name in file_names:
        try:
            os.utime(Path(package_cache, dist_name(file_name)), (now, now))
        except FileNotFoundError:
            continue
