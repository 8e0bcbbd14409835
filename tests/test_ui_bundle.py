"""Fetching the React UI bundle: against a loopback registry serving tarballs made here."""

from __future__ import annotations

import base64
import http.server
import importlib.util
import io
import os
import re
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import IN_CI

from conda_store_server.server import ui_bundle

ROOT = Path(__file__).resolve().parents[1]
CONTENTS = {
    "package/dist/main.js": b"console.log('conda-store-ui');\n",
    "package/dist/main.css": (
        b"/*! ui */@font-face{font-display:swap;font-family:Inter;font-weight:400;"
        b'src:url(https://fonts.example.org/inter.ttf) format("truetype")}body{margin:0}'
    ),
    "package/dist/main.js.LICENSE.txt": b"licenses of the bundled code\n",
    "package/LICENSE": b"BSD-3-Clause\n",
    "package/dist/main.js.map": b"{}",  # in the package, not wanted in ours
    "package/package.json": b'{"name": "@conda-store/conda-store-ui"}',
}
FONT_CONTENTS = {
    "package/LICENSE": b"OFL-1.1\n",
    "package/400.css": (
        b"/* inter-latin-400-normal */\n@font-face {\n  font-family: 'Inter';\n  font-weight: 400;\n"
        b"  src: url(./files/inter-latin-400-normal.woff2) format('woff2'), "
        b"url(./files/inter-latin-400-normal.woff) format('woff');\n  unicode-range: U+0000-00FF;\n}\n"
    ),
    "package/files/inter-latin-400-normal.woff2": b"wOF2 latin 400",
    "package/files/inter-latin-400-normal.woff": b"wOFF latin 400",  # not wanted: woff2 is enough
    "package/files/inter-latin-700-normal.woff2": b"wOF2 latin 700",  # a weight the UI does not use
}
BUNDLE = {
    "main.js": CONTENTS["package/dist/main.js"],
    "main.js.LICENSE.txt": CONTENTS["package/dist/main.js.LICENSE.txt"],
    "LICENSE": CONTENTS["package/LICENSE"],
    "fonts/LICENSE": b"OFL-1.1\n",
    "fonts/inter-latin-400-normal.woff2": b"wOF2 latin 400",
}


