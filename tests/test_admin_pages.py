"""The admin pages under /admin/: what each shows, the API's permissions, CSRF, url_prefix,
enable_ui, template and template_vars, and bad inputs as 4xx pages naming the problem."""

from __future__ import annotations

import datetime
import html
import re
import urllib.parse
from pathlib import Path
from typing import Any

import jinja2
import pytest
from conftest import artifact_ready, login, submit, wait_for_build
from fastapi.templating import Jinja2Templates
from fastapi.testclient import TestClient
from traitlets import TraitError
from traitlets.config import Config

from conda_store_server.server.admin import csrf
from conda_store_server.server.admin.rendering import TEMPLATE_DIRECTORY
from conda_store_server.server.app import CondaStoreServer
from conda_store_server.server.auth import AuthenticationToken

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
OLD = "name: pages\ndependencies:\n  - hello-py=1.0.0\n"
NEW = "name: pages\ndependencies:\n  - hello-py\n"
FINAL = ("COMPLETED", "FAILED", "CANCELED")


# ------------------------------------------------------------------------------ helpers
def app_client(conda_store: Any, store_settings: dict[str, Any], **options: Any) -> TestClient:
    server = CondaStoreServer(config=Config({**store_settings, "CondaStoreServer": options}))
    return TestClient(server.create_app(conda_store))


def token_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match is not None, "the page has no form with a CSRF token"
    return match.group(1)


def error_of(page: str) -> str:
    match = re.search(r'id="error">(.*?)</p>', page, re.DOTALL)
    assert match is not None, f"the page shows no error:\n{page[:3000]}"
    return html.unescape(match.group(1))


def form_token(client: TestClient, path: str = "/admin/user/") -> str:
    response = client.get(path)
    assert response.status_code == 200, response.text
    return token_of(response.text)


def post_form(client: TestClient, path: str, data: dict[str, Any], token: str | None = None) -> Any:
    body = {"csrf_token": token if token is not None else form_token(client), **data}
    return client.post(path, data=body, follow_redirects=False)


def sign_in_as(client: TestClient, name: str, bindings: dict[str, list[str]]) -> None:
    """A browser session with exactly these role bindings (beyond the authenticated defaults)."""
    authentication = client.app.state.authentication
    token = authentication.authentication.encrypt_token(
        AuthenticationToken(primary_namespace=name, role_bindings=bindings)
    )
    client.cookies.set(authentication.cookie_name, token)


def environment_names(page: str) -> set[str]:
    return set(re.findall(r'href="[^"]*/admin/environment/([^/"]+/[^/"]+)/"', page))


def assert_no_server_error(response: Any) -> None:
    assert response.status_code < 500, f"{response.request.method} {response.request.url}: {response.text}"


