"""pixi lockfiles: uploaded (formats 6 and 7) and downloaded (GET /api/v1/build/{id}/pixi.lock)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import rattler
import yaml
from conftest import login, submit, wait_for_build
from fastapi.testclient import TestClient

from conda_store_server.exception import ConflictError, SpecificationError
from conda_store_server.pixi_lock import conda_lock_from_pixi, pixi_from_conda_lock
from conda_store_server.specification import parse_lockfile_specification

CHANNEL = "https://conda.example.org/forge"
SHA = "5a" * 32
MD5 = "d" * 32
WHEEL = "https://files.example.org/packages/requests-2.31.0-py3-none-any.whl"

# As pixi writes format 6: conda packages named by their URL, metadata in `packages`, one PyPI
# package, two environments.
PIXI_V6 = f"""\
version: 6
environments:
  default:
    channels:
    - url: {CHANNEL}/
    indexes:
    - https://pypi.org/simple
    packages:
      linux-64:
      - conda: {CHANNEL}/linux-64/python-3.12.1-h1_0.conda
      - conda: {CHANNEL}/noarch/tzdata-2024a-h0_0.conda
      - pypi: {WHEEL}
  docs:
    channels:
    - url: {CHANNEL}/
    packages:
      osx-arm64:
      - conda: {CHANNEL}/noarch/tzdata-2024a-h0_0.conda
packages:
- conda: {CHANNEL}/linux-64/python-3.12.1-h1_0.conda
  sha256: {SHA}
  md5: {MD5}
  depends:
  - tzdata
  - libzlib >=1.2.13,<2.0a0
  size: 100
- conda: {CHANNEL}/noarch/tzdata-2024a-h0_0.conda
  sha256: {"6b" * 32}
  md5: {"e" * 32}
  size: 10
- pypi: {WHEEL}
  name: requests
  version: 2.31.0
  sha256: {"7c" * 32}
  requires_dist:
  - idna<4,>=2.5
  - urllib3>=1.21.1,<3
  - pysocks!=1.5.7,>=1.5.6 ; extra == 'socks'
  - numpy>=1.21 ; python_full_version < '3.10'
  - numpy>=1.23 ; python_full_version >= '3.10'
  requires_python: '>=3.7'
