"""Container images of real builds: pulled by skopeo from our /v2/, unpacked by umoci, run in a
chroot; layers shared between environments; pushes to a real distribution registry."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_CI, artifact_ready, login, submit, wait_for_build
from live import live_server
from rattler.index import index_fs

from conda_store_server.testing.channel import (
    TEXT_PLACEHOLDER,
    build_demo_channel,
    build_package,
    demo_packages,
)
from conda_store_server.testing.registry import OS_RELEASE_MARKER, DistributionRegistry, make_base_image

SPEC = """
name: tools
dependencies:
  - hello-tool
  - hello-py
  - libprefix
"""


def _program_files(program: str) -> dict[str, bytes]:
    """A host program and the libraries `ldd` names, for the base image's root filesystem."""
    files = {program: Path(program).resolve().read_bytes()}
    listing = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        path = line.split("=>")[-1].strip().split(" ")[0]
        if path.startswith("/"):
            files[path] = Path(path).resolve().read_bytes()
    return files


def _tool(name: str) -> str:
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if found is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed; .ci/run installs it with apt-get")
        pytest.skip(f"{name} is not installed")
    return found


@pytest.fixture
def base_registry() -> Iterator[DistributionRegistry]:
    with DistributionRegistry() as registry:
        make_base_image(
            registry.url,
            "library/tiny",
            "1",
            platforms=(("linux", "amd64"), ("linux", "arm64")),
            extra_files=_program_files("/bin/sed"),
        )
        yield registry


ARM64_GREETING = "hello-tool 1.0.0 for linux-aarch64"


@pytest.fixture(scope="session")
def two_platform_channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo channel with its arch-specific packages built for linux-aarch64 too; that
    platform's hello-tool prints another greeting, so an image shows whose files it holds."""
    channel = build_demo_channel(tmp_path_factory.mktemp("channels") / "two-platforms")
    for spec in demo_packages():
        if spec.noarch:
            continue
        if spec.name == "hello-tool":
            script = f'#!/bin/sh\necho "{ARM64_GREETING} in {TEXT_PLACEHOLDER}"\n'
            spec = dataclasses.replace(spec, text_prefix_files={"bin/hello-tool": script})
        build_package(spec, channel, "linux-aarch64")
    asyncio.run(index_fs(channel, force=True))
    return channel


@pytest.fixture
def store_settings(
    store_settings: dict[str, dict[str, Any]],
    base_registry: DistributionRegistry,
    request: pytest.FixtureRequest,
) -> dict[str, dict[str, Any]]:
    host = "127.0.0.1:9" if "unreachable_base" in request.node.name else base_registry.host
    traits = store_settings["CondaStore"]
    traits["build_artifacts"] = ["LOCKFILE", "YAML", "DOCKER_MANIFEST"]
    traits["default_docker_base_image"] = f"{host}/library/tiny:1"
    if "two_platforms" in request.node.name:
        traits["conda_default_channels"] = [request.getfixturevalue("two_platform_channel").as_uri()]
        traits["conda_solve_platforms"] = ["linux-64", "linux-aarch64"]
    if "pip_wheels" in request.node.name:
        traits["pypi_index_url"] = request.getfixturevalue("index").authenticated_index_url
    return store_settings


#: The seed's example of `ContainerRegistry.container_registries`, as a deployment writes it, with
#: its import replaced by ours; a second registry, unreachable, whose URL carries a password.
SEED_PUSH_CONFIGURATION = """
from conda_store_server.registry import Registry
import os
def _configure_docker_registry(registry_url: str):
    return Registry(
        "{push}",
        username=os.environ.get('DOCKER_USERNAME'),
        password=os.environ.get('DOCKER_PASSWORD'))
c.ContainerRegistry.container_registries = {{
    '{push}': _configure_docker_registry,
    '{unreachable}': Registry,
}}
"""
UNREACHABLE_REGISTRY = "http://pusher:wrongsecret@127.0.0.1:9"


@pytest.fixture
def push_registry() -> Iterator[DistributionRegistry]:
    with DistributionRegistry(username="pusher", password="topsecret") as registry:
        yield registry