# ------------------------------------------------------------------------------ an admin's pages
@SQLITE
def test_every_page_works_for_an_admin(client: TestClient, worker) -> None:
    login(client)
    first = submit(client, OLD, "alice")
    assert wait_for_build(client, first)["status"] == "COMPLETED"

    home = client.get("/admin/")
    assert home.status_code == 200
    assert "alice/pages" in environment_names(home.text)
    assert client.get("/admin/?search=page").status_code == 200
    assert "alice/pages" in environment_names(client.get("/admin/?search=page").text)
    assert environment_names(client.get("/admin/?search=nothing-like-it").text) == set()
    assert "alice/pages" in environment_names(client.get("/admin/?namespace=alice").text)

    # the create page previews the new version against the current build, then builds it
    create = client.get("/admin/create/?namespace=alice")
    assert create.status_code == 200 and 'value="alice"' in create.text
    preview = post_form(client, "/admin/create/preview/", {"namespace": "alice", "specification": NEW})
    assert preview.status_code == 200, preview.text
    assert 'id="solved"' in preview.text and "tinylib" in preview.text
    assert "hello-py 1.0.0 → 1.1.0" in html.unescape(preview.text)
    assert NEW.strip() in html.unescape(preview.text)  # the text as typed stays in the form
    assert client.get("/api/v1/build/").json()["count"] == 1  # a preview builds nothing

    created = post_form(client, "/admin/create/", {"namespace": "alice", "specification": NEW})
    assert created.status_code == 303
    second = int(re.fullmatch(r"/admin/build/(\d+)/", created.headers["location"]).group(1))
    build_page = client.get(created.headers["location"])
    assert build_page.status_code == 200
    assert f'data-api="/api/v1/build/{second}/"' in build_page.text  # what the page's script follows
    assert wait_for_build(client, second)["status"] == "COMPLETED"
    # the archive is made after the build completes
    assert wait_for_build(client, second, artifact_ready("CONDA_PACK"))["status"] == "COMPLETED"

    # the environment: its builds, the current one, its artifacts (no image: none was built)
    environment = client.get("/admin/environment/alice/pages/")
    assert environment.status_code == 200
    assert f'data-build="{first}"' in environment.text and f'data-build="{second}"' in environment.text
    current = environment.text.split('id="current"')[1].split("</section>")[0]
    assert f"Build #{second}" in current
    for path in ("lockfile/", "yaml/", "archive/", "pixi.lock"):
        assert f'href="/api/v1/build/{second}/{path}"' in current
    assert 'data-artifact="DOCKER_MANIFEST"' not in environment.text
    assert client.get(f"/api/v1/build/{second}/lockfile/").status_code == 200

    # the build: status, packages, artifacts, specification
    build_page = client.get(f"/admin/build/{second}/")
    packages = build_page.text.split('id="packages"')[1].split("</table>")[0]
    assert "hello-py" in packages and "1.1.0" in packages and "tinylib" in packages
    assert 'data-status="COMPLETED"' in build_page.text
    assert 'data-artifact="LOCKFILE"' in build_page.text and 'data-artifact="CONDA_PACK"' in build_page.text

    # the edit page holds the current specification
    edit = client.get("/admin/environment/alice/pages/edit/")
    assert edit.status_code == 200 and "hello-py" in edit.text and "readonly" in edit.text

    # roll back to the first build, through the form
    rolled = post_form(client, "/admin/environment/alice/pages/current/", {"build_id": first})
    assert rolled.status_code == 303
    assert rolled.headers["location"] == "/admin/environment/alice/pages/?done=current"
    assert client.get("/api/v1/environment/alice/pages/").json()["data"]["current_build_id"] == first
    assert "The current build was changed." in client.get(rolled.headers["location"]).text

    # rebuild: a new build of the first build's specification
    rebuilt = post_form(client, f"/admin/build/{first}/rebuild/", {})
    assert rebuilt.status_code == 303
    third = int(re.fullmatch(r"/admin/build/(\d+)/", rebuilt.headers["location"]).group(1))
    assert third > second
    third_build = client.get(f"/api/v1/build/{third}/").json()["data"]
    assert third_build["specification"]["spec"]["dependencies"] == ["hello-py=1.0.0"]
    wait_for_build(client, third)

    # namespaces, user, settings at every level
    namespaces = client.get("/admin/namespace/")
    assert namespaces.status_code == 200 and 'id="create-namespace"' in namespaces.text
    assert '/admin/?namespace=alice"' in namespaces.text
    user = client.get("/admin/user/")
    assert user.status_code == 200 and "<code>*/*</code>" in user.text and "admin" in user.text
    for path in ("/admin/setting/", "/admin/setting/alice/", "/admin/setting/alice/pages/"):
        page = client.get(path)
        assert page.status_code == 200 and 'data-key="conda_allowed_channels"' in page.text
        assert 'id="update-settings"' in page.text

    # delete the environment
    deleted = post_form(client, "/admin/environment/alice/pages/delete/", {})
    assert deleted.status_code == 303 and deleted.headers["location"] == "/admin/?done=deleted"
    assert client.get("/api/v1/environment/alice/pages/").status_code == 404
    assert "alice/pages" not in environment_names(client.get("/admin/").text)


