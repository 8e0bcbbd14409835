"""List routes: RBAC-filtered in SQL, every filter and sort, v1 pages and the v2 cursor walk."""

from __future__ import annotations

import base64
import json

import pytest
from conftest import login, submit, wait_for_build
from fastapi.testclient import TestClient

from conda_store_server.server.auth import AuthenticationToken


def token_for(client: TestClient, bindings: dict[str, list[str]], namespace: str = "bob") -> str:
    backend = client.app.state.authentication.authentication
    return backend.encrypt_token(AuthenticationToken(primary_namespace=namespace, role_bindings=bindings))


def names(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [f"{e['namespace']['name']}/{e['name']}" for e in response.json()["data"]]


@pytest.fixture
def many(client: TestClient) -> list[str]:
    """105 environments in `team` and 3 in `other`, none built (no worker needed)."""
    login(client)
    created = []
    for number in range(105):
        submit(client, f"name: env-{number:03d}\ndependencies: [python]\n", namespace="team")
        created.append(f"team/env-{number:03d}")
    for name in ("alpha", "beta", "gamma"):
        submit(client, f"name: {name}\ndependencies: [python]\n", namespace="other")
        created.append(f"other/{name}")
    client.cookies.clear()
    return created


def test_v1_pages_cover_every_environment_once(client: TestClient, many: list[str]) -> None:
    login(client)
    seen: list[str] = []
    page = 1
    while True:
        response = client.get("/api/v1/environment/", params={"page": page, "size": 50})
        body = response.json()
        assert (body["page"], body["size"], body["count"]) == (page, 50, len(many))
        if not body["data"]:
            break
        seen.extend(names(response))
        page += 1
    assert seen == sorted(many, key=lambda arn: tuple(arn.split("/")))
    assert len(set(seen)) == len(many)
    assert response.headers["Deprecation"] == "True"


def test_v2_cursor_walk_is_complete_without_duplicates(client: TestClient, many: list[str]) -> None:
    login(client)
    for order in ("asc", "desc"):
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 17, "order": order, "sort_by": "namespace,name"}
            if cursor:
                params["cursor"] = cursor
            response = client.get("/api/v2/environment/", params=params)
            body = response.json()
            assert list(body) == ["data", "status", "message", "cursor", "count"]
            assert body["count"] == len(many)
            assert all("current_build" not in e for e in body["data"])
            cursor = body["cursor"]
            if not body["data"]:
                assert json.loads(base64.b64decode(cursor)) == {"last_id": None, "last_value": None}
                break
            seen.extend(names(response))
        expected = sorted(many, key=lambda arn: tuple(arn.split("/")), reverse=order == "desc")
        assert seen == expected


def test_max_page_size_clamps(client: TestClient, many: list[str]) -> None:
    login(client)
    body = client.get("/api/v1/environment/", params={"size": 1000}).json()
    assert body["size"] == 100 and len(body["data"]) == 100


def test_lists_show_only_what_the_caller_may_see(client: TestClient, many: list[str]) -> None:
    # anonymous: default/* only, and there is nothing in `default`
    assert names(client.get("/api/v1/environment/")) == []
    assert client.get("/api/v1/namespace/").json()["data"] == []
    assert client.get("/api/v1/build/").json()["count"] == 0
    token = token_for(client, {"other/*": ["viewer"]})
    headers = {"Authorization": f"Bearer {token}"}
    assert names(client.get("/api/v1/environment/", headers=headers)) == [
        "other/alpha",
        "other/beta",
        "other/gamma",
    ]
    assert [n["name"] for n in client.get("/api/v1/namespace/", headers=headers).json()["data"]] == ["other"]
    assert client.get("/api/v1/build/", headers=headers).json()["count"] == 3
    # one environment's binding shows that environment, not its namespace's others
    single = {"Authorization": f"Bearer {token_for(client, {'team/env-007': ['viewer']})}"}
    assert names(client.get("/api/v1/environment/", headers=single)) == ["team/env-007"]
    # `jwt` restricts an admin's list to what that token may see
    login(client)
    assert names(client.get("/api/v1/environment/", params={"jwt": token})) == [
        "other/alpha",
        "other/beta",
        "other/gamma",
    ]


