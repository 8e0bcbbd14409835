"""Fetching the official React UI (`@conda-store/conda-store-ui`) from the npm registry.

The UI is a dependency, not part of our source: the package build (setup.py) puts it into the
package, and `python -m conda_store_server.server.ui_bundle` adds it to an installed package whose
build could not reach the registry. Both use `fetch_bundle`, so both check every tarball against
the integrity hash the registry published for the pinned version before anything is written.

The UI's main.css loads its font (Inter) from fonts.gstatic.com; those three @font-face rules are
replaced by the same font self-hosted from `@fontsource/inter` (fetched and checked the same way),
so the UI works offline and tells no other host who uses it. main.js is installed as published.

Standard library only: setup.py loads this file by path inside pip's isolated build environment,
where none of our dependencies (and not this package) can be imported.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import NamedTuple

REGISTRY = "https://registry.npmjs.org"


class Package(NamedTuple):
    """One pinned npm tarball and the members we take from it."""

    name: str
    version: str
    integrity: str  #: `dist.integrity` as the registry publishes it (`npm view NAME@VERSION dist`)
    wanted: Callable[[str], bool]  #: member path -> whether to read it

    @property
    def filename(self) -> str:
        return f"{self.name.rpartition('/')[2]}-{self.version}.tgz"

    @property
    def url(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.filename}"


#: UI tarball member -> file name in the bundle directory.
UI_MEMBERS = {
    "package/dist/main.js": "main.js",
    "package/dist/main.css": "main.css",
    "package/dist/main.js.LICENSE.txt": "main.js.LICENSE.txt",
    "package/LICENSE": "LICENSE",
}
FONT_FILE = re.compile(r"package/files/(inter-[a-z-]+-(?:300|400|500)-normal\.woff2)")
FONT_CSS = re.compile(r"package/(300|400|500)\.css")
FONT_DIRECTORY = "fonts"

#: The version conda-store-server 2025.2.2 ships (its wheel's main.js is byte-identical to this one).
VERSION = "2024.11.1"
UI = Package(
    "@conda-store/conda-store-ui",
    VERSION,
    "sha512-E78O3ezyrzAyMPkydTvZJdpKj63kKtCKF6bSZ1R+x8olre8vTo/4LyZdlf6VAPebeNYqGos5ENcEJF6JYr9aRA==",
    UI_MEMBERS.__contains__,
)
FONTS = Package(
    "@fontsource/inter",
    "5.3.0",
    "sha512-RofMylZmjlJEfELXeNHFWBRcSs75rGU/6bV2S2jfnvv/3rPXPGe0LgUJTklcHZ9lM4OZmAVFhcJPnACfb91A3g==",
    lambda name: name == "package/LICENSE" or bool(FONT_FILE.fullmatch(name) or FONT_CSS.fullmatch(name)),
)
PACKAGES = (UI, FONTS)
#: What the marker holds: which pins the installed files come from (a change of either refetches).
BUNDLE_ID = f"{UI.version} {FONTS.name}@{FONTS.version}"
INTEGRITY = UI.integrity
TARBALL_URL = UI.url
#: Where the tarballs are when not on the registry: a directory or a base URL holding them under
#: their registry file names (conda-store-ui-2024.11.1.tgz, inter-5.3.0.tgz), e.g. a mirror.
SOURCE_VARIABLE = "CONDA_STORE_UI_TARBALLS"

#: Where the server looks for the bundle: inside this package, next to this module.
BUNDLE_DIRECTORY = Path(__file__).parent / "static" / "conda-store-ui"
#: What a person runs to add the UI to an installed package afterwards.
FETCH_COMMAND = "python -m conda_store_server.server.ui_bundle"
#: Written last: a directory whose marker holds BUNDLE_ID is a complete bundle of these pins.
MARKER = "VERSION"
#: The tarballs are 2.7 and 4 MB; anything far larger is not the package.
MAX_TARBALL_BYTES = 64 * 1024 * 1024
TIMEOUT_SECONDS = 60.0


class BundleError(Exception):
    """The bundle could not be fetched or installed; the message says why."""


class UnreachableError(BundleError):
    """A tarball could not be downloaded (no network, proxy, HTTP error)."""


class IntegrityError(BundleError):
    """The download is not the tarball the registry published for the pinned version."""


class ArchiveError(BundleError):
    """The tarball is not a usable npm package (unsafe member paths, missing files)."""


def is_installed(target: Path = BUNDLE_DIRECTORY, bundle_id: str = BUNDLE_ID) -> bool:
    """Whether `target` holds a complete bundle of these pins (the marker is written last)."""
    try:
        complete = (target / MARKER).read_text(encoding="utf-8").strip() == bundle_id
    except OSError:
        return False
    return complete and all((target / name).is_file() for name in UI_MEMBERS.values())


def integrity_of(data: bytes, algorithm: str = "sha512") -> str:
    """The Subresource-Integrity string npm publishes as `dist.integrity`."""
    digest = hashlib.new(algorithm, data).digest()
    return f"{algorithm}-{base64.b64encode(digest).decode('ascii')}"


def check_integrity(data: bytes, package: Package, url: str) -> None:
    """Refuse `data` unless it matches the package's pinned hash (sha512 expected)."""
    for expected in package.integrity.split():
        algorithm, _, _ = expected.partition("-")
        if algorithm not in ("sha512", "sha384", "sha256"):
            continue
        if integrity_of(data, algorithm) == expected:
            return
        raise IntegrityError(
            f"{url} does not match the integrity pinned for {package.name} {package.version}: "
            f"expected {expected}, got {integrity_of(data, algorithm)}; nothing was installed"
        )
    raise IntegrityError(f"no usable hash in the integrity pinned for {package.name}: {package.integrity!r}")


