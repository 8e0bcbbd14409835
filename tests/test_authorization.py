"""The authorization matrix: every served route × anonymous, viewer, editor, admin, a user of
another namespace, and a member granted editor through a database role mapping (v1 and v2).

Expectations come from the role definitions of upstream-api §6.3, written out here rather than
computed by the code under test. A route missing from the table fails the test, so new routes
must say who may call them.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import login, submit, wait_for_build
from routes import served_routes

from conda_store_server.server.auth import AuthenticationToken

VIEWER = {"environment::read", "namespace::read", "namespace-role-mapping::read"}
EDITOR = VIEWER | {
    "build::cancel",
    "environment:create",
    "environment::update",
    "environment::solve",
    "setting::read",
}
ADMIN = EDITOR | {
    "environment::delete",
    "build::delete",
    "namespace::create",
    "namespace::update",
    "namespace::delete",
    "namespace-role-mapping::create",
    "namespace-role-mapping::update",
    "namespace-role-mapping::delete",
    "setting::update",
}

OPEN = "open"  # anyone, including anonymous callers
FILTERED = "filtered"  # anyone; the answer only holds what the caller may see
AUTHENTICATED = "authenticated"

# (method, path) -> (ARN checked, permissions required, path values, query, body)
R = "namespace-role-mapping::read"
TABLE: dict[tuple[str, str], Any] = {
    ("GET", "/api/v1/"): OPEN,
    ("GET", "/api/v1/permission/"): OPEN,
    ("GET", "/api/v1/channel/"): OPEN,
    ("GET", "/api/v1/package/"): OPEN,
    ("GET", "/api/v1/usage/"): FILTERED,
    ("GET", "/api/v1/namespace/"): FILTERED,
    ("GET", "/api/v1/environment/"): FILTERED,
    ("GET", "/api/v2/environment/"): FILTERED,
    ("GET", "/api/v1/build/"): FILTERED,
    ("POST", "/api/v1/token/"): AUTHENTICATED,
    ("POST", "/api/v1/specification/"): (
        "lab/env",
        {"environment:create"},
        {},
        {},
        {"namespace": "lab", "specification": "name: env\ndependencies: [python]\n"},
    ),
    ("GET", "/api/v1/specification/"): (
        "lab/env",
        {"environment::solve"},
        {},
        {"conda": "python", "namespace": "lab", "environment": "env"},
        None,
    ),
    ("GET", "/api/v1/environment/{namespace}/{name}/"): ("lab/env", {"environment::read"}, {}, {}, None),
    ("PUT", "/api/v1/environment/{namespace}/{name}/"): (
        "lab/env",
        {"environment::update"},
        {},
        {},
        {"description": "matrix"},
    ),
    ("DELETE", "/api/v1/environment/{namespace}/{name}/"): (
        "lab/ghost",
        {"environment::delete"},
        {"name": "ghost"},
        {},
        None,
    ),
    ("GET", "/api/v1/namespace/{namespace}/"): ("lab", {"namespace::read"}, {}, {}, None),
    ("POST", "/api/v1/namespace/{namespace}/"): ("lab", {"namespace::create"}, {}, {}, None),
    ("PUT", "/api/v1/namespace/{namespace}/"): (
        "lab",
        {"namespace::update", "namespace-role-mapping::create", "namespace-role-mapping::delete"},
        {},
        {},
        {},
    ),
    ("DELETE", "/api/v1/namespace/{namespace}/"): (
        "ghostns",
        {"namespace::delete"},
        {"namespace": "ghostns"},
        {},
        None,
    ),
    ("PUT", "/api/v1/namespace/{namespace}/metadata"): ("lab", {"namespace::update"}, {}, {}, {}),
    ("GET", "/api/v1/namespace/{namespace}/roles"): ("lab", {"namespace::read", R}, {}, {}, None),
    ("DELETE", "/api/v1/namespace/{namespace}/roles"): (
        "lab",
        {"namespace::read", "namespace-role-mapping::delete"},
        {"namespace": "ghostns"},
        {},
        None,
    ),
    ("GET", "/api/v1/namespace/{namespace}/role"): (
        "lab",
        {"namespace::read", R},
        {},
        {"other_namespace": "x"},
        None,
    ),
    ("POST", "/api/v1/namespace/{namespace}/role"): (
        "lab",
        {"namespace::read", "namespace-role-mapping::create"},
        {},
        {},
        {"other_namespace": "ghostns", "role": "viewer"},
    ),
    ("PUT", "/api/v1/namespace/{namespace}/role"): (
        "lab",
        {"namespace::read", "namespace-role-mapping::update"},
        {},
        {},
        {"other_namespace": "ghostns", "role": "viewer"},
    ),
    ("DELETE", "/api/v1/namespace/{namespace}/role"): (
        "lab",
        {"namespace::read", "namespace-role-mapping::delete"},
        {},
        {},
        {"other_namespace": "ghostns"},
    ),
    ("GET", "/api/v1/build/{build_id}/"): ("lab/env", {"environment::read"}, {}, {}, None),
    ("PUT", "/api/v1/build/{build_id}/"): ("lab/env", {"environment::update"}, {}, {}, None),
    ("DELETE", "/api/v1/build/{build_id}/"): ("lab/env", {"build::delete"}, {}, {}, None),
    ("PUT", "/api/v1/build/{build_id}/cancel/"): ("lab/env", {"build::cancel"}, {}, {}, None),
    ("POST", "/api/v1/build/{build_id}/restore/"): ("lab/env", {"environment::update"}, {}, {}, None),
    ("GET", "/api/v1/environment/{namespace}/{name}/export/"): (
        "lab/env",
        {"environment::read"},
        {},
        {},
        None,
    ),
    ("POST", "/api/v1/environment/import/"): (
        "lab/imported",
        {"environment:create"},
        {},
        {},
        {
            "format": "conda-store-bundle",
            "version": 1,
            "kind": "environment",
            "exported_on": "2026-01-01T00:00:00",
            "conda_store_version": "matrix",
            "environments": [{"namespace": "lab", "name": "imported", "builds": []}],
        },
    ),
    ("GET", "/api/v1/build/{build_id}/packages/"): ("lab/env", {"environment::read"}, {}, {}, None),
    ("GET", "/api/v1/setting/"): ("", {"setting::read"}, {}, {}, None),
    ("GET", "/api/v1/setting/{namespace}/"): ("lab", {"setting::read"}, {}, {}, None),
    ("GET", "/api/v1/setting/{namespace}/{environment}/"): ("lab/env", {"setting::read"}, {}, {}, None),
    ("PUT", "/api/v1/setting/"): ("", {"setting::update"}, {}, {}, {}),
    ("PUT", "/api/v1/setting/{namespace}/"): ("lab", {"setting::update"}, {}, {}, {}),
    ("PUT", "/api/v1/setting/{namespace}/{environment}/"): ("lab/env", {"setting::update"}, {}, {}, {}),
}
for _path in ("lockfile/", "conda-lock.yml", "conda-lock.yaml"):
    TABLE[("GET", f"/api/v1/environment/{{namespace}}/{{name}}/{_path}")] = (
        "lab/env",
        {"environment::read"},
        {},
        {},
        None,
    )
for _path in (
    "logs/",
    "logs/stream",
    "yaml/",
    "lockfile/",
    "conda-lock.yml",
    "conda-lock.yaml",
    "archive/",
    "installer/",
    "docker/",
    "pixi.lock",
):
    TABLE[("GET", f"/api/v1/build/{{build_id}}/{_path}")] = ("lab/env", {"environment::read"}, {}, {}, None)

# persona -> (token bindings, primary namespace, permissions on lab and lab/*, on anything else)
PERSONAS = {
    "anonymous": (None, None, set(), set()),
    "other": ({"elsewhere/*": ["admin"]}, "elsewhere", set(), set()),
    "viewer": ({"lab/*": ["viewer"]}, "viewer", VIEWER, set()),
    "editor": ({"lab/*": ["editor"]}, "editor", EDITOR, set()),
    "member": ({}, "members", EDITOR, set()),  # editor through a database role mapping
    "admin": ({"*/*": ["admin"]}, "root", ADMIN, ADMIN),
}


def expected_allowed(persona: str, arn: str, required: set[str]) -> bool:
    _bindings, _namespace, on_lab, elsewhere = PERSONAS[persona]
    granted = on_lab if arn == "lab" or arn.startswith("lab/") else elsewhere
    return required <= granted


@pytest.fixture(params=[1, 2], ids=["v1-mappings", "v2-mappings"])
def store_settings(request, store_settings: dict[str, Any]) -> dict[str, Any]:
    store_settings["RBACAuthorizationBackend"] = {"role_mappings_version": request.param}
    return store_settings


def test_every_route_for_every_persona(client, worker, store_settings) -> None:
    login(client)
    build_id = submit(client, "name: env\ndependencies: [hello-py]\n", namespace="lab")
    assert wait_for_build(client, build_id)["status"] == "COMPLETED"
    client.post("/api/v1/namespace/members/")
    if store_settings["RBACAuthorizationBackend"]["role_mappings_version"] == 1:
        client.put("/api/v1/namespace/members/", json={"role_mappings": {"lab/*": ["editor"]}})
    else:
        client.post("/api/v1/namespace/lab/role", json={"other_namespace": "members", "role": "editor"})
    client.cookies.clear()

    backend = client.app.state.authentication.authentication
    served = sorted(set(served_routes(client.app.routes)))
    api = [(method, path) for path, method in served if path.startswith("/api/")]
    missing = [route for route in api if route not in TABLE]
    assert not missing, f"routes without a row in the authorization matrix: {missing}"
    # destructive rows last, so that what they remove is not needed by the others
    api.sort(key=lambda route: route[0] == "DELETE")

    failures = []
    for method, path in api:
        rule = TABLE[(method, path)]
        for persona, (bindings, primary, _lab, _else) in PERSONAS.items():
            headers = {}
            if bindings is not None:
                token = backend.encrypt_token(AuthenticationToken(primary, bindings))
                headers["Authorization"] = f"Bearer {token}"
            values = {"namespace": "lab", "name": "env", "environment": "env", "build_id": build_id}
            query: dict[str, Any] = {}
            body = None
            if isinstance(rule, tuple):
                arn, required, overrides, query, body = rule
                values.update(overrides)
            url = path.format(**values)
            kwargs: dict[str, Any] = {"params": query, "headers": headers}
            if body is not None:
                kwargs["json"] = body
            response = client.request(method, url, **kwargs)
            status = response.status_code
            if rule in (OPEN, FILTERED):
                ok = status == 200
            elif rule == AUTHENTICATED:
                ok = status == (401 if bindings is None else 200)
            else:
                allowed = expected_allowed(persona, arn, required)
                ok = status not in (401, 403) and status < 500 if allowed else status == 403
            if not ok:
                failures.append(f"{persona:9} {method} {url}: {status} {response.text[:120]}")
    assert not failures, "\n".join(failures)