def test_filters_and_sorting(client: TestClient, many: list[str]) -> None:
    login(client)
    assert names(client.get("/api/v1/environment/", params={"search": "env-10"})) == [
        f"team/env-{n}" for n in range(100, 105)
    ]
    assert names(client.get("/api/v1/environment/", params={"namespace": "other", "name": "beta"})) == [
        "other/beta"
    ]
    assert names(client.get("/api/v1/environment/", params={"status": "COMPLETED"})) == []
    descending = names(client.get("/api/v1/environment/", params={"namespace": "other", "order": "desc"}))
    assert descending == ["other/gamma", "other/beta", "other/alpha"]
    by_name = names(client.get("/api/v1/environment/", params={"sort_by": "name", "size": 3}))
    assert by_name == ["other/alpha", "other/beta", "team/env-000"]
    builds = client.get("/api/v1/build/", params={"namespace": "other", "name": "beta"}).json()
    assert builds["count"] == 1 and builds["data"][0]["specification"] is None
    queued = client.get("/api/v1/build/", params={"status": "QUEUED", "sort_by": "scheduled_on"}).json()
    assert queued["count"] == len(many)


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("/api/v1/environment/", {"sort_by": "size"}, 400, "Cannot sort results by ['size']"),
        ("/api/v1/environment/", {"status": "DONE"}, 422, None),
        ("/api/v1/environment/", {"page": 0}, 422, None),
        ("/api/v1/environment/", {"jwt": "not-a-token"}, 400, "invalid jwt"),
        ("/api/v1/build/", {"artifact": "PICTURE"}, 422, None),
        ("/api/v1/package/", {"distinct_on": "license"}, 400, "Cannot use distinct_on"),
        ("/api/v2/environment/", {"cursor": "%%%"}, 400, "invalid cursor"),
        ("/api/v2/environment/", {"order": "sideways"}, 422, None),
        ("/api/v2/environment/", {"sort_by": "id"}, 400, "Cannot sort results by ['id']"),
    ],
)
def test_bad_list_arguments_are_4xx(client: TestClient, path, params, status, message) -> None:
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    if message:
        assert message in response.json()["message"]


def test_packages_of_a_build_and_package_search(client: TestClient, worker) -> None:
    login(client)
    build_id = submit(client, "name: pk\ndependencies: [hello-py]\n")
    assert wait_for_build(client, build_id)["status"] == "COMPLETED"
    packages = client.get(f"/api/v1/build/{build_id}/packages/").json()
    assert {p["name"] for p in packages["data"]} >= {"hello-py", "python", "tinylib"}
    assert packages["count"] == len(packages["data"])
    first = packages["data"][0]
    assert set(first) == {"id", "channel", "license", "name", "version", "summary"}
    assert set(first["channel"]) == {"id", "name", "last_update"}
    exact = client.get(f"/api/v1/build/{build_id}/packages/", params={"search": "python", "exact": "1"})
    assert [p["name"] for p in exact.json()["data"]] == ["python"]
    assert (
        client.get("/api/v1/environment/", params={"packages": ["hello-py", "tinylib"]}).json()["count"] == 1
    )
    assert client.get("/api/v1/environment/", params={"packages": ["hello-py", "nope"]}).json()["count"] == 0
    assert client.get("/api/v1/build/", params={"packages": ["tinylib"]}).json()["count"] == 1
    assert client.get("/api/v1/environment/", params={"artifact": "LOCKFILE"}).json()["count"] == 1
    search = client.get("/api/v1/package/", params={"search": "hello"}).json()["data"]
    assert {p["name"] for p in search} == {"hello-py"}
    distinct = client.get("/api/v1/package/", params={"distinct_on": "name"}).json()["data"]
    assert len({p["name"] for p in distinct}) == len(distinct)
    channels = client.get("/api/v1/channel/").json()["data"]
    assert [c["name"].startswith("file://") for c in channels] == [True]
    # anonymous cannot read alice's build packages
    client.cookies.clear()
    assert client.get(f"/api/v1/build/{build_id}/packages/").status_code == 403


def test_list_items_have_the_shape_of_a_single_environment(client: TestClient, many: list[str]) -> None:
    login(client)
    listed = client.get("/api/v1/environment/", params={"namespace": "other", "name": "beta"}).json()["data"]
    single = client.get("/api/v1/environment/other/beta/").json()["data"]
    assert listed == [single]
    v2 = client.get("/api/v2/environment/", params={"namespace": "other", "name": "beta"}).json()["data"]
    assert v2 == [{key: value for key, value in single.items() if key != "current_build"}]
