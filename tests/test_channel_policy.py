"""Which URLs a worker may be made to fetch: channels, lockfile packages, pip indexes.

Checked when a specification is submitted (literal addresses) and again by the worker before it
fetches anything (resolving host names), so `file:///etc` or `http://127.0.0.1:6379/` never
reach rattler, and no message tells whether a path exists on the server.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import login, submit, wait_for_build
from sqlalchemy import func, select

from conda_store_server import service
from conda_store_server.build.solve import resolve_host
from conda_store_server.db.models import Build, Environment, Specification
from conda_store_server.exception import SpecificationError
from conda_store_server.fetch_policy import (
    check_channels,
    check_lockfile_urls,
    check_package_urls,
    check_pip_index_urls,
    check_specification_urls,
)
from conda_store_server.specification import SpecificationPolicy, apply_policy, parse_specification

ADMIN = "conda_default_channels, conda_allowed_channels, conda_indexed_channels"
ONLY_ADMIN = f"only allowed when the administrator configures them ({ADMIN})"
PIP_ADMIN = "pypi_allowed_indexes, pypi_index_url, pypi_extra_index_urls"


def channel_error(channel: str, policy: SpecificationPolicy | None = None, resolve=None) -> str:
    with pytest.raises(SpecificationError) as info:
        check_channels([channel], policy or SpecificationPolicy(), resolve)
    return info.value.message


def no_lookup(host: str) -> list[str]:
    raise AssertionError(f"{host} must not be resolved: the channel is trusted or refused before")


# --------------------------------------------------------------------------- channels


def test_file_channels_are_refused_with_the_url_given() -> None:
    assert channel_error("file:///etc") == (
        "Conda channel 'file:///etc' is not allowed: file:// URLs are only allowed when the "
        f"administrator configures them ({ADMIN})"
    )


@pytest.mark.parametrize("scheme", ["s3", "ftp", "gopher", "FILE"])
def test_other_schemes_need_the_administrator(scheme: str) -> None:
    message = channel_error(f"{scheme}://bucket/channel")
    assert message.endswith(f": {scheme.lower()}:// URLs are {ONLY_ADMIN}")


@pytest.mark.parametrize(
    ("channel", "host", "kind"),
    [
        ("http://127.0.0.1:6379/", "127.0.0.1", "a loopback"),
        ("http://user:password@127.0.0.1:6379/", "127.0.0.1", "a loopback"),
        ("http://127.9.9.9/c", "127.9.9.9", "a loopback"),
        ("http://[::1]:8080/c", "::1", "a loopback"),
        ("http://[::ffff:127.0.0.1]/c", "::ffff:127.0.0.1", "a loopback"),
        ("http://2130706433/c", "2130706433", "a loopback"),  # 127.0.0.1 to a URL parser
        ("http://0x7f.1/c", "0x7f.1", "a loopback"),
        ("http://0177.0.0.1/c", "0177.0.0.1", "a loopback"),
        ("http://169.254.169.254/latest", "169.254.169.254", "a link-local"),
        ("http://[fe80::1%25eth0]/c", "fe80::1%25eth0", "a link-local"),
        ("http://10.1.2.3/c", "10.1.2.3", "a private"),
        ("https://172.16.0.1/c", "172.16.0.1", "a private"),
        ("https://192.168.1.10:8443/c", "192.168.1.10", "a private"),
        ("http://[fd12:3456::1]/c", "fd12:3456::1", "a private"),
        ("http://0.0.0.0:9000/c", "0.0.0.0", "an unspecified"),
        ("http://100.64.0.1/c", "100.64.0.1", "a non-public"),
        ("http://0/c", "0", "an unspecified"),
        ("http://0x/c", "0x", "an unspecified"),  # a URL parser reads "0x" as 0.0.0.0
    ],
)
def test_hosts_on_the_workers_network_are_refused(channel: str, host: str, kind: str) -> None:
    assert channel_error(channel, resolve=no_lookup) == (
        f"Conda channel {channel!r} is not allowed: its host {host} is {kind} address, "
        f"and such hosts are {ONLY_ADMIN}"
    )


@pytest.mark.parametrize("channel", ["http://localhost:8080/c", "http://LOCALHOST./c", "http://a.localhost/"])
def test_localhost_is_refused_by_name(channel: str) -> None:
    assert "is localhost, and such hosts are only allowed" in channel_error(channel, resolve=no_lookup)


@pytest.mark.parametrize(
    ("channel", "reason"),
    [
        # urllib sees evil.example's user info, rattler's URL parser the host 127.0.0.1
        ("http://127.0.0.1\\@example.org/c", "it contains a backslash"),
        ("http://%31%32%37.0.0.1/c", "is not a valid IPv4 address"),  # the url crate decodes it
        ("http://%6c%6fcalhost/c", "is not a plain host name"),
        ("http://example.org:port/c", "it is not a valid URL"),
        ("http:///c", "it names no host"),
        ("http://[::1/c", "it is not a valid URL"),
        ("http://[v1.x]/c", "is not a valid IPv6 address"),
        ("http://1.2.3.4.5/c", "is not a valid IPv4 address"),
        ("http://a..b/c", "is not a plain host name"),
    ],
)
def test_urls_that_parsers_read_differently_are_refused(channel: str, reason: str) -> None:
    assert reason in channel_error(channel, resolve=no_lookup)


@pytest.mark.parametrize(
    "channel",
    [
        "conda-forge",
        "bioconda/",
        "https://repo.example.org/channel",
        "http://93.184.215.14/c",
        "https://[2606:4700::1111]/c",
    ],
)
def test_names_and_public_hosts_are_allowed(channel: str) -> None:
    check_channels([channel], SpecificationPolicy())


def test_channels_the_administrator_configured_are_trusted() -> None:
    policy = SpecificationPolicy(
        conda_default_channels=("file:///srv/demo/",),
        conda_indexed_channels=("http://127.0.0.1:8000/mirror", "s3://bucket/channel"),
    )
    check_channels(
        ["file:///srv/demo", "file:///srv/demo/", "http://127.0.0.1:8000/mirror/", "s3://bucket/channel"],
        policy,
        no_lookup,
    )
    # only those channels: not a directory inside one, nor another port of the same host
    assert "file:// URLs are only allowed" in channel_error("file:///srv/demo/sub", policy)
    assert "loopback" in channel_error("http://127.0.0.1:8001/mirror", policy)


def test_allowed_channels_are_trusted_and_exclusive() -> None:
    policy = SpecificationPolicy(conda_allowed_channels=("file:///srv/demo", "conda-forge"))
    check_channels(["file:///srv/demo", "conda-forge"], policy, no_lookup)
    assert channel_error("https://repo.example.org/c", policy) == (
        "Conda channel 'https://repo.example.org/c' is not allowed: it is not one of the allowed "
        "channels ['file:///srv/demo', 'https://conda.anaconda.org/conda-forge'] (conda_allowed_channels)"
    )


def test_names_live_under_the_channel_alias_and_cannot_climb_out_of_it() -> None:
    policy = SpecificationPolicy(conda_channel_alias="file:///srv/channels/")
    check_channels(["conda-forge", "file:///srv/channels/bioconda"], policy, no_lookup)
    for name in ("../../etc", "a/%2e%2e/%2E%2E/etc", "a\\..\\..\\etc"):
        assert channel_error(name, policy).endswith("its name contains '.' or '..' path segments")


def test_the_worker_resolves_host_names() -> None:
    def resolve(addresses: dict[str, list[str]]):
        return lambda host: addresses[host]

    internal = resolve({"repo.internal": ["93.184.215.14", "10.0.0.7"]})
    assert channel_error("https://repo.internal/c", resolve=internal) == (
        "Conda channel 'https://repo.internal/c' is not allowed: its host repo.internal resolves to "
        f"10.0.0.7, a private address, and such hosts are {ONLY_ADMIN}"
    )
    check_channels(
        ["https://repo.public/c"], SpecificationPolicy(), resolve({"repo.public": ["93.184.215.14"]})
    )
    check_channels(["https://repo.internal/c"], SpecificationPolicy())  # the server does not resolve

    def unknown(host: str) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    assert channel_error("https://nowhere.example/c", resolve=unknown).endswith(
        "its host nowhere.example could not be resolved"
    )


def test_resolve_host_returns_every_address() -> None:
    addresses = resolve_host("localhost")
    assert addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses)
    with pytest.raises(OSError):
        resolve_host("no-such-host.invalid")


def test_solved_packages_of_unconfigured_channels_must_pass_the_address_rules() -> None:
    policy = SpecificationPolicy(conda_default_channels=("file:///srv/demo",))
    internal = "http://127.0.0.1:6379/x-1-0.conda"  # a repodata `base_url` can point anywhere
    check_package_urls([("file:///srv/demo/", internal)], policy, no_lookup)  # the admin's channel
    check_package_urls([("https://repo.example.org/c", "file:///srv/demo/noarch/x-1-0.conda")], policy)
    with pytest.raises(SpecificationError) as info:
        check_package_urls([("https://repo.example.org/c", internal)], policy, no_lookup)
    assert info.value.message.startswith(
        f"Package URL {internal!r} is not allowed: its host 127.0.0.1 is a loopback"
    )


# --------------------------------------------------------------------------- lockfiles


def lock_with(*urls: str, manager: str = "conda") -> dict:
    return {"package": [{"name": f"p{n}", "manager": manager, "url": url} for n, url in enumerate(urls)]}


def lockfile_error(lock: dict, policy: SpecificationPolicy) -> str:
    with pytest.raises(SpecificationError) as info:
        check_lockfile_urls(lock, policy, no_lookup)
    return info.value.message


def test_lockfile_packages_must_lie_in_an_allowed_channel() -> None:
    policy = SpecificationPolicy(conda_allowed_channels=("conda-forge", "file:///srv/demo"))
    good = "https://conda.anaconda.org/conda-forge/linux-64/a-1-0.conda"
    check_lockfile_urls(lock_with(good, "file:///srv/demo/noarch/b-1-0.conda"), policy, no_lookup)
    allowed = "['file:///srv/demo', 'https://conda.anaconda.org/conda-forge']"
    for url in (
        "https://repo.example.org/linux-64/a-1-0.conda",
        "https://conda.anaconda.org/conda-forge-evil/linux-64/a-1-0.conda",
        "file:///srv/demo/noarch/../../../etc/passwd",
        "file:///srv/demo/noarch/%2e%2e/%2e%2e/etc/passwd",
    ):
        assert lockfile_error(lock_with(good, url), policy) == (
            f"Package URL {url!r} is not allowed: it is not inside one of the allowed channels "
            f"{allowed} (conda_allowed_channels)"
        )


def test_lockfile_packages_without_allowed_channels_follow_the_address_rules() -> None:
    policy = SpecificationPolicy(conda_default_channels=("file:///srv/demo",))
    check_lockfile_urls(
        lock_with(
            "file:///srv/demo/linux-64/a-1-0.conda",
            "https://conda.anaconda.org/conda-forge/noarch/b-1-0.conda",
            "https://repo.example.org/noarch/c-1-0.conda",
        ),
        policy,
    )
    assert lockfile_error(lock_with("file:///etc/passwd"), policy) == (
        f"Package URL 'file:///etc/passwd' is not allowed: file:// URLs are {ONLY_ADMIN}"
    )
    assert "loopback" in lockfile_error(lock_with("http://127.0.0.1:6379/x.conda"), policy)
    assert "file:// URLs" in lockfile_error(lock_with("file:///srv/demo/../../etc/passwd"), policy)


def test_lockfile_pip_packages_follow_the_address_rules() -> None:
    policy = SpecificationPolicy(pypi_included_packages=("--extra-index-url http://10.0.0.5/simple",))
    wheel = "https://files.pythonhosted.org/packages/flask-3.0.0-py3-none-any.whl"
    check_lockfile_urls(lock_with(wheel, "http://10.0.0.5/simple/flask/f-1.whl", manager="pip"), policy)
    message = lockfile_error(lock_with("http://10.0.0.6/f-1.whl", manager="pip"), policy)
    assert message.endswith(
        f"private address, and such hosts are only allowed when the administrator configures "
        f"them ({PIP_ADMIN})"
    )


def test_the_first_offending_url_is_named() -> None:
    message = lockfile_error(lock_with("file:///etc/shadow", "file:///etc/passwd"), SpecificationPolicy())
    assert message.startswith("Package URL 'file:///etc/shadow' is not allowed")


# --------------------------------------------------------------------------- pip index URLs


def pip_spec(*entries: str):
    return parse_specification(
        json.dumps({"name": "e", "dependencies": ["python", {"pip": [*entries, "flask"]}]})
    )


@pytest.mark.parametrize(
    ("entry", "value", "reason"),
    [
        (
            "--index-url http://127.0.0.1:3141/simple",
            "http://127.0.0.1:3141/simple",
            "its host 127.0.0.1 is a loopback address",
        ),
        ("--extra-index-url=file:///srv/wheels", "file:///srv/wheels", "file:// URLs are"),
        ("--index-url http://[fd12::1]/simple", "http://[fd12::1]/simple", "its host fd12::1 is a private"),
    ],
)
def test_pip_index_urls_follow_the_address_rules(entry: str, value: str, reason: str) -> None:
    with pytest.raises(SpecificationError) as info:
        check_specification_urls(pip_spec(entry), SpecificationPolicy())
    assert info.value.message.startswith(f"Pip index URL {value!r} is not allowed: {reason}")


def test_pip_index_urls_the_administrator_configured_are_trusted() -> None:
    policy = SpecificationPolicy(pypi_included_packages=("--index-url http://10.0.0.5/simple/",))
    spec = apply_policy(
        pip_spec(
            "name @ http://10.0.0.5/simple/name/name-1.whl",
            "--extra-index-url https://pypi.example.org/simple",
        ),
        policy,
    )
    check_specification_urls(spec, policy)
    check_pip_index_urls(["--index-url=http://10.0.0.5/simple"], policy, no_lookup)


# --------------------------------------------------------------------------- through the API

#: The rules do not depend on the database; one is enough for the tests that need a store.
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def counts(conda_store) -> tuple[int, ...]:
    with conda_store.session() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(m)) for m in (Environment, Specification, Build)
        )


def post(client, **body):
    return client.post("/api/v1/specification/", json=body)


@pytest.mark.parametrize(
    ("channel", "reason"),
    [
        ("file:///etc", f"file:// URLs are {ONLY_ADMIN}"),
        (
            "http://127.0.0.1:6379/",
            f"its host 127.0.0.1 is a loopback address, and such hosts are {ONLY_ADMIN}",
        ),
    ],
)
@SQLITE
def test_submission_refuses_channels_and_changes_nothing(
    client, conda_store, channel: str, reason: str
) -> None:
    login(client)
    before = counts(conda_store)
    response = post(client, specification=f"name: e\nchannels: [{channel}]\ndependencies: [python]\n")
    assert response.status_code == 400, response.text
    assert response.json()["message"] == f"Conda channel {channel!r} is not allowed: {reason}"
    assert counts(conda_store) == before


@SQLITE
def test_submission_refuses_lockfile_package_urls(client, conda_store) -> None:
    login(client)
    lock = {
        "version": 1,
        "metadata": {
            "content_hash": {"linux-64": "0" * 64},
            "channels": [],
            "platforms": ["linux-64"],
            "sources": [],
        },
        "package": [
            {
                "name": "secret",
                "version": "1",
                "manager": "conda",
                "platform": "linux-64",
                "dependencies": {},
                "url": "file:///etc/passwd",
                "hash": {"md5": "0" * 32},
                "optional": False,
            }
        ],
    }
    before = counts(conda_store)
    response = post(client, specification=json.dumps(lock), is_lockfile=True, environment_name="locked")
    assert response.status_code == 400, response.text
    assert (
        response.json()["message"]
        == f"Package URL 'file:///etc/passwd' is not allowed: file:// URLs are {ONLY_ADMIN}"
    )
    assert counts(conda_store) == before


@SQLITE
def test_a_custom_validate_specification_hook_cannot_lift_the_rule(client, conda_store) -> None:
    login(client)
    conda_store.validate_specification = lambda conda_store, namespace, specification: specification
    response = post(client, specification="name: e\nchannels: [file:///etc]\n")
    assert response.status_code == 400
    assert response.json()["message"].startswith("Conda channel 'file:///etc' is not allowed")


@SQLITE
def test_the_configured_demo_channel_may_be_named(client, demo_channel: Path) -> None:
    login(client)
    for channel in (demo_channel.as_uri(), demo_channel.as_uri() + "/"):
        response = post(client, specification=f"name: e\nchannels: ['{channel}']\ndependencies: [python]\n")
        assert response.status_code == 200, response.text


@SQLITE
def test_indexed_channels_from_the_settings_are_trusted(client, conda_store, tmp_path: Path) -> None:
    login(client)
    mirror = (tmp_path / "mirror").as_uri()
    spec = f"name: e\nchannels: ['{mirror}']\ndependencies: [python]\n"
    assert post(client, specification=spec).status_code == 400
    conda_store.conda_indexed_channels = [mirror]
    assert post(client, specification=spec).status_code == 200


# --------------------------------------------------------------------------- in the worker


@pytest.fixture
def older_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Submissions skip the URL rules, as on a server from before them; the worker still checks."""
    monkeypatch.setattr(service, "check_specification_urls", lambda *args: None)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback port that records whether anything connected to it."""
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    yield server
    server.close()


def assert_never_contacted(server: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        server.accept()


@SQLITE
def test_the_worker_refuses_what_an_older_server_let_through(client, worker, older_server, listener) -> None:
    login(client)
    port = listener.getsockname()[1]
    local = wait_for_build(
        client, submit(client, "name: local\nchannels: ['file:///etc']\ndependencies: [python]\n")
    )
    assert local["status"] == "FAILED"
    assert (
        local["status_info"] == f"Conda channel 'file:///etc' is not allowed: file:// URLs are {ONLY_ADMIN}"
    )
    logs = client.get(f"/api/v1/build/{local['id']}/logs/").text
    assert "No such file" not in logs and "os error" not in logs

    spec = f"name: redis\nchannels: ['http://127.0.0.1:{port}/']\ndependencies: [python]\n"
    loopback = wait_for_build(client, submit(client, spec))
    assert loopback["status"] == "FAILED"
    assert loopback["status_info"].startswith(
        f"Conda channel 'http://127.0.0.1:{port}/' is not allowed: its host 127.0.0.1 is a loopback address"
    )
    assert_never_contacted(listener)


@SQLITE
def test_the_worker_refuses_lockfile_urls_an_older_server_let_through(client, worker, older_server) -> None:
    login(client)
    first = wait_for_build(client, submit(client, "name: pinned\ndependencies: [hello-tool]\n"))
    assert first["status"] == "COMPLETED"
    lock = json.loads(client.get(f"/api/v1/build/{first['id']}/lockfile/").content)
    lock["package"][0]["url"] = "file:///etc/hello-tool-1.0.0-0.conda"
    response = post(client, specification=json.dumps(lock), is_lockfile=True, environment_name="stolen")
    assert response.status_code == 200, response.text
    build = wait_for_build(client, response.json()["data"]["build_id"])
    assert build["status"] == "FAILED"
    assert build["status_info"] == (
        f"Package URL 'file:///etc/hello-tool-1.0.0-0.conda' is not allowed: file:// URLs are {ONLY_ADMIN}"
    )


def loopback_host_name() -> str:
    """A host name other than localhost that resolves to a loopback address on this machine."""
    for line in Path("/etc/hosts").read_text().splitlines():
        address, *names = line.split("#", 1)[0].split() or [""]
        try:
            loopback = ipaddress.ip_address(address).is_loopback
        except ValueError:
            continue
        for name in names if loopback else []:
            if "localhost" not in name and all(
                ipaddress.ip_address(a).is_loopback for a in resolve_host(name)
            ):
                return name
    pytest.skip("no host name other than localhost resolves to a loopback address here")


@SQLITE
def test_a_dns_name_pointing_at_loopback_is_refused_by_the_worker(client, worker, listener) -> None:
    login(client)
    name, port = loopback_host_name(), listener.getsockname()[1]
    channel = f"http://{name}:{port}/"
    build = wait_for_build(
        client, submit(client, f"name: rebound\nchannels: ['{channel}']\ndependencies: [python]\n")
    )
    assert build["status"] == "FAILED"
    assert build["status_info"].startswith(
        f"Conda channel {channel!r} is not allowed: its host {name} resolves to 127."
    )
    assert build["status_info"].endswith(f"a loopback address, and such hosts are {ONLY_ADMIN}")
    assert_never_contacted(listener)
