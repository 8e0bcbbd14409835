"""A catalogue of bad inputs over HTTP: each is a 4xx naming the problem, changes nothing, and
is answered within a second.

"Changes nothing" is checked against every table of the database and every file of the store
and of the artifact storage, before and after each request.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from conftest import login
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from conda_store_server.app import CondaStore
from conda_store_server.db.models import Base, Build, BuildStatus, Environment
from conda_store_server.limits import (
    MAX_BODY_BYTES,
    MAX_DESCRIPTION_CHARACTERS,
    MAX_METADATA_BYTES,
    MAX_SETTING_ITEMS,
)
from conda_store_server.service import register_environment
from conda_store_server.specification import MAX_SPECIFICATION_BYTES, parse_specification

ANSWER_SECONDS = 1.0


@dataclass
class Case:
    """One bad request: what is sent, as whom, and what the answer must say."""

    name: str
    method: str
    path: str
    says: str  # a substring of the answer that names the problem
    body: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] | None = None
    anonymous: bool = False
    status: int | None = None  # a particular 4xx, when one is owed


def spec(text: str, **extra: Any) -> dict[str, Any]:
    return {"specification": text, **extra}


def post_spec(name: str, text: str, says: str, status: int = 400, **extra: Any) -> Case:
    return Case(name, "POST", "/api/v1/specification/", says, body=spec(text, **extra), status=status)


BILLION_LAUGHS = "a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
    f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n"
    for i in range(8)
)
NESTED = "name: deep\ndependencies: " + "[" * 5000 + "]" * 5000 + "\n"
LOCKFILE_HEADER = (
    "version: 1\nmetadata:\n  content_hash: {linux-64: x}\n"
    "  channels: [{url: conda-forge, used_env_vars: []}]\n"
    "  platforms: [linux-64]\n  sources: [environment.yaml]\npackage:\n"
)


def lockfile_with(url: str) -> str:
    return LOCKFILE_HEADER + (
        "  - name: evil\n    version: '1'\n    manager: conda\n    platform: linux-64\n    optional: false\n"
        f"    dependencies: {{}}\n    url: {url}\n    hash: {{md5: 0123456789abcdef0123456789abcdef}}\n"
    )


def forged_token(secret: str, **claims: Any) -> str:
    payload = {"primary_namespace": "alice", "role_bindings": {"*/*": ["admin"]}, **claims}
    payload.setdefault("exp", datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))
    return jwt.encode(payload, secret, algorithm="HS256")


def catalogue() -> list[Case]:
    cases: list[Case] = []
    add = cases.append

    # ---------------------------------------------------------------- YAML that is not a specification
    for name, text, says in [
        ("unclosed flow list", "name: x\ndependencies: [curl\n", "Invalid YAML"),
        ("tab indentation", "name: x\ndependencies:\n\t- curl\n", "Invalid YAML"),
        ("unclosed quote", "name: 'x\n", "Invalid YAML"),
        ("mapping inside a list badly", "name: x\ndependencies:\n  - a: b: c\n", "Invalid YAML"),
        ("a list, not a mapping", "- curl\n- python\n", "must be a YAML mapping"),
        ("a string, not a mapping", "just words", "must be a YAML mapping"),
        ("a number, not a mapping", "42", "must be a YAML mapping"),
        ("empty", "", "is empty"),
        ("only a comment", "# nothing\n", "is empty"),
        ("null", "null\n", "is empty"),
        ("python object tag", "!!python/object/apply:os.system ['id']\n", "Invalid YAML"),
        ("binary garbage", "\x00\x01\x02\x03", "Invalid YAML"),
        ("billion laughs", BILLION_LAUGHS, "name"),
        ("deeply nested", NESTED, "nested too deeply"),
        ("a value that is a mapping key", "name: x: y\n", "Invalid YAML"),
    ]:
        add(post_spec(f"yaml: {name}", text, says))

    # ---------------------------------------------------------------- wrong types and shapes
    for name, text, says in [
        ("no name", "dependencies: [curl]\n", "name"),
        ("name is a number", "name: 12\ndependencies: [curl]\n", "name"),
        ("name is a list", "name: [a, b]\n", "name"),
        ("dependencies is a string", "name: x\ndependencies: curl\n", "dependencies"),
        ("dependencies is a mapping", "name: x\ndependencies: {curl: 1}\n", "dependencies"),
        ("dependency is a number", "name: x\ndependencies: [12]\n", "conda package specification string"),
        ("dependency is null", "name: x\ndependencies: [null]\n", "dependencies"),
        ("bad match spec", "name: x\ndependencies: ['curl >=>=1']\n", "Invalid conda package dependency"),
        ("empty dependency", "name: x\ndependencies: ['']\n", "Invalid conda package dependency"),
        ("pip is not a list", "name: x\ndependencies: [{pip: requests}]\n", "pip"),
        ("bad pip requirement", "name: x\ndependencies: [{pip: ['requests ==== 1']}]\n", "pep-0508"),
        ("unsupported pip option", "name: x\ndependencies: [{pip: ['--editable .']}]\n", "supported options"),
        ("pip option injection", "name: x\ndependencies: [{pip: [\"--index-url a\\nb\"]}]\n", "--index-url"),
        ("channels is a string", "name: x\nchannels: conda-forge\n", "channels"),
        ("channel with a space", "name: x\nchannels: ['conda forge']\n", "Invalid conda channel"),
        ("variables is a list", "name: x\nvariables: [a]\n", "variables"),
        ("variable is a float", "name: x\nvariables: {CUDA: 11.8}\n", "quote it"),
        ("variable name with =", "name: x\nvariables: {'A=B': '1'}\n", "Invalid variable name"),
        ("description is a list", "name: x\ndescription: [a]\n", "description"),
        ("misspelled dependencies", "name: x\ndependecies: [curl]\n", "dependencies"),
    ]:
        add(post_spec(f"type: {name}", text, says))
    for name, body, says in [
        ("specification is a list", {"specification": ["name: x"]}, "specification"),
        ("specification is a number", {"specification": 12}, "specification"),
        ("namespace is a number", spec("name: x\n", namespace=12), "namespace"),
        ("is_lockfile is not a boolean", spec("name: x\n", is_lockfile="maybe"), "is_lockfile"),
        ("body is a list", ["name: x"], "dictionary"),
        ("body is a string", "name: x", "dictionary"),
    ]:
        add(Case(f"body: {name}", "POST", "/api/v1/specification/", says, body=body, status=422))
    add(
        Case(
            "body: not JSON",
            "POST",
            "/api/v1/specification/",
            "JSON",
            content=b"name: x\n",
            headers={"content-type": "application/json"},
            status=422,
        )
    )
    add(
        Case(
            "body: invalid UTF-8",
            "POST",
            "/api/v1/specification/",
            "parsing the body",
            content=b'{"specification": "\xff\xfe"}',
            headers={"content-type": "application/json"},
            status=400,
        )
    )

    # ---------------------------------------------------------------- names
    for label, name in [
        ("slash", "a/b"),
        ("dot dot", ".."),
        ("dot", "."),
        ("contains dot dot", "a..b"),
        ("space", "a b"),
        ("NUL", "a\x00b"),
        ("newline", "a\nb"),
        ("non-ASCII", "caf\u00e9"),
        ("too long", "a" * 256),
        ("backslash", "a\\b"),
    ]:
        add(post_spec(f"environment name: {label}", json.dumps({"name": name}), "Invalid environment name"))
        add(
            post_spec(
                f"namespace name: {label}",
                "name: ok\ndependencies: [curl]\n",
                "Invalid namespace name",
                namespace=name,
            )
        )
    quoted_names = [("space", "a%20b"), ("dot dot", "%2E%2E"), ("non-ASCII", "caf%C3%A9"), ("NUL", "a%00b")]
    for label, quoted in quoted_names:
        path = f"/api/v1/namespace/{quoted}/"
        add(Case(f"namespace route: {label}", "POST", path, "Invalid namespace name"))

    # ---------------------------------------------------------- NUL characters (PostgreSQL refuses them)
    for path, params in [
        ("/api/v1/environment/", {"search": "\x00"}),
        ("/api/v2/environment/", {"namespace": "a\x00b"}),
        ("/api/v1/package/", {"search": "py\x00"}),
        ("/api/v1/build/", {"name": "\x00"}),
    ]:
        add(Case(f"NUL in the query of {path}", "GET", path, "NUL character", params=params, status=400))
        add(
            Case(
                f"environment route: {label}",
                "DELETE",
                f"/api/v1/environment/alice/{quoted}/",
                "Invalid environment name",
            )
        )
    add(
        Case(
            "lockfile environment name",
            "POST",
            "/api/v1/specification/",
            "Invalid environment name",
            body=spec(lockfile_with("https://conda.anaconda.org/conda-forge/linux-64/evil-1-0.conda"),
                      is_lockfile=True, environment_name="../up"),
            status=400,
        )
    )

    # ---------------------------------------------------------------- sizes
    add(post_spec("size: specification", "name: x\ndescription: '" + "x" * MAX_SPECIFICATION_BYTES + "'\n",
                  "too large", status=413))
    add(
        Case(
            "size: body",
            "POST",
            "/api/v1/specification/",
            "request body larger than",
            content=b"{" + b" " * (MAX_BODY_BYTES + 1) + b"}",
            headers={"content-type": "application/json"},
            status=413,
        )
    )
    add(
        Case(
            "size: content-length that is not a number",
            "POST",
            "/api/v1/specification/",
            "request body larger than",
            content=b"{}",
            headers={"content-type": "application/json", "content-length": "abc"},
            status=413,
        )
    )
    big_metadata = {"blob": "x" * MAX_METADATA_BYTES}
    add(Case("size: metadata", "PUT", "/api/v1/namespace/alice/", "64 KiB", body={"metadata": big_metadata},
             status=413))
    add(Case("size: metadata route", "PUT", "/api/v1/namespace/alice/metadata", "64 KiB", body=big_metadata,
             status=413))
    add(Case("size: settings list", "PUT", "/api/v1/setting/alice/", str(MAX_SETTING_ITEMS),
             body={"conda_included_packages": ["p"] * (MAX_SETTING_ITEMS + 1)}, status=413))
    add(Case("size: settings body", "PUT", "/api/v1/setting/", "64 KiB",
             body={"conda_default_channels": ["c" * 70_000]}, status=413))
    add(Case("size: environment description", "PUT", "/api/v1/environment/alice/existing/",
             str(MAX_DESCRIPTION_CHARACTERS), body={"description": "x" * (MAX_DESCRIPTION_CHARACTERS + 1)},
             status=422))
    add(post_spec("size: specification description",
                  "name: x\ndescription: '" + "x" * (MAX_DESCRIPTION_CHARACTERS + 1) + "'\n",
                  str(MAX_DESCRIPTION_CHARACTERS)))
    add(Case("size: lockfile description", "POST", "/api/v1/specification/", str(MAX_DESCRIPTION_CHARACTERS),
             body=spec("version: 1\n", is_lockfile=True, environment_name="l",
                       environment_description="x" * (MAX_DESCRIPTION_CHARACTERS + 1)), status=422))
    add(Case("size: role mappings", "PUT", "/api/v1/namespace/alice/", "1000",
             body={"role_mappings": {f"u{n}/*": ["viewer"] for n in range(1001)}}, status=422))
    add(Case("size: roles of one entity", "PUT", "/api/v1/namespace/alice/", "10",
             body={"role_mappings": {"u/*": ["viewer"] * 11}}, status=422))
    add(Case("size: login username", "POST", "/login/", "255", body={"username": "u" * 256, "password": "p"},
             status=422, anonymous=True))
    add(Case("size: page size", "GET", "/api/v1/environment/", "size", params={"size": -1}, status=422))

    # ---------------------------------------------------------------- URLs a worker must not fetch
    for label, channel in [
        ("file", "file:///etc"),
        ("file of a server path", "file:///var/lib/postgresql"),
        ("loopback redis", "http://127.0.0.1:6379/"),
        ("loopback name", "http://localhost:5432/x"),
        ("link-local metadata", "http://169.254.169.254/latest/meta-data"),
        ("private 10/8", "http://10.1.2.3/channel"),
        ("private 192.168/16", "https://192.168.0.10/channel"),
        ("IPv6 loopback", "http://[::1]:6379/"),
        ("unspecified address", "http://0.0.0.0:8080/"),
    ]:
        text = f"name: x\nchannels: ['{channel}']\ndependencies: [python]\n"
        add(post_spec(f"channel: {label}", text, channel))
        add(
            post_spec(
                f"lockfile url: {label}",
                lockfile_with(f"{channel.rstrip('/')}/linux-64/evil-1-0.conda"),
                channel.rstrip("/"),
                is_lockfile=True,
                environment_name="locked",
            )
        )
    pip_index = "name: x\ndependencies: [python, {pip: ['--index-url http://127.0.0.1:6379/', requests]}]\n"
    add(post_spec("pip index: loopback", pip_index, "http://127.0.0.1:6379/"))

    # ---------------------------------------------------------------- forged and bad tokens
    for label, header in [
        ("garbage bearer", "Bearer not.a.token"),
        ("other secret", f"Bearer {forged_token('some-other-secret-' + 'x' * 32)}"),
        ("alg none", "Bearer " + base64.urlsafe_b64encode(b'{"alg":"none"}').decode().rstrip("=") + "."
         + base64.urlsafe_b64encode(b'{"primary_namespace":"x","role_bindings":{"*/*":["admin"]}}')
         .decode().rstrip("=") + "."),
        ("basic with a wrong password", "Basic " + base64.b64encode(b"alice:wrong").decode()),
        ("basic not base64", "Basic !!!"),
    ]:
        add(Case(f"token: {label}", "POST", "/api/v1/namespace/forged/", "not authorized",
                 headers={"Authorization": header}, anonymous=True, status=403))
    add(Case("token: anonymous cannot mint", "POST", "/api/v1/token/", "log in", body={}, anonymous=True,
             status=401))
    add(Case("token: more than the issuer", "POST", "/api/v1/token/", "invalid role",
             body={"role_bindings": {"*/*": ["superuser"]}}, status=400))
    add(Case("token: expiry in the past", "POST", "/api/v1/token/", "in the past",
             body={"expiration": "2000-01-01T00:00:00Z"}, status=400))
    add(Case("token: bad entity", "POST", "/api/v1/token/", "invalid entity",
             body={"role_bindings": {"no-slash": ["viewer"]}}, status=400))
    add(Case("login: wrong password", "POST", "/login/", "Invalid authentication credentials",
             body={"username": "alice", "password": "nope"}, anonymous=True, status=403))
    add(Case("anonymous write", "POST", "/api/v1/specification/", "not authorized",
             body=spec("name: anon\ndependencies: [curl]\n", namespace="default"), anonymous=True,
             status=403))

    # ---------------------------------------------------------------- paths and ids
    for label, path in [
        ("static traversal", "/static/..%2F..%2F..%2Fetc%2Fpasswd"),
        ("static traversal, plain", "/static/../../etc/passwd"),
        ("unknown route", "/api/v1/nothing-here/"),
        ("missing namespace", "/api/v1/namespace/nobody/"),
        ("missing environment", "/api/v1/environment/alice/nothing/"),
        ("missing build", "/api/v1/build/424242/"),
        ("missing build logs", "/api/v1/build/424242/logs/"),
        ("no current build lockfile", "/api/v1/environment/alice/nothing/lockfile/"),
    ]:
        add(Case(f"path: {label}", "GET", path, "" if label.startswith(("static", "unknown")) else "not",
                 status=404))
    absurd_ids = [("negative", "-1"), ("beyond 32 bits", str(2**31)), ("beyond 64 bits", str(2**70)),
                  ("not a number", "abc"), ("float", "1.5"), ("exponent", "1e10")]
    for label, build_id in absurd_ids:
        add(Case(f"id: {label}", "GET", f"/api/v1/build/{build_id}/", "build_id", status=422))

    # ---------------------------------------------------------------- requests the state refuses
    add(Case("cancel a completed build", "PUT", "/api/v1/build/{completed}/cancel/",
             "only queued or building", status=409))
    add(Case("delete the current build", "DELETE", "/api/v1/build/{completed}/", "current build", status=400))
    add(Case("current build of another environment", "PUT", "/api/v1/environment/alice/other/",
             "another environment", body={"build_id": "{completed}"}, status=400))
    add(Case("unknown sort key", "GET", "/api/v1/environment/", "sort_by", params={"sort_by": "secret"},
             status=400))
    add(Case("unknown role in a v2 mapping", "POST", "/api/v1/namespace/alice/role", "invalid role",
             body={"other_namespace": "alice", "role": "owner"}, status=400))
    add(Case("v2 mapping to a missing namespace", "POST", "/api/v1/namespace/alice/role", "not found",
             body={"other_namespace": "ghost", "role": "viewer"}, status=400))
    add(Case("bad v1 mapping entity", "PUT", "/api/v1/namespace/alice/", "invalid entity",
             body={"role_mappings": {"no-slash": ["viewer"]}}, status=400))
    add(Case("unknown v1 role", "PUT", "/api/v1/namespace/alice/", "invalid role",
             body={"role_mappings": {"bob/*": ["owner"]}}, status=400))
    add(Case("duplicate namespace", "POST", "/api/v1/namespace/alice/", "already exists", status=409))
    add(Case("unknown setting", "PUT", "/api/v1/setting/", "not_a_setting", body={"not_a_setting": 1},
             status=400))
    add(Case("setting of the wrong type", "PUT", "/api/v1/setting/", "conda_included_packages",
             body={"conda_included_packages": "curl"}, status=400))
    add(Case("global-only setting on a namespace", "PUT", "/api/v1/setting/alice/", "default_uid",
             body={"default_uid": 0}, status=400))
    add(Case("environment setting without namespace level", "PUT", "/api/v1/setting/alice/existing/",
             "conda_max_solve_time", body={"conda_max_solve_time": 1}, status=400))
    add(Case("solve with pip", "GET", "/api/v1/specification/", "pip", params={"conda": "curl", "pip": "x"},
             status=400))
    add(Case("solve from a loopback channel", "GET", "/api/v1/specification/", "http://127.0.0.1:6379",
             params={"conda": "curl", "channel": "http://127.0.0.1:6379/"}, status=400))
    add(Case("solve with a bad match spec", "GET", "/api/v1/specification/", "Invalid conda package",
             params={"conda": "curl >=>=1"}, status=400))
    add(Case("required package missing", "POST", "/api/v1/specification/", "required",
             body=spec("name: x\ndependencies: [curl]\n", namespace="needy"), status=400))
    add(Case("disallowed channel by policy", "POST", "/api/v1/specification/", "not allowed",
             body=spec("name: x\nchannels: [https://conda.anaconda.org/bioconda]\ndependencies: [python]\n",
                       namespace="strict"), status=400))
    add(post_spec("lockfile of version 2", "version: 2\n", "Unsupported lockfile version", is_lockfile=True,
                  environment_name="v2"))
    add(post_spec("lockfile without manager", LOCKFILE_HEADER + "  - name: a\n    version: '1'\n", "manager",
                  is_lockfile=True, environment_name="nomanager"))
    return cases


def snapshot(conda_store: CondaStore) -> dict[str, Any]:
    """Row counts of every table, and every file of the store and the storage, with its size."""
    with conda_store.session() as session:
        counts = {
            table.name: session.scalar(select(func.count()).select_from(table))
            for table in Base.metadata.sorted_tables
        }
    files = {}
    for root in (conda_store.store_directory, conda_store.storage.storage_path):
        for directory, _, names in os.walk(root):
            for name in names:
                path = Path(directory) / name
                if path.suffix in (".sqlite", ".sqlite-wal", ".sqlite-shm") or ".sqlite" in path.name:
                    continue  # the database is compared by its rows
                files[str(path)] = path.lstat().st_size
    return {"rows": counts, "files": files}


def prepare(conda_store: CondaStore) -> dict[str, str]:
    """alice/existing with a completed current build, alice/other, and a strict namespace policy."""
    with conda_store.session() as session:
        build = register_environment(session, conda_store, "alice", parse_specification("name: existing\n"))
        assert build is not None
        register_environment(session, conda_store, "alice", parse_specification("name: other\n"))
        session.flush()
        session.execute(update(Build).where(Build.id == build.id).values(status=BuildStatus.COMPLETED))
        existing = update(Environment).where(Environment.name == "existing")
        session.execute(existing.values(current_build_id=build.id))
        completed = build.id
    return {"completed": str(completed)}


def resolve(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str) and value.startswith("{") and value.endswith("}") and value[1:-1] in names:
        return int(names[value[1:-1]])
    if isinstance(value, str):
        return value.format(**names) if "{completed}" in value else value
    if isinstance(value, dict):
        return {key: resolve(item, names) for key, item in value.items()}
    return value


def answer_text(response: Any) -> str:
    try:
        return json.dumps(response.json())
    except ValueError:
        return response.text


def test_the_catalogue_of_bad_inputs(client: TestClient, conda_store: CondaStore) -> None:
    cases = catalogue()
    assert len(cases) >= 100, len(cases)
    names = prepare(conda_store)
    login(client)
    client.put("/api/v1/setting/strict/", json={"conda_allowed_channels": ["conda-forge"]})
    client.put("/api/v1/setting/needy/", json={"conda_required_packages": ["python"]})
    anonymous = TestClient(client.app)
    problems = []
    for case in cases:
        before = snapshot(conda_store)
        caller = anonymous if case.anonymous else client
        started = time.monotonic()
        response = caller.request(
            case.method,
            resolve(case.path, names),
            json=resolve(case.body, names) if case.content is None and case.body is not None else None,
            content=case.content,
            headers=case.headers,
            params=case.params,
        )
        elapsed = time.monotonic() - started
        text = answer_text(response)
        after = snapshot(conda_store)
        if not 400 <= response.status_code < 500 or (case.status and response.status_code != case.status):
            problems.append(f"{case.name}: {response.status_code} {text[:300]}")
        elif case.says not in text:
            problems.append(f"{case.name}: the answer does not say {case.says!r}: {text[:300]}")
        elif before != after:
            problems.append(f"{case.name}: it changed something: {_difference(before, after)}")
        elif elapsed > ANSWER_SECONDS:
            problems.append(f"{case.name}: answered in {elapsed:.2f} s")
        elif len(response.content) > 64 * 1024:
            problems.append(f"{case.name}: a {len(response.content)}-byte answer")
    assert not problems, "\n".join(problems)


def _difference(before: dict[str, Any], after: dict[str, Any]) -> str:
    rows = {k: (before["rows"].get(k), v) for k, v in after["rows"].items() if before["rows"].get(k) != v}
    files = set(before["files"].items()) ^ set(after["files"].items())
    return f"rows {rows}, files {sorted(files)[:5]}"