@SQLITE
def test_settings_and_namespaces_are_changed_through_their_forms(client: TestClient) -> None:
    login(client)
    created = post_form(client, "/admin/namespace/", {"name": "team"})
    assert created.status_code == 303 and created.headers["location"] == "/admin/namespace/?done=namespace"
    assert client.get("/api/v1/namespace/team/").status_code == 200
    assert '/admin/?namespace=team"' in client.get("/admin/namespace/").text

    changes = '{"conda_included_packages": ["hello-config"]}'
    saved = post_form(client, "/admin/setting/team/", {"changes": changes})
    assert saved.status_code == 303 and saved.headers["location"] == "/admin/setting/team/?done=settings"
    assert client.get("/api/v1/setting/team/").json()["data"]["conda_included_packages"] == ["hello-config"]
    assert client.get("/api/v1/setting/").json()["data"]["conda_included_packages"] == []
    page = client.get(saved.headers["location"]).text
    assert "The settings were saved." in page
    row = re.search(r'<tr data-key="conda_included_packages">(.*?)</tr>', page).group(1)
    expected = '<td><code>conda_included_packages</code></td><td><code>["hello-config"]</code></td>'
    assert html.unescape(row) == expected


@SQLITE
def test_a_new_token_is_shown_once_and_works(client: TestClient) -> None:
    login(client)
    answer = post_form(client, "/admin/user/token/", {"expiration": ""})
    assert answer.status_code == 200
    assert "no-store" in answer.headers["cache-control"]
    token = re.search(r'<textarea id="token" readonly[^>]*>([^<]+)</textarea>', answer.text).group(1)
    anonymous = TestClient(client.app)
    permission = anonymous.get("/api/v1/permission/", headers={"Authorization": f"Bearer {token}"})
    assert permission.json()["data"]["authenticated"] is True
    assert permission.json()["data"]["primary_namespace"] == "alice"
    assert token not in client.get("/admin/user/").text  # shown once: stored nowhere

    soon = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    answer = post_form(client, "/admin/user/token/", {"expiration": soon})
    token = re.search(r'<textarea id="token" readonly[^>]*>([^<]+)</textarea>', answer.text).group(1)
    claims = client.app.state.authentication.authentication.decrypt_token(token)
    assert claims.exp.strftime("%Y-%m-%dT%H:%M") == soon


# ------------------------------------------------------------------------------ permissions
VIEWER = {"team/*": ["viewer"]}


def make_environments(client: TestClient) -> dict[str, int]:
    """Environments in `team` and `other`, made by an admin (builds stay queued: no worker)."""
    login(client)
    builds = {
        "team/shared": submit(client, "name: shared\ndependencies: [hello-py]\n", "team"),
        "other/secret": submit(client, "name: secret\ndependencies: [hello-py]\n", "other"),
    }
    client.cookies.clear()
    return builds