@pytest.fixture
def config_file(config_file: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The worker's configuration file; for push tests, with the seed's registry example."""
    if "pushes" in request.node.name:
        registry = request.getfixturevalue("push_registry")
        monkeypatch.setenv("DOCKER_USERNAME", "pusher")  # the worker inherits this environment
        monkeypatch.setenv("DOCKER_PASSWORD", "topsecret")
        extra = SEED_PUSH_CONFIGURATION.format(push=registry.url, unreachable=UNREACHABLE_REGISTRY)
        # the base image is private there too: pulled with that registry's credentials
        make_base_image(registry.url, "library/private", "1", username="pusher", password="topsecret")
        extra += f"c.CondaStore.default_docker_base_image = '{registry.host}/library/private:1'\n"
        config_file.write_text(config_file.read_text() + extra)
    return config_file


@pytest.fixture
def server_settings() -> dict[str, Any]:
    return {"enable_registry": True, "registry_external_url": "localhost:8080"}


def _image_build(client, specification: str = SPEC, namespace: str | None = None) -> dict[str, Any]:
    build_id = submit(client, specification, namespace)
    build = wait_for_build(client, build_id, artifact_ready("DOCKER_MANIFEST"), timeout=180)
    assert any(a["artifact_type"] == "DOCKER_MANIFEST" for a in build["build_artifacts"]), client.get(
        f"/api/v1/build/{build_id}/logs/"
    ).text
    return build


def _manifest(client, name: str, reference: str) -> dict[str, Any]:
    response = client.get(f"/v2/{name}/manifests/{reference}")
    assert response.status_code == 200, response.text
    return response.json()


def _layer_digests(client, name: str, reference: str) -> list[str]:
    manifest = _manifest(client, name, reference)
    if "manifests" in manifest:
        amd64 = next(m for m in manifest["manifests"] if m["platform"]["architecture"] == "amd64")
        manifest = _manifest(client, name, amd64["digest"])
    return [layer["digest"] for layer in manifest["layers"]]


def _token(client, role_bindings: dict[str, list[str]] | None = None) -> str:
    """An API token of the logged-in user, limited to `role_bindings` when given."""
    body = {"role_bindings": role_bindings} if role_bindings is not None else {}
    response = client.post("/api/v1/token/", json=body)
    assert response.status_code == 200, response.text
    return response.json()["data"]["token"]


def _skopeo_pull(url: str, name: str, reference: str, layout: Path, token: str | None, *extra: str) -> None:
    host = url.removeprefix("http://")
    command = [_tool("skopeo"), "copy", "--src-tls-verify=false", *extra]
    if token:
        command += ["--src-creds", f"alice:{token}"]
    command += [f"docker://{host}/{name}:{reference}", f"oci:{layout}:{reference}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _unpack(layout: Path, reference: str, bundle: Path) -> Path:
    result = subprocess.run(
        [_tool("umoci"), "unpack", "--rootless", "--image", f"{layout}:{reference}", str(bundle)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return bundle / "rootfs"


def test_image_of_a_build_runs_its_programs(
    client, worker, conda_store, store_settings, server_settings, tmp_path: Path
) -> None:
    login(client)
    build = _image_build(client)
    deadline = time.monotonic() + 15  # the log's last lines are shipped within a second
    while "container image stored" not in (log := client.get(f"/api/v1/build/{build['id']}/logs/").text):
        assert time.monotonic() < deadline, log
        time.sleep(0.2)
    docker = client.get(f"/api/v1/build/{build['id']}/docker/")
    assert docker.status_code == 200
    tag = docker.text.rsplit(":", 1)[1]
    assert docker.text == f"localhost:8080/alice/tools:{tag}"

    manifest = _manifest(client, "alice/tools", "latest")
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    # one layer per package after the base's two, and the environment's own on top
    packages = {
        p["name"]
        for p in client.get(f"/api/v1/build/{build['id']}/packages/", params={"size": 100}).json()["data"]
    }
    assert len(manifest["layers"]) == 2 + len(packages) + 1

    token = _token(client)
    outsider = _token(client, {"elsewhere/*": ["admin"]})
    with live_server(conda_store, store_settings, server_settings) as url:
        _skopeo_pull(url, "alice/tools", tag, tmp_path / "layout", token)
        inspect = [_tool("skopeo"), "inspect", "--tls-verify=false"]
        image = f"docker://{url.removeprefix('http://')}/alice/tools:latest"
        anonymous = subprocess.run([*inspect, image], capture_output=True, text=True, timeout=60)
        denied = subprocess.run(
            [*inspect, "--creds", f"alice:{outsider}", image], capture_output=True, text=True, timeout=60
        )
    assert anonymous.returncode != 0 and "unauthorized" in anonymous.stderr.lower(), anonymous.stderr
    assert denied.returncode != 0 and "denied" in denied.stderr.lower(), denied.stderr

    rootfs = _unpack(tmp_path / "layout", tag, tmp_path / "bundle")
    assert OS_RELEASE_MARKER in (rootfs / "etc/os-release").read_text()  # the base image's files
    assert (rootfs / "opt/conda/etc/hello.conf").read_text().count("/opt/conda") >= 1
    data = (rootfs / "opt/conda/lib/libprefix.dat").read_bytes()
    assert b"/opt/conda/share/libprefix\0" in data and b"placehold" not in data
    assert conda_store.store_directory.encode() not in data

    config = json.loads((tmp_path / "bundle/config.json").read_text())
    environment = config["process"]["env"]
    assert "CONDA_PREFIX=/opt/conda" in environment
    assert next(e for e in environment if e.startswith("PATH=")).startswith("PATH=/opt/conda/bin:")
    image_config = _image_config(tmp_path / "layout", tag)
    labels = image_config["config"]["Labels"]
    assert labels["org.conda-store.namespace"] == "alice"
    assert labels["org.conda-store.environment"] == "tools"
    assert labels["org.conda-store.build-id"] == str(build["id"])

    if os.geteuid() != 0:
        pytest.skip("running the environment's program in the image needs chroot (root)")
    ran = subprocess.run(
        [_tool("chroot"), str(rootfs), "/opt/conda/bin/hello-tool"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/opt/conda/bin:/usr/bin:/bin"},
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "hello-tool 1.0.0 says hello from /opt/conda", ran.stdout


def _image_config(layout: Path, reference: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    entry = next(
        m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == reference
    )
    manifest = json.loads((layout / "blobs/sha256" / entry["digest"].split(":")[1]).read_text())
    return json.loads((layout / "blobs/sha256" / manifest["config"]["digest"].split(":")[1]).read_text())


def _package_layers(client, name: str, reference: str) -> list[str]:
    """The layers of the environment's packages: neither the base's two nor the top one."""
    return _layer_digests(client, name, reference)[2:-1]


def test_images_share_package_layers_and_a_lockfile_gives_the_same_layers(
    client, worker, conda_store
) -> None:
    login(client)
    first = _image_build(client)
    _image_build(client, "name: other\ndependencies: [hello-tool, tinylib]\n")
    shared = set(_package_layers(client, "alice/tools", "latest")) & set(
        _package_layers(client, "alice/other", "latest")
    )
    assert len(shared) == 4  # hello-tool, hello-config, python, tinylib: one blob each, in both images

    lock = json.loads(client.get(f"/api/v1/build/{first['id']}/lockfile/").content)
    body = {"specification": json.dumps(lock), "is_lockfile": True, "environment_name": "again"}
    response = client.post("/api/v1/specification/", json=body)
    assert response.status_code == 200, response.text
    wait_for_build(
        client, response.json()["data"]["build_id"], artifact_ready("DOCKER_MANIFEST"), timeout=180
    )
    assert _package_layers(client, "alice/again", "latest") == _package_layers(
        client, "alice/tools", "latest"
    )

    # the image of one build, made again, is the same image and writes nothing new
    from conda_store_server.build.keys import build_key, identity_of
    from conda_store_server.build.lockfile import from_conda_lock
    from conda_store_server.images.step import make_image
    from conda_store_server.service import get_build, prefix_of

    with conda_store.session() as session:
        build = get_build(session, first["id"])
        key, prefix = build_key(identity_of(build)), prefix_of(conda_store, build)
    lines: list[str] = []
    again = make_image(conda_store, first["id"], key, prefix, None, from_conda_lock(lock), lines.append)
    assert again is not None, lines
    assert again.digest == _manifest_digest(client, "alice/tools", str(first["id"]))
    assert again.bytes_written == 0, lines

    # deleting an environment keeps the blobs that another image still uses
    assert client.delete("/api/v1/environment/alice/tools/").status_code == 200
    for digest in _layer_digests(client, "alice/again", "latest"):
        assert client.head(f"/v2/alice/again/blobs/{digest}").status_code == 200, digest


def _manifest_digest(client, name: str, reference: str) -> str:
    response = client.head(f"/v2/{name}/manifests/{reference}")
    assert response.status_code == 200, response.text
    return response.headers["Docker-Content-Digest"]


def test_an_unreachable_base_image_leaves_the_build_completed_and_says_why(
    client, worker, store_settings
) -> None:
    login(client)
    build_id = submit(client, "name: nobase\ndependencies: [hello-tool]\n")
    build = wait_for_build(client, build_id, lambda b: b["status"] != "BUILDING" and b["status"] != "QUEUED")
    assert build["status"] == "COMPLETED"
    _log_when(client, build_id, "container image failed")  # the image step runs after COMPLETED
    reason = "cannot pull base image 127.0.0.1:9/library/tiny:1"
    deadline = time.monotonic() + 10  # the log line is written just before the reason is stored
    while reason not in (docker := client.get(f"/api/v1/build/{build_id}/docker/")).text:
        assert time.monotonic() < deadline, docker.text
        time.sleep(0.2)
    assert docker.status_code == 400
    assert client.get("/v2/alice/nobase/manifests/latest").status_code in (401, 404)


def test_the_official_client_waits_for_the_image(
    client, worker, conda_store, store_settings, tmp_path: Path
) -> None:
    """`conda-store wait ns/env --artifact docker` returns once the build has its image."""
    from test_official_client import run_client

    login(client)
    build_id = submit(client, "name: waited\ndependencies: [hello-tool]\n")
    with live_server(conda_store, store_settings) as url:
        url = url.replace("127.0.0.1", "localhost")  # the client's cookie jar ignores IP hosts
        run_client(
            url,
            "wait",
            "alice/waited",
            "--artifact",
            "docker",
            "--interval",
            "1",
            "--timeout",
            "170",
            home=tmp_path,
        )
    build = client.get(f"/api/v1/build/{build_id}/").json()["data"]
    assert any(a["artifact_type"] == "DOCKER_MANIFEST" for a in build["build_artifacts"])


def _pull_each_architecture(
    client, conda_store, store_settings, server_settings, name: str, tag: str, layouts: Path
) -> None:
    """skopeo pulls the amd64 and the arm64 image of `name:tag` into `layouts/<architecture>`."""
    token = _token(client)
    with live_server(conda_store, store_settings, server_settings) as url:
        for architecture in ("amd64", "arm64"):
            _skopeo_pull(url, name, tag, layouts / architecture, token, "--override-arch", architecture)


def test_two_platforms_give_an_index_of_an_image_for_each(
    client, worker, conda_store, store_settings, server_settings, tmp_path: Path
) -> None:
    """linux-aarch64 is extracted, never run, into an arm64 image beside the amd64 one."""
    login(client)
    build = _image_build(client, "name: both\ndependencies: [hello-tool, hello-py]\n")
    index = _manifest(client, "alice/both", "latest")
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    platforms = {(m["platform"]["os"], m["platform"]["architecture"]): m for m in index["manifests"]}
    assert set(platforms) == {("linux", "amd64"), ("linux", "arm64")}
    assert platforms["linux", "arm64"]["platform"].get("variant") == "v8"
    amd64 = _manifest(client, "alice/both", platforms["linux", "amd64"]["digest"])
    arm64 = _manifest(client, "alice/both", platforms["linux", "arm64"]["digest"])
    # packages of the same files (noarch ones, the python wrapper) are the same layers; only
    # hello-tool's layer and the conda-meta on top differ
    amd64_layers = [layer["digest"] for layer in amd64["layers"]]
    arm64_layers = [layer["digest"] for layer in arm64["layers"]]
    assert len(amd64_layers) == len(arm64_layers)
    assert len(set(amd64_layers) - set(arm64_layers)) == 2, (amd64_layers, arm64_layers)
    assert amd64_layers[-1] != arm64_layers[-1]

    tag = str(build["id"])
    _pull_each_architecture(client, conda_store, store_settings, server_settings, "alice/both", tag, tmp_path)
    runs = {}
    for architecture, subdir in (("amd64", "linux-64"), ("arm64", "linux-aarch64")):
        rootfs = _unpack(tmp_path / architecture, tag, tmp_path / f"{architecture}-bundle")
        image_config = _image_config(tmp_path / architecture, tag)
        assert image_config["architecture"] == architecture
        assert image_config["config"]["Labels"]["org.conda-store.platform"] == subdir
        records = [json.loads(p.read_text()) for p in (rootfs / "opt/conda/conda-meta").glob("*.json")]
        assert {r["name"]: r["subdir"] for r in records}["hello-tool"] == subdir
        assert {r["subdir"] for r in records} <= {subdir, "noarch"}
        if os.geteuid() == 0:
            runs[architecture] = subprocess.run(
                [_tool("chroot"), str(rootfs), "/opt/conda/bin/hello-tool"],
                capture_output=True,
                text=True,
                timeout=60,
                env={"PATH": "/opt/conda/bin:/usr/bin:/bin"},
            ).stdout.strip()
    if os.geteuid() != 0:
        pytest.skip("running the images' scripts needs chroot (root)")
    assert runs["amd64"] == "hello-tool 1.0.0 says hello from /opt/conda"
    assert runs["arm64"] == f"{ARM64_GREETING} in /opt/conda"


def test_two_platforms_lay_out_pip_wheels_in_each_image(
    client, worker, conda_store, store_settings, server_settings, tmp_path: Path
) -> None:
    """The arm64 image gets its lock's pip wheels without running its python; scripts name the
    image's interpreter."""
    login(client)
    specification = "name: piped\ndependencies: [python, hello-tool, {pip: [pipgreet, pipshout]}]\n"
    build = _image_build(client, specification)
    tag = str(build["id"])
    _pull_each_architecture(
        client, conda_store, store_settings, server_settings, "alice/piped", tag, tmp_path
    )
    python = "python" + ".".join(str(part) for part in sys.version_info[:2])
    for architecture in ("amd64", "arm64"):
        rootfs = _unpack(tmp_path / architecture, tag, tmp_path / f"{architecture}-bundle")
        site_packages = rootfs / "opt/conda/lib" / python / "site-packages"
        installed = sorted(path.name for path in site_packages.glob("*.dist-info"))
        assert [name for name in installed if name.startswith("pip")] == [
            "pipcolor-1.1.0.dist-info",
            "pipgreet-2.0.0.dist-info",
            "pipshout-1.0.0.dist-info",
        ], (architecture, installed)
        assert (site_packages / "pipgreet/__init__.py").is_file()
        script = (rootfs / "opt/conda/bin/pipshout").read_bytes()
        assert script.startswith(f"#!/opt/conda/bin/{python}\n".encode()), script[:80]
        record = (site_packages / "pipshout-1.0.0.dist-info/RECORD").read_text()
        row = next(line for line in record.splitlines() if line.startswith("../../../bin/pipshout,"))
        digest = base64.urlsafe_b64encode(hashlib.sha256(script).digest()).rstrip(b"=").decode()
        assert row == f"../../../bin/pipshout,sha256={digest},{len(script)}", row
        assert conda_store.store_directory.encode() not in script


def _log_when(client, build_id: int, *lines: str) -> str:
    """The build's log once it has every one of `lines` (pushes come after the image)."""
    deadline = time.monotonic() + 60
    while not all(line in (log := client.get(f"/api/v1/build/{build_id}/logs/").text) for line in lines):
        assert time.monotonic() < deadline, log
        time.sleep(0.3)
    return log


def _uploads(registry: DistributionRegistry) -> int:
    return sum(1 for method, path, _ in registry.requests() if method == "POST" and "/blobs/uploads" in path)


def test_the_seed_configuration_pushes_each_build_sending_only_missing_blobs(
    client, worker, conda_store, push_registry: DistributionRegistry, tmp_path: Path
) -> None:
    from conda_store_server.images.registry_client import RegistryClient

    login(client)
    base_uploads = _uploads(push_registry)
    first = _image_build(client)
    tag = client.get(f"/api/v1/build/{first['id']}/docker/").text.rsplit(":", 1)[1]
    unreachable = "http://****@127.0.0.1:9"  # credentials masked
    log = _log_when(
        client,
        first["id"],
        f"pushed to {push_registry.url}/alice/tools:{tag}",
        f"push to {unreachable}/alice/tools:{tag} failed",
    )
    assert "attempt 3 of 3" in log and "attempt 4" not in log  # retried, a bounded number of times
    assert f"base image {push_registry.host}/library/private:1 for linux/amd64" in log
    assert "wrongsecret" not in log and "topsecret" not in log
    with RegistryClient(push_registry.url, "pusher", "topsecret") as registry:
        pushed = registry.get_manifest("alice/tools", tag, ["application/vnd.oci.image.manifest.v1+json"])
    assert pushed.digest == _manifest_digest(client, "alice/tools", str(first["id"]))
    result = subprocess.run(
        [
            _tool("skopeo"),
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            "pusher:topsecret",
            f"docker://{push_registry.host}/alice/tools:{tag}",
            f"oci:{tmp_path / 'pushed'}:{tag}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    uploads = _uploads(push_registry)
    assert (
        uploads - base_uploads == len(pushed_layers := _manifest(client, "alice/tools", tag)["layers"]) + 1
    )  # and config

    # the environment changed by one package: its push uploads that package, conda-meta, config
    second_id = submit(client, SPEC + "  - libzlib\n")
    wait_for_build(client, second_id, artifact_ready("DOCKER_MANIFEST"), timeout=180)
    second_tag = client.get(f"/api/v1/build/{second_id}/docker/").text.rsplit(":", 1)[1]
    _log_when(client, second_id, f"pushed to {push_registry.url}/alice/tools:{second_tag}")
    assert len(_manifest(client, "alice/tools", second_tag)["layers"]) == len(pushed_layers) + 1
    assert _uploads(push_registry) - uploads == 3