def tarball(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return buffer.getvalue()


def pinned(ui: bytes, fonts: bytes) -> tuple[ui_bundle.Package, ui_bundle.Package]:
    """The two packages with these tarballs' hashes pinned instead of the registry's."""
    return (
        ui_bundle.UI._replace(integrity=ui_bundle.integrity_of(ui)),
        ui_bundle.FONTS._replace(integrity=ui_bundle.integrity_of(fonts)),
    )


class Registry:
    """Serves `files` (path -> bytes) on a loopback port and counts the requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class's name
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                registry.requests.append(self.path)
                body = registry.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def publish(self, ui: bytes, fonts: bytes, base: str = "/npm") -> str:
        """Both tarballs under their registry file names; returns the base URL."""
        self.files[f"{base}/{ui_bundle.UI.filename}"] = ui
        self.files[f"{base}/{ui_bundle.FONTS.filename}"] = fonts
        return f"{self.url}{base}"


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv(ui_bundle.SOURCE_VARIABLE, raising=False)
    registry = Registry()
    thread = threading.Thread(target=registry.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield registry
    finally:
        registry.server.shutdown()
        registry.server.server_close()
        thread.join(timeout=10)


def closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/npm"


def files_under(directory: Path) -> dict[str, bytes]:
    files = sorted(path for path in directory.rglob("*") if path.is_file())
    return {str(path.relative_to(directory)): path.read_bytes() for path in files}


def test_the_right_hashes_install_the_bundle(registry: Registry, tmp_path: Path) -> None:
    ui, fonts = tarball(CONTENTS), tarball(FONT_CONTENTS)
    source = registry.publish(ui, fonts)
    target = tmp_path / "static" / "conda-store-ui"

    assert ui_bundle.fetch_bundle(target, source=source, packages=pinned(ui, fonts)) is True

    installed = files_under(target)
    css = installed.pop("main.css").decode()
    assert installed.pop("VERSION").decode().strip() == ui_bundle.BUNDLE_ID
    assert installed == BUNDLE  # the four files of the UI, and only the font files main.css uses
    # the font now comes from here, relative to main.css (so under any url_prefix)
    assert "fonts.example.org" not in css and "://" not in css
    assert "src: url(fonts/inter-latin-400-normal.woff2) format('woff2');" in css
    assert css.startswith("/*! ui */") and css.endswith("body{margin:0}")
    assert ui_bundle.is_installed(target)
    assert [p.name for p in target.parent.iterdir()] == ["conda-store-ui"]  # no staging left behind

    # installed: a second fetch downloads nothing; force replaces the directory whole
    assert ui_bundle.fetch_bundle(target, source=source, packages=pinned(ui, fonts)) is False
    assert len(registry.requests) == 2
    (target / "stale.txt").write_text("from before")
    assert ui_bundle.fetch_bundle(target, source=source, packages=pinned(ui, fonts), force=True)
    assert not (target / "stale.txt").exists() and ui_bundle.is_installed(target)


def test_a_wrong_hash_is_refused_and_nothing_is_written(registry: Registry, tmp_path: Path) -> None:
    ui, fonts = tarball(CONTENTS), tarball(FONT_CONTENTS)
    source = registry.publish(ui, fonts)
    target = tmp_path / "conda-store-ui"
    published = ui_bundle.integrity_of(b"the tarball the registry published")

    for packages in (
        (ui_bundle.UI._replace(integrity=published), pinned(ui, fonts)[1]),
        (pinned(ui, fonts)[0], ui_bundle.FONTS._replace(integrity=published)),
    ):
        with pytest.raises(ui_bundle.IntegrityError, match="does not match the integrity pinned") as error:
            ui_bundle.fetch_bundle(target, source=source, packages=packages)
        assert published in str(error.value) and "nothing was installed" in str(error.value)
        assert list(tmp_path.iterdir()) == []

    # an installed bundle is left as it was
    good = tarball({**CONTENTS, "package/dist/main.js": b"the good one"})
    good_source = registry.publish(good, fonts, base="/good")
    ui_bundle.fetch_bundle(target, source=good_source, packages=pinned(good, fonts))
    with pytest.raises(ui_bundle.IntegrityError):
        ui_bundle.fetch_bundle(target, source=source, packages=pinned(good, fonts), force=True)
    assert (target / "main.js").read_bytes() == b"the good one"
    assert [p.name for p in tmp_path.iterdir()] == ["conda-store-ui"]


def test_the_pins_are_the_registrys_sha512() -> None:
    for package in ui_bundle.PACKAGES:
        algorithm, _, digest = package.integrity.partition("-")
        assert algorithm == "sha512" and len(base64.b64decode(digest)) == 64
        assert package.url.startswith("https://registry.npmjs.org/") and package.version in package.url
        with pytest.raises(ui_bundle.IntegrityError):
            ui_bundle.check_integrity(b"anything else", package, "test")
    assert ui_bundle.UI.url == (
        "https://registry.npmjs.org/@conda-store/conda-store-ui/-/conda-store-ui-2024.11.1.tgz"
    )


WITHOUT_MAIN_JS = {k: v for k, v in CONTENTS.items() if k != "package/dist/main.js"}


@pytest.mark.parametrize(
    "members, links, message",
    [
        ({**CONTENTS, "package/../../escaped.txt": b"x"}, None, "leaves the package directory"),
        ({**CONTENTS, "/etc/escaped.txt": b"x"}, None, "leaves the package directory"),
        (WITHOUT_MAIN_JS, {"package/dist/main.js": "../../../etc/passwd"}, "leaves the package directory"),
        (WITHOUT_MAIN_JS, {"package/dist/main.js": "main.css"}, "not a regular file"),
        ({k: v for k, v in CONTENTS.items() if k != "package/LICENSE"}, None, "lacks package/LICENSE"),
        (
            {**CONTENTS, "package/dist/main.css": b"@import url(https://cdn.example.org/x.css);"},
            None,
            "still loads something from another host",
        ),
        (
            {**CONTENTS, "package/dist/main.css": b"@font-face{font-weight:900;src:url(https://x.org/a.ttf)}"},
            None,
            "loads a font @fontsource/inter does not replace",
        ),
    ],
)
def test_an_unsafe_or_incomplete_tarball_is_refused(
    registry: Registry, tmp_path: Path, members: dict[str, bytes], links: dict[str, str] | None, message: str
) -> None:
    ui, fonts = tarball(members, links), tarball(FONT_CONTENTS)
    source = registry.publish(ui, fonts)
    target = tmp_path / "bundle" / "conda-store-ui"
    with pytest.raises(ui_bundle.ArchiveError, match=message):
        ui_bundle.fetch_bundle(target, source=source, packages=pinned(ui, fonts))
    assert list(tmp_path.rglob("*")) == []


def test_a_font_package_without_the_files_its_css_names_is_refused(
    registry: Registry, tmp_path: Path
) -> None:
    fonts_members = {k: v for k, v in FONT_CONTENTS.items() if not k.endswith("400-normal.woff2")}
    ui, fonts = tarball(CONTENTS), tarball(fonts_members)
    source = registry.publish(ui, fonts)
    with pytest.raises(ui_bundle.ArchiveError, match="lacks files/inter-latin-400-normal.woff2"):
        ui_bundle.fetch_bundle(tmp_path / "ui", source=source, packages=pinned(ui, fonts))
    assert list(tmp_path.iterdir()) == []


def test_not_a_tarball_is_refused(registry: Registry, tmp_path: Path) -> None:
    ui, fonts = b"<html>a captive portal</html>", tarball(FONT_CONTENTS)
    source = registry.publish(ui, fonts)
    with pytest.raises(ui_bundle.ArchiveError, match="not a readable npm tarball"):
        ui_bundle.fetch_bundle(tmp_path / "ui", source=source, packages=pinned(ui, fonts))
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_registry_says_so(registry: Registry, tmp_path: Path) -> None:
    base = closed_port_url()
    with pytest.raises(ui_bundle.UnreachableError, match=f"cannot download {base}/conda-store-ui-"):
        ui_bundle.fetch_bundle(tmp_path / "ui", source=base, timeout=10)
    with pytest.raises(ui_bundle.UnreachableError, match="HTTP 404"):
        ui_bundle.fetch_bundle(tmp_path / "ui", source=f"{registry.url}/nothing-here")
    assert list(tmp_path.iterdir()) == []


def test_the_command_through_an_unreachable_proxy_fails_clearly(tmp_path: Path) -> None:
    """The real registry, through a proxy nobody listens on: exit 1, the cause, what to do."""
    environment = {key: value for key, value in os.environ.items() if not key.lower().endswith("_proxy")}
    environment.pop(ui_bundle.SOURCE_VARIABLE, None)
    environment.update(https_proxy="http://127.0.0.1:9", no_proxy="")
    target = tmp_path / "ui"
    result = subprocess.run(
        [sys.executable, "-m", "conda_store_server.server.ui_bundle", "--target", str(target)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"error: cannot download {ui_bundle.UI.url}" in result.stderr
    assert "https_proxy" in result.stderr and "--from DIRECTORY" in result.stderr
    assert not target.exists()


def test_the_command_takes_tarballs_from_a_directory(registry: Registry, tmp_path: Path, capsys) -> None:
    """`--from` (or the variable) names another copy, which must still have the pinned hashes."""
    copies = tmp_path / "copies"
    copies.mkdir()
    (copies / ui_bundle.UI.filename).write_bytes(tarball(CONTENTS))
    (copies / ui_bundle.FONTS.filename).write_bytes(tarball(FONT_CONTENTS))
    target = tmp_path / "ui"
    assert ui_bundle.main(["--target", str(target), "--from", str(copies)]) == 1
    err = capsys.readouterr().err
    assert f"error: {(copies / ui_bundle.UI.filename).as_uri()} does not match the integrity pinned" in err
    assert not target.exists()

    ui = (copies / ui_bundle.UI.filename).read_bytes()
    fonts = (copies / ui_bundle.FONTS.filename).read_bytes()
    ui_bundle.fetch_bundle(target, source=str(copies), packages=pinned(ui, fonts))
    assert ui_bundle.main(["--target", str(target)]) == 0  # already there: no download
    assert "already in" in capsys.readouterr().out


def load_setup_script():
    spec = importlib.util.spec_from_file_location("conda_store_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines the command, builds nothing
    return module


def test_the_build_hook_warns_and_goes_on_without_the_registry(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from setuptools.dist import Distribution

    setup_script = load_setup_script()
    command = setup_script.build_py_with_ui(Distribution({"name": "check"}))
    monkeypatch.setenv(ui_bundle.SOURCE_VARIABLE, closed_port_url())
    command._fetch_ui(tmp_path / "ui")  # no exception: the install goes on
    err = capsys.readouterr().err
    assert "WARNING: the browser UI is not included: cannot download" in err
    assert ui_bundle.FETCH_COMMAND in err
    assert not (tmp_path / "ui").exists()

    monkeypatch.setenv(ui_bundle.SOURCE_VARIABLE, registry.publish(tarball(CONTENTS), tarball(FONT_CONTENTS)))
    command._fetch_ui(tmp_path / "ui")  # tarballs that are not the pinned ones
    assert "does not match the integrity pinned" in capsys.readouterr().err
    assert not (tmp_path / "ui").exists()


def test_this_install_has_the_pinned_bundle() -> None:
    """CI installs with `pip install -e .`, whose build must have fetched the UI."""
    if not ui_bundle.is_installed():
        if IN_CI:
            pytest.fail(f"the install did not fetch the UI into {ui_bundle.BUNDLE_DIRECTORY}")
        pytest.skip("this install has no UI bundle (the build could not reach the registry)")
    directory = ui_bundle.BUNDLE_DIRECTORY
    assert (directory / "main.js").stat().st_size > 100_000
    css = (directory / "main.css").read_text()
    assert "://" not in css
    for name in re.findall(r"url\((fonts/[^)]+)\)", css):
        assert (directory / name).is_file(), name