def test_a_viewer_of_one_namespace_sees_what_the_api_shows_them(client: TestClient) -> None:
    builds = make_environments(client)
    sign_in_as(client, "viewer", VIEWER)

    home = client.get("/admin/")
    assert home.status_code == 200
    assert environment_names(home.text) == {"team/shared"}
    assert environment_names(client.get("/admin/?search=secret").text) == set()
    assert environment_names(client.get("/admin/?namespace=other").text) == set()
    listed = client.get("/api/v1/environment/").json()["data"]
    api_names = {f"{e['namespace']['name']}/{e['name']}" for e in listed}
    assert api_names == environment_names(home.text)

    # each page answers what its API route answers this caller
    pairs = [
        ("/admin/environment/team/shared/", "/api/v1/environment/team/shared/", 200),
        ("/admin/environment/other/secret/", "/api/v1/environment/other/secret/", 403),
        (f"/admin/build/{builds['team/shared']}/", f"/api/v1/build/{builds['team/shared']}/", 200),
        (f"/admin/build/{builds['other/secret']}/", f"/api/v1/build/{builds['other/secret']}/", 403),
        ("/admin/setting/", "/api/v1/setting/", 403),
        ("/admin/setting/team/", "/api/v1/setting/team/", 403),
        ("/admin/setting/team/shared/", "/api/v1/setting/team/shared/", 403),
        ("/admin/setting/other/", "/api/v1/setting/other/", 403),
    ]
    for page, api, status in pairs:
        assert client.get(api).status_code == status, api
        answer = client.get(page)
        assert answer.status_code == status, page
        if status == 403:
            assert error_of(answer.text) == "request not authorized"
            assert "secret" not in answer.text.replace("/other/secret/", "")

    # the environment page offers no action the API would refuse
    environment = client.get("/admin/environment/team/shared/").text
    for action in ("/current/", "/delete/", "/rebuild/", "/cancel/", "/edit/", "/admin/setting/"):
        assert action not in environment, action
    build = client.get(f"/admin/build/{builds['team/shared']}/").text
    assert "/rebuild/" not in build and "/cancel/" not in build
    assert client.get("/admin/environment/team/shared/edit/").status_code == 403
    assert 'href="/admin/setting/"' not in home.text  # no global settings link

    # namespaces: the visible ones, no create form
    namespaces = client.get("/admin/namespace/").text
    assert '/admin/?namespace=team"' in namespaces and '/admin/?namespace=other"' not in namespaces
    assert 'id="create-namespace"' not in namespaces

    # the user page shows the caller's bindings
    user = client.get("/admin/user/").text
    assert "<code>team/*</code>" in user and "environment::read" in user and "<code>*/*</code>" not in user

    # every form the API would refuse is refused, and changes nothing
    token = form_token(client)
    mine = "name: mine\ndependencies: [hello-py]\n"
    refused = [
        ("/admin/create/", {"namespace": "team", "specification": mine}),
        ("/admin/create/", {"namespace": "other", "specification": mine}),
        ("/admin/create/preview/", {"namespace": "team", "specification": mine}),
        ("/admin/environment/team/shared/delete/", {}),
        ("/admin/environment/other/secret/delete/", {}),
        ("/admin/environment/team/shared/current/", {"build_id": builds["team/shared"]}),
        (f"/admin/build/{builds['team/shared']}/rebuild/", {}),
        (f"/admin/build/{builds['team/shared']}/cancel/", {}),
        (f"/admin/build/{builds['other/secret']}/cancel/", {}),
        (f"/admin/build/{builds['team/shared']}/delete/", {}),
        ("/admin/namespace/", {"name": "mine"}),
        ("/admin/setting/team/", {"changes": '{"conda_included_packages": ["x"]}'}),
    ]
    for path, data in refused:
        answer = post_form(client, path, data, token)
        assert answer.status_code == 403, f"{path}: {answer.status_code} {answer.text[:500]}"
        assert error_of(answer.text) == "request not authorized", path
    login(client)  # as an admin again: nothing changed
    assert client.get("/api/v1/build/").json()["count"] == 2
    assert client.get("/api/v1/namespace/mine/").status_code == 404
    for build_id in builds.values():
        assert client.get(f"/api/v1/build/{build_id}/").json()["data"]["status"] == "QUEUED"
    assert client.get("/api/v1/setting/team/").json()["data"]["conda_included_packages"] == []


@SQLITE
def test_a_viewer_with_setting_read_sees_settings_without_the_edit_form(conda_store, store_settings) -> None:
    with app_client(conda_store, store_settings) as client:
        sign_in_as(client, "dev", {"team/*": ["editor"]})
        page = client.get("/admin/setting/team/")
        assert page.status_code == 200 and 'data-key="conda_allowed_channels"' in page.text
        assert 'id="update-settings"' not in page.text  # editors read settings, only admins change them
        answer = post_form(client, "/admin/setting/team/", {"changes": '{"conda_included_packages": []}'})
        assert answer.status_code == 403 and error_of(answer.text) == "request not authorized"
        assert client.get("/admin/setting/").status_code == 403


ANONYMOUS_PAGES = [
    "/admin/",
    "/admin/?search=x",
    "/admin/create/",
    "/admin/namespace/",
    "/admin/environment/default/env/",
    "/admin/environment/default/env/edit/",
    "/admin/build/1/",
    "/admin/user/",
    "/admin/setting/",
    "/admin/setting/default/",
    "/admin/setting/default/env/",
]


