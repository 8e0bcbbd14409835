"""Local conda channels of real packages, for tests, the standalone demo and benchmarks.

There is no conda channel to download from where this project is tested, so environments are
solved and installed with py-rattler against channels built here: ``build_channel`` turns
``PackageSpec``s into ``.conda`` files in the right subdirs and indexes them with rattler's own
indexer, and ``demo_packages`` is a small channel whose packages exercise what the service must
get right (version ranges, ``constrains``, missing dependencies, text and binary prefix
replacement, noarch:python modules and entry points) and actually run once installed, because
``python_package`` wraps the host interpreter.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

import rattler
from rattler.index import index_fs

from conda_store_server.testing.package_builder import (
    BINARY_PLACEHOLDER,
    TEXT_PLACEHOLDER,
    PackageSpec,
    build_package,
)

__all__ = [
    "BINARY_PLACEHOLDER",
    "TEXT_PLACEHOLDER",
    "PackageSpec",
    "build_channel",
    "build_channel_async",
    "build_demo_channel",
    "build_package",
    "demo_packages",
    "host_subdir",
    "python_package",
]


def host_subdir() -> str:
    """The conda subdir of this machine (e.g. ``linux-64``): where arch-specific packages go."""
    return str(rattler.Subdir.current())


def build_channel(channel_dir: Path, packages: Iterable[PackageSpec]) -> Path:
    """Build ``packages`` into ``channel_dir``, index it and return ``channel_dir``.

    Runs its own event loop, so it works from any thread that has no running loop; from inside
    a running event loop (async code) it raises ``RuntimeError``: await ``build_channel_async``.
    """
    if _event_loop_running():
        raise RuntimeError("build_channel() cannot run inside an event loop: use build_channel_async")
    return asyncio.run(build_channel_async(channel_dir, packages))


def _event_loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def build_channel_async(channel_dir: Path, packages: Iterable[PackageSpec]) -> Path:
    """Async ``build_channel``: archives in a worker thread, then awaits rattler's indexer.

    Both the host subdir and ``noarch/`` are always created because the indexer and the solver
    expect both to exist, even when one holds no package. Re-running on the same directory adds
    or overwrites packages and re-indexes everything. ``channeldata.json`` is written too.
    """
    specs = list(packages)
    subdir = host_subdir()
    for name in (subdir, "noarch"):
        (channel_dir / name).mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(_build_all, specs, channel_dir, subdir)
    await index_fs(channel_dir, force=True)
    _write_channeldata(channel_dir, specs, subdir)
    return channel_dir


def _write_channeldata(channel_dir: Path, specs: list[PackageSpec], subdir: str) -> None:
    """Add ``specs`` to the channel's ``channeldata.json`` (conda-index's format, version 1).

    rattler's indexer writes only repodata, which has no package summaries; channel indexing
    reads them from this file, as from a real channel's. Each package is described by its
    newest version, and entries of packages built into the directory earlier are kept.
    """
    path = channel_dir / "channeldata.json"
    document = json.loads(path.read_text()) if path.exists() else {"channeldata_version": 1, "packages": {}}
    packages = document["packages"]
    for spec in specs:
        package_subdir = "noarch" if spec.noarch else subdir
        entry = packages.get(spec.name)
        subdirs = sorted({*(entry["subdirs"] if entry else ()), package_subdir})
        if entry is None or rattler.Version(spec.version) >= rattler.Version(entry["version"]):
            entry = {
                "version": spec.version,
                "summary": spec.summary or None,
                "license": spec.license,
            }
        packages[spec.name] = {**entry, "subdirs": subdirs}
    document["subdirs"] = sorted({*document.get("subdirs", ()), subdir, "noarch"})
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def _build_all(specs: list[PackageSpec], channel_dir: Path, subdir: str) -> None:
    for spec in specs:
        build_package(spec, channel_dir, "noarch" if spec.noarch else subdir)


def python_package(version: str | None = None) -> PackageSpec:
    """A relocatable ``python`` package that runs the host interpreter.

    ``bin/python``, ``bin/python3`` and ``bin/pythonX.Y`` are bash scripts that find the prefix
    from their own location and exec the host's base interpreter (never a virtualenv's) with
    ``argv[0]`` set to ``<prefix>/bin/pythonX.Y``. With the ``pyvenv.cfg`` shipped at the prefix
    root, Python then treats the environment as a virtual environment: ``sys.prefix`` is the
    environment, its ``lib/pythonX.Y/site-packages`` (where noarch:python packages go) is on
    ``sys.path``, and neither the host's site-packages nor its user site are visible. pip or uv
    run with this interpreter install into the environment. Nothing embeds the prefix, so the
    environment still works after conda-pack moves it.

    ``version`` defaults to the host's ``X.Y.Z``. Another version is only useful for solver
    tests: code in such an environment runs on the host interpreter, which does not look in that
    version's site-packages.
    """
    host = Path(sys._base_executable).resolve()
    version = version or ".".join(str(part) for part in sys.version_info[:3])
    major_minor = ".".join(version.split(".")[:2])
    script = _python_wrapper(host, f"python{major_minor}")
    scripts = {f"bin/{name}": script for name in ("python", "python3", f"python{major_minor}")}
    pyvenv_cfg = f"home = {host.parent}\ninclude-system-site-packages = false\nversion = {version}\n"
    readme = "Packages for this environment's Python are installed here.\n"
    return PackageSpec(
        name="python",
        version=version,
        build="0_host",
        files={
            **scripts,
            "pyvenv.cfg": pyvenv_cfg,
            f"lib/python{major_minor}/site-packages/README.txt": readme,
        },
        executables=frozenset(scripts),
        license="PSF-2.0",
        summary=f"Relocatable wrapper around the host interpreter {host}",
    )


def _python_wrapper(host: Path, executable_name: str) -> str:
    return f"""#!/bin/bash