def download(url: str, timeout: float = TIMEOUT_SECONDS) -> bytes:
    """The tarball's bytes. Proxies come from the usual variables (https_proxy, no_proxy) as
    they are now: an opener of our own, not urlopen's, which keeps those of its first call."""
    request = urllib.request.Request(url, headers={"User-Agent": "conda-store-server ui_bundle"})
    try:
        with urllib.request.build_opener().open(request, timeout=timeout) as response:
            data = response.read(MAX_TARBALL_BYTES + 1)
    except urllib.error.HTTPError as error:
        raise UnreachableError(f"cannot download {url}: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise UnreachableError(f"cannot download {url}: {reason}") from error
    if len(data) > MAX_TARBALL_BYTES:
        raise ArchiveError(f"{url} is larger than {MAX_TARBALL_BYTES} bytes: not an npm package we use")
    return data


def _safe_member_path(name: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        raise ArchiveError(f"the tarball's member {name!r} leaves the package directory; refused")
    return str(path)


def extract(data: bytes, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """The wanted members (path -> contents) of an npm tarball, or an ArchiveError.

    Every member path is checked, not only the wanted ones: a tarball with a path leaving its
    root is not a package the registry published, and is refused whole. Wanted members must be
    regular files (no links).
    """
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for member in archive.getmembers():
                path = _safe_member_path(member.name)
                if member.issym() or member.islnk():
                    _safe_member_path(member.linkname)
                if not wanted(path):
                    continue
                if not member.isfile():
                    raise ArchiveError(f"the tarball's {member.name} is not a regular file; refused")
                stream = archive.extractfile(member)
                if stream is None:
                    raise ArchiveError(f"the tarball's {member.name} cannot be read")
                members[path] = stream.read()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ArchiveError(f"the download is not a readable npm tarball: {error}") from error
    return members


def _require(members: dict[str, bytes], names: Sequence[str], package: Package) -> None:
    missing = sorted(set(names) - set(members))
    if missing:
        raise ArchiveError(f"the {package.name} tarball lacks {', '.join(missing)}")


_FONT_FACE = re.compile(r"@font-face\s*\{[^}]*\}")
_WEIGHT = re.compile(r"font-weight\s*:\s*(\d+)")
_WOFF_FALLBACK = re.compile(r",\s*url\(\./files/[^)]+\.woff\)\s*format\('woff'\)")


def localize_fonts(main_css: str, fonts: dict[str, bytes]) -> tuple[str, dict[str, bytes]]:
    """main.css with each @font-face that loads from another host replaced by @fontsource's rules
    for that weight, and the font files those rules use (bundle path -> contents).

    Refuses (ArchiveError) a stylesheet that still names another host afterwards, or a weight
    the font package does not have: the UI must make no request elsewhere.
    """
    used: dict[str, bytes] = {}

    def replace(match: re.Match[str]) -> str:
        rule = match.group(0)
        if "://" not in rule:
            return rule
        weight = _WEIGHT.search(rule)
        css = fonts.get(f"package/{weight.group(1)}.css") if weight else None
        if css is None:
            raise ArchiveError(f"main.css loads a font @fontsource/inter does not replace: {rule[:200]}")
        local = _WOFF_FALLBACK.sub("", css.decode("utf-8"))
        for name in re.findall(r"url\(\./files/([^)]+)\)", local):
            content = fonts.get(f"package/files/{name}")
            if content is None:
                raise ArchiveError(f"@fontsource/inter lacks files/{name}, which its CSS uses")
            used[f"{FONT_DIRECTORY}/{name}"] = content
        return local.replace("url(./files/", f"url({FONT_DIRECTORY}/").strip()

    localized = _FONT_FACE.sub(replace, main_css)
    if re.search(r"url\(\s*['\"]?[a-z]+://", localized) or "@import" in localized:
        raise ArchiveError("main.css still loads something from another host after its fonts were replaced")
    return localized, used


def assemble(tarballs: dict[Package, bytes]) -> dict[str, bytes]:
    """The bundle directory's files (relative path -> contents) from the verified tarballs."""
    ui = extract(tarballs[UI], UI.wanted)
    _require(ui, list(UI_MEMBERS), UI)
    fonts = extract(tarballs[FONTS], FONTS.wanted)
    _require(fonts, ["package/LICENSE"], FONTS)
    css, font_files = localize_fonts(ui["package/dist/main.css"].decode("utf-8"), fonts)
    files = {name: ui[member] for member, name in UI_MEMBERS.items()}
    files["main.css"] = css.encode("utf-8")
    files.update(font_files)
    files[f"{FONT_DIRECTORY}/LICENSE"] = fonts["package/LICENSE"]
    return files


def install(files: dict[str, bytes], target: Path, bundle_id: str = BUNDLE_ID) -> None:
    """Put `files` into `target` as a whole: written beside it, then renamed into place, so a
    failure leaves the previous directory (or none) and never a half-written bundle."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for name, content in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        (staging / MARKER).write_text(f"{bundle_id}\n", encoding="utf-8")
        staging.chmod(0o755)
        previous = None
        if target.exists():
            previous = target.with_name(f"{staging.name}-previous")
            target.rename(previous)
        staging.rename(target)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def tarball_url(package: Package, source: str | None) -> str:
    """Where to download `package`: the registry, or `source` (a base URL or a directory)."""
    if not source:
        return package.url
    if "://" not in source:
        return Path(source, package.filename).resolve().as_uri()
    return f"{source.rstrip('/')}/{package.filename}"


def fetch_bundle(
    target: Path = BUNDLE_DIRECTORY,
    source: str | None = None,
    packages: Sequence[Package] = PACKAGES,
    timeout: float = TIMEOUT_SECONDS,
    force: bool = False,
) -> bool:
    """Download, verify and install the UI into `target`; False if it was already there.

    `source` defaults to $CONDA_STORE_UI_TARBALLS, then the npm registry. Raises a BundleError
    subclass whose message names the cause; nothing is written unless every hash matched.
    `packages` is (UI, FONTS) with other pins, for tests.
    """
    target = Path(target)
    if not force and is_installed(target):
        return False
    source = source or os.environ.get(SOURCE_VARIABLE)
    tarballs: dict[Package, bytes] = {}
    for package, role in zip(packages, PACKAGES, strict=True):
        url = tarball_url(package, source)
        data = download(url, timeout=timeout)
        check_integrity(data, package, url)
        tarballs[role] = data
    files = assemble(tarballs)
    try:
        install(files, target)
    except OSError as error:
        raise BundleError(f"cannot write the UI into {target}: {error}") from error
    return True


def main(argv: list[str] | None = None) -> int:
    """`python -m conda_store_server.server.ui_bundle`: add the UI to this installed package."""
    parser = argparse.ArgumentParser(
        prog=FETCH_COMMAND,
        description=f"Fetch @conda-store/conda-store-ui {VERSION} (and its font) from the npm "
        "registry, check them against their pinned integrity hashes and install the UI into this "
        "package, where conda-store-server serves it at /ui/.",
    )
    parser.add_argument("--target", type=Path, default=BUNDLE_DIRECTORY, help="directory to fill")
    parser.add_argument(
        "--from",
        dest="source",
        help=f"a directory or base URL holding {UI.filename} and {FONTS.filename} "
        f"(default: ${SOURCE_VARIABLE}, then {REGISTRY})",
    )
    parser.add_argument("--force", action="store_true", help="fetch even when the bundle is there")
    arguments = parser.parse_args(argv)
    try:
        fetched = fetch_bundle(arguments.target, source=arguments.source, force=arguments.force)
    except BundleError as error:
        print(f"error: {error}", file=sys.stderr)
        if isinstance(error, UnreachableError):
            print(
                "hint: set https_proxy if the registry is reached through a proxy, or download "
                f"{UI.url} and {FONTS.url} elsewhere and pass --from DIRECTORY (they are checked "
                "all the same)",
                file=sys.stderr,
            )
        return 1
    state = "installed into" if fetched else "already in"
    print(f"conda-store-ui {VERSION} {state} {arguments.target}")
    return 0


__all__ = [
    "BUNDLE_DIRECTORY",
    "FETCH_COMMAND",
    "FONTS",
    "PACKAGES",
    "UI",
    "VERSION",
    "ArchiveError",
    "BundleError",
    "IntegrityError",
    "Package",
    "UnreachableError",
    "fetch_bundle",
    "is_installed",
    "main",
]

if __name__ == "__main__":
    sys.exit(main())