@SQLITE
@pytest.mark.parametrize("prefix", ["/", "/conda-store"])
def test_anonymous_callers_are_sent_to_the_login_page(conda_store, store_settings, prefix: str) -> None:
    base = "" if prefix == "/" else prefix
    with app_client(conda_store, store_settings, url_prefix=prefix) as client:
        for path in ANONYMOUS_PAGES:
            answer = client.get(base + path, follow_redirects=False)
            assert answer.status_code == 303, path
            quoted = urllib.parse.quote(base + path, safe="")
            assert answer.headers["location"] == f"{base}/login/?next={quoted}", path
        home = urllib.parse.quote(f"{base}/admin/", safe="")
        for path in ("/admin/create/", "/admin/namespace/", "/admin/user/token/", "/admin/setting/"):
            data = {"name": "anon", "csrf_token": "x"}
            answer = client.post(base + path, data=data, follow_redirects=False)
            assert answer.status_code == 303
            assert answer.headers["location"] == f"{base}/login/?next={home}"
        # the login page brings the browser back
        target = urllib.parse.quote(f"{base}/admin/user/", safe="")
        assert client.get(f"{base}/login/?next={target}").status_code == 200
        credentials = {"username": "u", "password": "password"}
        answer = client.post(f"{base}/login/?next={target}", json=credentials)
        assert answer.json()["data"]["redirect_url"] == f"{base}/admin/user/"
        assert client.get(f"{base}/admin/user/").status_code == 200
        assert client.get(f"{base}/api/v1/namespace/anon/").status_code == 404  # nothing was made


# ------------------------------------------------------------------------------ CSRF
@SQLITE
def test_forms_without_this_sessions_csrf_token_are_refused(conda_store, store_settings, monkeypatch) -> None:
    spec = {"namespace": "alice", "specification": "name: forged\ndependencies: [hello-py]\n"}
    with app_client(conda_store, store_settings) as client, app_client(conda_store, store_settings) as other:
        login(client)
        login(other, "bob")
        token = form_token(client)
        forged = token[:-4] + ("B" if token.endswith("A") else "A") * 4
        cases = {
            "no token": {**spec},
            "empty token": {**spec, "csrf_token": ""},
            "wrong token": {**spec, "csrf_token": "not-a-token"},
            "forged signature": {**spec, "csrf_token": forged},
            "another session's token": {**spec, "csrf_token": form_token(other)},
        }
        messages = {}
        for case, data in cases.items():
            answer = client.post("/admin/create/", data=data, follow_redirects=False)
            assert answer.status_code == 403, case
            messages[case] = error_of(answer.text)
        assert messages["no token"] == "the form has no CSRF token; reload the page and send the form again"
        assert messages["empty token"] == messages["no token"]
        assert "invalid" in messages["wrong token"] and "invalid" in messages["forged signature"]
        assert "another session" in messages["another session's token"]
        # a JSON body carries no form token either
        assert client.post("/admin/create/", json={**spec, "csrf_token": token}).status_code == 403
        # an old page's token has expired
        monkeypatch.setattr(csrf, "MAX_AGE_SECONDS", -1)
        answer = client.post("/admin/create/", data={**spec, "csrf_token": token}, follow_redirects=False)
        assert answer.status_code == 403 and "expired" in error_of(answer.text)
        monkeypatch.undo()
        # another login in the same browser (as bob) makes the forms of alice's session invalid
        login(client, "bob")
        answer = client.post("/admin/create/", data={**spec, "csrf_token": token}, follow_redirects=False)
        assert answer.status_code == 403 and "another session" in error_of(answer.text)
        login(client)
        # every POST route checks it
        for path in (
            "/admin/create/preview/",
            "/admin/namespace/",
            "/admin/environment/alice/forged/current/",
            "/admin/environment/alice/forged/delete/",
            "/admin/build/1/rebuild/",
            "/admin/build/1/cancel/",
            "/admin/build/1/delete/",
            "/admin/user/token/",
            "/admin/setting/",
            "/admin/setting/alice/",
            "/admin/setting/alice/forged/",
        ):
            answer = client.post(path, data={"csrf_token": "x", "build_id": 1, "name": "n", "changes": "{}"})
            assert answer.status_code == 403, path
        assert client.get("/api/v1/build/").json()["count"] == 0
        assert client.get("/api/v1/namespace/n/").status_code == 404
        # with the right token, the same form works
        data = {**spec, "csrf_token": form_token(client)}
        answer = client.post("/admin/create/", data=data, follow_redirects=False)
        assert answer.status_code == 303


