"""Package summaries: from channeldata.json when channels are indexed, from info/about.json when
a build records its packages, whichever comes first; neither overwrites the other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import login, submit, wait_for_build
from sqlalchemy import select

from conda_store_server.db.models import CondaPackage
from conda_store_server.periodic.channels import index_channels
from conda_store_server.testing.channel import PackageSpec, build_channel, host_subdir

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def tool(version: str, summary: str) -> PackageSpec:
    return PackageSpec(
        name="plain-tool",
        version=version,
        noarch="generic",
        files={"share/plain-tool/VERSION": f"{version}\n"},
        summary=summary,
    )


def test_the_channel_builder_writes_channeldata(tmp_path: Path) -> None:
    channel = build_channel(tmp_path / "c", [tool("2.0", "the new one"), tool("1.0", "the old one")])
    build_channel(channel, [PackageSpec(name="other", version="1", files={"lib/other": "x\n"})])
    document = json.loads((channel / "channeldata.json").read_text())
    assert document["channeldata_version"] == 1
    assert document["subdirs"] == sorted([host_subdir(), "noarch"])
    assert document["packages"]["plain-tool"] == {
        "version": "2.0",  # a package is described by its newest version
        "summary": "the new one",
        "license": "BSD-3-Clause",
        "subdirs": ["noarch"],
    }
    assert document["packages"]["other"]["subdirs"] == [host_subdir()]  # added, the rest kept


@pytest.fixture
def store_settings(store_settings, demo_channel):
    store_settings["CondaStore"]["conda_indexed_channels"] = [demo_channel.as_uri()]
    return store_settings


def summaries(conda_store, name: str) -> dict[str, str | None]:
    with conda_store.session() as session:
        rows = session.scalars(select(CondaPackage).where(CondaPackage.name == name))
        return {row.version: row.summary for row in rows}


@SQLITE
def test_indexing_reads_summaries_from_channeldata(conda_store, client) -> None:
    index_channels(conda_store)
    assert summaries(conda_store, "hello-py") == {
        "1.0.0": "Pure Python package with a console entry point",
        "1.1.0": "Pure Python package with a console entry point",
    }
    found = client.get("/api/v1/package/", params={"search": "libssl"}).json()["data"]
    assert {p["summary"] for p in found} == {"Demo library libssl"}


@SQLITE
def test_a_build_fills_the_summary_of_packages_indexed_without_one(
    store_settings, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    channel = build_channel(tmp_path / "plain", [tool("1.0", "A plain tool")])
    (channel / "channeldata.json").unlink()  # as for a channel indexed with rattler's indexer only
    store_settings["CondaStore"]["conda_indexed_channels"] = [channel.as_uri()]
    store_settings["CondaStore"]["conda_default_channels"] = [channel.as_uri()]
    conda_store = request.getfixturevalue("conda_store")
    index_channels(conda_store)
    assert summaries(conda_store, "plain-tool") == {"1.0": None}

    client = request.getfixturevalue("client")
    request.getfixturevalue("worker")
    login(client)
    build = wait_for_build(client, submit(client, "name: plain\ndependencies: [plain-tool]\n"))
    assert build["status"] == "COMPLETED", build["status_info"]
    listed = client.get(f"/api/v1/build/{build['id']}/packages/").json()["data"]
    assert [(p["name"], p["summary"]) for p in listed] == [("plain-tool", "A plain tool")]
    assert summaries(conda_store, "plain-tool") == {"1.0": "A plain tool"}
