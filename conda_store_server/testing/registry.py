"""A real container registry on loopback (Debian's `docker-registry`) and a tiny real base image.

Tests and benchmarks of pulling and pushing talk to the CNCF distribution registry itself, not
to a mock: its answers (status codes, error bodies, digests, media types) are the ones the
client meets in production. The base image is made here in pure Python from the host's
`/bin/sh` and the libraries it needs, so a container made from it can run a shell.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import warnings
from pathlib import Path
from types import TracebackType

import httpx

from conda_store_server.images.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    canonical_json,
    sha256_digest,
)
from conda_store_server.images.registry_client import RegistryClient

__all__ = ["DistributionRegistry", "OS_RELEASE_MARKER", "make_base_image"]

#: A line of the test base image's /etc/os-release, to recognise it inside built images.
OS_RELEASE_MARKER = "CONDA_STORE_TEST_BASE=1"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_REQUEST_LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" ([0-9]{3})')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _unavailable(reason: str) -> None:
    """Fail in CI (the registry is part of what CI must test), skip on a developer's machine."""
    import pytest

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the container registry is required in CI: {reason}")
    pytest.skip(reason)


def bcrypt_htpasswd_line(username: str, password: str) -> str:
    """`user:$2b$...`: the registry's htpasswd backend reads bcrypt entries only. libcrypt
    (glibc's libxcrypt) computes bcrypt, so no Python package or apache2-utils is needed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 5))
    if not hashed or not hashed.startswith("$2"):
        raise RuntimeError("this system's crypt(3) does not compute bcrypt")
    return f"{username}:{hashed}"


class DistributionRegistry:
    """`docker-registry serve` on a free loopback port with an empty temporary storage root.

    With `username` and `password` it requires HTTP Basic authentication (htpasswd). Its access
    log is kept, so tests can count the requests a client made (`requests()`).
    """

    def __init__(self, username: str | None = None, password: str | None = None, timeout: float = 30) -> None:
        self.username = username
        self.password = password
        self.timeout = timeout
        self.port = 0
        self.directory: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def __enter__(self) -> DistributionRegistry:
        binary = shutil.which("docker-registry")
        if binary is None:
            _unavailable("docker-registry is not installed (Debian package docker-registry)")
        self.directory = Path(tempfile.mkdtemp(prefix="registry-"))
        try:
            self._start(binary)  # type: ignore[arg-type]
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self, binary: str) -> None:
        assert self.directory is not None
        auth = ""
        if self.username is not None:
            htpasswd = self.directory / "htpasswd"
            htpasswd.write_text(bcrypt_htpasswd_line(self.username, self.password or "") + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: test-registry\n    path: {htpasswd}\n"
        for _ in range(5):  # a free port can be taken between the probe and the bind
            self.port = _free_port()
            config = self.directory / "config.yml"
            config.write_text(
                "version: 0.1\n"
                "log:\n  level: warn\n  formatter: text\n"
                "storage:\n"
                f"  filesystem:\n    rootdirectory: {self.directory / 'data'}\n"
                "  delete:\n    enabled: true\n"
                f"http:\n  addr: {self.host}\n" + auth
            )
            log = open(self.directory / "registry.log", "ab")  # noqa: SIM115 - the child owns it
            try:
                self.process = subprocess.Popen(
                    [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
                )
            finally:
                log.close()
            if self._wait():
                return
            self._stop()
        raise RuntimeError(f"docker-registry did not start; its log:\n{self.log()[-2000:]}")

    def _wait(self) -> bool:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401):
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        return False

    def log(self) -> str:
        assert self.directory is not None
        path = self.directory / "registry.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request the registry has answered, in order."""
        return [
            (match.group(1), match.group(2), int(match.group(3)))
            for match in _REQUEST_LINE.finditer(self.log())
        ]

    def _stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def stop(self) -> None:
        """Stop the registry (tests of an unreachable registry), keeping its directory."""
        self._stop()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