@SQLITE
def test_the_login_cookie_is_same_site_strict(client: TestClient) -> None:
    answer = client.post("/login/", json={"username": "alice", "password": "password"})
    cookie = answer.headers["set-cookie"].lower()
    assert "samesite=strict" in cookie and "httponly" in cookie


# ------------------------------------------------------------------------------ configuration
@SQLITE
def test_pages_obey_the_url_prefix(conda_store, store_settings) -> None:
    with app_client(conda_store, store_settings, url_prefix="/conda-store") as client:
        login_answer = client.post("/conda-store/login/", json={"username": "alice", "password": "password"})
        assert login_answer.status_code == 200
        assert client.get("/admin/").status_code == 404
        home = client.get("/conda-store/admin/")
        assert home.status_code == 200
        links = re.findall(r'(?:href|src|action)="([^"]+)"', home.text)
        assert links and all(link.startswith(("/conda-store/", "?")) for link in links), links
        assert client.get("/conda-store/static/admin/admin.css").status_code == 200
        assert client.get("/conda-store/static/admin/admin.js").status_code == 200
        created = post_form(
            client,
            "/conda-store/admin/create/",
            {"namespace": "alice", "specification": "name: p\ndependencies: [hello-py]\n"},
            form_token(client, "/conda-store/admin/user/"),
        )
        assert created.status_code == 303
        assert created.headers["location"].startswith("/conda-store/admin/build/")
        build = client.get(created.headers["location"])
        assert 'data-api="/conda-store/api/v1/build/' in build.text


@SQLITE
def test_enable_ui_false_removes_the_admin_pages(conda_store, store_settings) -> None:
    with app_client(conda_store, store_settings, enable_ui=False) as client:
        login(client)
        for path in ("/admin/", "/admin/user/", "/admin/create/", "/static/admin/admin.css"):
            assert client.get(path).status_code == 404, path
        assert client.post("/admin/create/", data={}).status_code in (404, 405)


def _custom_templates() -> Jinja2Templates:
    base = (TEMPLATE_DIRECTORY / "base.html").read_text()
    custom = base.replace("<main>", '<main><p id="deployment">Deployed by the platform team</p>')
    loader = jinja2.ChoiceLoader(
        [jinja2.DictLoader({"base.html": custom}), jinja2.FileSystemLoader(str(TEMPLATE_DIRECTORY))]
    )
    return Jinja2Templates(env=jinja2.Environment(loader=loader, autoescape=True))


@SQLITE
@pytest.mark.parametrize("custom", [False, True], ids=["our templates", "CondaStoreServer.template"])
def test_template_and_template_vars_reach_every_page(conda_store, store_settings, custom: bool) -> None:
    variables = {"banner": "Maintenance at noon <b>UTC</b>", "logo": "/logo.png"}
    options: dict[str, Any] = {"template_vars": variables}
    if custom:
        options["template"] = _custom_templates()
    with app_client(conda_store, store_settings, **options) as client:
        login(client)
        build_id = submit(client, "name: t\ndependencies: [hello-py]\n", "alice")
        pages = [
            "/admin/",
            "/admin/create/",
            "/admin/namespace/",
            "/admin/environment/alice/t/",
            "/admin/environment/alice/t/edit/",
            f"/admin/build/{build_id}/",
            "/admin/user/",
            "/admin/setting/",
            "/admin/setting/alice/",
            "/admin/setting/alice/t/",
            "/admin/build/999999/",  # the error page too
        ]
        answers = [client.get(path) for path in pages]
        answers.append(post_form(client, "/admin/user/token/", {}))
        answers.append(post_form(client, "/admin/create/", {"namespace": "alice", "specification": "nope"}))
        for answer in answers:
            assert answer.status_code in (200, 400, 404), answer.url
            banner = '<div class="banner" role="note">Maintenance at noon &lt;b&gt;UTC&lt;/b&gt;</div>'
            assert banner in answer.text
            assert '<img class="logo" src="/logo.png" alt="">' in answer.text
            assert ('id="deployment"' in answer.text) is custom, answer.url
            assert ("content-security-policy" in answer.headers) is not custom
            assert answer.headers["x-frame-options"] == "DENY"


