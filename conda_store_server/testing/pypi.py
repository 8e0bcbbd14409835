"""A local PyPI for tests: pure-Python wheels written by hand and a PEP 503 index serving them.

Builds with `pip:` dependencies need an index to resolve against, and the machines that run the
tests reach no PyPI that tests may depend on. ``build_wheel`` writes a wheel following the
binary distribution format (``METADATA`` with ``Requires-Dist``, extras and markers, ``WHEEL``,
``RECORD`` with hashes) without any build backend, and ``serve_index`` serves a directory of
wheels as a simple repository on loopback, optionally behind HTTP basic auth, counting the
files it hands out so tests can tell a cached build from one that downloaded.

For `name @ git+http://...` references, ``serve_git`` serves bare git repositories over git's
"dumb" HTTP protocol (static files, after ``git update-server-info``) on loopback, and
``source_project`` gives a source tree that builds a ``WheelSpec``'s wheel with an in-tree
PEP 517 backend, so that uv builds it without downloading any build backend.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import http.server
import json
import os
import re
import subprocess
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from conda_store_server.build.wheel_record import record_hash

__all__ = [
    "GitRepository",
    "GitServer",
    "PyPIIndex",
    "WheelSpec",
    "build_wheel",
    "build_wheels",
    "demo_wheels",
    "normalize",
    "serve_git",
    "serve_index",
    "source_project",
]

#: A fixed timestamp for every zip entry, so the same spec always gives the same bytes (and hash).
_ZIP_TIME = (2024, 1, 1, 0, 0, 0)


def normalize(name: str) -> str:
    """PEP 503's normalized project name: what index URLs and comparisons use."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class WheelSpec:
    """One pure-Python wheel: ``modules`` maps paths inside site-packages to their source.

    ``requires`` are PEP 508 ``Requires-Dist`` lines (markers allowed); ``extras`` maps an extra
    to the requirements it adds.
    """

    name: str
    version: str
    modules: Mapping[str, str] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    extras: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    summary: str = ""
    console_scripts: Mapping[str, str] = field(default_factory=dict)  # name -> "module:function"

    @property
    def distribution(self) -> str:
        """The name as it appears in file names (the wheel spec's escaped form)."""
        return re.sub(r"[-_.]+", "_", self.name).lower()

    @property
    def filename(self) -> str:
        return f"{self.distribution}-{self.version}-py3-none-any.whl"


def _metadata(spec: WheelSpec) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {spec.name}", f"Version: {spec.version}"]
    if spec.summary:
        lines.append(f"Summary: {spec.summary}")
    lines += [f"Requires-Dist: {requirement}" for requirement in spec.requires]
    for extra, requirements in spec.extras.items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f"Requires-Dist: {_with_extra(requirement, extra)}" for requirement in requirements]
    return "\n".join(lines) + "\n"


def _with_extra(requirement: str, extra: str) -> str:
    """The requirement made conditional on ``extra`` (keeping a marker it already has)."""
    base, _, marker = requirement.partition(";")
    condition = f'extra == "{extra}"'
    if marker.strip():
        condition = f"({marker.strip()}) and {condition}"
    return f"{base.strip()} ; {condition}"


def build_wheel(spec: WheelSpec, out_dir: Path) -> Path:
    """Write ``<out_dir>/<spec.filename>`` and return its path."""
    dist_info = f"{spec.distribution}-{spec.version}.dist-info"
    files: dict[str, bytes] = {path: source.encode() for path, source in spec.modules.items()}
    files[f"{dist_info}/METADATA"] = _metadata(spec).encode()
    if spec.console_scripts:
        scripts = "".join(f"{name} = {target}\n" for name, target in spec.console_scripts.items())
        files[f"{dist_info}/entry_points.txt"] = f"[console_scripts]\n{scripts}".encode()
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: conda_store_server.testing.pypi\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = "".join(f"{path},{record_hash(content)},{len(content)}\n" for path, content in files.items())
    files[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / spec.filename
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content)
    return path


def build_wheels(out_dir: Path, specs: Iterable[WheelSpec]) -> Path:
    """Build every spec into ``out_dir`` (the directory an index serves); returns ``out_dir``."""
    for spec in specs:
        build_wheel(spec, out_dir)
    return out_dir


