"""The `pip:` dependencies of a build, resolved and installed with uv into the environment's python.

uv runs as a subprocess of the build process, in its process group, so a cancel or a build
timeout (which signal the whole group) stops it too. It resolves for the environment's own
interpreter (`<prefix>/bin/python`; uv is given a copy of that interpreter shared by every
environment of its python package, which uv already knows: see `shared_python`), and what
conda installed counts as installed: every distribution conda put into site-packages is a
constraint (`name==version`) of the resolution, backed by a metadata-only stand-in wheel so
that the resolution never needs that exact version on an index, and is skipped at install. A
pip requirement that conda satisfies is therefore neither reinstalled nor shadowed, and one
that would need another version fails naming both.

The resolution (`uv pip compile --format pylock.toml`) gives each file's URL and sha256; the
install (`uv pip install --no-deps --require-hashes`) takes exactly those files, which is also
how a lockfile's pip entries are installed (wheels by the shared copy into `--prefix`, source
archives by the environment's python, which builds them). A `git+http(s)://` reference has no
file to hash: uv clones it with the git CLI, the resolution names the commit, and the package
is built and installed from `git+URL@<commit>` in a last `uv pip install --no-deps` (uv's hash
mode is all or nothing, so that call alone goes without `--require-hashes`). Index URLs reach
uv through its environment variables, not its command line, so their credentials never show in
a process list; what is logged or raised passes through `mask_credentials`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
import urllib.parse
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import packaging
import uv
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from conda_store_server.build import interpreter_cache, shared_python
from conda_store_server.build.logs import BuildLog
from conda_store_server.exception import BuildFailure
from conda_store_server.redact import mask_credentials, strip_credentials
from conda_store_server.specification import pip_url, split_pip_option

__all__ = [
    "Interpreter",
    "PipOptions",
    "PipPackage",
    "SolveBudget",
    "check_installed_files",
    "chosen_file",
    "conda_distributions",
    "git_requirements",
    "git_url",
    "inspect_interpreter",
    "install",
    "pip_options",
    "resolution_failure",
    "resolve",
    "compile_arguments",
    "uv_environment",
    "with_dependencies",
]

#: Seconds the interpreter inspection of a lockfile build may take (it has no solve budget).
INSPECT_SECONDS = 60

#: Variables of the worker's environment that would change what uv resolves or where it
#: installs; the store's settings and the specification decide those. uv's other variables
#: (credentials of named indexes, TLS, proxies, timeouts) and ~/.netrc still apply.
_IGNORED_UV_VARIABLES = (
    "UV_INDEX",
    "UV_DEFAULT_INDEX",
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_FIND_LINKS",
    "UV_NO_INDEX",
    "UV_CONSTRAINT",
    "UV_OVERRIDE",
    "UV_EXCLUDE",
    "UV_PRERELEASE",
    "UV_PYTHON",
    "UV_SYSTEM_PYTHON",
    "UV_NO_CACHE",
    "UV_NO_VERIFY_HASHES",
    "UV_CONFIG_FILE",
)

#: Run by the environment's interpreter: what resolution and wheel choice depend on. The
#: worker's own `packaging` is put first on the path, since the environment may have none.
#: It builds the PEP 508 marker environment from `platform` itself rather than importing
#: `packaging.markers` (whose parser compiles its grammar at import): the same values, a quarter
#: less start-up time, paid once per pip build. (`-S` would save more, but `site` is what reads a
#: venv's `pyvenv.cfg`, so without it a venv-style python reports its base's site-packages.)
_INSPECT_SCRIPT = """
import json, os, platform, sys, sysconfig
sys.path.insert(0, sys.argv[1])
from packaging import tags
version = sys.implementation.version
implementation_version = f"{version.major}.{version.minor}.{version.micro}"
if version.releaselevel != "final":
    implementation_version += version.releaselevel[0] + str(version.serial)
