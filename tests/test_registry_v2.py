"""The registry read side at /v2/: references, digests, tags, permissions, images on demand.

Images here are fake but well formed (an OCI manifest, a config blob, one layer), written into
storage and the database exactly as the image builder's storage conventions say; the builder's
own end-to-end tests pull real images with skopeo.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import uuid
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from test_s3_storage import s3_settings
from traitlets.config import Config

from conda_store_server import service
from conda_store_server.app import CondaStore
from conda_store_server.build.keys import build_key, identity_of
from conda_store_server.db.models import (
    Build,
    BuildArtifact,
    BuildArtifactType,
    BuildStatus,
    Environment,
    Namespace,
    utcnow,
)
from conda_store_server.images import lookup
from conda_store_server.server import registry_v2
from conda_store_server.server.app import CondaStoreServer
from conda_store_server.server.auth import AuthenticationToken
from conda_store_server.settings import get_settings
from conda_store_server.specification import CondaSpecification

API = "registry/2.0"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
ADMIN = {"*/*": ["admin"]}


@pytest.fixture
def server_settings() -> dict[str, Any]:
    return {"enable_registry": True}


def make_client(conda_store: CondaStore, settings: dict[str, dict[str, Any]], **server: Any) -> TestClient:
    app = CondaStoreServer(config=Config({**settings, "CondaStoreServer": server})).create_app(conda_store)
    return TestClient(app)


def token(client: TestClient, bindings: dict[str, list[str]], namespace: str = "bob") -> str:
    entity = AuthenticationToken(primary_namespace=namespace, role_bindings=bindings)
    return client.app.state.authentication.authentication.encrypt_token(entity)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def basic(value: str, user: str = "anyone") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{value}".encode()).decode()}


def make_build(conda_store: CondaStore, namespace: str, name: str, current: bool = True) -> int:
    """A COMPLETED build (no worker runs here), current in its environment when asked."""
    with conda_store.session() as session:
        build = service.register_environment(
            session, conda_store, namespace, CondaSpecification(name=name, dependencies=["zlib"])
        )
        build.status, build.ended_on = BuildStatus.COMPLETED, utcnow()
        session.flush()
        if current:
            build.environment.current_build_id = build.id
        return build.id


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_image(conda_store: CondaStore, build_id: int, payload: bytes = b"hello") -> dict[str, Any]:
    """Blobs once each under docker/blobs/<digest>, the manifest at docker/manifest/<build key>
    too, one DOCKER_MANIFEST row and a DOCKER_BLOB row per referenced digest."""
    layer = gzip.compress(payload, mtime=0)
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha(payload)]}},
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(layer),
                    "size": len(layer),
                }
            ],
        },
        indent=3,  # not the server's formatting: the bytes must come back exactly
    ).encode()
    storage = conda_store.storage
    with conda_store.session() as session:
        build = service.get_build(session, build_id)
        key = f"docker/manifest/{build_key(identity_of(build))}"
        storage.set(key, manifest, MANIFEST_TYPE)
        for blob in (manifest, config, layer):
            storage.set(f"docker/blobs/{sha(blob)}", blob)
            session.add(
                BuildArtifact(
                    build_id=build_id,
                    artifact_type=BuildArtifactType.DOCKER_BLOB,
                    key=f"docker/blobs/{sha(blob)}",
                )
            )
        session.add(
            BuildArtifact(build_id=build_id, artifact_type=BuildArtifactType.DOCKER_MANIFEST, key=key)
        )
        return {
            "manifest": manifest,
            "config": config,
            "layer": layer,
            "key": build_key(identity_of(build)),
        }


def registry_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["docker-distribution-api-version"] == API
    if response.request.method == "HEAD":  # no body: the status and headers say it all
        return {}
    error = response.json()["errors"][0]
    assert error["code"] == code and error["message"], error
    return error


@pytest.fixture
def image(conda_store: CondaStore) -> dict[str, Any]:
    build_id = make_build(conda_store, "default", "web")
    return {"build_id": build_id, **write_image(conda_store, build_id)}


# ------------------------------------------------------------------------------ base and mounting
def test_base_route_challenges_anonymous_callers_so_that_clients_send_credentials(client: TestClient) -> None:
    """skopeo and docker send credentials only after the version check asks for them."""
    response = client.get("/v2/")
    registry_error(response, 401, "UNAUTHORIZED")
    assert response.headers["docker-distribution-api-version"] == API
    assert client.get("/v2/", headers=bearer(token(client, {}))).status_code == 200
    registry_error(client.get("/v2/", headers=bearer("not-a-token")), 401, "UNAUTHORIZED")


def test_base_route_challenges_when_anonymous_callers_read_nothing(
    conda_store: CondaStore, store_settings: dict[str, dict[str, Any]]
) -> None:
    settings = {**store_settings, "RBACAuthorizationBackend": {"unauthenticated_role_bindings": {}}}
    with make_client(conda_store, settings, enable_registry=True) as closed:
        response = closed.get("/v2/")
        registry_error(response, 401, "UNAUTHORIZED")
        assert response.headers["www-authenticate"] == 'Basic realm="conda-store"'
        assert closed.get("/v2/", headers=basic(token(closed, {}))).json() == {}


def test_registry_is_off_by_default_and_ignores_the_prefix(
    conda_store: CondaStore, store_settings: dict[str, dict[str, Any]]
) -> None:
    with make_client(conda_store, store_settings) as off:
        assert off.get("/v2/").status_code == 404
    with make_client(conda_store, store_settings, enable_registry=True, url_prefix="/cs") as prefixed:
        assert prefixed.get("/v2/").status_code == 401
        assert prefixed.get("/cs/v2/").status_code == 404


# ------------------------------------------------------------------------------ manifests
def test_every_reference_form_serves_the_exact_manifest(client: TestClient, image: dict[str, Any]) -> None:
    digest = sha(image["manifest"])
    for reference in ("latest", str(image["build_id"]), image["key"], digest):
        response = client.get(f"/v2/default/web/manifests/{reference}")
        assert response.status_code == 200, (reference, response.text)
        assert response.content == image["manifest"]
        assert response.headers["content-type"] == MANIFEST_TYPE
        assert response.headers["docker-content-digest"] == digest
        assert response.headers["content-length"] == str(len(image["manifest"]))
        assert response.headers["docker-distribution-api-version"] == API
        head = client.head(f"/v2/default/web/manifests/{reference}")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["docker-content-digest"] == digest
        assert head.headers["content-length"] == str(len(image["manifest"]))
    # an Accept that names neither OCI type still gets the manifest (registries do)
    accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    assert client.get("/v2/default/web/manifests/latest", headers=accept).status_code == 200


def test_build_key_version_3_references_work(
    conda_store: CondaStore, store_settings: dict[str, dict[str, Any]]
) -> None:
    conda_store.build_key_version = 3
    build_id = make_build(conda_store, "default", "v3")
    written = write_image(conda_store, build_id)
    assert "-" not in written["key"]
    with make_client(conda_store, store_settings, enable_registry=True) as client:
        response = client.get(f"/v2/default/v3/manifests/{written['key']}")
        assert response.status_code == 200 and response.content == written["manifest"]


def test_missing_images_and_references_are_manifest_unknown(
    client: TestClient, conda_store: CondaStore, image: dict[str, Any]
) -> None:
    bare = make_build(conda_store, "default", "bare")
    error = registry_error(client.get("/v2/default/bare/manifests/latest"), 404, "MANIFEST_UNKNOWN")
    assert f"build {bare} has no image" in error["detail"]
    registry_error(client.get("/v2/default/web/manifests/999999"), 404, "MANIFEST_UNKNOWN")
    registry_error(client.get(f"/v2/default/bare/manifests/{image['build_id']}"), 404, "MANIFEST_UNKNOWN")
    registry_error(client.get("/v2/default/web/manifests/no-such-key"), 404, "MANIFEST_UNKNOWN")
    registry_error(client.head("/v2/default/web/manifests/no-such-key"), 404, "MANIFEST_UNKNOWN")
    # a layer is not a manifest, and another environment's manifest is not this one's
    registry_error(client.get(f"/v2/default/web/manifests/{sha(image['layer'])}"), 404, "MANIFEST_UNKNOWN")
    registry_error(
        client.get(f"/v2/default/bare/manifests/{sha(image['manifest'])}"), 404, "MANIFEST_UNKNOWN"
    )


def test_deleted_builds_and_environments_are_unknown(
    client: TestClient, conda_store: CondaStore, image: dict[str, Any]
) -> None:
    old = image["build_id"]
    newer = make_build(conda_store, "default", "web")
    with conda_store.session() as session:
        session.get(Build, old).deleted_on = utcnow()
    registry_error(client.get(f"/v2/default/web/manifests/{old}"), 404, "MANIFEST_UNKNOWN")
    registry_error(client.get(f"/v2/default/web/blobs/{sha(image['layer'])}"), 404, "BLOB_UNKNOWN")
    assert newer != old
    with conda_store.session() as session:
        service.delete_environment(session, conda_store, "default", "web")
    registry_error(client.get("/v2/default/web/manifests/latest"), 404, "NAME_UNKNOWN")


# ------------------------------------------------------------------------------ blobs
def test_blobs_stream_with_digest_and_range(client: TestClient, image: dict[str, Any]) -> None:
    for kind in ("config", "layer", "manifest"):
        response = client.get(f"/v2/default/web/blobs/{sha(image[kind])}")
        assert response.status_code == 200, response.text
        assert response.content == image[kind]
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["docker-content-digest"] == sha(image[kind])
        assert response.headers["content-length"] == str(len(image[kind]))
    head = client.head(f"/v2/default/web/blobs/{sha(image['layer'])}")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(image["layer"]))
    ranged = client.get(f"/v2/default/web/blobs/{sha(image['layer'])}", headers={"Range": "bytes=0-3"})
    assert ranged.status_code == 206 and ranged.content == image["layer"][:4]


def test_another_environments_blob_is_unknown(
    client: TestClient, conda_store: CondaStore, image: dict[str, Any]
) -> None:
    make_build(conda_store, "default", "other")
    error = registry_error(client.get(f"/v2/default/other/blobs/{sha(image['layer'])}"), 404, "BLOB_UNKNOWN")
    assert "default/other" in error["detail"]
    registry_error(client.get(f"/v2/default/web/blobs/sha256:{'0' * 64}"), 404, "BLOB_UNKNOWN")


def test_blob_in_s3_redirects_after_the_check(
    s3_endpoint: str, store_settings: dict[str, dict[str, Any]]
) -> None:
    settings = {
        **store_settings,
        "CondaStore": {
            **store_settings["CondaStore"],
            "storage_class": "conda_store_server.storage.S3Storage",
        },
        "S3Storage": s3_settings(s3_endpoint, f"registry-{uuid.uuid4().hex[:12]}"),
    }
    store = CondaStore(config=Config(settings))
    store.ensure_database()
    try:
        build_id = make_build(store, "default", "web")
        written = write_image(store, build_id)
        with make_client(store, settings, enable_registry=True) as client:
            response = client.get(f"/v2/default/web/blobs/{sha(written['layer'])}", follow_redirects=False)
            assert response.status_code == 307
            assert response.headers["docker-distribution-api-version"] == API
            assert httpx.get(response.headers["location"]).content == written["layer"]
            manifest = client.get("/v2/default/web/manifests/latest")
            assert manifest.status_code == 200 and manifest.content == written["manifest"]
            make_build(store, "default", "other")
            registry_error(
                client.get(f"/v2/default/other/blobs/{sha(written['layer'])}", follow_redirects=False),
                404,
                "BLOB_UNKNOWN",
            )
    finally:
        store.engine.dispose()


# ------------------------------------------------------------------------------ tags
def test_tags_list_and_pagination(client: TestClient, conda_store: CondaStore, image: dict[str, Any]) -> None:
    second = make_build(conda_store, "default", "web", current=False)
    second_key = write_image(conda_store, second, b"second")["key"]
    make_build(conda_store, "default", "web", current=False)  # no image: no tags
    expected = sorted(["latest", str(image["build_id"]), image["key"], str(second), second_key])
    response = client.get("/v2/default/web/tags/list")
    assert response.status_code == 200
    assert response.json() == {"name": "default/web", "tags": expected}
    first = client.get("/v2/default/web/tags/list", params={"n": 2})
    assert first.json()["tags"] == expected[:2]
    assert 'rel="next"' in first.headers["link"] and f"last={expected[1]}" in first.headers["link"]
    rest = client.get("/v2/default/web/tags/list", params={"n": 10, "last": expected[1]})
    assert rest.json()["tags"] == expected[2:] and "link" not in rest.headers
    assert client.get("/v2/default/web/tags/list", params={"n": 0}).json()["tags"] == []
    registry_error(
        client.get("/v2/default/web/tags/list", params={"n": "-1"}), 400, "PAGINATION_NUMBER_INVALID"
    )


# ------------------------------------------------------------------------------ permissions
def test_permission_matrix(client: TestClient, conda_store: CondaStore) -> None:
    build_id = make_build(conda_store, "lab", "private")
    written = write_image(conda_store, build_id)
    manifest = "/v2/lab/private/manifests/latest"
    blob = f"/v2/lab/private/blobs/{sha(written['layer'])}"
    tags = "/v2/lab/private/tags/list"
    reader = token(client, {"lab/private": ["viewer"]})
    outsider = token(client, {"elsewhere/*": ["admin"]})
    for path in (manifest, blob, tags):
        anonymous = client.get(path)
        registry_error(anonymous, 401, "UNAUTHORIZED")
        assert anonymous.headers["www-authenticate"] == 'Basic realm="conda-store"'
        registry_error(client.get(path, headers=bearer(outsider)), 403, "DENIED")
        registry_error(client.get(path, headers=bearer("forged.token.value")), 401, "UNAUTHORIZED")
        registry_error(client.get(path, headers=basic("")), 401, "UNAUTHORIZED")
        assert client.get(path, headers=bearer(reader)).status_code == 200
        assert client.get(path, headers=basic(reader, "docker")).status_code == 200
    # no permission also hides whether a name exists
    registry_error(client.get("/v2/lab/nothing/manifests/latest", headers=bearer(outsider)), 403, "DENIED")
    registry_error(client.get("/v2/lab/nothing/manifests/latest", headers=bearer(reader)), 403, "DENIED")
    registry_error(
        client.get("/v2/lab/nothing/manifests/latest", headers=bearer(token(client, ADMIN))),
        404,
        "NAME_UNKNOWN",
    )


def test_pushes_are_refused(client: TestClient, image: dict[str, Any]) -> None:
    registry_error(client.put("/v2/default/web/manifests/latest", content=b"{}"), 405, "UNSUPPORTED")
    registry_error(client.post("/v2/default/web/blobs/uploads/"), 405, "UNSUPPORTED")
    registry_error(client.delete(f"/v2/default/web/manifests/{sha(image['manifest'])}"), 405, "UNSUPPORTED")


# ------------------------------------------------------------------------------ bad input
def test_bad_names_digests_and_paths(client: TestClient, image: dict[str, Any]) -> None:
    registry_error(client.get("/v2/default/web/blobs/sha256:abc"), 400, "DIGEST_INVALID")
    registry_error(client.get(f"/v2/default/web/blobs/md5:{'0' * 32}"), 400, "DIGEST_INVALID")
    registry_error(client.get(f"/v2/default/web/manifests/sha256:{'G' * 64}"), 400, "DIGEST_INVALID")
    registry_error(client.get("/v2/default/web/manifests/sha512:00"), 400, "DIGEST_INVALID")
    registry_error(client.get("/v2/web/manifests/latest"), 400, "NAME_INVALID")
    registry_error(client.get("/v2/default/web/manifests/la%20test"), 400, "MANIFEST_INVALID")
    registry_error(client.get("/v2/default/web/manifests/%00"), 400, "MANIFEST_INVALID")
    registry_error(client.get("/v2/a/b/c/manifests/latest"), 400, "NAME_INVALID")
    registry_error(client.get("/v2/default/web"), 405, "UNSUPPORTED")
    registry_error(client.get("/v2/default"), 405, "UNSUPPORTED")
    admin = bearer(token(client, ADMIN))
    registry_error(client.get("/v2/nowhere/web/manifests/latest", headers=admin), 404, "NAME_UNKNOWN")
    registry_error(client.get("/v2/default/nothing/tags/list"), 404, "NAME_UNKNOWN")
    registry_error(client.get("/v2/default/..%2e/manifests/latest"), 400, "NAME_INVALID")


@pytest.mark.parametrize(
    "path",
    [
        "/v2//manifests/latest",
        "/v2/default//manifests/latest",
        "/v2/default/web/manifests/",
        "/v2/default/web/blobs/",
        "/v2/default/web/manifests/" + "9" * 40,
        "/v2/default/web/manifests/%00",
        "/v2/default/web/tags/list?n=99999999999999999999",
        "/v2/default/web/tags/list?last=%00",
        "/v2/conda-store-dynamic/manifests/latest",
        "/v2/conda-store-dynamic/blobs/sha256:" + "0" * 64,
        "/v2/conda-store-dynamic/x/tags/list",
        "/v2/" + "a/" * 300 + "manifests/latest",
    ],
)
def test_never_a_server_error(client: TestClient, image: dict[str, Any], path: str) -> None:
    response = client.get(path)
    assert response.status_code < 500, response.text
    assert response.headers["docker-distribution-api-version"] == API
    if response.status_code >= 400:
        assert response.json()["errors"][0]["code"]


# ------------------------------------------------------------------------------ images on demand
def test_dynamic_spec_parsing_table() -> None:
    table = {
        "python.ge.3.10": "python>=3.10",
        "numpy.lt.2": "numpy<2",
        "scipy.le.1.11": "scipy<=1.11",
        "pandas.gt.2.0": "pandas>2.0",
        "zlib.eq.1.3.1": "zlib==1.3.1",
        "pip": "pip",
        "attrs.ge.21.lt.24": "attrs>=21<24",
    }
    for written, spec in table.items():
        assert lookup.parse_dynamic_specs([written]) == [spec]
    assert lookup.parse_dynamic_specs(["b", "a.ge.1", "b"]) == ["a>=1", "b"]
    name = lookup.dynamic_environment_name(["python>=3.10", "zlib"])
    assert name == lookup.dynamic_environment_name(["zlib", "python>=3.10", "zlib"])
    assert name != lookup.dynamic_environment_name(["python>=3.11", "zlib"])
    assert name.startswith("python-zlib-")
    CondaSpecification(name=name)  # a valid environment name
    with pytest.raises(lookup.RegistryError) as error:
        lookup.parse_dynamic_specs([])
    assert error.value.code == "NAME_INVALID"
    with pytest.raises(lookup.RegistryError) as error:
        lookup.dynamic_specification(["python>=>=3"])
    assert error.value.code == "NAME_INVALID" and "python>=>=3" in error.value.message


@pytest.fixture
def short_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_v2, "DYNAMIC_WAIT_SECONDS", 0.3)
    monkeypatch.setattr(registry_v2, "DYNAMIC_POLL_SECONDS", 0.05)


def dynamic_builds(conda_store: CondaStore, name: str) -> list[Build]:
    with conda_store.session() as session:
        return list(
            session.scalars(
                select(Build)
                .join(Environment, Build.environment_id == Environment.id)
                .join(Namespace, Environment.namespace_id == Namespace.id)
                .where(Namespace.name == lookup.DYNAMIC_NAMESPACE, Environment.name == name)
            )
        )


@pytest.mark.usefixtures("short_wait")
def test_dynamic_image_is_created_once_waited_for_and_served(
    client: TestClient, conda_store: CondaStore
) -> None:
    name = lookup.dynamic_environment_name(["python>=3.10", "zlib"])
    admin = bearer(token(client, ADMIN, "alice"))
    path = "/v2/conda-store-dynamic/zlib/python.ge.3.10/manifests/latest"
    error = registry_error(client.get(path, headers=admin), 404, "MANIFEST_UNKNOWN")
    assert "still queued" in error["detail"] and "retry" in error["detail"]
    builds = dynamic_builds(conda_store, name)
    assert len(builds) == 1 and builds[0].status == BuildStatus.QUEUED
    with conda_store.session() as session:
        build = service.get_build(session, builds[0].id)
        # the deployment's policy applies as to any specification (default channels here)
        assert {"python>=3.10", "zlib"} <= set(build.specification.spec["dependencies"])
        assert build.specification.spec["channels"] == conda_store.conda_default_channels
        settings = get_settings(session, conda_store, lookup.DYNAMIC_NAMESPACE, name)
        assert "DOCKER_MANIFEST" in settings.build_artifacts
        assert "DOCKER_MANIFEST" not in get_settings(session, conda_store).build_artifacts
    # the same set in another order reuses the environment and its build
    registry_error(
        client.get("/v2/conda-store-dynamic/python.ge.3.10/zlib/zlib/manifests/latest", headers=admin),
        404,
        "MANIFEST_UNKNOWN",
    )
    assert [b.id for b in dynamic_builds(conda_store, name)] == [builds[0].id]
    # once the build has its image, the pull is answered (a viewer of the namespace may pull it)
    with conda_store.session() as session:
        build = session.get(Build, builds[0].id)
        build.status = BuildStatus.COMPLETED
        build.environment.current_build_id = build.id
    written = write_image(conda_store, builds[0].id)
    reader = bearer(token(client, {"conda-store-dynamic/*": ["viewer"]}))
    response = client.get(path, headers=reader)
    assert response.status_code == 200, response.text
    assert response.content == written["manifest"]
    assert response.headers["docker-content-digest"] == sha(written["manifest"])
    head = client.head(path, headers=reader)
    assert head.status_code == 200 and head.content == b""
    blob = client.get(
        f"/v2/conda-store-dynamic/python.ge.3.10/zlib/blobs/{sha(written['layer'])}", headers=reader
    )
    assert blob.status_code == 200 and blob.content == written["layer"]
    by_digest = client.get(
        f"/v2/conda-store-dynamic/zlib/python.ge.3.10/manifests/{sha(written['manifest'])}", headers=reader
    )
    assert by_digest.status_code == 200 and by_digest.content == written["manifest"]
    assert len(dynamic_builds(conda_store, name)) == 1


@pytest.mark.usefixtures("short_wait")
def test_dynamic_image_needs_permission_to_create(client: TestClient, conda_store: CondaStore) -> None:
    name = lookup.dynamic_environment_name(["zlib"])
    path = "/v2/conda-store-dynamic/zlib/manifests/latest"
    anonymous = client.get(path)
    registry_error(anonymous, 401, "UNAUTHORIZED")
    assert "www-authenticate" in anonymous.headers
    registry_error(client.get(path, headers=bearer(token(client, {}))), 403, "DENIED")
    reader = token(client, {"conda-store-dynamic/*": ["viewer"]})
    registry_error(client.get(path, headers=bearer(reader)), 403, "DENIED")
    # editors of the namespace may create environments, not the namespace itself
    editor = token(client, {"conda-store-dynamic/*": ["editor"]})
    registry_error(client.get(path, headers=bearer(editor)), 403, "DENIED")
    assert dynamic_builds(conda_store, name) == []
    with conda_store.session() as session:
        assert session.scalar(select(Namespace).where(Namespace.name == lookup.DYNAMIC_NAMESPACE)) is None
        service.ensure_namespace(session, lookup.DYNAMIC_NAMESPACE)
    registry_error(client.get(path, headers=bearer(editor)), 404, "MANIFEST_UNKNOWN")
    assert len(dynamic_builds(conda_store, name)) == 1


@pytest.mark.usefixtures("short_wait")
def test_dynamic_failed_build_is_reported(client: TestClient, conda_store: CondaStore) -> None:
    admin = bearer(token(client, ADMIN))
    path = "/v2/conda-store-dynamic/zlib.ge.1/manifests/latest"
    registry_error(client.get(path, headers=admin), 404, "MANIFEST_UNKNOWN")
    (build,) = dynamic_builds(conda_store, lookup.dynamic_environment_name(["zlib>=1"]))
    with conda_store.session() as session:
        row = session.get(Build, build.id)
        row.status, row.status_info = BuildStatus.FAILED, "solve failed: nothing provides zlib>=1"
    error = registry_error(client.get(path, headers=admin), 404, "MANIFEST_UNKNOWN")
    assert f"build {build.id} is FAILED" in error["detail"] and "nothing provides" in error["detail"]
    registry_error(
        client.get("/v2/conda-store-dynamic/python.ge..ge.3/manifests/latest", headers=admin),
        400,
        "NAME_INVALID",
    )


def test_blob_lookups_use_the_key_index(conda_store: CondaStore) -> None:
    from sqlalchemy import inspect

    indexes = inspect(conda_store.engine).get_indexes("build_artifact")
    assert any(index["column_names"] == ["key"] for index in indexes), indexes