def test_the_template_trait_is_configurable() -> None:
    server = CondaStoreServer()
    assert server.template is None
    templates = _custom_templates()
    server = CondaStoreServer(config=Config({"CondaStoreServer": {"template": templates}}))
    assert isinstance(server.template, Jinja2Templates)  # traitlets keeps a copy of configured values
    assert 'id="deployment"' in server.template.get_template("base.html").render()
    assert "Jinja2Templates" in CondaStoreServer.class_traits()["template"].help
    with pytest.raises(TraitError):
        CondaStoreServer(template="templates/")


# ------------------------------------------------------------------------------ bad inputs
BAD_GETS = [
    ("/admin/?search=" + "x" * 300, 422, "query parameter search: String should have at most 255 characters"),
    ("/admin/?search=a%00b", 400, "query parameter search must not contain control characters"),
    ("/admin/?namespace=%0a", 400, "query parameter namespace must not contain control characters"),
    ("/admin/?page=0", 422, "query parameter page: Input should be greater than or equal to 1"),
    ("/admin/?page=two", 422, "query parameter page: Input should be a valid integer"),
    ("/admin/create/?namespace=" + "n" * 300, 422, "query parameter namespace"),
    ("/admin/build/abc/", 422, "path segment build_id: Input should be a valid integer"),
    ("/admin/build/99999999999/", 422, "path segment build_id"),
    ("/admin/build/424242/", 404, "build id does not exist"),
    ("/admin/environment/alice/missing/", 404, "environment does not exist"),
    ("/admin/environment/alice/missing/edit/", 404, "environment does not exist"),
    ("/admin/environment/a..b/x/", 400, "Invalid namespace name 'a..b'"),
    ("/admin/environment/alice/x%20y/", 400, "Invalid environment name 'x y': it contains whitespace"),
    ("/admin/setting/a..b/", 400, "Invalid namespace name 'a..b'"),
    ("/admin/setting/alice/%01/", 400, "it contains control characters"),
]


@SQLITE
def test_bad_page_requests_are_4xx_pages_naming_the_problem(client: TestClient) -> None:
    login(client)
    for path, status, message in BAD_GETS:
        answer = client.get(path)
        assert answer.status_code == status, f"{path}: {answer.status_code} {answer.text[:300]}"
        assert answer.headers["content-type"].startswith("text/html")
        assert message in error_of(answer.text), path


def _past() -> str:
    return "2001-02-03T04:05"


def _far_future() -> str:
    return (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=400)).strftime("%Y-%m-%dT%H:%M")


def spec(text: str, namespace: str = "alice") -> dict[str, str]:
    return {"namespace": namespace, "specification": text}


