"""Every bad input gets a clear 4xx and changes nothing; artifacts need read permission."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import login, submit, wait_for_build
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from conda_store_server import __version__
from conda_store_server.db.models import Build, Environment, Namespace, Specification
from conda_store_server.limits import MAX_BODY_BYTES
from conda_store_server.server.auth import AuthenticationToken


def counts(conda_store) -> tuple[int, ...]:
    with conda_store.session() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(m))
            for m in (Namespace, Environment, Specification, Build)
        )


def post(client: TestClient, **body):
    return client.post("/api/v1/specification/", json=body)


def test_status_route(client) -> None:
    assert client.get("/api/v1/").json() == {
        "status": "ok",
        "data": {"version": __version__},
        "message": None,
    }


@pytest.mark.parametrize(
    ("specification", "message"),
    [
        ("name: [unclosed", "Unable to parse. Invalid YAML"),
        ("- just\n- a list\n", "mapping"),
        ("dependencies: [python]\n", "Field required"),
        ("name: a/b\n", "name"),
        ("name: ..\n", "name"),
        ("name: has space\n", "name"),
        ('name: "ctl\\a"\n', "name"),
        (
            "name: ok\ndependencies: ['python >=>= 3']\n",
            "Invalid conda package dependency specification",
        ),
        ("name: ok\ndependencies: [{pip: ['--foo bar']}]\n", "Invalid pip option"),
    ],
)
def test_bad_specifications_are_400_and_change_nothing(client, conda_store, specification, message) -> None:
    login(client)
    before = counts(conda_store)
    response = post(client, specification=specification)
    assert response.status_code == 400, response.text
    assert response.json()["status"] == "error"
    assert message in response.json()["message"]
    assert counts(conda_store) == before


def test_lockfile_of_another_version_is_400(client, conda_store) -> None:
    login(client)
    response = post(
        client,
        specification="version: 2\nmetadata: {}\npackage: []\n",
        is_lockfile=True,
        environment_name="x",
    )
    assert response.status_code == 400
    assert "version 2" in response.json()["message"]


def test_policy_violations_name_what_to_change(client, conda_store) -> None:
    login(client)
    conda_store.conda_allowed_channels = ["conda-forge"]
    response = post(client, specification="name: ok\nchannels: [evil]\ndependencies: [curl]\n")
    assert response.status_code == 400 and "https://conda.anaconda.org/evil" in response.json()["message"]
    conda_store.conda_allowed_channels = []
    conda_store.conda_required_packages = ["python"]
    response = post(client, specification="name: ok\ndependencies: [curl]\n")
    assert response.status_code == 400
    assert "['python']" in response.json()["message"] and "False" not in response.json()["message"]


def test_wrong_types_and_oversized_bodies(client, conda_store) -> None:
    login(client)
    assert post(client, specification=["not", "text"]).status_code == 422
    big = "name: big\ndescription: '" + "x" * (2 * 1024 * 1024) + "'\n"
    assert post(client, specification=big).status_code in (413, 422)
    huge = client.post(
        "/api/v1/specification/",
        content=b"{" + b" " * (MAX_BODY_BYTES + 1) + b"}",
        headers={"content-type": "application/json"},
    )
    assert huge.status_code == 413
    assert client.get("/api/v1/build/notanumber/").status_code == 422
    assert client.get("/api/v1/build/424242/").json()["message"] == "build id does not exist"


def test_anonymous_callers_cannot_write(client, conda_store) -> None:
    before = counts(conda_store)
    response = post(client, specification="name: anon\ndependencies: [curl]\n")
    assert response.status_code == 403
    response = post(client, specification="name: anon\ndependencies: [curl]\n", namespace="default")
    assert response.status_code == 403
    assert counts(conda_store) == before


def test_solver_failures_are_failed_builds_with_the_reason(client, worker) -> None:
    login(client)
    missing = wait_for_build(client, submit(client, "name: m\ndependencies: [no-such-package]\n"))
    assert missing["status"] == "FAILED"
    assert "no-such-package" in missing["status_info"]
    broken = wait_for_build(client, submit(client, "name: b\ndependencies: [broken-pkg]\n"))
    assert broken["status"] == "FAILED"
    assert "does-not-exist" in broken["status_info"]
    assert "Cannot solve the request" in client.get(f"/api/v1/build/{broken['id']}/logs/").text
    # until a build completes, the newest stands in (so `conda-store wait alice/b` ends), unlinked
    assert client.get("/api/v1/environment/alice/b/").json()["data"]["current_build_id"] == broken["id"]
    assert not (Path(client.app.state.conda_store.store_directory) / "alice" / "envs" / "b").exists()


def test_artifacts_need_read_permission(client, worker, conda_store) -> None:
    login(client)
    build = wait_for_build(client, submit(client, "name: secret\ndependencies: [libzlib]\n", "private"))
    assert build["status"] == "COMPLETED"
    backend = client.app.state.authentication.authentication
    outsider = backend.encrypt_token(
        AuthenticationToken(primary_namespace="bob", role_bindings={"bob/*": ["admin"]})
    )
    reader = backend.encrypt_token(
        AuthenticationToken(primary_namespace="carol", role_bindings={"private/secret": ["viewer"]})
    )
    anonymous = TestClient(client.app)
    for route in ("", "logs/", "lockfile/", "yaml/", "conda-lock.yml"):
        url = f"/api/v1/build/{build['id']}/{route}"
        assert anonymous.get(url).status_code == 403, url
        assert anonymous.get(url, headers={"Authorization": f"Bearer {outsider}"}).status_code == 403
        assert anonymous.get(url, headers={"Authorization": f"Bearer {reader}"}).status_code == 200
    assert anonymous.get("/api/v1/environment/private/secret/lockfile/").status_code == 403
    as_reader = {"Authorization": f"Bearer {reader}"}
    assert anonymous.delete(f"/api/v1/build/{build['id']}/", headers=as_reader).status_code == 403
    assert anonymous.put(f"/api/v1/build/{build['id']}/", headers=as_reader).status_code == 403
    forged = anonymous.get(f"/api/v1/build/{build['id']}/", headers={"Authorization": "Bearer not-a-token"})
    assert forged.status_code == 403


def test_permission_reports_the_caller(client) -> None:
    anonymous = client.get("/api/v1/permission/").json()["data"]
    assert anonymous["authenticated"] is False and "*/*" not in anonymous["entity_permissions"]
    login(client)
    alice = client.get("/api/v1/permission/").json()["data"]
    assert alice["authenticated"] is True and alice["primary_namespace"] == "alice"
    assert "environment:create" in alice["entity_permissions"]["*/*"]
    assert client.post("/login/", json={"username": "x", "password": "wrong"}).status_code == 403


def test_login_with_a_non_ascii_password_is_refused_not_500(client) -> None:
    response = client.post("/login/", json={"username": "alice", "password": "pässwörd"})
    assert response.status_code == 403


def test_a_body_that_is_not_json_is_422_not_500(client) -> None:
    login(client)
    response = client.post(
        "/api/v1/specification/", content=b'{"specification": ""}', headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 422


@pytest.mark.parametrize("path", ["/api/v1/build/9223372036854775808/", "/api/v1/build/2147483648/lockfile/"])
def test_ids_beyond_the_database_range_are_422(client, path: str) -> None:
    assert client.get(path).status_code == 422


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/ui/lab/env", "/ui/lab/env"),
        ("http://testserver/ui/", "http://testserver/ui/"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("environment::update", "/"),
    ],
)
def test_login_and_logout_redirect_only_within_the_server(client, target: str, expected: str) -> None:
    response = client.post("/login/", params={"next": target}, json={"username": "a", "password": "password"})
    assert response.json()["data"]["redirect_url"] == expected
    logout = client.post("/logout/", params={"next": target}, follow_redirects=False)
    assert logout.status_code == 303 and logout.headers["location"] == expected


def test_installer_and_docker_routes_answer_for_builds_without_them(client, worker) -> None:
    login(client)
    build_id = submit(client, "name: plain\ndependencies: [python]\n")
    assert wait_for_build(client, build_id)["status"] == "COMPLETED"
    installer = client.get(f"/api/v1/build/{build_id}/installer/")
    assert installer.status_code == 400
    assert installer.json()["message"] == f"Build {build_id} doesn't have an installer"
    docker = client.get(f"/api/v1/build/{build_id}/docker/")
    assert docker.status_code == 400
    assert docker.json()["message"] == f"Build {build_id} doesn't have a docker manifest"
    client.cookies.clear()
    assert client.get(f"/api/v1/build/{build_id}/docker/").status_code == 403


@pytest.mark.parametrize(
    ("path", "toggled"),
    [("/api/v1/environment/", "/api/v1/environment"), ("/api/v1/permission/", "/api/v1/permission")],
)
def test_unslashed_paths_redirect_to_the_slashed_routes(client, path: str, toggled: str) -> None:
    response = client.get(toggled, follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"].endswith(path)
    assert client.get(toggled).status_code == 200