print(json.dumps({
    "markers": {
        "implementation_name": sys.implementation.name,
        "implementation_version": implementation_version,
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "platform_python_implementation": platform.python_implementation(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    },
    "tags": [str(tag) for tag in tags.sys_tags()],
    "site_packages": sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}),
    "executable": sys.executable,
    "headers": None if sys.prefix != sys.base_prefix else sysconfig.get_path("include"),
}))
"""


@dataclass(frozen=True)
class PipOptions:
    """What a `pip:` list asks for, with the store's indexes where it names none."""

    requirements: tuple[str, ...]
    index_url: str
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    prerelease: bool = False
    #: The specification chose where packages come from (an index or --find-links of its own).
    names_sources: bool = False


def pip_options(entries: Iterable[str], index_url: str, extra_index_urls: Iterable[str]) -> PipOptions:
    """Split a `pip:` list into requirements and uv options.

    A specification's `--index-url` replaces the store's indexes (pypi_index_url and
    pypi_extra_index_urls), as pip's does; its `--extra-index-url`s are searched as well.
    """
    requirements: list[str] = []
    values: dict[str, list[str]] = {}
    prerelease = False
    for entry in entries:
        if not entry.startswith("--"):
            requirements.append(entry)
            continue
        option, value = split_pip_option(entry)
        if option == "--pre":
            prerelease = True
        elif value is not None:
            values.setdefault(option, []).append(value)
    own_index = values.get("--index-url", [])
    extra = values.get("--extra-index-url", [])
    return PipOptions(
        requirements=tuple(requirements),
        index_url=own_index[-1] if own_index else index_url,
        extra_index_urls=tuple(extra if own_index else [*extra_index_urls, *extra]),
        find_links=tuple(values.get("--find-links", [])),
        prerelease=prerelease,
        names_sources=bool(own_index or extra or values.get("--find-links")),
    )


#: A full git commit id (SHA-1, or SHA-256 for repositories in that object format): what pins
#: a git package, as a file's sha256 pins any other.
_COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def _is_git(url: str) -> bool:
    return url[:4].lower() == "git+"


def _names_commit(url: str) -> bool:
    """True if the revision of `git+URL@<revision>[#fragment]` is a full commit id."""
    _, at, revision = urllib.parse.urlsplit(url).path.rpartition("@")
    return bool(at and _COMMIT_ID.fullmatch(revision))


@dataclass(frozen=True)
class PipPackage:
    """One installed pip distribution, as the lockfile records it (URL without credentials).

    A file (wheel or source archive) is pinned by its `sha256`. A git package has none
    (`sha256` is None): its `url` is `git+URL@<commit id>[#subdirectory=...]`, and the commit
    pins it.
    """

    name: str
    version: str
    url: str
    sha256: str | None
    dependencies: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def is_git(self) -> bool:
        return self.sha256 is None

    @property
    def requirement(self) -> str:
        """The direct reference uv installs (and messages name)."""
        return f"{self.name} @ {self.url}"

    @classmethod
    def from_lock_entry(cls, entry: Mapping[str, Any]) -> PipPackage:
        """A lockfile's `manager: pip` entry: a file with its sha256, or a git commit.

        A git entry's hash is not read: conda-lock writes the commit id there as if it were a
        sha256, this service writes none, and the commit in the URL is what is installed. Its
        `source` is not read either: `url` is what the URL rules checked.
        """
        name = str(entry.get("name", ""))
        version = str(entry.get("version", ""))
        url = entry.get("url")
        if isinstance(url, str) and _is_git(url):
            if not _names_commit(url):
                raise BuildFailure(
                    f"The lockfile's pip package {name!r} comes from git without a commit id "
                    f"({mask_credentials(url)}); a lockfile's git package must name the full "
                    "commit (git+https://host/repo.git@<commit id>), so that exactly that commit "
                    "is installed"
                )
            return cls(canonicalize_name(name), version, url, None)
        sha256 = (entry.get("hash") or {}).get("sha256")
        if not isinstance(url, str) or not isinstance(sha256, str):
            raise BuildFailure(
                f"The lockfile's pip package {name!r} has no url or no sha256 hash; every pip "
                "package of a lockfile needs both (or a git+https URL pinned to a commit), so "
                "that exactly that file is installed"
            )
        return cls(canonicalize_name(name), version, url, sha256.lower())