"""


def pixi_v7(packages: str, platform: str = "linux-64", extra_packages: str = "") -> str:
    return (
        f"version: 7\nplatforms:\n- name: {platform}\nenvironments:\n  default:\n    channels:\n"
        f"    - url: {CHANNEL}/\n    packages:\n      {platform}:\n{packages}packages:\n{extra_packages}"
    )


def by_name(lock: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {package["name"]: package for package in lock["package"]}


# ------------------------------------------------------------------------------ conversion
def test_a_pixi_v6_environment_becomes_conda_lock_v1() -> None:
    lock = conda_lock_from_pixi(PIXI_V6)
    assert lock is not None
    assert lock["version"] == 1
    assert lock["metadata"]["platforms"] == ["linux-64"]
    assert lock["metadata"]["channels"] == [{"url": CHANNEL, "used_env_vars": []}]
    assert lock["metadata"]["sources"] == ["pixi.lock"]
    packages = by_name(lock)
    assert set(packages) == {"python", "tzdata", "requests"}
    python = packages["python"]
    assert python == {
        "name": "python",
        "version": "3.12.1",
        "manager": "conda",
        "platform": "linux-64",
        "dependencies": {"tzdata": "*", "libzlib": ">=1.2.13,<2.0a0"},
        "url": f"{CHANNEL}/linux-64/python-3.12.1-h1_0.conda",
        "hash": {"md5": MD5, "sha256": SHA},
        "build": "h1_0",
        "category": "main",
        "optional": False,
    }
    requests = packages["requests"]
    assert requests["manager"] == "pip" and requests["platform"] == "linux-64"
    assert requests["url"] == WHEEL and requests["version"] == "2.31.0"
    assert requests["hash"] == {"sha256": "7c" * 32}
    # the requirements of the `socks` extra are not installed; numpy's differ by interpreter
    assert requests["dependencies"] == {"idna": "<4,>=2.5", "urllib3": "<3,>=1.21.1", "numpy": ""}
    # what the service does with any uploaded lockfile accepts it
    parsed = parse_lockfile_specification(json.dumps(lock), "from-pixi", None)
    assert parsed.name == "from-pixi"


def test_the_request_chooses_the_environment() -> None:
    lock = conda_lock_from_pixi(PIXI_V6, "docs")
    assert lock is not None
    assert lock["metadata"]["platforms"] == ["osx-arm64"]
    assert [(p["name"], p["platform"]) for p in lock["package"]] == [("tzdata", "osx-arm64")]


def test_a_format_7_lock_with_a_named_platform_uses_its_subdir() -> None:
    text = (
        "version: 7\nplatforms:\n- name: linux-cuda\n  subdir: linux-64\n  virtual_packages:\n"
        f"  - __cuda=12\nenvironments:\n  default:\n    channels:\n    - url: {CHANNEL}/\n"
        f"    packages:\n      linux-cuda:\n      - conda: {CHANNEL}/linux-64/cudart-12.0-0.conda\n"
        f"packages:\n- conda: {CHANNEL}/linux-64/cudart-12.0-0.conda\n  sha256: {SHA}\n  md5: {MD5}\n"
    )
    lock = conda_lock_from_pixi(text)
    assert lock is not None
    assert lock["metadata"]["platforms"] == ["linux-64"]
    assert by_name(lock)["cudart"]["platform"] == "linux-64"


def test_an_empty_environment_keeps_its_platforms() -> None:
    text = (
        f"version: 7\nplatforms:\n- name: linux-64\nenvironments:\n  default:\n    channels:\n"
        f"    - url: {CHANNEL}/\n    packages: {{}}\npackages: []\n"
    )
    lock = conda_lock_from_pixi(text)
    assert lock is not None
    assert lock["metadata"]["platforms"] == ["linux-64"] and lock["package"] == []


@pytest.mark.parametrize(
    "text",
    [
        "version: 1\nmetadata: {}\npackage: []\n",  # conda-lock v1
        '{"version": 1, "package": []}',
        "- a list\n",
        "not: [valid yaml",
        "",
    ],
)
def test_other_text_is_left_to_the_conda_lock_parser(text: str) -> None:
    assert conda_lock_from_pixi(text) is None


CONDA_ENTRY = f"      - conda: {CHANNEL}/linux-64/a-1.0-0.conda\n"
CONDA_PACKAGE = f"- conda: {CHANNEL}/linux-64/a-1.0-0.conda\n  sha256: {SHA}\n  md5: {MD5}\n"


@pytest.mark.parametrize(
    ("text", "environment", "message"),
    [
        (PIXI_V6, "lint", "The pixi lockfile has no environment 'lint'; it has ['default', 'docs']"),
        (PIXI_V6.replace("version: 6", "version: 5"), None, "Unsupported pixi lockfile version 5"),
        (PIXI_V6.replace("version: 6", "version: 8"), None, "Unsupported pixi lockfile version 8"),
        (PIXI_V6.replace("version: 6", "version: '6'"), None, "Unsupported pixi lockfile version '6'"),
        (PIXI_V6.replace("version: 6\n", ""), None, "The pixi lockfile has no `version`"),
        ("version: 7\nenvironments: [1]\npackages: []\n", None, "Invalid pixi lockfile: invalid type"),
        ("version: 7\nplatforms: []\nenvironments: {}\n", None, "Invalid pixi lockfile: missing field"),
        (pixi_v7(CONDA_ENTRY), None, "refers to a package that does not exist"),
        (
            pixi_v7(CONDA_ENTRY, extra_packages=CONDA_PACKAGE.replace(f"  md5: {MD5}\n", "")),
            None,
            "Conda package a (https://conda.example.org/forge/linux-64/a-1.0-0.conda) has no md5 hash",
        ),
        (
            (  # format 6 as pixi writes a package built from the workspace's recipe
                "version: 6\nenvironments:\n  default:\n    channels: []\n    packages:\n      linux-64:\n"
                "      - conda: ./recipe\npackages:\n- conda: ./recipe\n  name: mine\n  version: 0.1.0\n"
                f"  build: h0_0\n  subdir: linux-64\n  input:\n    hash: {SHA}\n    globs: []\n"
            ),
            None,
            "Conda package mine is built from source (./recipe)",
        ),
        (
            pixi_v7(
                "      - conda: ./pkgs/a-1.0-0.conda\n",
                extra_packages=CONDA_PACKAGE.replace(f"{CHANNEL}/linux-64", "./pkgs")
                + "  subdir: linux-64\n",
            ),
            None,
            "Conda package a cannot be located (./pkgs/a-1.0-0.conda)",
        ),
        (
            pixi_v7("      - pypi: ./dist/mine-1.0-py3-none-any.whl\n", extra_packages=(
                "- pypi: ./dist/mine-1.0-py3-none-any.whl\n  name: mine\n  version: '1.0'\n"
            )),
            None,
            "PyPI package mine is a local path (./dist/mine-1.0-py3-none-any.whl)",
        ),
    ],
)
def test_unusable_pixi_lockfiles_name_the_problem(text: str, environment: str | None, message: str) -> None:
    with pytest.raises(SpecificationError) as error:
        conda_lock_from_pixi(text, environment)
    assert message in error.value.message


def test_a_conda_lock_with_pip_packages_becomes_a_pixi_lockfile() -> None:
    lock = conda_lock_from_pixi(PIXI_V6)
    assert lock is not None
    requests = by_name(lock)["requests"]
    requests["dependencies"]["charset-normalizer"] = "*"  # as conda-lock writes "any version"
    text = pixi_from_conda_lock(lock)
    document = yaml.safe_load(text)
    assert document["version"] == 7
    assert list(document["environments"]) == ["default"]
    pypi = next(p for p in document["packages"] if "pypi" in p)
    assert pypi["pypi"] == WHEEL and pypi["sha256"] == "7c" * 32
    assert "charset-normalizer" in pypi["requires_dist"]
    # and back: the same packages, URLs and hashes
    again = conda_lock_from_pixi(text)
    assert again is not None
    assert {n: (p["url"], p["hash"]) for n, p in by_name(again).items()} == {
        n: (p["url"], p["hash"]) for n, p in by_name(lock).items()
    }


def test_an_empty_conda_lock_keeps_its_platforms_as_pixi() -> None:
    lock = {
        "version": 1,
        "metadata": {
            "content_hash": {"linux-64": "x"},
            "channels": [{"url": CHANNEL, "used_env_vars": []}],
            "platforms": ["linux-64"],
            "sources": ["environment.yaml"],
        },
        "package": [],
    }
    text = pixi_from_conda_lock(lock)
    assert yaml.safe_load(text)["platforms"] == [{"name": "linux-64"}]
    again = conda_lock_from_pixi(text)
    assert again is not None and again["metadata"]["platforms"] == ["linux-64"]


def test_a_lockfile_rattler_cannot_read_is_a_conflict() -> None:
    with pytest.raises(ConflictError) as error:
        pixi_from_conda_lock({"metadata": {"platforms": ["linux-64"]}, "package": [{"name": "x"}]})
    assert "cannot be written as a pixi lockfile" in error.value.message


# ------------------------------------------------------------------------------ over HTTP
def post_lockfile(client: TestClient, text: str, **fields: Any) -> Any:
    body = {"specification": text, "is_lockfile": True, "environment_name": "pixi-env", **fields}
    return client.post("/api/v1/specification/", json=body)


def test_bad_pixi_uploads_are_400s_that_change_nothing(client: TestClient) -> None:
    login(client)
    evil = pixi_v7(
        "      - conda: file:///etc/evil/linux-64/evil-1.0-0.conda\n",
        extra_packages=(
            f"- conda: file:///etc/evil/linux-64/evil-1.0-0.conda\n  sha256: {SHA}\n  md5: {MD5}\n"
            "  subdir: linux-64\n"
        ),
    )
    cases = [
        (post_lockfile(client, evil), "URL 'file:///etc/evil/linux-64/evil-1.0-0.conda' is not allowed"),
        (post_lockfile(client, PIXI_V6, lockfile_environment="lint"), "it has ['default', 'docs']"),
        (post_lockfile(client, PIXI_V6.replace("version: 6", "version: 4")), "Unsupported pixi lockfile"),
        (post_lockfile(client, "environments: {}\n"), "has no `version`"),
        (post_lockfile(client, "version: 1\npackage: []\n", lockfile_environment="x"), "pixi lockfiles only"),
        (
            client.post(
                "/api/v1/specification/",
                json={"specification": "name: a\ndependencies: []\n", "lockfile_environment": "default"},
            ),
            "applies to pixi lockfiles (is_lockfile: true)",
        ),
    ]
    for response, message in cases:
        assert response.status_code == 400, response.text
        assert message in response.json()["message"]
    assert client.get("/api/v1/environment/").json()["count"] == 0
    assert client.get("/api/v1/build/").json()["count"] == 0


def test_pixi_lock_route_permissions_and_missing_lockfiles(client: TestClient) -> None:
    assert client.get("/api/v1/build/999/pixi.lock").status_code == 404
    login(client)
    build_id = submit(client, "name: queued\ndependencies: [hello-tool]\n")  # no worker: stays QUEUED
    response = client.get(f"/api/v1/build/{build_id}/pixi.lock")
    assert response.status_code == 404 and "has no LOCKFILE artifact" in response.json()["message"]
    client.cookies.clear()
    assert client.get(f"/api/v1/build/{build_id}/pixi.lock").status_code == 403


def build_packages(client: TestClient, build_id: int) -> set[tuple[str, str]]:
    response = client.get(f"/api/v1/build/{build_id}/packages/", params={"size": 100})
    assert response.status_code == 200, response.text
    return {(p["name"], p["version"]) for p in response.json()["data"]}


def lockfile_packages(client: TestClient, build_id: int) -> set[tuple[str, str, str]]:
    lock = client.get(f"/api/v1/build/{build_id}/lockfile/").json()
    return {(p["name"], p["url"], p["hash"]["sha256"]) for p in lock["package"]}


def test_a_served_pixi_lock_builds_the_same_environment(
    client: TestClient, worker: Any, tmp_path: Path
) -> None:
    login(client)
    first = submit(client, "name: original\ndependencies: [hello-py ==1.0.0, hello-tool]\n")
    assert wait_for_build(client, first)["status"] == "COMPLETED"

    response = client.get(f"/api/v1/build/{first}/pixi.lock")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/yaml")
    path = tmp_path / "pixi.lock"
    path.write_text(response.text)
    read = rattler.LockFile.from_path(path)  # a real pixi lockfile
    assert [name for name, _ in read.environments()] == ["default"]

    uploaded = post_lockfile(client, response.text, environment_name="from-pixi")
    assert uploaded.status_code == 200, uploaded.text
    second = uploaded.json()["data"]["build_id"]
    assert wait_for_build(client, second)["status"] == "COMPLETED"
    assert build_packages(client, second) == build_packages(client, first)
    assert ("hello-py", "1.0.0") in build_packages(client, second)
    assert lockfile_packages(client, second) == lockfile_packages(client, first)
