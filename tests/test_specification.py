"""Specification models, hashing, parsing errors, lockfile uploads and the policy."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys

import pytest
import yaml

from conda_store_server import specification
from conda_store_server.exception import CondaStoreError, SpecificationError
from conda_store_server.specification import (
    MAX_ERROR_LINES,
    MAX_NAME_LENGTH,
    MAX_SPECIFICATION_BYTES,
    NAME_PATTERN,
    SUPPORTED_PIP_OPTIONS,
    CondaSpecification,
    CondaSpecificationPip,
    LockfileSpecification,
    SpecificationPolicy,
    apply_policy,
    datastructure_hash,
    normalize_channel,
    parse_lockfile_specification,
    parse_specification,
    specification_hash,
    validate_name,
)

UI_CREATE_PAYLOAD = (
    "channels:\n  - conda-forge\ndependencies:\n  - hello-tool\nvariables: {}\n\n"
    "description: ''\nname: acc-ui\nprefix: null"
)
PIP_HINT = "ensure it follows peps https://peps.python.org/pep-0508/ and https://peps.python.org/pep-0440/"


def spec_text(**fields: object) -> str:
    """A specification as JSON text (JSON is valid YAML and can carry control characters)."""
    return json.dumps({"name": "env", **fields})


def error_of(text: str) -> str:
    with pytest.raises(SpecificationError) as info:
        parse_specification(text)
    return info.value.message


# --------------------------------------------------------------------------- hashing


def test_hash_reproduces_upstream_test_vector() -> None:
    value = {
        "channels": ["conda-forge"],
        "dependencies": ["numpy"],
        "description": "",
        "name": "name1",
        "prefix": None,
        "variables": None,
    }
    expected = "bfa61b4d5fe5c836001c60c81aef90f4a60745e6c0c0dd5f5c31f1b45c3438a8"
    assert datastructure_hash(value) == expected
    spec = parse_specification("name: name1\nchannels: [conda-forge]\ndependencies: [numpy]\n")
    assert specification_hash(spec) == expected


def test_hash_ignores_dependency_and_key_order() -> None:
    first = parse_specification(
        "name: e\ndependencies:\n  - numpy\n  - pip:\n    - flask\n    - requests\n  - python\n"
    )
    second = parse_specification(
        "dependencies:\n  - python\n  - pip: [requests, flask]\n  - numpy\nname: e\n"
    )
    assert specification_hash(first) == specification_hash(second)
    third = parse_specification("name: e\ndependencies: [numpy, python, scipy]\n")
    assert specification_hash(first) != specification_hash(third)


def test_hash_sorts_pip_mapping_before_strings_and_scalars_by_type() -> None:
    value = ["numpy", {"pip": ["flask", "attrs"]}, "abc"]
    canonical = json.dumps([{"pip": ["attrs", "flask"]}, "abc", "numpy"])
    assert datastructure_hash(value) == hashlib.sha256(canonical.encode()).hexdigest()
    # Scalars sort by "<type>-<value>": ints before strs, each by their text.
    mixed = [10, "1", 2, None]
    canonical = json.dumps([None, 10, 2, "1"])
    assert datastructure_hash(mixed) == hashlib.sha256(canonical.encode()).hexdigest()


def test_hash_uses_default_json_separators() -> None:
    canonical = '{"a": [1, 2], "b": {"c": null}}'
    value = {"b": {"c": None}, "a": [2, 1]}
    assert datastructure_hash(value) == hashlib.sha256(canonical.encode()).hexdigest()


def test_lockfile_specification_hash_covers_name_description_lockfile() -> None:
    spec = parse_lockfile_specification(json.dumps(lockfile_dict()), "locked", "d")
    dump = spec.model_dump(mode="json")
    assert set(dump) == {"name", "description", "lockfile"}
    assert specification_hash(spec) == datastructure_hash(dump)


# --------------------------------------------------------------------------- models


def test_ui_create_payload_parses() -> None:
    spec = parse_specification(UI_CREATE_PAYLOAD)
    assert spec.name == "acc-ui"
    assert spec.channels == ["conda-forge"]
    assert spec.dependencies == ["hello-tool"]
    assert spec.description == ""
    assert spec.prefix is None
    assert spec.variables == {}


def test_dump_has_every_field_and_pip_mapping() -> None:
    spec = parse_specification(
        "name: e\ndependencies:\n  - python=3.11\n  - pip:\n    - flask>=2\n"
        "    - --index-url https://pypi.example/simple\n"
    )
    assert spec.model_dump(mode="json") == {
        "name": "e",
        "channels": [],
        "dependencies": [
            "python=3.11",
            {"pip": ["flask>=2", "--index-url https://pypi.example/simple"]},
        ],
        "description": "",
        "prefix": None,
        "variables": None,
    }


def test_conda_and_pip_dependencies_accessors() -> None:
    spec = CondaSpecification(
        name="e",
        dependencies=["numpy", {"pip": ["flask"]}, "python", {"pip": ["attrs"]}],
    )
    assert spec.conda_dependencies() == ["numpy", "python"]
    assert spec.pip_dependencies() == ["flask", "attrs"]
    assert isinstance(spec.dependencies[1], CondaSpecificationPip)


KNOWN_KEYS = "Known keys: name, channels, dependencies, description, prefix, variables"


def test_a_misspelled_key_names_the_closest_known_key() -> None:
    # Ignoring it (upstream) built an empty environment instead of the one described.
    assert error_of("name: e\ndependecies: [numpy]\n") == (
        f"Unknown key 'dependecies' in the specification; did you mean 'dependencies'? {KNOWN_KEYS}"
    )


def test_every_unknown_key_is_listed_with_or_without_a_suggestion() -> None:
    assert error_of("name: e\nchanels: [x]\nplatforms: [linux-64]\n1: x\n").split("\n") == [
        f"Unknown key 'chanels' in the specification; did you mean 'channels'? {KNOWN_KEYS}",
        f"Unknown key 'platforms' in the specification. {KNOWN_KEYS}",
        f"Unknown key 1 in the specification. {KNOWN_KEYS}",
    ]


def test_every_known_key_is_accepted() -> None:
    text = "name: e\nchannels: []\ndependencies: []\ndescription: d\nprefix: null\nvariables: {}\n"
    assert parse_specification(text).description == "d"


def test_null_description_is_stored_as_empty_string() -> None:
    spec = parse_specification("name: e\ndescription: null\n")
    assert spec.description == ""
    assert specification_hash(spec) == specification_hash(parse_specification("name: e"))


def test_json_text_is_accepted() -> None:
    spec = parse_specification('{\n\t"name": "e",\n\t"dependencies": ["numpy"]\n}')
    assert spec.dependencies == ["numpy"]


@pytest.mark.parametrize(
    "option",
    [
        "--index-url https://pypi.example/simple",
        "--extra-index-url=https://pypi.example/simple",
        "--find-links https://pypi.example/wheels/",
        "--find-links=file:///srv/wheels",  # the URL rules decide whether a worker may read it
        "--pre",
    ],
)
def test_supported_pip_options_are_accepted(option: str) -> None:
    spec = parse_specification(spec_text(dependencies=[{"pip": [option, "flask"]}]))
    assert spec.pip_dependencies() == [option, "flask"]


def test_supported_pip_options_constant() -> None:
    assert SUPPORTED_PIP_OPTIONS == ("--index-url", "--extra-index-url", "--find-links", "--pre")


def test_variables_keep_strings_and_integers() -> None:
    spec = parse_specification("name: e\nvariables:\n  CONDA_OVERRIDE_CUDA: '12.0'\n  N: 3\n")
    assert spec.variables == {"CONDA_OVERRIDE_CUDA": "12.0", "N": 3}


# --------------------------------------------------------------------------- parse errors


def test_invalid_yaml_reports_line_and_column() -> None:
    message = error_of("name: e\ndependencies: [numpy\nchannels: x\n")
    assert message.startswith("Unable to parse. Invalid YAML: ")
    assert "line 3, column" in message


def test_invalid_yaml_tabs_and_tags() -> None:
    assert error_of("name: e\n\t- x\n").startswith("Unable to parse. Invalid YAML: ")
    assert error_of("name: !!python/object:os.system x\n").startswith("Unable to parse. Invalid YAML: ")


def test_deeply_nested_document_is_a_clean_error() -> None:
    message = error_of("name: e\nx: " + "[" * 50_000 + "]" * 50_000)
    assert message.startswith("Unable to parse. Invalid YAML")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "The specification is empty: expected a YAML mapping of keys to values"),
        (
            "- numpy\n",
            "The specification must be a YAML mapping of keys to values (such as 'name: ...'), not a list",
        ),
        (
            "just text",
            "The specification must be a YAML mapping of keys to values (such as 'name: ...'), not a string",
        ),
    ],
)
def test_document_must_be_a_mapping(text: str, message: str) -> None:
    assert error_of(text) == message


def test_oversized_specification_is_rejected() -> None:
    text = "name: e\ndescription: '" + "x" * MAX_SPECIFICATION_BYTES + "'\n"
    message = error_of(text)
    assert message.startswith("The specification is too large: ")
    assert message.endswith(f"the maximum is {MAX_SPECIFICATION_BYTES} bytes (1 MiB)")


def test_missing_name_uses_upstream_line_format() -> None:
    assert error_of("dependencies: [numpy]") == "Field required (type=missing, loc=('name',))"


def test_wrong_type_is_reported() -> None:
    assert error_of("name: 123") == "Input should be a valid string (type=string_type, loc=('name',))"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("a/b", "it contains a path separator ('/' or '\\')"),
        ("..", "'..' is not allowed"),
        (".", "'.' is not allowed"),
        ("a..b", "it contains '..'"),
        ("my env", "it contains whitespace"),
        ("a\nb", "it contains control characters"),
        ("a\x00b", "it contains control characters"),
        ("a#b%", "it contains '#', '%'"),
        ("", "it is empty"),
    ],
)
def test_bad_names_name_the_field_and_what_is_allowed(name: str, reason: str) -> None:
    message = error_of(spec_text(name=name))
    assert message.startswith(f"Invalid environment name {name!r}: {reason}; ")
    assert "a name may contain only letters, digits and the characters" in message
    assert message.endswith("(type=string_pattern_mismatch, loc=('name',))")
    assert "\n" not in message


def test_name_length_limit() -> None:
    assert parse_specification(spec_text(name="a" * MAX_NAME_LENGTH)).name == "a" * 255
    message = error_of(spec_text(name="a" * 256))
    assert "it is 256 characters long, the maximum is 255" in message
    assert message.endswith("(type=string_too_long, loc=('name',))")
    assert len(message) < 600  # the oversized value is not echoed in full


def test_every_upstream_name_character_is_allowed() -> None:
    name = "Az09-+_@$&?^~.="
    assert parse_specification(spec_text(name=name)).name == name
    assert NAME_PATTERN == r"^[A-Za-z0-9-+_@$&?^~.=]+$"


def test_validate_name_helper() -> None:
    assert validate_name("ok-name") == "ok-name"
    with pytest.raises(SpecificationError, match=r"^Invalid namespace name 'a/b': "):
        validate_name("a/b", field="namespace name")


def test_bad_conda_dependency_is_one_line_with_rattler_reason() -> None:
    assert error_of(spec_text(dependencies=["numpy =="])) == (
        "Value error, Invalid conda package dependency specification numpy ==: "
        "unable to parse version spec: == (type=value_error, loc=('dependencies', 0, 'str'))"
    )


@pytest.mark.parametrize("dependency", ["", "   ", "numpy\n", "num*py", ">=1.0"])
def test_more_bad_conda_dependencies(dependency: str) -> None:
    message = error_of(spec_text(dependencies=["python", dependency]))
    assert message.startswith("Value error, Invalid conda package dependency specification ")
    assert message.endswith("(type=value_error, loc=('dependencies', 1, 'str'))")


def test_dependency_of_wrong_shape() -> None:
    assert error_of(spec_text(dependencies=[3])) == (
        "Input should be a conda package specification string or a 'pip' mapping holding a "
        "list of pip requirements (type=dependency_type, loc=('dependencies', 0))"
    )
    assert error_of(spec_text(dependencies=[{"conda": ["x"]}])) == (
        "Field required (type=missing, loc=('dependencies', 0, 'CondaSpecificationPip', 'pip'))"
    )


def test_bad_pip_option_message_is_upstreams() -> None:
    assert error_of(spec_text(dependencies=[{"pip": ["--foo bar"]}])) == (
        "Value error, Invalid pip option '--foo bar' supported options are "
        "['--index-url', '--extra-index-url', '--find-links', '--pre'] "
        "(type=value_error, loc=('dependencies', 0, 'CondaSpecificationPip', 'pip', 0))"
    )


@pytest.mark.parametrize(
    "option",
    [
        "--index-url",
        "--index-url ",
        "--index-url=",
        "--index-url https://a\n-r /etc/passwd",
        "--find-links a b",
    ],
)
def test_pip_option_needs_one_clean_value(option: str) -> None:
    message = error_of(spec_text(dependencies=[{"pip": [option]}]))
    assert message.startswith(f"Value error, Invalid pip option {option!r}: ")
    assert "needs one value without spaces or control characters" in message


@pytest.mark.parametrize("requirement", ["fl ask!", "flask >= 1 <", "flask\n-r /etc/passwd", ""])
def test_bad_pip_requirement_message_is_upstreams(requirement: str) -> None:
    assert error_of(spec_text(dependencies=[{"pip": ["ok", requirement]}])) == (
        f'Value error, Invalid pypi package dependency "{requirement}" {PIP_HINT} '
        "(type=value_error, loc=('dependencies', 0, 'CondaSpecificationPip', 'pip', 1))"
    )


@pytest.mark.parametrize("channel", ["", "  ", "conda forge", "conda-forge\n", "a\x07b"])
def test_bad_channels(channel: str) -> None:
    message = error_of(spec_text(channels=["conda-forge", channel]))
    assert message.startswith(f"Value error, Invalid conda channel {channel!r}: ")
    assert message.endswith("(type=value_error, loc=('channels', 1))")


@pytest.mark.parametrize(("value", "kind"), [("1.5", "float"), ("true", "bool")])
def test_variables_reject_floats_and_booleans_with_a_hint(value: str, kind: str) -> None:
    message = error_of(f"name: e\nvariables:\n  CUDA: {value}\n")
    assert "Invalid value for variable 'CUDA': " in message
    assert f"is a {kind}; variable values must be strings or integers, quote it" in message


def test_variables_reject_bad_names() -> None:
    message = error_of(spec_text(variables={"A=B": "1"}))
    assert message.startswith("Value error, Invalid variable name 'A=B': ")


def test_huge_values_are_not_echoed_in_full() -> None:
    message = error_of(spec_text(dependencies=["num*py" + "x" * 10_000]))
    assert "... (10006 characters)" in message  # the value, and rattler's reason quoting it
    assert len(message) < 800


def test_all_errors_are_listed_one_per_line() -> None:
    message = error_of(spec_text(name="a/b", dependencies=["numpy ==", {"pip": ["--x y"]}]))
    lines = message.split("\n")
    assert len(lines) == 3
    assert lines[0].endswith("loc=('name',))")
    assert lines[1].endswith("loc=('dependencies', 0, 'str'))")
    assert lines[2].endswith("loc=('dependencies', 1, 'CondaSpecificationPip', 'pip', 0))")


def test_error_lines_are_capped() -> None:
    lines = error_of(spec_text(dependencies=[3] * (MAX_ERROR_LINES + 10))).split("\n")
    assert len(lines) == MAX_ERROR_LINES + 1
    assert lines[-1] == "... and 10 more validation errors"


def test_specification_error_is_a_conda_store_error() -> None:
    with pytest.raises(CondaStoreError):
        parse_specification("[")


# --------------------------------------------------------------------------- lockfiles


def lockfile_dict() -> dict:
    """A small but complete conda-lock v1 lockfile: one conda and one pip package."""
    return {
        "version": 1,
        "metadata": {
            "content_hash": {"linux-64": "0f" * 32},
            "channels": [{"url": "conda-forge", "used_env_vars": []}],
            "platforms": ["linux-64"],
            "sources": ["environment.yaml"],
        },
        "package": [
            {
                "name": "hello-tool",
                "version": "1.0",
                "manager": "conda",
                "platform": "linux-64",
                "dependencies": {},
                "url": "https://conda.anaconda.org/conda-forge/linux-64/hello-tool-1.0-0.conda",
                "hash": {"md5": "a" * 32, "sha256": "b" * 64},
                "category": "main",
                "optional": False,
            },
            {
                "name": "flask",
                "version": "3.0.0",
                "manager": "pip",
                "platform": "linux-64",
                "dependencies": {},
                "url": "https://files.example/flask-3.0.0-py3-none-any.whl",
                "hash": {"sha256": "c" * 64},
                "category": "main",
                "optional": False,
            },
        ],
    }


def lockfile_error_of(data: object, name: str = "locked") -> str:
    with pytest.raises(SpecificationError) as info:
        parse_lockfile_specification(json.dumps(data), name, "")
    return info.value.message


@pytest.mark.parametrize("dump", [json.dumps, yaml.safe_dump])
def test_lockfile_v1_yaml_and_json_are_accepted(dump) -> None:
    spec = parse_lockfile_specification(dump(lockfile_dict()), "locked", "a description")
    assert isinstance(spec, LockfileSpecification)
    assert spec.name == "locked"
    assert spec.description == "a description"
    assert [p.name for p in spec.lockfile.package] == ["hello-tool", "flask"]
    assert spec.model_dump(mode="json")["lockfile"]["version"] == 1


def test_lockfile_without_version_dumps_version_one() -> None:
    data = lockfile_dict()
    del data["version"]
    spec = parse_lockfile_specification(json.dumps(data), "locked", None)
    assert spec.description == ""
    assert spec.model_dump()["lockfile"]["version"] == 1


@pytest.mark.parametrize(("version", "shown"), [(2, "2"), ("1", "'1'"), (True, "True")])
def test_other_lockfile_versions_are_rejected(version: object, shown: str) -> None:
    data = {**lockfile_dict(), "version": version}
    assert lockfile_error_of(data) == (
        f"Unsupported lockfile version {shown}: only conda-lock version 1 lockfiles are accepted"
    )


def test_lockfile_missing_fields_are_listed() -> None:
    data = lockfile_dict()
    data["metadata"] = {"channels": []}
    message = lockfile_error_of(data)
    assert message.split("\n") == [
        f"Field required (type=missing, loc=('lockfile', 'metadata', '{key}'))"
        for key in ("content_hash", "platforms", "sources")
    ]


def test_lockfile_bad_manager_is_a_clean_error() -> None:
    # conda-lock's own validator raises a bare KeyError for these (a 500 if let through).
    data = lockfile_dict()
    data["package"][0]["manager"] = "npm"
    del data["package"][1]["manager"]
    assert lockfile_error_of(data).split("\n") == [
        "Input should be 'conda' or 'pip' (type=literal_error, loc=('lockfile', 'package', 0, 'manager'))",
        "Field required (type=missing, loc=('lockfile', 'package', 1, 'manager'))",
    ]


@pytest.mark.parametrize("channels", [5, None, "conda-forge", {"url": "x"}])
def test_lockfile_channels_must_be_a_list(channels: object) -> None:
    # conda-lock iterates whatever it gets: a TypeError (500) or one channel per character.
    data = lockfile_dict()
    data["metadata"]["channels"] = channels
    assert lockfile_error_of(data) == (
        "Input should be a valid list (type=list_type, loc=('lockfile', 'metadata', 'channels'))"
    )


def test_lockfile_conda_package_needs_md5() -> None:
    data = lockfile_dict()
    data["package"][0]["hash"] = {"sha256": "b" * 64}
    assert lockfile_error_of(data) == (
        "Value error, conda package hashes must use MD5 "
        "(type=value_error, loc=('lockfile', 'package', 0, 'hash'))"
    )


def test_lockfile_name_is_validated_like_specification_names() -> None:
    message = lockfile_error_of(lockfile_dict(), name="../etc")
    assert message.startswith("Invalid environment name '../etc': it contains '..'; ")
    assert message.endswith("loc=('name',))")


def test_lockfile_must_be_a_mapping_and_valid_yaml() -> None:
    with pytest.raises(SpecificationError, match=r"^The lockfile must be a YAML mapping"):
        parse_lockfile_specification("- a\n", "locked", "")
    with pytest.raises(SpecificationError, match=r"^Unable to parse\. Invalid YAML"):
        parse_lockfile_specification("{", "locked", "")


def test_lockfile_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(specification, "MAX_LOCKFILE_BYTES", 100)
    with pytest.raises(SpecificationError, match=r"^The lockfile is too large: \d+ bytes"):
        parse_lockfile_specification(json.dumps(lockfile_dict()), "locked", "")


def test_lockfile_string_channels_are_taken_literally(monkeypatch: pytest.MonkeyPatch) -> None:
    # conda-lock would replace a credential equal to an environment variable's value by the
    # variable's name: on a server that leaks which secrets a guess matched.
    monkeypatch.setenv("SPEC_TEST_PASSWORD", "s3cret")
    data = lockfile_dict()
    data["metadata"]["channels"] = ["https://user:s3cret@conda.example/c", "conda-forge"]
    spec = parse_lockfile_specification(json.dumps(data), "locked", "")
    channels = spec.lockfile.metadata.channels
    assert [c.url for c in channels] == ["https://user:s3cret@conda.example/c", "conda-forge"]
    assert all(c.used_env_vars == () for c in channels)


def test_lockfile_round_trips_through_its_dump() -> None:
    spec = parse_lockfile_specification(json.dumps(lockfile_dict()), "locked", "")
    dumped = json.dumps(spec.model_dump(mode="json")["lockfile"])
    again = parse_lockfile_specification(dumped, "locked", "")
    assert specification_hash(again) == specification_hash(spec)


# --------------------------------------------------------------------------- policy


def test_normalize_channel() -> None:
    alias = "https://conda.anaconda.org/"
    assert normalize_channel("conda-forge", alias) == "https://conda.anaconda.org/conda-forge"
    assert normalize_channel("conda-forge/", alias) == "https://conda.anaconda.org/conda-forge"
    assert normalize_channel("https://repo.example/main/", alias) == "https://repo.example/main"
    assert normalize_channel("http://repo.example/main", alias) == "http://repo.example/main"
    assert normalize_channel("file:///srv/channel", alias) == "file:///srv/channel"
    assert normalize_channel("s3://bucket/channel", alias) == "s3://bucket/channel"
    assert normalize_channel("httpx-dev", alias) == "https://conda.anaconda.org/httpx-dev"


def test_empty_channels_become_default_channels_by_name() -> None:
    spec = apply_policy(parse_specification("name: e"), SpecificationPolicy())
    assert spec.channels == ["conda-forge"]  # stored as written, not as URLs (upstream)
    other = apply_policy(
        parse_specification("name: e\nchannels: [bioconda]"),
        SpecificationPolicy(conda_default_channels=("conda-forge",)),
    )
    assert other.channels == ["bioconda"]


def test_allowed_channels_compare_normalized_urls() -> None:
    policy = SpecificationPolicy(
        conda_channel_alias="https://mirror.example/conda/",
        conda_allowed_channels=("conda-forge", "https://repo.example/main/"),
    )
    spec = parse_specification(
        "name: e\nchannels:\n  - https://mirror.example/conda/conda-forge\n"
        "  - https://repo.example/main\n  - conda-forge\n"
    )
    assert apply_policy(spec, policy).channels == spec.channels


def test_disallowed_channels_are_named_with_the_allowed_ones() -> None:
    policy = SpecificationPolicy(conda_allowed_channels=("conda-forge", "https://b.example/c"))
    spec = parse_specification("name: e\nchannels: [defaults, conda-forge, https://x.example/]")
    with pytest.raises(SpecificationError) as info:
        apply_policy(spec, policy)
    assert info.value.message == (
        "Conda channels ['https://conda.anaconda.org/defaults', 'https://x.example'] not "
        "allowed in specification; allowed channels are "
        "['https://b.example/c', 'https://conda.anaconda.org/conda-forge']"
    )


def test_default_channels_are_checked_against_allowed_channels() -> None:
    policy = SpecificationPolicy(
        conda_default_channels=("bioconda",), conda_allowed_channels=("conda-forge",)
    )
    with pytest.raises(SpecificationError, match=r"bioconda'\] not allowed"):
        apply_policy(parse_specification("name: e"), policy)


def test_conda_default_packages_only_when_dependencies_are_empty() -> None:
    policy = SpecificationPolicy(conda_default_packages=("python", "ipykernel"))
    empty = apply_policy(parse_specification("name: e"), policy)
    assert empty.dependencies == ["python", "ipykernel"]
    given = apply_policy(parse_specification("name: e\ndependencies: [numpy]"), policy)
    assert given.dependencies == ["numpy"]
    # Upstream counts the pip entry too: dependencies are not "empty" then.
    pip_only = apply_policy(parse_specification(spec_text(dependencies=[{"pip": ["x"]}])), policy)
    assert pip_only.conda_dependencies() == []


def test_pypi_defaults_count_as_dependencies_for_conda_defaults() -> None:
    policy = SpecificationPolicy(pypi_default_packages=("flask",), conda_default_packages=("python",))
    spec = apply_policy(parse_specification("name: e"), policy)
    assert spec.model_dump()["dependencies"] == [{"pip": ["flask"]}]


def test_conda_included_packages_are_appended_by_name() -> None:
    policy = SpecificationPolicy(conda_included_packages=("ipykernel", "conda-forge::python>=3.10", "NumPy"))
    spec = parse_specification("name: e\ndependencies: [numpy=1.26, Python]")
    assert apply_policy(spec, policy).dependencies == ["numpy=1.26", "Python", "ipykernel"]


def test_conda_required_packages_name_what_is_missing() -> None:
    policy = SpecificationPolicy(conda_required_packages=("python>=3.10", "ipykernel", "numpy"))
    spec = parse_specification("name: e\ndependencies: [numpy, {pip: [ipykernel]}]")
    with pytest.raises(SpecificationError) as info:
        apply_policy(spec, policy)
    assert info.value.message == (
        "Conda packages ['python>=3.10', 'ipykernel'] are required and missing from the specification"
    )
    ok = parse_specification("name: e\ndependencies: [conda-forge::Python=3.12, ipykernel, numpy]")
    assert apply_policy(ok, policy).dependencies == ok.dependencies


def test_conda_required_packages_can_be_satisfied_by_included_or_defaults() -> None:
    policy = SpecificationPolicy(
        conda_default_packages=("python",),
        conda_included_packages=("ipykernel",),
        conda_required_packages=("python", "ipykernel"),
    )
    assert apply_policy(parse_specification("name: e"), policy).dependencies == [
        "python",
        "ipykernel",
    ]


def test_pypi_default_packages_only_without_pip_packages() -> None:
    policy = SpecificationPolicy(pypi_default_packages=("flask", "--index-url https://p/simple"))
    spec = apply_policy(parse_specification("name: e\ndependencies: [python]"), policy)
    assert spec.model_dump()["dependencies"] == [
        "python",
        {"pip": ["flask", "--index-url https://p/simple"]},
    ]
    given = parse_specification(spec_text(dependencies=["python", {"pip": ["attrs"]}]))
    assert apply_policy(given, policy).pip_dependencies() == ["attrs"]
    empty_pip = parse_specification(spec_text(dependencies=["python", {"pip": []}]))
    assert apply_policy(empty_pip, policy).model_dump()["dependencies"] == [
        "python",
        {"pip": ["flask", "--index-url https://p/simple"]},
    ]


def test_pypi_included_packages_by_canonical_name_and_options_by_string() -> None:
    policy = SpecificationPolicy(
        pypi_included_packages=(
            "Flask_Login>=0.6",
            "requests",
            "--index-url https://p/simple",
            "--extra-index-url https://q/simple/",
            "--pre",
        )
    )
    spec = parse_specification(
        spec_text(
            dependencies=[
                "python",
                {
                    "pip": [
                        "flask-login",
                        "--index-url=https://p/simple/",
                        "--extra-index-url=https://q/simple",
                    ]
                },
            ]
        )
    )
    assert apply_policy(spec, policy).pip_dependencies() == [
        "flask-login",
        "--index-url=https://p/simple/",
        "--extra-index-url=https://q/simple",
        "requests",
        "--pre",
    ]


def test_pypi_included_packages_go_into_the_first_pip_entry() -> None:
    policy = SpecificationPolicy(pypi_included_packages=("nothing",))
    spec = parse_specification(spec_text(dependencies=[{"pip": ["a"]}, "python", {"pip": ["b"]}]))
    assert apply_policy(spec, policy).model_dump()["dependencies"] == [
        {"pip": ["a", "nothing"]},
        "python",
        {"pip": ["b"]},
    ]


def test_pypi_required_packages_name_what_is_missing() -> None:
    policy = SpecificationPolicy(pypi_required_packages=("Flask>=2", "attrs", "--pre"))
    spec = parse_specification(spec_text(dependencies=[{"pip": ["attrs==23.1"]}]))
    with pytest.raises(SpecificationError) as info:
        apply_policy(spec, policy)
    assert info.value.message == (
        "PyPI packages ['Flask>=2', '--pre'] are required and missing from the specification"
    )
    ok = parse_specification(spec_text(dependencies=[{"pip": ["flask", "attrs", "--pre"]}]))
    assert apply_policy(ok, policy).pip_dependencies() == ["flask", "attrs", "--pre"]


def test_no_pip_entry_is_created_when_nothing_is_added() -> None:
    spec = parse_specification("name: e\ndependencies: [python]")
    result = apply_policy(spec, SpecificationPolicy())
    assert result.model_dump(mode="json")["dependencies"] == ["python"]


def test_policy_order_channels_then_pypi_then_conda() -> None:
    policy = SpecificationPolicy(
        conda_allowed_channels=("conda-forge",),
        pypi_required_packages=("flask",),
        conda_required_packages=("python",),
    )
    spec = parse_specification("name: e\nchannels: [bad]")
    with pytest.raises(SpecificationError, match=r"^Conda channels"):
        apply_policy(spec, policy)
    with pytest.raises(SpecificationError, match=r"^PyPI packages"):
        apply_policy(parse_specification("name: e"), policy)


def test_apply_policy_never_mutates_its_inputs() -> None:
    policy = SpecificationPolicy(
        conda_included_packages=("ipykernel",),
        pypi_included_packages=("nothing",),
        conda_default_channels=("conda-forge",),
    )
    spec = parse_specification(spec_text(dependencies=["python", {"pip": ["flask"]}]))
    before_spec = copy.deepcopy(spec.model_dump())
    before_policy = copy.deepcopy(policy)
    result = apply_policy(spec, policy)
    assert result is not spec
    assert spec.model_dump() == before_spec
    assert policy == before_policy
    assert result.pip_dependencies() == ["flask", "nothing"]
    assert apply_policy(spec, policy) == result  # deterministic
    assert specification_hash(apply_policy(result, policy)) == specification_hash(result)


def test_policy_accepts_lists_and_stores_tuples() -> None:
    policy = SpecificationPolicy(conda_required_packages=["python"])  # type: ignore[arg-type]
    assert policy.conda_required_packages == ("python",)
    with pytest.raises(TypeError, match="conda_included_packages must be a list of strings"):
        SpecificationPolicy(conda_included_packages="python")  # type: ignore[arg-type]


def test_policy_rejects_invalid_entries_naming_the_setting() -> None:
    with pytest.raises(SpecificationError, match=r"^Invalid setting conda_required_packages: "):
        SpecificationPolicy(conda_required_packages=("num*py",))
    with pytest.raises(SpecificationError, match=r"^Invalid setting pypi_included_packages: "):
        SpecificationPolicy(pypi_included_packages=("--foo bar",))
    with pytest.raises(SpecificationError, match=r"^Invalid setting conda_allowed_channels: "):
        SpecificationPolicy(conda_allowed_channels=("a b",))


# --------------------------------------------------------------------------- import hygiene


def test_module_import_emits_no_warnings() -> None:
    """conda_lock emits deprecation warnings on import; our module must contain them."""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import conda_store_server.specification"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