@dataclass(frozen=True)
class SolveBudget:
    """What the conda solve left of CondaStore.conda_max_solve_time: pip resolution shares it."""

    limit: int
    started: float  # time.monotonic() when the conda solve began

    def remaining(self) -> float:
        return self.limit - (time.monotonic() - self.started)

    def exceeded(self) -> BuildFailure:
        return BuildFailure(
            f"Resolving the pip requirements took longer than CondaStore.conda_max_solve_time "
            f"({self.limit} s, conda solve included) and uv was stopped; simplify the pip "
            "requirements or raise the limit"
        )


@dataclass(frozen=True)
class Interpreter:
    """The environment's python, as resolution and installation see it."""

    python: str
    markers: Mapping[str, str]
    tags: tuple[str, ...]
    site_packages: tuple[str, ...]
    prefix: str = ""
    #: the copy of `python` shared by the environments of its package, which uv runs when it can
    shared_python: str | None = None
    #: where a python that is not a virtual environment keeps C headers (None for a venv)
    headers: str | None = None


def inspect_interpreter(prefix: str, timeout: float, cache_dir: str | None = None) -> Interpreter:
    """Ask the environment's python about itself; fail the build if there is none.

    With `cache_dir`, an answer given before by the same python package on this machine is
    reused (`interpreter_cache`): the python is not started again. The copy of the interpreter
    that uv is given is found, or laid out the first time, here too (`shared_python.find`).
    """
    python = os.path.join(prefix, "bin", "python")
    if not os.path.exists(python):
        raise BuildFailure(
            "The specification has pip dependencies but its environment has no python; "
            "add `python` to the conda dependencies"
        )
    record = interpreter_cache.python_record(prefix)
    key = interpreter_cache.cache_key(record, _INSPECT_SCRIPT) if cache_dir else None
    found = interpreter_cache.load(cache_dir, key, prefix) if cache_dir and key else None
    if found is None:
        found = _inspect(prefix, python, timeout)
        if cache_dir and key:
            interpreter_cache.store(cache_dir, key, prefix, found)
    uv_python = _uv_python(prefix, python, found.get("executable"))
    headers = found.get("headers")
    return Interpreter(
        uv_python,
        found["markers"],
        tuple(found["tags"]),
        tuple(found["site_packages"]),
        prefix,
        shared_python.find(prefix, uv_python, record),
        headers if isinstance(headers, str) and _inside(headers, prefix) else None,
    )


def _inside(path: str, prefix: str) -> bool:
    return os.path.realpath(path).startswith(os.path.realpath(prefix) + os.sep)


