"""`python -m conda_store_server.backup`: a whole deployment backed up and restored elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _postgres_database, login, submit, wait_for_build
from test_bundle import counts, lockfile, other_deployment, pins

sqlite_source = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _postgres_database()


def backup(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conda_store_server.backup", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
    )


@sqlite_source
def test_backup_from_sqlite_restores_into_postgresql(
    client, worker, config_file: Path, store_settings, tmp_path: Path, postgres_url: str
) -> None:
    login(client)
    assert client.post("/api/v1/namespace/lab/").status_code == 200
    assert client.put("/api/v1/namespace/lab/metadata", json={"team": "physics"}).status_code == 200
    assert (
        client.put("/api/v1/namespace/lab/", json={"role_mappings": {"alice/*": ["viewer"]}}).status_code
        == 200
    )
    assert (
        client.put("/api/v1/setting/lab/", json={"conda_included_packages": ["tinylib"]}).status_code == 200
    )
    moved = wait_for_build(client, submit(client, "name: moved\ndependencies: [hello-py]\n"))
    tool = wait_for_build(client, submit(client, "name: tool\ndependencies: [hello-tool]\n", namespace="lab"))
    assert moved["status"] == tool["status"] == "COMPLETED"

    out = tmp_path / "backup.json"
    created = backup("create", f"--config={config_file}", str(out))
    assert created.returncode == 0, created.stderr
    document = json.loads(out.read_text())
    assert (document["format"], document["kind"]) == ("conda-store-bundle", "deployment")
    assert out.stat().st_mode & 0o077 == 0  # lockfiles and logs: readable by the service only

    with other_deployment(tmp_path, store_settings, postgres_url) as target:
        restored = backup("restore", f"--config={target.config_file}", str(out))
        assert restored.returncode == 0, restored.stderr
        login(target.client)
        namespace = target.client.get("/api/v1/namespace/lab/").json()["data"]
        assert namespace["metadata_"] == {"team": "physics"}
        assert [(m["entity"], m["role"]) for m in namespace["role_mappings"]] == [("alice/*", "viewer")]
        settings = target.client.get("/api/v1/setting/lab/").json()["data"]
        assert settings["conda_included_packages"] == ["tinylib"]
        for arn, source in (("alice/moved", moved), ("lab/tool", tool)):
            environment = target.client.get(f"/api/v1/environment/{arn}/").json()["data"]
            builds = target.client.get(f"/api/v1/build/?environment_id={environment['id']}").json()["data"]
            [build] = builds
            rebuilt = wait_for_build(target.client, build["id"])
            assert rebuilt["status"] == "COMPLETED", target.worker.output()
            assert (
                target.client.get(f"/api/v1/environment/{arn}/").json()["data"]["current_build_id"]
                == build["id"]
            )
            assert pins(lockfile(target.client, build["id"])) == pins(lockfile(client, source["id"]))

        # restoring again finds the names taken: refused whole, nothing added
        before = counts(target.conda_store)
        again = backup("restore", f"--config={target.config_file}", str(out))
        assert again.returncode == 1
        assert "already exists" in again.stderr
        assert counts(target.conda_store) == before


@sqlite_source
def test_restore_is_all_or_nothing(client, worker, config_file: Path, store_settings, tmp_path, postgres_url):
    """The second environment's name is taken in the target: the first is not created either."""
    login(client)
    for name in ("first", "second"):
        assert (
            wait_for_build(client, submit(client, f"name: {name}\ndependencies: [curl]\n"))["status"]
            == "COMPLETED"
        )
    out = tmp_path / "backup.json"
    assert backup("create", f"--config={config_file}", str(out)).returncode == 0
    with other_deployment(tmp_path, store_settings, postgres_url) as target:
        login(target.client)
        assert wait_for_build(target.client, submit(target.client, "name: second\ndependencies: [curl]\n"))
        before = counts(target.conda_store)
        result = backup("restore", f"--config={target.config_file}", str(out))
        assert result.returncode == 1
        assert "alice/second already exists" in result.stderr
        assert counts(target.conda_store) == before
        assert target.client.get("/api/v1/environment/alice/first/").status_code == 404


@sqlite_source
def test_bad_configurations_and_files_stop_the_command(
    conda_store, config_file: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken_config.py"
    broken.write_text("c.CondaStore.build_key_version = 7\n")
    result = backup("create", f"--config={broken}", str(tmp_path / "out.json"))
    assert result.returncode == 1 and "build_key_version" in result.stderr
    assert not (tmp_path / "out.json").exists()
    missing = backup("create", f"--config={tmp_path / 'nowhere.py'}", str(tmp_path / "out.json"))
    assert missing.returncode == 1 and "nowhere.py" in missing.stderr

    before = counts(conda_store)
    not_json = tmp_path / "not.json"
    not_json.write_text("{")
    result = backup("restore", f"--config={config_file}", str(not_json))
    assert result.returncode == 1 and "not JSON" in result.stderr
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": "conda-store-bundle", "version": 1, "kind": "deployment"}))
    result = backup("restore", f"--config={config_file}", str(wrong))
    assert result.returncode == 1 and "invalid bundle" in result.stderr
    result = backup("restore", f"--config={config_file}", str(tmp_path / "absent.json"))
    assert result.returncode == 1 and "cannot read" in result.stderr
    assert counts(conda_store) == before

    assert backup("explode", f"--config={config_file}", "x").returncode == 2
    assert backup("create", f"--config={config_file}").returncode == 2
    unwritable = backup("create", f"--config={config_file}", str(tmp_path / "no" / "such" / "dir.json"))
    assert unwritable.returncode == 1 and "cannot write" in unwritable.stderr