def _module(name: str, version: str, body: str = "") -> dict[str, str]:
    return {f"{name}/__init__.py": f'__version__ = "{version}"\n{body}'}


def demo_wheels() -> list[WheelSpec]:
    """Projects whose relations exercise what a pip build must get right.

    - ``pipgreet`` 1.0.0 / 2.0.0: ``greet()`` uses ``pipcolor`` and the conda package
      ``tinylib`` (``Requires-Dist: tinylib>=1.0``, met by the demo channel's tinylib 1.0.0);
      extra ``fancy`` adds ``pipfancy``; ``pipwin`` only on Windows (a marker).
    - ``pipcolor`` 1.0.0 / 1.1.0 (1.1.0 is a dependency resolution must pick).
    - ``pipfancy`` 0.1.0 and the pre-release 0.2.0b1 (chosen only with ``--pre``); ``pipwin``
      1.0.0.
    - ``tinylib`` 2.0.0: newer than the conda package, so a resolution that ignored what conda
      installed would shadow it.
    - ``pipconflict`` 1.0.0: needs ``tinylib>=2``, which conflicts with conda's tinylib 1.0.0.
    - ``pipshout`` 1.0.0: a console script, ``pipshout``, whose shebang names the interpreter.
    """
    greet = (
        "import pipcolor\nimport tinylib\n\n\n"
        "def greet(name):\n"
        "    return pipcolor.paint(tinylib.greeting(name, __version__))\n"
    )
    return [
        *(
            WheelSpec(
                name="pipgreet",
                version=version,
                modules=_module("pipgreet", version, greet),
                requires=("pipcolor>=1.0", "tinylib>=1.0", 'pipwin ; sys_platform == "win32"'),
                extras={"fancy": ("pipfancy>=0.1",)},
                summary="Greets through two dependencies, one of them a conda package",
            )
            for version in ("1.0.0", "2.0.0")
        ),
        *(
            WheelSpec(
                name="pipcolor",
                version=version,
                modules=_module("pipcolor", version, "\n\ndef paint(text):\n    return f'*{text}*'\n"),
            )
            for version in ("1.0.0", "1.1.0")
        ),
        *(
            WheelSpec(name="pipfancy", version=version, modules=_module("pipfancy", version))
            for version in ("0.1.0", "0.2.0b1")
        ),
        WheelSpec(name="pipwin", version="1.0.0", modules=_module("pipwin", "1.0.0")),
        WheelSpec(name="tinylib", version="2.0.0", modules=_module("tinylib", "2.0.0")),
        WheelSpec(
            name="pipconflict",
            version="1.0.0",
            modules=_module("pipconflict", "1.0.0"),
            requires=("tinylib>=2",),
        ),
        WheelSpec(
            name="pipshout",
            version="1.0.0",
            modules=_module("pipshout", "1.0.0", "\n\ndef main():\n    print('PIPSHOUT 1.0.0')\n"),
            console_scripts={"pipshout": "pipshout:main"},
        ),
    ]


class PyPIIndex:
    """A running simple index (see ``serve_index``): its URL and what it served."""

    def __init__(self, wheel_dir: Path, credentials: tuple[str, str] | None, delay: float) -> None:
        self.wheel_dir = wheel_dir
        self.credentials = credentials
        self.delay = delay
        self.downloads: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.url = ""  # set once the server listens

    @property
    def index_url(self) -> str:
        """The simple index URL, without credentials."""
        return f"{self.url}/simple"

    @property
    def authenticated_index_url(self) -> str:
        """The index URL with the credentials in it, as an administrator configures it."""
        if self.credentials is None:
            return self.index_url
        user, password = self.credentials
        return self.index_url.replace("://", f"://{user}:{password}@", 1)

    def projects(self) -> dict[str, list[Path]]:
        """Normalized project name -> its wheel files, read from the directory on each request."""
        result: dict[str, list[Path]] = {}
        for path in sorted(self.wheel_dir.glob("*.whl")):
            result.setdefault(normalize(path.name.split("-", 1)[0]), []).append(path)
        return result

    def count_download(self, filename: str) -> None:
        with self._lock:
            self.downloads[filename] += 1

    def authorized(self, header: str | None) -> bool:
        if self.credentials is None:
            return True
        expected = base64.b64encode(":".join(self.credentials).encode()).decode()
        return header == f"Basic {expected}"