# Runs the host interpreter as this environment's Python; see python_package().
script="$0"
while [ -L "$script" ]; do
  target="$(readlink -- "$script")"
  case "$target" in /*) script="$target" ;; *) script="$(dirname -- "$script")/$target" ;; esac
done
prefix="$(cd -- "$(dirname -- "$script")/.." && pwd)"
exec -a "$prefix/bin/{executable_name}" {shlex.quote(str(host))} "$@"
"""


def demo_packages() -> list[PackageSpec]:
    """The demo channel: small, but every package is there to exercise one behaviour.

    - ``python``: the host-interpreter wrapper (``python_package``).
    - ``libzlib`` 1.2.13 / 1.3.1, ``libcurl`` 8.4.0 (``libzlib >=1.2.13,<2``) / 8.5.0
      (``libzlib >=1.3.1,<2``), ``curl`` 8.4.0 / 8.5.0 (pinned to the same ``libcurl``, with a
      runnable ``bin/curl``): dependency chains, version ranges, newest-version selection.
    - ``libssl`` 3.0.0 / 3.2.0: 3.2.0 ``constrains`` ``libcurl >=8.5`` without depending on it,
      so ``libssl`` + ``libcurl <8.5`` must fall back to libssl 3.0.0.
    - ``hello-config`` (noarch generic, text placeholder in ``etc/hello.conf``) and
      ``hello-tool`` (``bin/hello-tool``, a script with the text placeholder that prints it).
    - ``libprefix``: ``lib/libprefix.dat`` with the binary placeholder (NUL-padded replacement).
    - ``tinylib`` 1.0.0 and ``hello-py`` 1.0.0 / 1.1.0 (1.1.0 needs ``tinylib``): noarch:python
      modules with the ``hello-py`` entry point printing ``hello from hello-py <version>``.
    - ``ipykernel``: a tiny noarch:python stand-in, included in environments by default.
    - ``broken-pkg``: depends on ``does-not-exist``, for solver-failure tests.
    """
    return [
        python_package(),
        *(_library("libzlib", version) for version in ("1.2.13", "1.3.1")),
        _library("libcurl", "8.4.0", depends=("libzlib >=1.2.13,<2",)),
        _library("libcurl", "8.5.0", depends=("libzlib >=1.3.1,<2",)),
        *(_curl(version) for version in ("8.4.0", "8.5.0")),
        _library("libssl", "3.0.0"),
        _library("libssl", "3.2.0", constrains=("libcurl >=8.5",)),
        _hello_config(),
        _hello_tool(),
        _libprefix(),
        _tinylib(),
        _hello_py("1.0.0", greeting='f"hello from hello-py {__version__}"'),
        _hello_py(
            "1.1.0",
            greeting='tinylib.greeting("hello-py", __version__)',
            depends=("tinylib >=1.0",),
        ),
        _ipykernel(),
        PackageSpec(
            name="broken-pkg",
            version="1.0.0",
            noarch="generic",
            depends=("does-not-exist",),
            files={"share/broken-pkg/README": "Cannot be installed: a dependency is missing.\n"},
        ),
    ]


def build_demo_channel(channel_dir: Path) -> Path:
    """Build and index the ``demo_packages`` channel in ``channel_dir``; returns ``channel_dir``."""
    return build_channel(channel_dir, demo_packages())


def _library(
    name: str,
    version: str,
    depends: tuple[str, ...] = (),
    constrains: tuple[str, ...] = (),
) -> PackageSpec:
    return PackageSpec(
        name=name,
        version=version,
        depends=depends,
        constrains=constrains,
        files={f"lib/{name}.version": f"{name} {version}\n"},
        summary=f"Demo library {name}",
    )


def _curl(version: str) -> PackageSpec:
    return PackageSpec(
        name="curl",
        version=version,
        depends=(f"libcurl {version}.*",),
        files={"bin/curl": f'#!/bin/sh\necho "curl {version}"\n'},
        executables=frozenset({"bin/curl"}),
        summary="Demo command line tool",
    )


def _hello_config() -> PackageSpec:
    return PackageSpec(
        name="hello-config",
        version="1.0.0",
        noarch="generic",
        text_prefix_files={"etc/hello.conf": f"prefix={TEXT_PLACEHOLDER}\ngreeting=hello\n"},
        summary="Configuration file that records the environment prefix",
    )


def _hello_tool() -> PackageSpec:
    script = f"""#!/bin/sh
greeting="$(sed -n 's/^greeting=//p' "{TEXT_PLACEHOLDER}/etc/hello.conf")"
echo "hello-tool 1.0.0 says $greeting from {TEXT_PLACEHOLDER}"
"""
    return PackageSpec(
        name="hello-tool",
        version="1.0.0",
        depends=("hello-config 1.0.0",),
        text_prefix_files={"bin/hello-tool": script},
        executables=frozenset({"bin/hello-tool"}),
        summary="Shell tool whose script embeds the environment prefix",
    )


def _libprefix() -> PackageSpec:
    data = b"\x7fDEMO\x00" + BINARY_PLACEHOLDER.encode() + b"/share/libprefix\x00\x01\x02tail\x00"
    return PackageSpec(
        name="libprefix",
        version="1.0.0",
        binary_prefix_files={"lib/libprefix.dat": data},
        summary="Binary file with an embedded, NUL-terminated prefix",
    )


def _tinylib() -> PackageSpec:
    return PackageSpec(
        name="tinylib",
        version="1.0.0",
        noarch="python",
        depends=("python >=3.8",),
        python_site_packages={
            "tinylib/__init__.py": (
                '__version__ = "1.0.0"\n\n\n'
                "def greeting(name, version):\n"
                '    return f"hello from {name} {version}"\n'
            ),
        },
        summary="Pure Python helper library",
    )


def _hello_py(version: str, greeting: str, depends: tuple[str, ...] = ()) -> PackageSpec:
    """``greeting`` is the expression ``main()`` prints; with ``depends`` it may use tinylib."""
    imports = "".join(f"import {spec.split()[0]}\n" for spec in depends)
    module = f'{imports}\n__version__ = "{version}"\n\n\ndef main():\n    print({greeting})\n'
    return PackageSpec(
        name="hello-py",
        version=version,
        noarch="python",
        depends=("python >=3.8", *depends),
        python_site_packages={
            "hello_py/__init__.py": module,
        },
        entry_points=("hello-py = hello_py:main",),
        summary="Pure Python package with a console entry point",
    )


def _ipykernel() -> PackageSpec:
    return PackageSpec(
        name="ipykernel",
        version="6.29.5",
        noarch="python",
        depends=("python >=3.8",),
        python_site_packages={"ipykernel/__init__.py": '__version__ = "6.29.5"\n'},
        summary="Stand-in for the IPython kernel (imports, does nothing else)",
    )
