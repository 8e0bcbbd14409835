"""The `pip:` requirements of a solve (GET /api/v1/specification/), resolved without building.

A build resolves for the environment's own interpreter once conda has installed it
(`conda_store_server.build.pip`). A solve has no environment, so uv resolves for the target
instead: `--python-version` of the python the conda solve chose (to its patch version, so that
markers see what the build's interpreter will report) and `--python-platform` of this host. Of
the wheels uv lists, the one chosen is the one best for the wheel tags that python will have
here; a git reference is listed by the commit uv resolved, as a build locks it.

The rest is as in builds, by the same functions of `conda_store_server.build.pip`: the store's
indexes (or the specification's own `--index-url`), passed in UV_INDEX_URL / UV_EXTRA_INDEX_URL
so that credentials stay off the command line; the store's uv cache; `--no-config`; what the
conda solve left of conda_max_solve_time; uv's own explanation when it fails, credentials
masked; the URL rules, with host names resolved, before uv fetches and on the files it chose.

Differences from a build, which a solve cannot avoid without installing:

- What conda provides constrains the resolution as in builds (`name==version`, backed by a
  metadata-only wheel), but it is read from the solve, not from site-packages: each
  noarch:python record counts as the distribution of its own name. A conda package built per
  platform (conda-forge's numpy), or one whose PyPI name differs (pytorch / torch), counts in
  a build and not here.
- uv runs with the server's own interpreter as its helper (`--python`): it is only used to
  build source distributions whose metadata is not static, which a build does with the
  environment's python.
- The wheel tags are CPython's: a conda python of another implementation (PyPy) is solved as
  if it were CPython of its version.

The same resolution gives a build's lockfile its pip entries for the `conda_solve_platforms`
other than the worker's (nothing is installed for those). For another platform uv has no host
to detect, so it gets a fixed target, and the wheel tags are that target's: Linux at
manylinux 2.17 (conda-forge's own glibc baseline), macOS at uv's defaults (11.0 on arm64, 13.0
on x86_64; uv lists only the wheels its target accepts), Windows as it is.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rattler
import uv
from packaging import tags
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from conda_store_server.build import artifacts, pip, solve
from conda_store_server.exception import BuildFailure
from conda_store_server.fetch_policy import check_pip_index_urls, check_resolved_pip_urls
from conda_store_server.redact import mask_credentials, strip_credentials
from conda_store_server.specification import SpecificationPolicy

if TYPE_CHECKING:
    from conda_store_server.app import CondaStore

__all__ = ["resolve"]

#: The glibc versions uv has a `<arch>-manylinux_2_<minor>` target for (uv 0.13).
_MANYLINUX_MINORS = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)
#: Linux subdirs by uv's name of their architecture.
_LINUX_ARCHITECTURES = {"linux-64": "x86_64", "linux-aarch64": "aarch64"}
#: uv's targets for the other subdirs a server may run on.
_OTHER_PLATFORMS = {"osx-64": "x86_64-apple-darwin", "osx-arm64": "aarch64-apple-darwin"}
#: The glibc minor version a Linux platform other than the host's is resolved for.
_FOREIGN_MANYLINUX_MINOR = 17
#: Wheel platform tags of the non-Linux subdirs when they are not the host's: uv's targets.
_FOREIGN_PLATFORM_TAGS = {
    "osx-arm64": lambda: list(tags.mac_platforms((11, 0), "arm64")),
    "osx-64": lambda: list(tags.mac_platforms((13, 0), "x86_64")),
    "win-64": lambda: ["win_amd64"],
    "win-arm64": lambda: ["win_arm64"],
}
_WINDOWS_PLATFORMS = {"win-64": "x86_64-pc-windows-msvc", "win-arm64": "aarch64-pc-windows-msvc"}
#: manylinux's names from before PEP 600, by the glibc minor version they stand for.
_LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


def _is_host(subdir: str) -> bool:
    return subdir == str(rattler.Subdir.current())


def python_platform(subdir: str) -> str:
    """uv's `--python-platform`. For this host: on Linux the newest manylinux target its glibc
    runs (as packaging detects it for the wheel tags), so that uv accepts the wheels the
    environment's python would accept here. For another platform: a fixed target."""
    if subdir in _OTHER_PLATFORMS:
        return _OTHER_PLATFORMS[subdir]
    if subdir in _WINDOWS_PLATFORMS and not _is_host(subdir):
        return _WINDOWS_PLATFORMS[subdir]
    if subdir not in _LINUX_ARCHITECTURES:
        raise BuildFailure(
            f"pip requirements cannot be solved for the platform {subdir}: uv has no target for "
            "it; remove the pip requirements or that platform from conda_solve_platforms"
        )
    if not _is_host(subdir):
        return f"{_LINUX_ARCHITECTURES[subdir]}-manylinux_2_{_FOREIGN_MANYLINUX_MINOR}"
    architecture = _LINUX_ARCHITECTURES[subdir]
    glibc = [
        int(match[1])
        for tag in tags.platform_tags()
        if (match := re.fullmatch(rf"manylinux_2_(\d+)_{architecture}", tag))
    ]
    supported = [minor for minor in _MANYLINUX_MINORS if minor <= max(glibc, default=0)]
    return f"{architecture}-manylinux_2_{supported[-1]}" if supported else f"{architecture}-unknown-linux-gnu"


