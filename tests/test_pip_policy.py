"""`pip:` dependencies: what a specification may say, which URLs it may name, and the pypi policy.

Three layers, each tested here: the syntax (`specification.parse_specification`: requirements
and a few options; no local paths, editable installs or credentials), the URL rules
(`fetch_policy.check_pip_index_urls` and the lockfile check, with the deployment's
`CondaStore.pypi_index_url`, `pypi_extra_index_urls` and `pypi_allowed_indexes`), and the
layered pypi_* package settings, also through the HTTP API.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import login
from sqlalchemy import func, select

from conda_store_server.db.models import Build, Environment, KeyValueStore, Namespace, Specification
from conda_store_server.exception import SpecificationError
from conda_store_server.fetch_policy import (
    check_lockfile_urls,
    check_pip_index_urls,
    check_resolved_pip_urls,
    check_specification_urls,
)
from conda_store_server.settings import get_settings
from conda_store_server.specification import (
    PIP_CREDENTIALS,
    SUPPORTED_PIP_OPTIONS,
    SpecificationPolicy,
    apply_policy,
    parse_specification,
    pip_url,
)

SUPPORTED = str(list(SUPPORTED_PIP_OPTIONS))
LOCAL_PATHS = "local paths are not supported, a build runs on a worker that must not install its own files"
PIP_ADMIN = "pypi_allowed_indexes, pypi_index_url, pypi_extra_index_urls"
ONLY_ADMIN = f"only allowed when the administrator configures them ({PIP_ADMIN})"
SECRET = "s3cret-Pa55"


def with_pip(*entries: str) -> str:
    return json.dumps({"name": "e", "dependencies": ["python", {"pip": list(entries)}]})


def pip_error(*entries: str) -> str:
    with pytest.raises(SpecificationError) as info:
        parse_specification(with_pip(*entries))
    return info.value.message


def url_error(entry: str, policy: SpecificationPolicy | None = None, resolve: Any = None) -> str:
    with pytest.raises(SpecificationError) as info:
        check_pip_index_urls([entry], policy or SpecificationPolicy(), resolve)
    return info.value.message


def no_lookup(host: str) -> list[str]:
    raise AssertionError(f"{host} must not be resolved: the URL is trusted or refused before")


# --------------------------------------------------------------------------- syntax


@pytest.mark.parametrize(
    "entry",
    [
        "flask",
        "Flask_Login[async,dotenv] >=0.6,<1 ; python_version >= '3.10' and sys_platform != 'win32'",
        "requests==2.*",
        "name @ https://files.example.org/name-1.0-py3-none-any.whl#sha256=" + "0" * 64,
        "name @ http://files.example.org/name-1.0.tar.gz",
        "name @ git+https://github.com/org/name@v1.0",
        "name @ git+http://git.example.org/name",
        "name @ file:///srv/wheels/name-1.0-py3-none-any.whl",  # the URL rules decide on file://
        "--index-url https://pypi.example.org/simple",
        "--extra-index-url=https://pypi.example.org/simple/",
        "--find-links https://pypi.example.org/wheels/",
        "--pre",
    ],
)
def test_requirements_and_supported_options_are_accepted(entry: str) -> None:
    assert parse_specification(with_pip(entry)).pip_dependencies() == [entry]


@pytest.mark.parametrize(
    ("entry", "hint"),
    [
        ("-e .", "; editable installs are not supported: a build installs packages, not a working copy"),
        ("--editable ./pkg", "; editable installs are not supported"),
        ("--editable=git+https://github.com/org/name", "; editable installs are not supported"),
        ("-r requirements.txt", "; requirement files would be read from the worker's disk"),
        ("--constraint=c.txt", "; constraint files would be read from the worker's disk"),
        ("-i https://pypi.example.org/simple", "; write it as --index-url URL"),
        ("--trusted-host pypi.example.org", "; a specification cannot turn certificate checks off"),
        ("--no-index", ""),
        ("--only-binary :all:", ""),
    ],
)
def test_other_options_are_refused_listing_the_supported_ones(entry: str, hint: str) -> None:
    message = pip_error(entry)
    assert message.startswith(
        f"Value error, Invalid pip option '{entry}' supported options are {SUPPORTED}{hint}"
    )
    assert message.endswith("(type=value_error, loc=('dependencies', 1, 'CondaSpecificationPip', 'pip', 0))")


@pytest.mark.parametrize(
    "entry",
    [
        "./pkg",
        "../pkg",
        ".",
        "/srv/pkg",
        "~/pkg",
        "C:\\pkg",
        "sub/dir",
        "file:pkg",
        "name-1.0-py3-none-any.whl",
        "name-1.0.tar.gz",
        "name @ ./pkg",
        "name @ /srv/wheels/name-1.0-py3-none-any.whl",
        "name @ file:pkg",
    ],
)
def test_local_paths_are_refused_saying_what_is_supported(entry: str) -> None:
    message = pip_error(entry)
    assert message.startswith(f'Value error, Invalid pypi package dependency "{entry}": {LOCAL_PATHS}; ')
    assert "supported are requirements such as" in message and "'name @ https://host/" in message
    assert f"and the options {SUPPORTED}" in message


@pytest.mark.parametrize(
    "entry", ["--find-links ./wheels", "--find-links=/srv/wheels", "--index-url file:simple"]
)
def test_option_values_must_be_urls_not_paths(entry: str) -> None:
    assert pip_error(entry).startswith(f"Value error, Invalid pip option {entry!r}: {LOCAL_PATHS}; ")


@pytest.mark.parametrize(
    ("entry", "scheme"),
    [
        ("name @ git+ssh://git@github.com/org/name", "git+ssh"),
        ("name @ ftp://files.example.org/name-1.0.tar.gz", "ftp"),
        ("--index-url s3://bucket/simple", "s3"),
        ("--find-links git+https://github.com/org/wheels", "git+https"),
    ],
)
def test_other_url_schemes_are_refused(entry: str, scheme: str) -> None:
    message = pip_error(entry)
    assert f": {scheme}:// URLs are not supported; supported are requirements" in message
    assert "git@" not in message  # the user-info of the URL is masked, like credentials


@pytest.mark.parametrize(
    "url", ["https://files.example.org/name-1.0.tar.gz", "git+https://github.com/org/name"]
)
def test_a_url_must_name_its_package(url: str) -> None:
    assert pip_error(url).startswith(
        f'Value error, Invalid pypi package dependency "{url}": a URL needs the name of its package, '
        "written 'name @ URL'"
    )


@pytest.mark.parametrize(
    "entry", ["name @ https://h/a b.whl", "name @ https://h/x.whl; bad marker", "fl/ask://"]
)
def test_malformed_references_get_upstreams_message(entry: str) -> None:
    assert pip_error(entry).startswith(
        f'Value error, Invalid pypi package dependency "{entry}" ensure it follows peps '
    )


@pytest.mark.parametrize(
    ("entry", "shown"),
    [
        (
            f"--index-url https://alice:{SECRET}@pypi.example.org/simple",
            "Invalid pip option '--index-url https://****@pypi.example.org/simple'",
        ),
        (
            f"--extra-index-url=https://{SECRET}@pypi.example.org/simple",
            "Invalid pip option '--extra-index-url=https://****@pypi.example.org/simple'",
        ),
        (
            f"--find-links https://alice:{SECRET}@files.example.org/wheels",
            "Invalid pip option '--find-links https://****@files.example.org/wheels'",
        ),
        (
            f"name @ https://alice:{SECRET}@files.example.org/name-1.0.tar.gz",
            'Invalid pypi package dependency "name @ https://****@files.example.org/name-1.0.tar.gz"',
        ),
        (
            f"name @ git+https://{SECRET}@github.com/org/name@v1",
            'Invalid pypi package dependency "name @ git+https://****@github.com/org/name@v1"',
        ),
    ],
)
def test_credentials_never_come_from_a_specification(entry: str, shown: str) -> None:
    message = pip_error(entry)
    assert message.startswith(f"Value error, {shown}: {PIP_CREDENTIALS} (type=value_error")
    assert SECRET not in message and "alice" not in message


def test_unsupported_options_and_bad_requirements_do_not_echo_credentials() -> None:
    for entry in (f"--no-index=https://alice:{SECRET}@h/simple", f"https://alice:{SECRET}@h/x.whl"):
        message = pip_error(entry)
        assert SECRET not in message and "https://****@h/" in message


@pytest.mark.parametrize("entry", ["--pre=yes", "--pre x", "--pre="])
def test_pre_takes_no_value(entry: str) -> None:
    assert pip_error(entry).startswith(f"Value error, Invalid pip option {entry!r}: --pre takes no value")


def test_at_most_one_index_url() -> None:
    text = json.dumps(
        {
            "name": "e",
            "dependencies": [
                {"pip": ["--index-url https://a.example/simple"]},
                "python",
                {"pip": ["flask", "--index-url=https://b.example/simple"]},
            ],
        }
    )
    with pytest.raises(SpecificationError) as info:
        parse_specification(text)
    assert info.value.message == (
        "Value error, Pip option --index-url is given 2 times ['--index-url https://a.example/simple', "
        "'--index-url=https://b.example/simple']: a build installs from one index; name the others "
        "with --extra-index-url (type=value_error, loc=())"
    )
    parse_specification(
        with_pip("--index-url https://a.example/simple", "--extra-index-url https://b/simple")
    )


def test_pip_url_of_each_kind_of_entry() -> None:
    assert pip_url("--index-url=https://a/simple") == "https://a/simple"
    assert pip_url("--extra-index-url https://b/simple") == "https://b/simple"
    assert pip_url("--find-links https://c/wheels") == "https://c/wheels"
    assert pip_url("name[x] @ git+https://d/r@v1 ; python_version > '3'") == "git+https://d/r@v1"
    assert pip_url("--pre") is None
    assert pip_url("flask>=3") is None
    assert pip_url("not a requirement") is None


# --------------------------------------------------------------------------- URL rules


@pytest.mark.parametrize(
    "entry",
    [
        "--index-url http://pypi.example.org/simple",
        "--extra-index-url https://93.184.215.14/simple",
        "--find-links https://files.example.org/wheels",
        "name @ https://files.example.org/name-1.0.tar.gz",
        "name @ git+https://github.com/org/name@v1",
    ],
)
def test_public_urls_are_allowed_when_no_index_list_is_set(entry: str) -> None:
    check_pip_index_urls([entry], SpecificationPolicy())


@pytest.mark.parametrize(
    ("entry", "kind", "url", "reason"),
    [
        (
            "--find-links http://169.254.169.254/latest",
            "Pip find-links URL",
            "http://169.254.169.254/latest",
            "its host 169.254.169.254 is a link-local address",
        ),
        (
            "--index-url=http://localhost:3141/simple",
            "Pip index URL",
            "http://localhost:3141/simple",
            "its host localhost is localhost",
        ),
        (
            "name @ http://10.1.2.3/name-1.0.tar.gz",
            "Pip package URL",
            "http://10.1.2.3/name-1.0.tar.gz",
            "its host 10.1.2.3 is a private address",
        ),
        (
            "name @ git+https://[::1]/org/name",
            "Pip package URL",
            "git+https://[::1]/org/name",
            "its host ::1 is a loopback address",
        ),
        (
            "name @ file:///srv/wheels/name-1.0.tar.gz",
            "Pip package URL",
            "file:///srv/wheels/name-1.0.tar.gz",
            "file:// URLs are",
        ),
    ],
)
def test_internal_and_file_urls_are_refused(entry: str, kind: str, url: str, reason: str) -> None:
    message = url_error(entry, resolve=no_lookup)
    assert message.startswith(f"{kind} {url!r} is not allowed: {reason}")
    assert message.endswith(ONLY_ADMIN)


def test_the_worker_resolves_the_host_of_a_direct_reference() -> None:
    def internal(host: str) -> list[str]:
        return {"git.internal": ["10.0.0.7"]}[host]

    assert url_error("name @ git+https://git.internal/org/name", resolve=internal) == (
        "Pip package URL 'git+https://git.internal/org/name' is not allowed: its host git.internal "
        f"resolves to 10.0.0.7, a private address, and such hosts are {ONLY_ADMIN}"
    )


ALLOWED = SpecificationPolicy(
    pypi_allowed_indexes=(
        "https://pypi.example.org/simple/",
        "https://github.com/org/",
        "file:///srv/wheels",
    ),
)


@pytest.mark.parametrize(
    "entry",
    [
        "--index-url https://pypi.example.org/simple",
        "--extra-index-url=https://PYPI.example.org/simple/",
        "--find-links file:///srv/wheels",
        "name @ file:///srv/wheels/name-1.0-py3-none-any.whl",
        "name @ git+https://github.com/org/name@v1",
        "name @ https://github.com/org/name/archive/v1.zip",
        "--index-url https://pypi.org/simple",  # the deployment's pypi_index_url
    ],
)
def test_with_allowed_indexes_urls_under_them_pass(entry: str) -> None:
    check_pip_index_urls([entry], ALLOWED, no_lookup)


@pytest.mark.parametrize(
    "url",
    [
        "https://pypi.example.org/simple-evil",
        "https://pypi.example.org/simple/../../admin",
        "https://pypi.example.org/simple/%2e%2e/admin",
        "https://pypi.example.org:8443/simple",
        "http://pypi.example.org/simple",
        "https://github.com/organisation/name",
        "file:///srv/wheels-other/name-1.0.tar.gz",
        "https://files.example.org/name-1.0.tar.gz",
    ],
)
def test_with_allowed_indexes_nothing_else_passes(url: str) -> None:
    assert url_error(f"name @ {url}", ALLOWED, no_lookup) == (
        f"Pip package URL {url!r} is not allowed: it is not under one of the allowed indexes "
        "['https://pypi.example.org/simple/', 'https://github.com/org/', 'file:///srv/wheels'] "
        "(pypi_allowed_indexes)"
    )


def test_internal_hosts_pass_only_when_listed_explicitly() -> None:
    policy = SpecificationPolicy(pypi_allowed_indexes=("http://10.0.0.5:3141/simple",))
    check_pip_index_urls(["--index-url http://10.0.0.5:3141/simple/"], policy, no_lookup)
    assert "not under one of the allowed indexes" in url_error(
        "--index-url http://10.0.0.6:3141/simple", policy
    )


def test_the_deployments_indexes_are_trusted_and_their_credentials_never_shown() -> None:
    policy = SpecificationPolicy(
        pypi_index_url=f"http://alice:{SECRET}@10.0.0.5/simple/",
        pypi_extra_index_urls=(f"https://{SECRET}@pypi.internal/simple",),
        pypi_allowed_indexes=(f"https://bob:{SECRET}@mirror.example.org/simple",),
    )
    check_pip_index_urls(
        [
            "--index-url http://10.0.0.5/simple",
            "--extra-index-url https://pypi.internal/simple/",
            "name @ http://10.0.0.5/simple/name/name-1.0.tar.gz",
            "--extra-index-url https://mirror.example.org/simple",
        ],
        policy,
        no_lookup,
    )
    refused = url_error("--index-url https://elsewhere.example.org/simple", policy)
    assert refused.endswith(
        "it is not under one of the allowed indexes ['https://****@mirror.example.org/simple'] "
        "(pypi_allowed_indexes)"
    )
    assert SECRET not in repr(policy) and SECRET not in refused


def test_a_url_with_credentials_is_refused_even_for_a_trusted_index() -> None:
    """What an older server stored is checked again by the worker: credentials are refused there too."""
    policy = SpecificationPolicy(pypi_index_url="https://pypi.internal/simple")
    message = url_error(f"--index-url https://alice:{SECRET}@pypi.internal/simple", policy)
    assert message == (
        "Pip index URL 'https://****@pypi.internal/simple' is not allowed: it holds credentials, "
        f"and {PIP_CREDENTIALS}"
    )


def test_urls_in_the_pypi_package_settings_are_trusted() -> None:
    policy = SpecificationPolicy(
        pypi_included_packages=(
            "--extra-index-url http://10.0.0.5/simple",
            "tool @ http://10.0.0.6/tool-1.0.tar.gz",
        ),
        pypi_allowed_indexes=("https://pypi.org/simple",),
    )
    spec = apply_policy(parse_specification(with_pip("flask")), policy)
    assert spec.pip_dependencies() == [
        "flask",
        "--extra-index-url http://10.0.0.5/simple",
        "tool @ http://10.0.0.6/tool-1.0.tar.gz",
    ]
    check_specification_urls(spec, policy, no_lookup)
    assert "not under one of the allowed indexes" in url_error("name @ http://10.0.0.6/other.tar.gz", policy)


def test_a_url_without_host_in_the_settings_trusts_nothing() -> None:
    policy = SpecificationPolicy(pypi_included_packages=("--extra-index-url https://",))
    assert "its host 127.0.0.1 is a loopback address" in url_error("--find-links https://127.0.0.1/w", policy)
    assert url_error("--extra-index-url https://", policy).endswith("is not allowed: it names no host")


def test_deployment_index_options_are_validated_without_showing_credentials() -> None:
    with pytest.raises(SpecificationError) as info:
        SpecificationPolicy(pypi_index_url=f"alice:{SECRET}@pypi.internal/simple")
    assert info.value.message.startswith("Invalid setting pypi_index_url: ")
    assert "is not a URL such as https://pypi.example.org/simple" in info.value.message
    with pytest.raises(SpecificationError, match=r"^Invalid setting pypi_allowed_indexes: 'pypi.org'"):
        SpecificationPolicy(pypi_allowed_indexes=("pypi.org",))
    with pytest.raises(
        SpecificationError, match=r"^Invalid setting pypi_allowed_indexes: 'https://' names no host"
    ):
        SpecificationPolicy(pypi_allowed_indexes=("https://",))
    with pytest.raises(SpecificationError, match=r"'http://h:port/simple' is not a valid URL"):
        SpecificationPolicy(pypi_extra_index_urls=("http://h:port/simple",))
    SpecificationPolicy(pypi_allowed_indexes=("file:///srv/wheels",))
    with pytest.raises(SpecificationError) as info:
        SpecificationPolicy(pypi_extra_index_urls=(f"https://alice:{SECRET}@h/simple x",))
    assert SECRET not in info.value.message and "https://****@h/simple x" in info.value.message


def lock_with_pip(url: str) -> dict[str, Any]:
    return {"package": [{"name": "name", "manager": "pip", "url": url}]}


def lockfile_error(url: str, policy: SpecificationPolicy) -> str:
    with pytest.raises(SpecificationError) as info:
        check_lockfile_urls(lock_with_pip(url), policy, no_lookup)
    return info.value.message


def test_lockfile_pip_packages_follow_the_index_rules() -> None:
    policy = SpecificationPolicy(
        pypi_index_url=f"https://alice:{SECRET}@pypi.internal/simple",
        pypi_allowed_indexes=("https://files.example.org/packages/", "file:///srv/wheels"),
    )
    for url in (
        "https://pypi.internal/simple/name/name-1.0.tar.gz",
        "https://files.example.org/packages/name-1.0-py3-none-any.whl",
        "file:///srv/wheels/name-1.0-py3-none-any.whl",
    ):
        check_lockfile_urls(lock_with_pip(url), policy, no_lookup)
    assert lockfile_error("https://files.pythonhosted.org/packages/name-1.0.tar.gz", policy).endswith(
        "it is not under one of the allowed indexes ['https://files.example.org/packages/', "
        "'file:///srv/wheels'] (pypi_allowed_indexes)"
    )
    assert lockfile_error(f"https://alice:{SECRET}@pypi.internal/simple/name/name-1.0.tar.gz", policy) == (
        "Package URL 'https://****@pypi.internal/simple/name/name-1.0.tar.gz' is not allowed: it holds "
        f"credentials, and {PIP_CREDENTIALS}"
    )
    assert lockfile_error("file:///etc/passwd", SpecificationPolicy()) == (
        f"Package URL 'file:///etc/passwd' is not allowed: file:// URLs are {ONLY_ADMIN}"
    )


def test_resolved_files_follow_the_address_rule_not_the_allowed_list() -> None:
    """The worker checks the files an index resolved to before it downloads them."""
    policy = SpecificationPolicy(
        pypi_index_url=f"http://alice:{SECRET}@10.0.0.5/simple",
        pypi_allowed_indexes=("https://pypi.org/simple",),
    )
    check_resolved_pip_urls(
        [
            "https://files.pythonhosted.org/packages/name-1.0-py3-none-any.whl",
            f"http://alice:{SECRET}@10.0.0.5/simple/name/name-1.0.tar.gz",
        ],
        policy,
        {"files.pythonhosted.org": ["151.101.0.223"]}.__getitem__,
    )
    with pytest.raises(SpecificationError) as info:
        check_resolved_pip_urls([f"http://bob:{SECRET}@10.0.0.6/name-1.0.tar.gz"], policy, no_lookup)
    assert info.value.message == (
        "Pip package URL 'http://****@10.0.0.6/name-1.0.tar.gz' is not allowed: its host 10.0.0.6 is a "
        f"private address, and such hosts are {ONLY_ADMIN}"
    )


# --------------------------------------------------------------------------- pypi policy


def test_an_included_index_url_conflicts_with_the_specifications_own() -> None:
    policy = SpecificationPolicy(pypi_included_packages=("--index-url https://pypi.internal/simple",))
    same = apply_policy(
        parse_specification(with_pip("flask", "--index-url=https://pypi.internal/simple/")), policy
    )
    assert same.pip_dependencies() == ["flask", "--index-url=https://pypi.internal/simple/"]
    added = apply_policy(parse_specification(with_pip("flask")), policy)
    assert added.pip_dependencies() == ["flask", "--index-url https://pypi.internal/simple"]
    with pytest.raises(SpecificationError) as info:
        apply_policy(
            parse_specification(with_pip("flask", "--index-url https://other.example/simple")), policy
        )
    assert info.value.message == (
        "Pip options ['--index-url https://other.example/simple', '--index-url "
        "https://pypi.internal/simple'] name more than one --index-url (counting those added by "
        "pypi_default_packages and pypi_included_packages); a build installs from one index, name the "
        "others with --extra-index-url"
    )


def test_a_required_index_url_is_present_in_any_spelling() -> None:
    policy = SpecificationPolicy(pypi_required_packages=("--index-url https://pypi.internal/simple",))
    apply_policy(parse_specification(with_pip("--index-url=https://pypi.internal/simple/")), policy)
    with pytest.raises(
        SpecificationError, match=r"^PyPI packages \['--index-url https://pypi.internal/simple'\]"
    ):
        apply_policy(parse_specification(with_pip("flask")), policy)


def test_bad_pypi_setting_entries_name_the_setting() -> None:
    with pytest.raises(SpecificationError) as info:
        SpecificationPolicy(pypi_default_packages=(f"--index-url https://alice:{SECRET}@h/simple",))
    assert info.value.message == (
        f"Invalid setting pypi_default_packages: Invalid pip option '--index-url https://****@h/simple': "
        f"{PIP_CREDENTIALS}"
    )
    with pytest.raises(SpecificationError, match=r"^Invalid setting pypi_required_packages: .*editable"):
        SpecificationPolicy(pypi_required_packages=("-e ./tool",))


# --------------------------------------------------------------------------- through the API

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def counts(conda_store) -> tuple[int, ...]:
    models = (Namespace, Environment, Specification, Build, KeyValueStore)
    with conda_store.session() as session:
        return tuple(session.scalar(select(func.count()).select_from(m)) for m in models)


def post(client, specification: str, namespace: str | None = None):
    body = {"specification": specification, **({"namespace": namespace} if namespace else {})}
    return client.post("/api/v1/specification/", json=body)


def stored_pip(client, response) -> list[str]:
    assert response.status_code == 200, response.text
    build = client.get(f"/api/v1/build/{response.json()['data']['build_id']}/").json()["data"]
    return [
        item
        for dep in build["specification"]["spec"]["dependencies"]
        if isinstance(dep, dict)
        for item in dep["pip"]
    ]


@pytest.mark.parametrize(
    ("entries", "fragment"),
    [
        (["-e ."], "Invalid pip option '-e .' supported options are"),
        (["./pkg"], f'Invalid pypi package dependency "./pkg": {LOCAL_PATHS}'),
        (["name @ file:///etc/passwd"], "Pip package URL 'file:///etc/passwd' is not allowed: file:// URLs"),
        (["--find-links http://127.0.0.1:8000/"], "its host 127.0.0.1 is a loopback address"),
        ([f"--index-url https://alice:{SECRET}@pypi.example.org/simple"], PIP_CREDENTIALS),
    ],
)
@SQLITE
def test_a_refused_pip_entry_is_a_400_that_changes_nothing(client, conda_store, entries, fragment) -> None:
    login(client)
    before = counts(conda_store)
    response = post(client, with_pip(*entries), namespace="fresh")
    assert response.status_code == 400, response.text
    assert fragment in response.json()["message"]
    assert SECRET not in response.text
    assert counts(conda_store) == before


@SQLITE
def test_git_and_public_direct_references_are_accepted(client) -> None:
    login(client)
    entries = [
        "name @ git+https://github.com/org/name@v1",
        "other @ https://files.example.org/other-1.0.tar.gz",
    ]
    assert stored_pip(client, post(client, with_pip(*entries))) == entries


@pytest.fixture
def private_index(store_settings: dict[str, dict[str, Any]]) -> None:
    """A deployment whose builds install from a private index with a password, and whose
    specifications may name only that index and PyPI's files (request it before `client` and
    `conda_store`: they read the settings when they are made)."""
    store_settings["CondaStore"].update(
        pypi_index_url=f"http://alice:{SECRET}@10.0.0.5/simple",
        pypi_allowed_indexes=["https://files.pythonhosted.org/packages/"],
    )


@SQLITE
def test_the_deployments_index_options_reach_the_policy_and_no_answer(
    private_index, client, conda_store
) -> None:
    login(client)
    with conda_store.session() as session:
        policy = get_settings(session, conda_store, "lab", "e").specification_policy()
    assert policy.pypi_index_url == f"http://alice:{SECRET}@10.0.0.5/simple"
    assert policy.pypi_allowed_indexes == ("https://files.pythonhosted.org/packages/",)

    entries = [
        "--index-url http://10.0.0.5/simple",
        "name @ https://files.pythonhosted.org/packages/n-1.tar.gz",
    ]
    assert stored_pip(client, post(client, with_pip(*entries))) == entries
    before = counts(conda_store)
    refused = post(client, with_pip("--extra-index-url https://pypi.org/simple"))
    assert refused.status_code == 400
    assert refused.json()["message"] == (
        "Pip index URL 'https://pypi.org/simple' is not allowed: it is not under one of the allowed "
        "indexes ['https://files.pythonhosted.org/packages/'] (pypi_allowed_indexes)"
    )
    assert counts(conda_store) == before
    for path in ("/api/v1/setting/", "/api/v1/setting/lab/", "/api/v1/setting/lab/e/"):
        answer = client.get(path)
        assert answer.status_code == 200
        assert not set(answer.json()["data"]) & {
            "pypi_index_url",
            "pypi_extra_index_urls",
            "pypi_allowed_indexes",
        }
        assert SECRET not in answer.text and "10.0.0.5" not in answer.text