def _inspect(prefix: str, python: str, timeout: float) -> dict[str, Any]:
    packaging_path = os.path.dirname(os.path.dirname(packaging.__file__))
    try:
        result = subprocess.run(
            [python, "-I", "-c", _INSPECT_SCRIPT, packaging_path],
            capture_output=True,
            text=True,
            timeout=max(timeout, 1),
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as error:
        raise BuildFailure(
            f"The environment's python did not answer within {timeout:.0f} s, so the pip "
            "requirements could not be resolved for it"
        ) from error
    except OSError as error:
        raise BuildFailure(f"The environment's python ({python}) cannot be run: {error}") from error
    try:
        found = json.loads(result.stdout)
    except ValueError:
        found = None
    if result.returncode != 0 or not isinstance(found, dict):
        raise BuildFailure(
            f"The environment's python ({python}) could not tell what pip packages fit it: "
            f"{mask_credentials(result.stderr.strip()) or 'no output'}"
        )
    return found


def _uv_python(prefix: str, python: str, executable: Any) -> str:
    """The interpreter uv is given: the one `bin/python` runs as, when it lies in the prefix.

    uv caches what it learns of an interpreter by its path; `bin/python` is often a link or a
    launcher to `bin/pythonX.Y`, and naming the real one spares uv a fresh query at each call.
    """
    inside = os.path.realpath(prefix) + os.sep
    if isinstance(executable, str) and os.path.realpath(executable).startswith(inside):
        return executable
    return python


def conda_distributions(interpreter: Interpreter) -> dict[str, str]:
    """Normalized name -> version of the Python distributions in site-packages (all conda's,
    since pip installs nothing before this is read)."""
    found: dict[str, str] = {}
    for distribution in importlib.metadata.distributions(path=list(interpreter.site_packages)):
        name = distribution.metadata["Name"]
        try:
            version = str(Version(distribution.version))
        except (InvalidVersion, TypeError):
            continue  # a version resolution cannot compare is no constraint
        if name:
            found.setdefault(canonicalize_name(name), version)
    return found


_DIST_INFO_METADATA = re.compile(r"site-packages/([^/]+)-([^/-]+)\.dist-info/METADATA$")


def distributions_by_conda_package(prefix: str) -> dict[tuple[str, str], dict[str, str]]:
    """(conda name, version) -> the Python distributions (normalized name -> version) each
    conda package of the prefix installed, from the file lists in `conda-meta`.

    Another platform's lock is resolved without an environment: the same conda package at the
    same version provides the same distributions there, so they constrain it as they do here.
    """
    found: dict[tuple[str, str], dict[str, str]] = {}
    for path in Path(prefix, "conda-meta").glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        provided = {}
        for file in record.get("files", []):
            if match := _DIST_INFO_METADATA.search(file):
                try:
                    provided[canonicalize_name(match[1])] = str(Version(match[2]))
                except InvalidVersion:
                    continue  # as in conda_distributions: no constraint
        if provided:
            found[(str(record.get("name")), str(record.get("version")))] = provided
    return found


def _stub_wheel(directory: Path, name: str, version: str) -> None:
    """A wheel holding only metadata: stands for a conda-installed distribution in a resolution.

    It has no dependencies: conda already installed what the conda package needs.
    """
    distribution = re.sub(r"[-_.]+", "_", name)
    dist_info = f"{distribution}-{version}.dist-info"
    files = {
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist_info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{dist_info}/RECORD"])
    with zipfile.ZipFile(directory / f"{distribution}-{version}-py3-none-any.whl", "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)


def uv_environment(options: PipOptions) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key not in _IGNORED_UV_VARIABLES}
    environment["COLUMNS"] = "1000"  # uv wraps explanations at this width; readers wrap their own
    environment["UV_INDEX_URL"] = options.index_url
    if options.extra_index_urls:
        environment["UV_EXTRA_INDEX_URL"] = " ".join(options.extra_index_urls)
    return environment


def _uv_arguments(python: str, cache_dir: str) -> list[str]:
    arguments = ["--python", python, "--cache-dir", cache_dir]
    return [*arguments, "--no-config", "--no-progress", "--color", "never", "--no-python-downloads"]


def _require_git(requirements: Iterable[str]) -> None:
    """Fail the build, naming the first git requirement, if git is not on the worker's PATH.

    uv clones git references with the git CLI, found on the PATH it inherits (this process's);
    without it uv's own error would not say that the worker, not the specification, lacks it.
    """
    first = next(iter(requirements), None)
    if first is not None and shutil.which("git") is None:
        raise BuildFailure(
            f"pip requirement {mask_credentials(first)!r} needs git on the worker, and git is not "
            "installed there; install git on the workers or use a released version from an index"
        )


def git_requirements(lines: Iterable[str]) -> list[str]:
    """The requirements among `lines` that are git direct references (`name @ git+...`)."""
    return [line for line in lines if _is_git(pip_url(line) or "")]


def _run_uv(
    arguments: list[str],
    options: PipOptions,
    scratch: str,
    timeout: float | None,
    write: Callable[[str], None],
) -> subprocess.CompletedProcess[str]:
    """uv in `scratch`, in this process's group (so the build's cancel and timeout reach it)."""
    write(mask_credentials("uv " + " ".join(arguments)))
    try:
        return subprocess.run(
            [uv.find_uv_bin(), *arguments],
            cwd=scratch,
            env=uv_environment(options),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except OSError as error:  # FileNotFoundError from find_uv_bin, or an exec failure
        raise BuildFailure(
            f"uv, which installs pip dependencies, cannot be run on this worker ({error}); the "
            "administrator must install the uv package beside conda-store-server"
        ) from error


def compile_arguments(options: PipOptions, conda: Mapping[str, str], directory: Path) -> list[str]:
    """`uv pip compile` of the requirements to `directory/pylock.toml`, conda's distributions held.

    Writes its inputs into `directory`: the requirements, conda's distributions as constraints,
    and a metadata-only stand-in wheel of each, so that the resolution never needs that exact
    version on an index. The interpreter, cache and target arguments are the caller's.
    """
    (directory / "requirements.in").write_text("".join(f"{line}\n" for line in options.requirements))
    (directory / "constraints.txt").write_text("".join(f"{n}=={v}\n" for n, v in sorted(conda.items())))
    stubs = directory / "conda-distributions"
    stubs.mkdir()
    for name, version in conda.items():
        _stub_wheel(stubs, name, version)
    arguments = ["pip", "compile", "requirements.in", "--format", "pylock.toml", "-o", "pylock.toml"]
    arguments += ["--no-header", "-c", "constraints.txt", "--find-links", str(stubs)]
    arguments += [argument for link in options.find_links for argument in ("--find-links", link)]
    if options.prerelease:
        arguments += ["--prerelease", "allow"]
    return arguments


def resolve(
    interpreter: Interpreter,
    options: PipOptions,
    cache_dir: str,
    scratch: str,
    budget: SolveBudget,
    log: BuildLog,
) -> list[PipPackage]:
    """The files to install for `options.requirements`, conda's distributions left out.

    Fails the build with uv's explanation (naming the conda packages it involves) when the
    requirements cannot be met, and with the time limit when uv outlasts the budget.
    """
    _require_git(git_requirements(options.requirements))
    conda = conda_distributions(interpreter)
    directory = Path(scratch)
    arguments = compile_arguments(options, conda, directory)

    def compile_with(python: str) -> subprocess.CompletedProcess[str]:
        if budget.remaining() <= 0:
            raise budget.exceeded()
        try:
            command = [*arguments, *_uv_arguments(python, cache_dir)]
            return _run_uv(command, options, scratch, budget.remaining(), log.write)
        except subprocess.TimeoutExpired as error:
            raise budget.exceeded() from error

    shared = interpreter.shared_python  # the same markers and tags as the environment's python
    result = compile_with(shared or interpreter.python)
    if shared and _could_not_run(result, shared, log):
        result = compile_with(interpreter.python)
    if result.returncode != 0:
        raise BuildFailure(resolution_failure(result.stderr, conda))
    log.write(mask_credentials(result.stderr.strip()))
    lock = tomllib.loads((directory / "pylock.toml").read_text())
    packages = []
    for package in lock.get("packages", []):
        name = canonicalize_name(package["name"])
        if name in conda:
            log.write(f"  {name} {conda[name]}: installed by conda, not by pip")
            continue
        if (package.get("vcs") or {}).get("type") == "git":
            url, sha256 = git_url(package["vcs"]), None
        else:
            url, sha256 = chosen_file(package, interpreter.tags)
        packages.append(PipPackage(name, str(package["version"]), strip_credentials(url), sha256))
    return packages


def git_url(vcs: Mapping[str, Any]) -> str:
    """`git+URL@<commit>[#subdirectory=...]` of a git package's `vcs` table in pylock.toml.

    The resolution's commit, not the reference the specification gave (a branch or a tag
    moves): installing it later, or from the lockfile, builds the same source.
    """
    url = f"git+{vcs['url']}@{vcs['commit-id']}"
    if vcs.get("subdirectory"):
        url += f"#subdirectory={vcs['subdirectory']}"
    return url


def resolution_failure(stderr: str, conda: Mapping[str, str]) -> str:
    message = mask_credentials(stderr.strip()) or "uv gave no explanation"
    message = message.removeprefix("error: ").strip()
    involved = sorted(
        name for name in conda if re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", message, re.I)
    )
    reason = f"The pip requirements cannot be installed: {message}"
    if involved:
        installed = ", ".join(f"{name} {conda[name]}" for name in involved)
        reason += (
            f"\nconda installed {installed}; pip packages must work with the versions conda "
            "installed, so change the pip requirements or the conda packages"
        )
    return reason


def chosen_file(package: Mapping[str, Any], tags: tuple[str, ...]) -> tuple[str, str]:
    """(URL, sha256) of the file pip would pick: the wheel of the most preferred tag, else the
    direct archive or the source distribution."""
    name = package["name"]
    if package.get("wheels"):
        rank = {tag: position for position, tag in enumerate(tags)}

        def preference(wheel: Mapping[str, Any]) -> int:
            filename = wheel.get("name") or wheel["url"].rsplit("/", 1)[-1].split("#", 1)[0]
            wheel_tags = parse_wheel_filename(filename)[3]
            return min((rank.get(str(tag), len(rank)) for tag in wheel_tags), default=len(rank))

        best = min(package["wheels"], key=preference)
        if preference(best) == len(rank):
            raise BuildFailure(f"No wheel of the pip package {name} fits the environment's python")
        chosen = best
    else:
        chosen = package.get("archive") or package.get("sdist")
    sha256 = (chosen or {}).get("hashes", {}).get("sha256")
    if not chosen or "url" not in chosen or not sha256:
        raise BuildFailure(
            f"The pip package {name} comes neither from a file with a sha256 hash nor from a git "
            "commit (a local directory, or another version control system); give a wheel or "
            "source archive URL or a git+https reference instead, so the build can be locked "
            "and repeated"
        )
    return chosen["url"], sha256


def install(
    interpreter: Interpreter,
    packages: list[PipPackage],
    options: PipOptions,
    cache_dir: str,
    scratch: str,
    log: BuildLog,
) -> None:
    """Install exactly these files (hashes checked) and git commits, no dependency resolution.

    Files go first, in calls where every one must have its hash: wheels by the shared copy of
    the python when there is one (`shared_python`: uv knows it already), then source
    archives by the environment's own python, which builds them; git packages are built from
    their commit in a last call, the only one without `--require-hashes`. The index URLs in
    `options` are passed too: uv sends their credentials to files on the same hosts, and takes
    the build backends of git packages from them.
    """
    git = [package for package in packages if package.is_git]
    _require_git(package.requirement for package in git)
    files = [package for package in packages if not package.is_git]
    python, shared, prefix = interpreter.python, interpreter.shared_python, interpreter.prefix
    wheels = [package for package in files if shared and _is_wheel_url(package.url)]
    built = [package for package in files if package not in wheels]
    if wheels and shared:
        into_prefix = ["--require-hashes", "--prefix", prefix]
        result = _uv_install(shared, _hashed(wheels), into_prefix, options, cache_dir, scratch, log)
        if _could_not_run(result, shared, log):
            built = files
        else:
            _checked_install(result, log.write)
            dist_infos = _dist_infos(interpreter, [package.name for package in wheels])
            shared_python.relocate(prefix, dist_infos, shared, python, interpreter.headers)
    if built:
        result = _uv_install(python, _hashed(built), ["--require-hashes"], options, cache_dir, scratch, log)
        _checked_install(result, log.write)
    if git:
        result = _uv_install(python, [p.requirement for p in git], [], options, cache_dir, scratch, log)
        _checked_install(result, log.write)


def _could_not_run(result: subprocess.CompletedProcess[str], shared: str, log: BuildLog) -> bool:
    """Whether uv failed because it could not run the shared copy of the python (its error
    names the interpreter, in backquotes; the line saying which interpreter it uses has none):
    then the environment's own is used, as without a copy."""
    if result.returncode == 0 or f"`{shared}`" not in result.stderr:
        return False
    log.write(mask_credentials(result.stderr.strip()))
    log.write(f"uv could not run {shared}; the environment's own python is used instead")
    return True


def _dist_infos(interpreter: Interpreter, names: Iterable[str]) -> list[str]:
    """The `*.dist-info` directories of these installed distributions (where their RECORD is)."""
    found = []
    for distribution in _installed(interpreter, names).values():
        record = next((f for f in distribution.files or [] if f.name == "RECORD"), None)
        if record is not None and record.parent.name.endswith(".dist-info"):
            found.append(str(distribution.locate_file(record.parent)))
    return found


def _hashed(packages: Iterable[PipPackage]) -> list[str]:
    return [f"{package.requirement} --hash=sha256:{package.sha256}" for package in packages]


def _uv_install(
    python: str,
    lines: list[str],
    flags: list[str],
    options: PipOptions,
    cache_dir: str,
    scratch: str,
    log: BuildLog,
) -> subprocess.CompletedProcess[str]:
    Path(scratch, "install.txt").write_text("".join(f"{line}\n" for line in lines))
    arguments = ["pip", "install", "-r", "install.txt", "--no-deps", *flags]
    arguments += ["--link-mode", "hardlink", *_uv_arguments(python, cache_dir)]
    return _run_uv(arguments, options, scratch, None, log.write)


def _checked_install(result: subprocess.CompletedProcess[str], write: Callable[[str], None]) -> None:
    output = mask_credentials(f"{result.stdout}\n{result.stderr}".strip())
    if result.returncode != 0:
        message = output.removeprefix("error: ").strip() or "uv gave no explanation"
        raise BuildFailure(f"Installing the pip packages failed: {message}")
    write(output)


def install_for_platform(
    packages: list[PipPackage],
    target: PlatformTarget,
    options: PipOptions,
    cache_dir: str,
    scratch: str,
    write: Callable[[str], None],
) -> None:
    """Lay a lockfile's pip wheels out in the prefix of another platform, running nothing of it.

    A container image of another architecture needs the pip packages its lock names, and that
    platform's python cannot run here. uv unpacks wheels for the target's tags
    (`--python-platform`, `--python-version`) into `target.prefix` as if it were a virtual
    environment; `target.helper_python`, an interpreter of this machine of the same X.Y, only
    tells uv the layout, and its path ends up in the scripts' shebangs for the caller to
    rewrite. Source archives and git packages are refused: building them runs python, here,
    for this machine's platform.
    """
    built = [p.requirement for p in packages if p.is_git or not _is_wheel_url(p.url)]
    if built:
        raise BuildFailure(
            f"pip packages for {target.subdir} must be wheels to be laid out without running that "
            f"platform's python, and {', '.join(mask_credentials(r) for r in built)} would have to be built"
        )
    Path(scratch, "install.txt").write_text(
        "".join(f"{p.requirement} --hash=sha256:{p.sha256}\n" for p in packages)
    )
    arguments = [
        "pip",
        "install",
        "-r",
        "install.txt",
        "--no-deps",
        "--require-hashes",
        "--link-mode",
        "hardlink",
    ]
    arguments += ["--prefix", target.prefix, "--python-platform", target.python_platform]
    arguments += ["--python-version", target.python_version, "--python", target.helper_python]
    arguments += [
        "--cache-dir",
        cache_dir,
        "--no-config",
        "--no-progress",
        "--color",
        "never",
        "--no-python-downloads",
    ]
    _checked_install(_run_uv(arguments, options, scratch, None, write), write)


@dataclass(frozen=True)
class PlatformTarget:
    """Where and for which platform `install_for_platform` lays pip wheels out."""

    subdir: str
    prefix: str
    python_version: str
    python_platform: str
    helper_python: str


def _is_wheel_url(url: str) -> bool:
    return url.split("#", 1)[0].split("?", 1)[0].lower().endswith(".whl")


def _installed(interpreter: Interpreter, names: Iterable[str]) -> dict[str, importlib.metadata.Distribution]:
    wanted = set(names)
    found = {}
    for distribution in importlib.metadata.distributions(path=list(interpreter.site_packages)):
        name = canonicalize_name(distribution.metadata["Name"] or "")
        if name in wanted:
            found.setdefault(name, distribution)
    return found


def with_dependencies(
    interpreter: Interpreter, packages: list[PipPackage], requirements: Iterable[str]
) -> list[PipPackage]:
    """The packages with their dependencies (name -> constraint) as the lockfile records them.

    Read from the installed metadata: a requirement counts if its marker holds for the
    environment, for the extras the specification or another package asked of it.
    """
    installed = _installed(interpreter, [package.name for package in packages])
    requires = {name: _requirements(distribution.requires or []) for name, distribution in installed.items()}
    extras: dict[str, set[str]] = {}
    for requirement in [*_requirements(requirements), *(r for rs in requires.values() for r in rs)]:
        extras.setdefault(canonicalize_name(requirement.name), set()).update(requirement.extras)
    result = []
    for package in packages:
        dependencies: dict[str, list[str]] = {}
        for requirement in requires.get(package.name, []):
            if requirement.marker is not None and not any(
                requirement.marker.evaluate({**interpreter.markers, "extra": extra})
                for extra in ["", *sorted(extras.get(package.name, ()))]
            ):
                continue
            constraints = dependencies.setdefault(canonicalize_name(requirement.name), [])
            if requirement.specifier:
                constraints.append(str(requirement.specifier))
        flat = {name: ",".join(parts) or "*" for name, parts in sorted(dependencies.items())}
        result.append(dataclasses.replace(package, dependencies=flat))
    return result


def _requirements(lines: Iterable[str]) -> list[Requirement]:
    parsed = []
    for line in lines:
        try:
            parsed.append(Requirement(line))
        except InvalidRequirement:
            continue  # metadata a resolver accepted but packaging does not: no lockfile edge
    return parsed


def check_installed_files(prefix: str, interpreter: Interpreter, packages: list[PipPackage]) -> None:
    """Every file the pip packages record must lie inside the prefix: the defence beyond the
    installer's own, as `install.check_installed_paths` is for conda's packages.

    A file escapes lexically (`..` in its RECORD path), through a symlinked directory or by being
    a symlink itself; each directory is resolved once, a file only when it is a symlink.
    """
    root = os.path.realpath(prefix)

    def contained(path: str) -> bool:
        return path == root or path.startswith(root + os.sep)

    directories: dict[str, bool] = {}
    for name, distribution in _installed(interpreter, [p.name for p in packages]).items():
        base = str(distribution.locate_file(""))
        for file in distribution.files or []:
            path = os.path.normpath(os.path.join(base, str(file)))
            directory = os.path.dirname(path)
            verdict = directories.get(directory)
            if verdict is None:
                verdict = directories[directory] = contained(os.path.realpath(directory))
            if verdict and os.path.islink(path):
                verdict = contained(os.path.realpath(path))
            if not verdict:
                raise BuildFailure(
                    f"The pip package {name} installed {str(file)!r} outside the environment prefix; "
                    "the build was stopped and the package must be fixed"
                )