#: As PyPI's file host: files never change, so a client may cache them for good.
_IMMUTABLE = {"Cache-Control": "max-age=365000000, immutable, public"}


def _wheel_metadata(wheel: Path) -> bytes:
    """The wheel's ``METADATA``, served beside it (PEP 658) as PyPI does."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(name)


def _link(wheel: Path) -> str:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    metadata = hashlib.sha256(_wheel_metadata(wheel)).hexdigest()
    name = html.escape(wheel.name)
    return (
        f'<a href="../../files/{name}#sha256={digest}" data-core-metadata="sha256={metadata}" '
        f'data-dist-info-metadata="sha256={metadata}">{name}</a>\n'
    )


class _Handler(http.server.BaseHTTPRequestHandler):
    index: PyPIIndex  # set on the per-server subclass

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Quiet: tests read counters, not access logs."""

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        """uv asks before it downloads (whether it may read a wheel's metadata by ranges)."""
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self.index.authorized(self.headers.get("Authorization")):
            challenge = {"WWW-Authenticate": 'Basic realm="test"'}
            self._send(401, b"authentication required\n", "text/plain", challenge)
            return
        path = self.path.split("?", 1)[0]
        if path.startswith("/simple"):
            time.sleep(self.index.delay)
        projects = self.index.projects()
        project = re.fullmatch(r"/simple/([^/]+)/?", path)
        file = re.fullmatch(r"/files/([^/]+\.whl)(\.metadata)?", path)
        if path in ("/simple", "/simple/"):
            self._page("".join(f'<a href="{name}/">{name}</a>\n' for name in projects))
        elif project and normalize(project[1]) in projects:
            self._page("".join(_link(wheel) for wheel in projects[normalize(project[1])]))
        elif file and (self.index.wheel_dir / file[1]).is_file():
            wheel = self.index.wheel_dir / file[1]
            if file[2]:
                self._send(200, _wheel_metadata(wheel), "text/plain", _IMMUTABLE)
                return
            if self.command == "GET":
                self.index.count_download(wheel.name)
            self._send(200, wheel.read_bytes(), "application/octet-stream", _IMMUTABLE)
        else:
            self._send(404, b"not found\n", "text/plain")

    def _page(self, links: str) -> None:
        body = f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n".encode()
        self._send(200, body, "text/html")

    def _send(
        self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@contextmanager
def serve_index(
    wheel_dir: Path, credentials: tuple[str, str] | None = None, delay: float = 0.0
) -> Iterator[PyPIIndex]:
    """Serve ``wheel_dir`` as ``http://127.0.0.1:<port>/simple/<project>/`` in a thread.

    With ``credentials`` (user, password) every request needs them by HTTP basic auth. With
    ``delay``, index pages are answered that many seconds late (a slow or hanging index). The
    server stops when the context exits.
    """
    index = PyPIIndex(wheel_dir, credentials, delay)
    with _serving(type("IndexHandler", (_Handler,), {"index": index}), "pypi-index") as address:
        index.url = address
        yield index


@contextmanager
def _serving(handler: Callable[..., http.server.BaseHTTPRequestHandler], name: str) -> Iterator[str]:
    """`handler` served on a loopback port by a thread, for as long as the context lasts: its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


#: The in-tree build backend of ``source_project``: PEP 517's `build_wheel` alone (all that an
#: install calls; there is no sdist to make), with the standard library only, so that building
#: needs no download (uv's build environment for a project requiring nothing is empty).
_BACKEND = """\
\"\"\"An in-tree PEP 517 backend (written by conda_store_server.testing.pypi).\"\"\"

import base64
import hashlib
import zipfile

DISTRIBUTION = {distribution!r}
VERSION = {version!r}
METADATA = {metadata!r}
MODULES = {modules!r}
WHEEL = "Wheel-Version: 1.0\\nGenerator: backend\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"


def _hash(content):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    dist_info = f"{{DISTRIBUTION}}-{{VERSION}}.dist-info"
    files = {{}}
    for path in MODULES:
        with open(path, "rb") as source:
            files[path] = source.read()
    files[f"{{dist_info}}/METADATA"] = METADATA.encode()
    files[f"{{dist_info}}/WHEEL"] = WHEEL.encode()
    record = "".join(f"{{path}},{{_hash(content)}},{{len(content)}}\\n" for path, content in files.items())
    files[f"{{dist_info}}/RECORD"] = (record + f"{{dist_info}}/RECORD,,\\n").encode()
    filename = f"{{DISTRIBUTION}}-{{VERSION}}-py3-none-any.whl"
    with zipfile.ZipFile(f"{{wheel_directory}}/{{filename}}", "w") as archive:
        for path, content in files.items():
            archive.writestr(path, content)
    return filename
"""


def source_project(spec: WheelSpec) -> dict[str, str]:
    """The files (path -> text) of a source tree whose wheel is ``spec``'s.

    ``pyproject.toml`` names the backend in the tree itself (``backend-path``) and requires
    nothing, so no backend has to come from an index. Its ``[project]`` table states the same
    requirements as the wheel's METADATA: uv takes static metadata from it without asking the
    backend. The modules are read when the wheel is built: a commit that changes them changes
    the wheel.
    """
    pyproject = (
        "[build-system]\nrequires = []\n"
        'build-backend = "backend"\nbackend-path = ["."]\n\n'
        f"[project]\nname = {json.dumps(spec.name)}\nversion = {json.dumps(spec.version)}\n"
        f"dependencies = {json.dumps(list(spec.requires))}\n"
    )
    if spec.extras:
        pyproject += "\n[project.optional-dependencies]\n"
        pyproject += "".join(f"{extra} = {json.dumps(list(r))}\n" for extra, r in spec.extras.items())
    backend = _BACKEND.format(
        distribution=spec.distribution,
        version=spec.version,
        metadata=_metadata(spec),
        modules=sorted(spec.modules),
    )
    return {"pyproject.toml": pyproject, "backend.py": backend, **spec.modules}


#: git without the user's or the system's configuration (no signing, hooks or other defaults),
#: committing as a fixed author.
_GIT_ENVIRONMENT = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.org",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.org",
}


def _git(*arguments: str) -> str:
    result = subprocess.run(
        ["git", *arguments],
        env={**os.environ, **_GIT_ENVIRONMENT},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


class GitRepository:
    """A bare repository that ``serve_git`` serves, committed to from a scratch work tree."""

    def __init__(self, server: GitServer, name: str) -> None:
        self.path = server.root / f"{name}.git"
        self.url = f"{server.url}/{name}.git"
        self._work_tree = server.work / name
        self._work_tree.mkdir(parents=True)
        _git("init", "--quiet", "--bare", "--initial-branch=main", str(self.path))

    def _git(self, *arguments: str) -> str:
        return _git(f"--git-dir={self.path}", f"--work-tree={self._work_tree}", *arguments)

    def commit(self, files: Mapping[str, str], message: str = "commit") -> str:
        """Write ``files`` (path -> text) into the tree, commit them on ``main`` and publish the
        commit to HTTP clients; returns its id."""
        for path, text in files.items():
            target = self._work_tree / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        self._git("add", "--all")
        self._git("commit", "--quiet", f"--message={message}")
        self._git("update-server-info")  # what the dumb protocol reads: info/refs, packs
        return self._git("rev-parse", "HEAD")


@dataclass
class GitServer:
    """A running static HTTP server of bare repositories (see ``serve_git``)."""

    root: Path
    work: Path
    url: str = ""  # set once the server listens

    def repository(self, name: str) -> GitRepository:
        """A new, empty repository at ``<url>/<name>.git``."""
        return GitRepository(self, name)


class _StaticHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Quiet: a clone's requests are not the test's output."""


@contextmanager
def serve_git(directory: Path) -> Iterator[GitServer]:
    """Serve repositories made with ``GitServer.repository`` at ``http://127.0.0.1:<port>/git``.

    git's dumb HTTP protocol needs only static files, so any web server would do and this one
    needs no git on the server side; clients (uv runs the git CLI) need git. The repositories
    live in ``<directory>/served/git``, their work trees in ``<directory>/work``, not served.
    """
    server_root = directory / "served"
    git = GitServer(root=server_root / "git", work=directory / "work")
    git.root.mkdir(parents=True)
    with _serving(functools.partial(_StaticHandler, directory=str(server_root)), "git-server") as address:
        git.url = f"{address}/git"
        yield git