CREATE, PREVIEW, CURRENT = "/admin/create/", "/admin/create/preview/", "/admin/environment/alice/e0/current/"
BAD_FORMS = [
    (CREATE, spec(""), 400, "The specification is empty"),
    (CREATE, spec("name: [x"), 400, "Invalid YAML"),
    (CREATE, spec("- a list"), 400, "must be a YAML mapping"),
    (CREATE, spec("name: x\ndependecies: []\n"), 400, "did you mean 'dependencies'"),
    (CREATE, spec("name: x\n", "bad name"), 400, "Invalid namespace name 'bad name'"),
    (CREATE, spec("name: a/b\n"), 400, "Invalid environment name 'a/b'"),
    (CREATE, spec("name: x\n", "n" * 300), 422, "form field namespace: String should have at most 255"),
    (PREVIEW, spec("name: x\n"), 400, "lists no conda packages"),
    (PREVIEW, spec("name: [x"), 400, "Invalid YAML"),
    (PREVIEW, spec("name: x\ndependencies: [no-such-package]\n"), 400, "no-such-package"),
    (CURRENT, {"build_id": "abc"}, 422, "form field build_id: Input should be a valid integer"),
    (CURRENT, {}, 422, "form field build_id: Field required"),
    (CURRENT, {"build_id": "424242"}, 400, "build id=424242 does not exist"),
    (CURRENT, {"build_id": "1"}, 400, "cannot update environment to build id since not completed"),
    ("/admin/environment/alice/e/delete/", {}, 400, "environment namespace=alice name=e does not exist"),
    ("/admin/build/424242/rebuild/", {}, 404, "build id does not exist"),
    ("/admin/build/424242/cancel/", {}, 404, "build id does not exist"),
    ("/admin/build/424242/delete/", {}, 404, "build id does not exist"),
    ("/admin/user/token/", {"expiration": "tomorrow"}, 400, "is not a date and time; give it as YYYY-MM-DD"),
    ("/admin/user/token/", {"expiration": _past()}, 400, "Requested expiration of token is in the past"),
    ("/admin/user/token/", {"expiration": _far_future()}, 400, "greater than current permissions"),
    ("/admin/namespace/", {"name": "a..b"}, 400, "Invalid namespace name 'a..b'"),
    ("/admin/namespace/", {"name": ""}, 400, "Invalid namespace name '': it is empty"),
    ("/admin/namespace/", {"name": "alice"}, 409, "namespace already exists"),
    ("/admin/setting/", {"changes": "{"}, 400, "the changes are not JSON"),
    ("/admin/setting/", {"changes": "[1]"}, 400, "must be a JSON object of setting keys to values"),
    ("/admin/setting/", {"changes": '{"nope": 1}'}, 400, "Invalid setting keys ['nope']"),
    ("/admin/setting/alice/", {"changes": '{"default_uid": 1}'}, 400, "is a global setting"),
    ("/admin/setting/", {"changes": '{"conda_allowed_channels": 3}'}, 400, "valid list"),
]


@SQLITE
def test_bad_forms_are_4xx_pages_naming_the_problem_and_change_nothing(client: TestClient) -> None:
    login(client)
    first = submit(client, "name: e0\ndependencies: [hello-py]\n", "alice")
    settings_before = client.get("/api/v1/setting/").json()["data"]
    token = form_token(client)
    for path, data, status, message in BAD_FORMS:
        answer = post_form(client, path, data, token)
        assert answer.status_code == status, f"{path} {data}: {answer.status_code} {answer.text[:500]}"
        assert message in error_of(answer.text), f"{path} {data}"
        if path.startswith("/admin/create/") and status != 422:
            # the form comes back with what was typed
            assert html.escape(data["specification"], quote=False) in answer.text
    builds = client.get("/api/v1/build/").json()
    assert [build["id"] for build in builds["data"]] == [first]
    assert client.get("/api/v1/setting/").json()["data"] == settings_before


def test_no_page_answers_a_server_error_for_odd_input(client: TestClient) -> None:
    login(client)
    token = form_token(client)
    odd = ["%00", "%ff", "..", "%2e%2e", "a" * 300, "-1", "0", "%e2%80%ae", "x%0ay"]
    for value in odd:
        for path in (
            f"/admin/?search={value}",
            f"/admin/?namespace={value}",
            f"/admin/environment/{value}/{value}/",
            f"/admin/environment/alice/{value}/edit/",
            f"/admin/build/{value}/",
            f"/admin/setting/{value}/",
            f"/admin/setting/alice/{value}/",
        ):
            assert_no_server_error(client.get(path))
        for path, data in (
            ("/admin/create/", {"namespace": value, "specification": f"name: {value}\n"}),
            ("/admin/namespace/", {"name": value}),
            (f"/admin/environment/alice/{value}/current/", {"build_id": value}),
            ("/admin/user/token/", {"expiration": value}),
            ("/admin/setting/", {"changes": value}),
        ):
            assert_no_server_error(post_form(client, path, data, token))


def test_templates_are_package_data() -> None:
    """The pyproject's package-data globs ship every template and static file of the pages."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["conda_store_server"]
    assert "server/templates/*" in globs and "server/static/**/*" in globs
    assert sorted(p.name for p in TEMPLATE_DIRECTORY.iterdir() if p.is_dir()) == []  # no subfolders
