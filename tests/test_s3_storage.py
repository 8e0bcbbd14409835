"""S3Storage against moto's S3 server on loopback: the store, the pipeline and the downloads."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import login, submit, wait_for_build
from traitlets.config import Config

from conda_store_server.exception import CondaStoreError
from conda_store_server.storage import S3Storage


def s3_settings(endpoint: str, bucket: str) -> dict[str, Any]:
    return {
        "internal_endpoint": endpoint,
        "external_endpoint": endpoint,
        "access_key": "testing",
        "secret_key": "testing",
        "bucket_name": bucket,
        "internal_secure": False,
        "external_secure": False,
    }


@pytest.fixture
def storage(s3_endpoint: str, tmp_path: Path) -> S3Storage:
    return S3Storage(config=Config({"S3Storage": s3_settings(s3_endpoint, f"unit-{uuid.uuid4().hex[:12]}")}))


def test_objects_round_trip(storage: S3Storage, tmp_path: Path) -> None:
    storage.set("lockfile/a.yml", b"{}", "application/json")
    assert storage.get("lockfile/a.yml") == b"{}"
    assert storage.exists("lockfile/a.yml") and not storage.exists("lockfile/b.yml")
    storage.append("logs/a.log", b"one\n")
    storage.append("logs/a.log", b"two\n")
    assert storage.get("logs/a.log") == b"one\ntwo\n"
    big = tmp_path / "archive.tar.gz"
    big.write_bytes(b"x" * (6 * 1024 * 1024 + 5))
    storage.fset("archive/a.tar.gz", big, "application/gzip")
    url = storage.get_url("archive/a.tar.gz")
    assert url.startswith(f"http://{storage.external_endpoint}/") and "X-Amz-Signature" in url
    assert httpx.get(url).content == big.read_bytes()
    storage.delete("archive/a.tar.gz")
    assert not storage.exists("archive/a.tar.gz")
    with pytest.raises(ValueError):
        storage.set("../escape", b"")


def test_an_unreachable_endpoint_is_named() -> None:
    settings = {**s3_settings("127.0.0.1:9", "nowhere")}
    storage = S3Storage(config=Config({"S3Storage": settings}))
    with pytest.raises(CondaStoreError, match=r"127\.0\.0\.1:9 \(bucket nowhere\)"):
        storage.set("x", b"")


@pytest.fixture
def store_settings(store_settings: dict[str, Any], s3_endpoint: str, tmp_path: Path) -> dict[str, Any]:
    store_settings["CondaStore"]["storage_class"] = "conda_store_server.storage.S3Storage"
    store_settings["CondaStore"]["build_artifacts_kept_on_deletion"] = ["LOCKFILE"]
    store_settings["S3Storage"] = s3_settings(s3_endpoint, f"build-{uuid.uuid4().hex[:12]}")
    return store_settings


def test_a_build_writes_its_artifacts_to_s3(client, worker, conda_store) -> None:
    login(client)
    build_id = submit(client, "name: s3env\ndependencies: [hello-py]\n")
    build = wait_for_build(
        client,
        build_id,
        until=lambda b: (
            b["status"] == "FAILED" or any(a["artifact_type"] == "CONDA_PACK" for a in b["build_artifacts"])
        ),
    )
    assert build["status"] == "COMPLETED", client.get(f"/api/v1/build/{build_id}/logs/").text
    storage = conda_store.storage
    keys = {a["artifact_type"]: a["key"] for a in build["build_artifacts"]}
    deadline = time.monotonic() + 10  # a log is served from S3 once its worker sealed it (whole)
    while not storage.log_is_sealed(keys["LOGS"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for kind, expected in (("lockfile", b'"version": 1'), ("yaml", b"hello-py"), ("logs", b"installing")):
        response = client.get(f"/api/v1/build/{build_id}/{kind}/", follow_redirects=False)
        assert response.status_code == 307
        assert response.headers["location"].startswith(f"http://{storage.external_endpoint}/")
        assert expected in httpx.get(response.headers["location"]).content
    archive = client.get(f"/api/v1/build/{build_id}/archive/", follow_redirects=False)
    assert httpx.get(archive.headers["location"]).content[:2] == b"\x1f\x8b"

    # no presigned URL without read permission
    client.cookies.clear()
    assert client.get(f"/api/v1/build/{build_id}/lockfile/", follow_redirects=False).status_code == 403

    # a rebuild makes a second build; deleting the first keeps exactly the configured artifacts
    login(client)
    second = client.put(f"/api/v1/build/{build_id}/").json()["data"]["build_id"]
    assert wait_for_build(client, second)["status"] == "COMPLETED"
    assert client.delete(f"/api/v1/build/{build_id}/").status_code == 200
    assert storage.exists(keys["LOCKFILE"])
    assert not storage.exists(keys["YAML"]) and not storage.exists(keys["CONDA_PACK"])
