"""The package build also installs the official React UI (metadata is in pyproject.toml).

`build_py` fetches `@conda-store/conda-store-ui` from the npm registry, checks it against the
integrity hash pinned in conda_store_server/server/ui_bundle.py, and puts it into the package: into
the wheel's build directory for `pip install .`, into the source tree for `pip install -e .` (an
editable install serves the package from there). A build that cannot reach the registry still
succeeds: it says so, and /ui/ tells the user how to add the UI later.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLE = Path("conda_store_server", "server", "static", "conda-store-ui")


def _load_ui_bundle():  # the module by path: the package's dependencies are not in the build env
    spec = importlib.util.spec_from_file_location(
        "_conda_store_ui_bundle", ROOT / "conda_store_server" / "server" / "ui_bundle.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class build_py_with_ui(build_py):  # noqa: N801 (setuptools' command naming)
    """build_py, plus the UI bundle in the built package."""

    def run(self) -> None:
        editable = getattr(self, "editable_mode", False)
        if editable:  # before build_py, so a strict editable install links the files too
            self._fetch_ui(ROOT / BUNDLE)
        super().run()
        if not editable:
            self._fetch_ui(Path(self.build_lib) / BUNDLE)

    def _fetch_ui(self, target: Path) -> None:
        ui_bundle = _load_ui_bundle()
        try:
            fetched = ui_bundle.fetch_bundle(target)
        except ui_bundle.BundleError as error:
            message = (
                f"WARNING: the browser UI is not included: {error}. The server works without it "
                f"and /ui/ says how to add it; after installing, run: {ui_bundle.FETCH_COMMAND}"
            )
            print(message, file=sys.stderr)
            return
        state = "fetched into" if fetched else "already in"
        print(f"conda-store-ui {ui_bundle.VERSION} {state} {target}", file=sys.stderr)


if __name__ == "__main__":  # as setuptools runs it; tests load the command without building
    setup(cmdclass={"build_py": build_py_with_ui})