def python_version(records: Sequence[rattler.RepoDataRecord]) -> Version:
    """The version of the solve's `python`: the interpreter the pip packages are for."""
    python = next((record for record in records if record.name.normalized == "python"), None)
    if python is None:
        raise BuildFailure(
            "pip requirements need python among the conda packages, and the conda solve has "
            "none; add python to the conda packages"
        )
    try:
        return Version(str(python.version))
    except InvalidVersion as error:
        raise BuildFailure(
            f"the conda solve chose python {python.version}, a version pip packages cannot be "
            "resolved for; ask for another python version"
        ) from error


def _platform_tags(subdir: str) -> list[str]:
    """Wheel platform tags, best first: this host's as packaging detects them, else those of
    the fixed target `python_platform` gives uv for `subdir`."""
    if _is_host(subdir):
        return list(tags.platform_tags())
    if subdir in _FOREIGN_PLATFORM_TAGS:
        return _FOREIGN_PLATFORM_TAGS[subdir]()
    architecture = _LINUX_ARCHITECTURES[subdir]
    found = []
    for minor in range(_FOREIGN_MANYLINUX_MINOR, 4, -1):
        found.append(f"manylinux_2_{minor}_{architecture}")
        if minor in _LEGACY_MANYLINUX:
            found.append(f"{_LEGACY_MANYLINUX[minor]}_{architecture}")
    return found


def _wheel_tags(python: Version, subdir: str) -> tuple[str, ...]:
    """The wheel tags, best first, of CPython `python` on `subdir`: on this host what the
    environment's python will report (`pip.inspect_interpreter`), so the file chosen is the
    one it installs."""
    version = (python.major, python.minor)
    platforms = _platform_tags(subdir)
    found = [
        *tags.cpython_tags(version, platforms=platforms),
        *tags.compatible_tags(version, f"cp{python.major}{python.minor}", platforms),
    ]
    return tuple(str(tag) for tag in found)


def _conda_distributions(records: Sequence[rattler.RepoDataRecord]) -> dict[str, str]:
    """Normalized name -> version of the Python distributions the conda solve provides: its
    noarch:python packages (see the module docstring for what this leaves out)."""
    found: dict[str, str] = {}
    for record in records:
        if not record.noarch.python:
            continue
        try:
            found[canonicalize_name(record.name.normalized)] = str(Version(str(record.version)))
        except InvalidVersion:
            continue  # a version resolution cannot compare is no constraint, as in builds
    return found


def _require_git(options: pip.PipOptions) -> None:
    """uv clones git references with the git CLI of this process's PATH: without it, say that
    the server lacks it, which uv's own error would not."""
    git = pip.git_requirements(options.requirements)
    if git and shutil.which("git") is None:
        raise BuildFailure(
            f"pip requirement {mask_credentials(git[0])!r} needs git on the server to be solved, "
            "and git is not installed there; build the environment instead, or use a released "
            "version from an index"
        )


