"""Solving a specification with py-rattler, in process."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import rattler
from rattler.exceptions import SolverError

from conda_store_server.exception import BuildFailure


def channel_url(channel: str) -> str:
    """rattler wants URLs; local channel directories given as plain paths become file:// URLs."""
    if channel.startswith("/"):
        return Path(channel).as_uri()
    return channel


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
    gateway = rattler.Gateway(cache_dir=Path(repodata_cache))
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
            raise BuildFailure(
                f"Fetching package metadata from the channels {channels} failed: {error}"
            ) from error
    return results
