"""The registry client, base-image pull and push against Debian's real `docker-registry`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from live import free_port

from conda_store_server.images.base import Descriptor, cache_key, pull_base_image
from conda_store_server.images.push import push_image
from conda_store_server.images.reference import container_platform, parse_reference
from conda_store_server.images.registry_client import RegistryClient, RegistryError, sha256_digest
from conda_store_server.registry import Registry
from conda_store_server.storage import LocalStorage
from conda_store_server.testing.registry import DistributionRegistry, make_base_image

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
AMD64 = ("linux", "amd64")
ARM64 = ("linux", "arm64")


@pytest.fixture(scope="module")
def registry() -> Iterator[DistributionRegistry]:
    with DistributionRegistry() as running:
        yield running


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(storage_path=str(tmp_path / "storage"))


def blob_gets(registry: DistributionRegistry) -> list[str]:
    return [path for method, path, _ in registry.requests() if method == "GET" and "/blobs/" in path]


HEX = "a" * 64


@pytest.mark.parametrize(
    "text, registry_host, repository, reference, url",
    [
        ("debian", "registry-1.docker.io", "library/debian", "latest", "https://registry-1.docker.io"),
        (
            "debian:sid-slim",
            "registry-1.docker.io",
            "library/debian",
            "sid-slim",
            "https://registry-1.docker.io",
        ),
        ("docker.io/x/y", "registry-1.docker.io", "x/y", "latest", "https://registry-1.docker.io"),
        ("index.docker.io/x/y:1", "registry-1.docker.io", "x/y", "1", "https://registry-1.docker.io"),
        ("user/img", "registry-1.docker.io", "user/img", "latest", "https://registry-1.docker.io"),
        ("ghcr.io/o/i/j:v1.2", "ghcr.io", "o/i/j", "v1.2", "https://ghcr.io"),
        (f"quay.io/o/i@sha256:{HEX}", "quay.io", "o/i", f"sha256:{HEX}", "https://quay.io"),
        (f"debian:12@sha256:{HEX}", "registry-1.docker.io", "library/debian", f"sha256:{HEX}", None),
        ("127.0.0.1:5000/ns/env:tag", "127.0.0.1:5000", "ns/env", "tag", "http://127.0.0.1:5000"),
        ("127.1.2.3:80/a", "127.1.2.3:80", "a", "latest", "http://127.1.2.3:80"),
        ("localhost:5000/a:b", "localhost:5000", "a", "b", "http://localhost:5000"),
        ("localhost/a", "localhost", "a", "latest", "http://localhost"),
        ("[::1]:5000/a/b:c", "[::1]:5000", "a/b", "c", "http://[::1]:5000"),
        ("registry.example:8443/a", "registry.example:8443", "a", "latest", "https://registry.example:8443"),
    ],
)
def test_parse_reference(
    text: str, registry_host: str, repository: str, reference: str, url: str | None
) -> None:
    parsed = parse_reference(text)
    assert (parsed.registry, parsed.repository, parsed.reference) == (registry_host, repository, reference)
    if url is not None:
        assert parsed.url == url


@pytest.mark.parametrize(
    "text",
    ["", "Debian", "a::b", "http://host/a", "a@sha256:12", "a@md5:" + HEX, "x/:t", "a:b c", " a", "a:-x"],
)
def test_bad_references_name_the_text(text: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_reference(text)
    assert repr(text) in str(raised.value)


def test_container_platform() -> None:
    assert container_platform("linux-64") == AMD64
    assert container_platform("linux-aarch64") == ARM64
    assert container_platform("linux-ppc64le") == ("linux", "ppc64le")
    assert container_platform("osx-arm64") is None
    assert container_platform("win-64") is None


def test_blob_and_manifest_round_trip(registry: DistributionRegistry, tmp_path: Path) -> None:
    blob = b"some layer bytes" * 1000
    digest = sha256_digest(blob)
    source = tmp_path / "blob"
    source.write_bytes(blob)
    with RegistryClient(registry.url) as client:
        assert not client.has_blob("round/trip", digest)
        client.upload_blob("round/trip", digest, source)
        assert client.has_blob("round/trip", digest)
        assert client.fetch_blob("round/trip", digest, tmp_path / "copy") == len(blob)
        assert (tmp_path / "copy").read_bytes() == blob
        config = b"{}"
        client.upload_blob("round/trip", sha256_digest(config), config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha256_digest(config),
                    "size": 2,
                },
                "layers": [{"mediaType": OCI_LAYER, "digest": digest, "size": len(blob)}],
            }
        ).encode()
        pushed = client.put_manifest(
            "round/trip", "v1", manifest, "application/vnd.oci.image.manifest.v1+json"
        )
        assert pushed == sha256_digest(manifest)
        for reference in ("v1", pushed):
            got = client.get_manifest("round/trip", reference, ["application/vnd.oci.image.manifest.v1+json"])
            assert (got.content, got.digest) == (manifest, pushed)
            assert got.media_type == "application/vnd.oci.image.manifest.v1+json"
        with pytest.raises(RegistryError) as missing:
            client.get_manifest("round/trip", "nope", ["application/vnd.oci.image.manifest.v1+json"])
        message = str(missing.value)
        assert registry.url in message and "round/trip" in message and "404" in message
        assert "MANIFEST_UNKNOWN" in message
        with pytest.raises(ValueError, match="digest"):
            client.upload_blob("round/trip", digest, b"other bytes")


@pytest.mark.parametrize("docker_media_types", [False, True], ids=["oci", "docker"])
@pytest.mark.parametrize("platform", [AMD64, ARM64], ids=["amd64", "arm64"])
def test_pull_index_resolves_platform(
    registry: DistributionRegistry,
    storage: LocalStorage,
    tmp_path: Path,
    platform: tuple[str, str],
    docker_media_types: bool,
) -> None:
    repository = f"multi/{'docker' if docker_media_types else 'oci'}"
    make_base_image(
        registry.url, repository, "v1", platforms=(AMD64, ARM64), docker_media_types=docker_media_types
    )
    base = pull_base_image(
        storage, f"{registry.host}/{repository}:v1", platform, scratch=tmp_path / "scratch"
    )
    assert (base.config["os"], base.config["architecture"]) == platform
    assert base.config["config"]["Cmd"] == ["/bin/sh"]
    assert len(base.layers) == 2 and not base.from_cache
    for layer in base.layers:
        assert isinstance(layer, Descriptor) and layer.media_type == OCI_LAYER
        content = storage.get(f"docker/blobs/{layer.digest}")
        assert sha256_digest(content) == layer.digest and len(content) == layer.size
        assert layer.as_descriptor() == {"mediaType": OCI_LAYER, "digest": layer.digest, "size": layer.size}
    with RegistryClient(registry.url) as client:
        index = json.loads(
            client.get_manifest(
                repository,
                "v1",
                [
                    "application/vnd.oci.image.index.v1+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json",
                ],
            ).content
        )
    wanted = [
        entry["digest"] for entry in index["manifests"] if entry["platform"]["architecture"] == platform[1]
    ]
    assert base.manifest_digest == wanted[0]


def test_pull_single_manifest_and_platform_errors(
    registry: DistributionRegistry, storage: LocalStorage
) -> None:
    digest = make_base_image(registry.url, "single/base", "v1")
    base = pull_base_image(storage, f"{registry.host}/single/base:v1", AMD64)
    assert base.manifest_digest == digest
    assert pull_base_image(storage, f"{registry.host}/single/base@{digest}", AMD64).manifest_digest == digest
    with pytest.raises(RegistryError) as mismatch:
        pull_base_image(storage, f"{registry.host}/single/base:v1", ARM64)
    assert "linux/amd64" in str(mismatch.value) and "linux/arm64" in str(mismatch.value)
    make_base_image(registry.url, "multi/two", "v1", platforms=(AMD64, ARM64))
    with pytest.raises(RegistryError) as absent:
        pull_base_image(storage, f"{registry.host}/multi/two:v1", ("linux", "ppc64le"))
    message = str(absent.value)
    assert "linux/ppc64le" in message and "linux/amd64" in message and "linux/arm64/v8" in message
    assert f"cannot pull base image {registry.host}/multi/two:v1 from {registry.url}" in message


def test_second_pull_downloads_no_blob(registry: DistributionRegistry, storage: LocalStorage) -> None:
    make_base_image(registry.url, "twice/base", "v1", platforms=(AMD64, ARM64))
    before = len(blob_gets(registry))
    first = pull_base_image(storage, f"{registry.host}/twice/base:v1", AMD64)
    middle = len(blob_gets(registry))
    assert middle - before == 3  # config and two layers
    second = pull_base_image(storage, f"{registry.host}/twice/base:v1", AMD64)
    assert len(blob_gets(registry)) == middle
    assert second.manifest_digest == first.manifest_digest and second.layers == first.layers
    # the arm64 image shares the layers: only its config is fetched
    pull_base_image(storage, f"{registry.host}/twice/base:v1", ARM64)
    assert len(blob_gets(registry)) == middle + 1


def test_unreachable_registry_and_cache(storage: LocalStorage, tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(RegistryError) as raised:
        pull_base_image(storage, f"127.0.0.1:{port}/gone/base:v1", AMD64)
    assert f"http://127.0.0.1:{port}" in str(raised.value) and "cannot pull base image" in str(raised.value)

    with DistributionRegistry() as own:
        make_base_image(own.url, "cached/base", "v1")
        reference = f"{own.host}/cached/base:v1"
        pulled = pull_base_image(storage, reference, AMD64)
        own.stop()
        cached = pull_base_image(storage, reference, AMD64)
        assert cached.from_cache and cached.manifest_digest == pulled.manifest_digest
        assert cached.layers == pulled.layers and cached.config == pulled.config
        # without its blobs the cache is not used: the error says the registry is unreachable
        storage.delete(f"docker/blobs/{pulled.layers[0].digest}")
        with pytest.raises(RegistryError, match=own.url):
            pull_base_image(storage, reference, AMD64)
        assert storage.exists(cache_key(parse_reference(reference), AMD64))


def test_basic_auth_registry() -> None:
    password = "pa55-word-" + hashlib.sha256(b"x").hexdigest()[:8]
    with DistributionRegistry(username="alice", password=password) as secured:
        digest = make_base_image(secured.url, "private/base", "v1", username="alice", password=password)
        storage_dir = Path(secured.directory) / "client-storage"  # type: ignore[arg-type]
        storage = LocalStorage(storage_path=str(storage_dir))
        reference = f"{secured.host}/private/base:v1"
        base = pull_base_image(storage, reference, AMD64, {secured.url: ("alice", password)})
        assert base.manifest_digest == digest
        for credentials in ({secured.url: ("alice", "wrong-" + password)}, None):
            with pytest.raises(RegistryError) as refused:
                pull_base_image(
                    LocalStorage(storage_path=str(storage_dir / "other")), reference, AMD64, credentials
                )
            assert "401" in str(refused.value) and secured.url in str(refused.value)
            assert password not in str(refused.value)
        with RegistryClient(f"http://alice:{password}@{secured.host}") as client:
            assert client.has_blob("private/base", base.layers[0].digest)
            assert password not in repr(client) and client.url == secured.url
        with RegistryClient(f"http://alice:wrong-{password}@{secured.host}") as bad:
            with pytest.raises(RegistryError) as refused_url:
                bad.has_blob("private/base", base.layers[0].digest)
        assert password not in str(refused_url.value)


def _copy_image(source: DistributionRegistry, repository: str, tag: str, storage: LocalStorage) -> bytes:
    """Pull an image into storage as the image builder stores its own: the manifest as a blob."""
    base = pull_base_image(storage, f"{source.host}/{repository}:{tag}", AMD64)
    with RegistryClient(source.url) as client:
        manifest = client.get_manifest(repository, tag, ["application/vnd.oci.image.manifest.v1+json"])
    storage.set(f"docker/blobs/{manifest.digest}", manifest.content)
    document = json.loads(manifest.content)
    assert [layer["digest"] for layer in document["layers"]] == [layer.digest for layer in base.layers]
    return manifest.content


def test_push_sends_only_missing_blobs(registry: DistributionRegistry, storage: LocalStorage) -> None:
    make_base_image(registry.url, "source/one", "v1")
    make_base_image(registry.url, "source/two", "v1", extra_files={"/etc/hostname": b"two\n"})
    first = _copy_image(registry, "source/one", "v1", storage)
    second = _copy_image(registry, "source/two", "v1", storage)
    lines: list[str] = []
    with DistributionRegistry() as target, RegistryClient(target.url) as client:
        assert push_image(client, "env/app", "build-1", storage, first, log=lines.append) == sha256_digest(
            first
        )
        uploads = [
            path for method, path, _ in target.requests() if method == "PUT" and "/blobs/uploads/" in path
        ]
        assert len(uploads) == 3  # config, shell layer, os-release layer
        push_image(client, "env/app", "build-2", storage, second, log=lines.append)
        uploads2 = [
            path for method, path, _ in target.requests() if method == "PUT" and "/blobs/uploads/" in path
        ]
        new = {layer["digest"] for layer in json.loads(second)["layers"]} - {
            layer["digest"] for layer in json.loads(first)["layers"]
        }
        assert len(new) == 1
        assert len(uploads2) - len(uploads) == 2  # its config and its one new layer
        got = client.get_manifest("env/app", "build-2", ["application/vnd.oci.image.manifest.v1+json"])
        assert got.content == second


def test_push_index(registry: DistributionRegistry, storage: LocalStorage, tmp_path: Path) -> None:
    make_base_image(registry.url, "source/multi", "v1", platforms=(AMD64, ARM64))
    with RegistryClient(registry.url) as client:
        index = client.get_manifest("source/multi", "v1", ["application/vnd.oci.image.index.v1+json"])
        storage.set(f"docker/blobs/{index.digest}", index.content)
        storage.set("docker/manifest/some-build", index.content)
        for entry in json.loads(index.content)["manifests"]:
            manifest = client.get_manifest(
                "source/multi", entry["digest"], ["application/vnd.oci.image.manifest.v1+json"]
            )
            storage.set(f"docker/blobs/{manifest.digest}", manifest.content)
    for platform in (AMD64, ARM64):
        pull_base_image(storage, f"{registry.host}/source/multi:v1", platform)
    with DistributionRegistry() as target, RegistryClient(target.url) as client:
        digest = push_image(
            client, "env/multi", "t", storage, "docker/manifest/some-build", log=lambda _: None
        )
        assert digest == index.digest
        pushed = client.get_manifest("env/multi", "t", ["application/vnd.oci.image.index.v1+json"])
        assert pushed.content == index.content


def test_push_retries_a_bounded_number_of_times(storage: LocalStorage) -> None:
    config = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": sha256_digest(b"{}"),
        "size": 2,
    }
    content = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": [],
        }
    ).encode()
    port = free_port()
    lines: list[str] = []
    with RegistryClient(f"http://pusher:topsecret@127.0.0.1:{port}") as client:
        with pytest.raises(RegistryError) as raised:
            push_image(client, "env/app", "t", storage, content, attempts=3, log=lines.append, backoff=0.01)
    assert len(lines) == 3
    assert all(f"http://127.0.0.1:{port}/env/app" in line for line in lines)
    assert "after 3 attempt(s)" in str(raised.value)
    assert not any("topsecret" in text for text in [*lines, str(raised.value)])


def test_registry_configuration_object_masks_password() -> None:
    registry = Registry("https://registry.example", username="bot", password="hunter2")
    assert (registry.url, registry.username, registry.password) == (
        "https://registry.example",
        "bot",
        "hunter2",
    )
    assert "hunter2" not in repr(registry) and "****" in repr(registry) and "bot" in repr(registry)
    assert "hunter2" not in repr(Registry("https://u:hunter2@registry.example"))


class _TokenProxy:
    """Docker Hub's scheme in front of the real registry: 401 with a Bearer challenge, tokens
    from a realm that checks Basic credentials, then requests with the token are forwarded."""

    def __init__(self, upstream: str, username: str, password: str) -> None:
        import base64
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        import httpx

        proxy = self
        self.token_requests: list[str] = []
        expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.startswith("/token"):
                    proxy.token_requests.append(self.path)
                    if self.headers.get("Authorization") != expected:
                        self._answer(401, b'{"details":"incorrect username or password"}', {})
                        return
                    self._answer(200, json.dumps({"token": "tok-" + self.path[-20:]}).encode(), {})
                    return
                if not (self.headers.get("Authorization") or "").startswith("Bearer tok-"):
                    realm = f"http://127.0.0.1:{proxy.port}/token"
                    challenge = f'Bearer realm="{realm}",service="test",scope="repository:x:pull"'
                    self._answer(
                        401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge}
                    )
                    return
                answer = httpx.request(
                    self.command, upstream + self.path, headers={"Accept": self.headers.get("Accept", "*/*")}
                )
                headers = {
                    name: answer.headers[name]
                    for name in ("Content-Type", "Docker-Content-Digest")
                    if name in answer.headers
                }
                self._answer(answer.status_code, answer.content, headers)

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_bearer_token_flow(registry: DistributionRegistry, storage: LocalStorage) -> None:
    make_base_image(registry.url, "tokens/base", "v1")
    proxy = _TokenProxy(registry.url, "carol", "token-secret")
    try:
        host = f"127.0.0.1:{proxy.port}"
        base = pull_base_image(
            storage, f"{host}/tokens/base:v1", AMD64, {f"http://{host}": ("carol", "token-secret")}
        )
        assert len(base.layers) == 2
        assert len(proxy.token_requests) == 1  # one token per scope, reused for every request
        assert "service=test" in proxy.token_requests[0]
        with pytest.raises(RegistryError) as refused:
            pull_base_image(
                LocalStorage(storage_path=str(Path(storage.storage_path) / "b")),
                f"{host}/tokens/base:v1",
                AMD64,
                {f"http://{host}": ("carol", "not-the-token-secret")},
            )
        message = str(refused.value)
        assert "token service" in message and "401" in message and "not-the-token-secret" not in message
    finally:
        proxy.close()