def _run_uv(
    arguments: list[str], options: pip.PipOptions, scratch: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """uv in `scratch`, in a process group of its own: on timeout the group is killed, so
    neither uv nor a source build it started outlives the request."""
    try:
        process = subprocess.Popen(
            [uv.find_uv_bin(), *arguments],
            cwd=scratch,
            env=pip.uv_environment(options),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    except OSError as error:  # FileNotFoundError from find_uv_bin, or an exec failure
        raise BuildFailure(
            f"uv, which resolves pip requirements, cannot be run on this server ({error}); the "
            "administrator must install the uv package beside conda-store-server"
        ) from error
    with process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # the group ended on its own meanwhile
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _compile(
    options: pip.PipOptions,
    conda: Mapping[str, str],
    python: Version,
    subdir: str,
    cache_dir: str,
    scratch: str,
    budget: pip.SolveBudget,
) -> dict[str, Any]:
    """`uv pip compile` of the requirements for the target; its pylock.toml as a dict."""
    directory = Path(scratch)
    arguments = pip.compile_arguments(options, conda, directory)
    arguments += ["--python", sys.executable, "--python-version", ".".join(map(str, python.release[:3]))]
    arguments += ["--python-platform", python_platform(subdir), "--cache-dir", cache_dir]
    arguments += ["--no-config", "--no-progress", "--color", "never", "--no-python-downloads"]
    if budget.remaining() <= 0:
        raise budget.exceeded()
    try:
        result = _run_uv(arguments, options, scratch, budget.remaining())
    except subprocess.TimeoutExpired as error:
        raise budget.exceeded() from error
    if result.returncode != 0:
        raise BuildFailure(pip.resolution_failure(result.stderr, conda))
    return tomllib.loads((directory / "pylock.toml").read_text())


def resolve(
    conda_store: CondaStore,
    entries: Sequence[str],
    records: Sequence[rattler.RepoDataRecord],
    subdir: str,
    policy: SpecificationPolicy,
    budget: pip.SolveBudget,
    provided: Mapping[str, str] | None = None,
) -> list[pip.PipPackage]:
    """The pip packages a build of `entries` beside the conda solve `records` would install.

    `provided` adds Python distributions that the conda packages are known to install (name ->
    version; a build knows them from the environment it made), beside the noarch:python rule.

    Blocking (uv runs as a subprocess): call it in a worker thread. Raises BuildFailure with
    what to change (credentials masked), and SpecificationError for a URL the URL rules refuse,
    checked with host names resolved before uv fetches, and for resolved files after, as a
    worker checks them.
    """
    if not entries:
        return []
    python = python_version(records)
    options = pip.pip_options(entries, conda_store.pypi_index_url, conda_store.pypi_extra_index_urls)
    resolver = functools.cache(solve.resolve_host)
    check_pip_index_urls(entries, policy, resolver)
    if not options.requirements:
        return []
    _require_git(options)
    conda = {**_conda_distributions(records), **(provided or {})}
    with artifacts.temporary_directory(conda_store.store_directory) as scratch:
        lock = _compile(options, conda, python, subdir, conda_store.uv_cache_directory, scratch, budget)
    wheel_tags = _wheel_tags(python, subdir)
    packages = []
    for package in lock.get("packages", []):
        name = canonicalize_name(package["name"])
        if name in conda:
            continue  # conda provides it, and a build leaves it to conda
        if (package.get("vcs") or {}).get("type") == "git":
            url, sha256 = pip.git_url(package["vcs"]), None
        else:
            url, sha256 = pip.chosen_file(package, wheel_tags)
        packages.append(pip.PipPackage(name, str(package["version"]), strip_credentials(url), sha256))
    if options.names_sources:  # files of an index the administrator did not choose
        check_resolved_pip_urls([package.url for package in packages], policy, resolver)
    return sorted(packages, key=lambda package: package.name)
