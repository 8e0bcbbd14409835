"""Solving a specification with py-rattler, in process."""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
from pathlib import Path

import rattler
from rattler.exceptions import SolverError

from conda_store_server.exception import BuildFailure

log = logging.getLogger(__name__)

#: Schemes whose fetch errors are shown to users: they describe a remote server's answer. For
#: other channels (local files, object stores) rattler's text names server paths and whether
#: they exist, so it goes to the worker's log only.
_REMOTE_SCHEMES = ("http://", "https://")


def channel_url(channel: str) -> str:
    """rattler wants URLs; local channel directories given as plain paths become file:// URLs."""
    if channel.startswith("/"):
        return Path(channel).as_uri()
    return channel


def resolve_host(host: str) -> list[str]:
    """Every address `host` resolves to, of every family: what a fetch from it could reach.

    The worker's `Resolver` for the URL rules of `conda_store_server.fetch_policy`, so that a
    DNS name pointing at 127.0.0.1 is refused like 127.0.0.1 itself. Raises OSError when the
    name does not resolve.
    """
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)})


async def solve(
    channels: list[str],
    specs: list[str],
    platforms: list[str],
    repodata_cache: str,
    max_solve_seconds: int,
) -> dict[str, list[rattler.RepoDataRecord]]:
    """Solve for each platform within `max_solve_seconds` in all (fetching metadata included)."""
    try:
        return await asyncio.wait_for(
            _solve_all(channels, specs, platforms, repodata_cache, max_solve_seconds),
            timeout=max_solve_seconds,
        )
    except TimeoutError as error:
        raise BuildFailure(
            f"The solve took longer than CondaStore.conda_max_solve_time ({max_solve_seconds} s) "
            f"and was stopped; simplify the specification or raise the limit"
        ) from error


async def _solve_all(
    channels: list[str],
    specs: list[str],
    platforms: list[str],
    repodata_cache: str,
    max_solve_seconds: int,
) -> dict[str, list[rattler.RepoDataRecord]]:
    problem = (channels, specs, platforms, max_solve_seconds)
    try:
        return await _solve_with(_gateway(repodata_cache, True), *problem)
    except _ShardRevalidationFailed:
        log.warning(
            "a channel of %s answered the revalidation of its sharded repodata index with a 304 "
            "that rattler cannot use (no ETag or Last-Modified: rattler issue #2719); solving "
            "again from its repodata.json",
            channels,
        )
        return await _solve_with(_gateway(repodata_cache, False), *problem)


class _ShardRevalidationFailed(Exception):
    """rattler 0.28 treats a `304 Not Modified` to a sharded index revalidation as an error
    when the answer carries no validator, as simple static servers (Python's http.server among
    them) send it; such a channel is solved again without shards rather than failing builds
    from the moment its cached index goes stale."""


def _gateway(repodata_cache: str, sharded: bool) -> rattler.Gateway:
    return rattler.Gateway(
        cache_dir=Path(repodata_cache), default_config=rattler.SourceConfig(sharded_enabled=sharded)
    )


async def _solve_with(
    gateway: rattler.Gateway,
    channels: list[str],
    specs: list[str],
    platforms: list[str],
    max_solve_seconds: int,
) -> dict[str, list[rattler.RepoDataRecord]]:
    host = str(rattler.Subdir.current())
    match_specs = [rattler.MatchSpec(spec) for spec in specs]
    results: dict[str, list[rattler.RepoDataRecord]] = {}
    for platform in platforms:
        virtual_packages = rattler.VirtualPackage.detect() if platform == host else []
        try:
            results[platform] = await rattler.solve(
                [channel_url(channel) for channel in channels],
                match_specs,
                gateway=gateway,
                platforms=[platform, "noarch"],
                virtual_packages=virtual_packages,
                timeout=datetime.timedelta(seconds=max_solve_seconds),
            )
        except SolverError as error:
            raise BuildFailure(
                f"The environment cannot be solved for {platform}. {str(error).strip()}"
            ) from error
        except Exception as error:  # channel or network errors from rattler's gateway
            text = str(error)
            if "304 Not Modified" in text and "repodata_shards" in text:
                raise _ShardRevalidationFailed(text) from error
            raise _fetch_failure(channels, error) from error
    return results


def _fetch_failure(channels: list[str], error: Exception) -> BuildFailure:
    """The failure a user sees when channel metadata cannot be fetched.

    It names the channels as given. rattler's explanation is included only when every channel
    is remote; otherwise it could tell whether a path exists on the worker ("failed to open
    file `/etc/noarch/repodata.json`: No such file or directory"), so it is logged for the
    administrator instead.
    """
    message = f"Fetching package metadata from the channels {channels} failed"
    if all(channel.startswith(_REMOTE_SCHEMES) for channel in channels):
        return BuildFailure(f"{message}: {error}")
    log.warning("%s: %s", message, error)
    return BuildFailure(f"{message}; the details name files on the worker, so they are in the worker's log")