# ---------------------------------------------------------------------- the base image
def _shell_files() -> dict[str, bytes]:
    """/bin/sh and every library `ldd /bin/sh` names, at their paths, with their bytes."""
    files = {"/bin/sh": Path("/bin/sh").resolve().read_bytes()}
    listing = subprocess.run(["ldd", "/bin/sh"], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        path = line.split("=>")[-1].strip().split(" ")[0]
        if path.startswith("/"):
            files[path] = Path(path).resolve().read_bytes()
    return files


def _layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """(gzip bytes, diff_id) of a reproducible layer: sorted entries, owner 0, mtime 0."""
    directories = {str(parent) for path in files for parent in Path(path).parents if str(parent) != "/"}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(directories | set(files)):
            info = tarfile.TarInfo(name.lstrip("/"))
            info.mtime = info.uid = info.gid = 0
            info.uname = info.gname = ""
            if name in files:
                info.size = len(files[name])
                info.mode = 0o755 if "/bin/" in name or ".so" in name else 0o644
                tar.addfile(info, io.BytesIO(files[name]))
            else:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0) as stream:
        stream.write(raw.getvalue())
    return compressed.getvalue(), f"sha256:{hashlib.sha256(raw.getvalue()).hexdigest()}"


def make_base_image(
    registry_url: str,
    repository: str,
    tag: str,
    *,
    platforms: tuple[tuple[str, str], ...] = (("linux", "amd64"),),
    username: str | None = None,
    password: str | None = None,
    docker_media_types: bool = False,
    extra_files: dict[str, bytes] | None = None,
) -> str:
    """Push a two-layer image (a shell, then /etc/os-release with `OS_RELEASE_MARKER` and any
    `extra_files`) and return the digest `tag` points to: the manifest for one platform, an
    index (a Docker manifest list with `docker_media_types`) for several. Other platforms
    reuse the same files: they are data only, never run."""
    manifest_type, index_type, config_type, layer_type = (
        (DOCKER_MANIFEST, DOCKER_LIST, DOCKER_CONFIG, DOCKER_LAYER)
        if docker_media_types
        else (OCI_MANIFEST, OCI_INDEX, OCI_CONFIG, OCI_LAYER)
    )
    os_release = f'PRETTY_NAME="conda-store test base"\nID=conda-store-test\n{OS_RELEASE_MARKER}\n'.encode()
    layers = [_layer(_shell_files()), _layer({"/etc/os-release": os_release, **(extra_files or {})})]
    with RegistryClient(registry_url, username, password) as client:
        for blob, _ in layers:
            if not client.has_blob(repository, sha256_digest(blob)):
                client.upload_blob(repository, sha256_digest(blob), blob)
        manifests = []
        for operating_system, architecture in platforms:
            config: dict[str, object] = {
                "architecture": architecture,
                "os": operating_system,
                "config": {"Env": [DEFAULT_PATH], "Cmd": ["/bin/sh"]},
                "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]},
                "history": [{"created_by": "conda-store test base image"} for _ in layers],
            }
            if architecture == "arm64":
                config["variant"] = "v8"
            config_bytes = canonical_json(config)
            client.upload_blob(repository, sha256_digest(config_bytes), config_bytes)
            manifest = canonical_json(
                {
                    "schemaVersion": 2,
                    "mediaType": manifest_type,
                    "config": {
                        "mediaType": config_type,
                        "digest": sha256_digest(config_bytes),
                        "size": len(config_bytes),
                    },
                    "layers": [
                        {"mediaType": layer_type, "digest": sha256_digest(blob), "size": len(blob)}
                        for blob, _ in layers
                    ],
                }
            )
            platform = {"os": operating_system, "architecture": architecture}
            if architecture == "arm64":
                platform["variant"] = "v8"
            manifests.append((manifest, platform))
        if len(manifests) == 1:
            return client.put_manifest(repository, tag, manifests[0][0], manifest_type)
        for manifest, _ in manifests:
            client.put_manifest(repository, sha256_digest(manifest), manifest, manifest_type)
        index = canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": index_type,
                "manifests": [
                    {"mediaType": manifest_type, "digest": sha256_digest(m), "size": len(m), "platform": p}
                    for m, p in manifests
                ],
            }
        )
        return client.put_manifest(repository, tag, index, index_type)
