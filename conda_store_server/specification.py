"""Environment specifications: the models, their content hash, parsing and the policy.

An environment is described by an ``environment.yaml`` (:class:`CondaSpecification`) or by a
user-supplied conda-lock v1 file (:class:`LockfileSpecification`). This module turns the text a
user sent into one of those models, or into a :class:`SpecificationError` whose message says
what to change. It also computes the content hash that deduplicates specifications, and applies
a deployment's package and channel policy (:class:`SpecificationPolicy`); which URLs a worker
may be made to fetch is `conda_store_server.fetch_policy`.

Everything here is pure and deterministic: no disk, network, clock or environment variables.
That way the HTTP layer can validate before it authorizes (as upstream does), and tests need
no fixtures.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Annotated, Any

import rattler
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Discriminator,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError
from rattler.exceptions import InvalidMatchSpecError

from conda_store_server.conda_lock_models import Lockfile
from conda_store_server.exception import SpecificationError, SpecificationTooLargeError
from conda_store_server.limits import MAX_DESCRIPTION_CHARACTERS
from conda_store_server.redact import mask_credentials

__all__ = [
    "MAX_ERROR_LINES",
    "MAX_LOCKFILE_BYTES",
    "MAX_NAME_LENGTH",
    "MAX_SPECIFICATION_BYTES",
    "NAME_PATTERN",
    "PIP_CREDENTIALS",
    "PIP_URL_OPTIONS",
    "SUPPORTED_PIP_OPTIONS",
    "CondaSpecification",
    "CondaSpecificationPip",
    "LockfileSpecification",
    "SpecificationPolicy",
    "apply_policy",
    "datastructure_hash",
    "is_url",
    "normalize_channel",
    "parse_lockfile_specification",
    "parse_specification",
    "pip_url",
    "shown_value",
    "specification_hash",
    "split_pip_option",
    "validate_name",
    "validation_message",
]

#: Upstream's pattern for environment names. We additionally reject ".", ".." and anything
#: containing "..", and names longer than MAX_NAME_LENGTH, because names become path
#: components of build and environment directories.
NAME_PATTERN = r"^[A-Za-z0-9-+_@$&?^~.=]+$"
#: Longest accepted name: the common file-name limit of Linux and macOS file systems.
MAX_NAME_LENGTH = 255
#: Largest environment.yaml text accepted; real specifications are a few kilobytes.
MAX_SPECIFICATION_BYTES = 1024 * 1024
#: Largest conda-lock text accepted. Lockfiles list every package for every platform, so they
#: are legitimately far bigger than specifications (a large 3-platform lock is ~1-2 MiB).
MAX_LOCKFILE_BYTES = 16 * 1024 * 1024
#: At most this many validation errors are reported; a generated 1 MiB list of bad entries
#: would otherwise produce a megabyte-long message.
MAX_ERROR_LINES = 50
#: The only pip options accepted inside `- pip: [...]`, listed in the error message: upstream's
#: `--index-url` and `--extra-index-url`, then `--find-links` and `--pre`. Upstream's third,
#: `--trusted-host`, is refused: it turns certificate checks off for a host, so anyone on the
#: worker's network path could substitute the packages of a build (or of a cache builds share).
SUPPORTED_PIP_OPTIONS: tuple[str, ...] = ("--index-url", "--extra-index-url", "--find-links", "--pre")
#: The options whose value is a URL the installer fetches (`fetch_policy` decides which may be).
PIP_URL_OPTIONS: tuple[str, ...] = ("--index-url", "--extra-index-url", "--find-links")
#: Why a URL with user-info (`user:password@`, `token@`) is refused wherever a user writes it.
PIP_CREDENTIALS = (
    "credentials for private indexes are configured by the administrator (CondaStore.pypi_index_url, "
    "CondaStore.pypi_extra_index_urls), never in a specification"
)

# `fullmatch` rather than `match`: with `match`, "$" also matches before a trailing newline.
_NAME_CHARS = re.compile(r"[A-Za-z0-9\-+_@$&?^~.=]+")
_NAME_ALLOWED = "letters, digits and the characters - + _ @ $ & ? ^ ~ . ="
_PIP_OPTION = re.compile(r"(--?[^ =]+)(?:[ =](.*))?", re.DOTALL)
_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: A URL whose authority holds user-info (up to the last "@" before the path, as urllib reads it).
_URL_WITH_USERINFO = re.compile(_URL_START.pattern + r"[^/?#]*@")
#: Schemes a pip option's URL may have; file:// only passes where the administrator allows it.
_PIP_OPTION_SCHEMES = ("http", "https", "file")
#: Schemes of a direct reference (`name @ URL`): the option schemes and git over http(s). Not
#: git+ssh: the worker would authenticate with its own keys on behalf of a specification.
_PIP_REFERENCE_SCHEMES = (*_PIP_OPTION_SCHEMES, "git+http", "git+https")
_PIP_SUPPORTED = (
    "supported are requirements such as 'flask[async]>=3; python_version >= \"3.10\"', direct "
    "references to http(s) or git+http(s) URLs such as 'name @ https://host/name-1.0-py3-none-any.whl' "
    "or 'name @ git+https://host/repo@v1' (file:// only where the administrator allows it), and the "
    f"options {list(SUPPORTED_PIP_OPTIONS)}"
)
#: Names pip and uv read as archive files in the working directory, not as projects (pip's list).
_ARCHIVE_SUFFIXES = (
    ".whl",
    ".zip",
    ".tar",
    ".tar.gz",
    ".tgz",
    ".tar.bz2",
    ".tbz",
    ".tar.xz",
    ".txz",
    ".tar.lz",
    ".tlz",
    ".tar.lzma",
)
_LOCAL_PATHS = "local paths are not supported, a build runs on a worker that must not install its own files"
_EDITABLE = "editable installs are not supported: a build installs packages, not a working copy"
_FILES = "{} files would be read from the worker's disk: list the requirements themselves"
#: Why some well-known pip options are refused, appended to the "supported options" message.
_PIP_OPTION_HINTS = {
    "-e": _EDITABLE,
    "--editable": _EDITABLE,
    "-r": _FILES.format("requirement"),
    "--requirement": _FILES.format("requirement"),
    "-c": _FILES.format("constraint"),
    "--constraint": _FILES.format("constraint"),
    "-i": "write it as --index-url URL",
    "-f": "write it as --find-links URL",
    "--trusted-host": (
        "a specification cannot turn certificate checks off; an administrator configures the "
        "workers' certificate authorities"
    ),
}
_LOCKFILE_MANAGERS = ("conda", "pip")


# --------------------------------------------------------------------------- helpers


def _has_control(value: str) -> bool:
    """True if `value` holds a control character (newline, NUL, DEL, ...).

    Those can never be part of a package name, channel or pip option, and a newline in a pip
    entry would inject an extra line into the requirements file given to the installer.
    """
    return any(unicodedata.category(ch) == "Cc" for ch in value)


def shown_value(value: str, limit: int = 80) -> str:
    """`repr` of a user value, cut short so an oversized input cannot bloat the message."""
    if len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    return repr(value)


def _plain(value: str, limit: int = 200) -> str:
    """A user value as upstream prints it (unquoted), cut short if it is huge."""
    if len(value) > limit:
        return value[:limit] + f"... ({len(value)} characters)"
    return value


def _name_problem(value: str) -> str | None:
    """Why `value` is not an acceptable name, or None if it is."""
    if value == "":
        return "it is empty"
    if len(value) > MAX_NAME_LENGTH:
        return f"it is {len(value)} characters long, the maximum is {MAX_NAME_LENGTH}"
    if value in (".", ".."):
        return f"{value!r} is not allowed"
    if ".." in value:
        return "it contains '..'"
    if _NAME_CHARS.fullmatch(value):
        return None
    if "/" in value or "\\" in value:
        return "it contains a path separator ('/' or '\\')"
    if _has_control(value):
        return "it contains control characters"
    if any(ch.isspace() for ch in value):
        return "it contains whitespace"
    bad = sorted({ch for ch in value if not _NAME_CHARS.fullmatch(ch)})
    return "it contains " + ", ".join(repr(ch) for ch in bad)


def _name_message(value: str, field: str) -> str:
    return (
        f"Invalid {field} {shown_value(value)}: {_name_problem(value)}; "
        f"a name may contain only {_NAME_ALLOWED} (no '/', spaces or control characters), "
        f"must not be '.' or '..' or contain '..', and is at most {MAX_NAME_LENGTH} characters"
    )


def validate_name(value: str, field: str = "environment name") -> str:
    """Return `value` if it is a valid environment (or namespace) name, else raise.

    Exposed so that every place that takes a name from a user (the lockfile upload's
    `environment_name`, namespace routes) applies the same rule with the same message.
    """
    if _name_problem(value) is not None:
        raise SpecificationError(_name_message(value, field))
    return value


def _check_name_field(value: str) -> str:
    """pydantic validator for `name`: the same rule, reported as a pydantic error line."""
    problem = _name_problem(value)
    if problem is None:
        return value
    # Keep pydantic's error types for the two classic failures so clients that look at the
    # type still recognize them; the message is ours and says what is allowed.
    error_type = "string_too_long" if len(value) > MAX_NAME_LENGTH else "string_pattern_mismatch"
    raise PydanticCustomError(error_type, _name_message(value, "environment name"))


def _check_description(value: str) -> str:
    if len(value) > MAX_DESCRIPTION_CHARACTERS:
        raise ValueError(
            f"the description is {len(value)} characters long; the limit is {MAX_DESCRIPTION_CHARACTERS}"
        )
    return value


def _description_or_empty(value: Any) -> Any:
    """`description: null` means "no description": store it as "" so both hash alike."""
    return "" if value is None else value


def _check_conda_dependency(value: str) -> str:
    """A conda dependency must be a MatchSpec that rattler (our solver) can parse."""
    if value.strip() == "" or _has_control(value):
        raise ValueError(
            f"Invalid conda package dependency specification {value!r}: it must be a "
            "non-empty MatchSpec such as 'numpy >=1.26' without control characters"
        )
    try:
        rattler.MatchSpec(value)
    except InvalidMatchSpecError as exc:
        reason = _plain(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise ValueError(f"Invalid conda package dependency specification {_plain(value)}: {reason}") from exc
    return value


def split_pip_option(value: str) -> tuple[str, str | None]:
    """Split "--opt value", "--opt=value" or "-o value" into (option, value-or-None)."""
    match = _PIP_OPTION.fullmatch(value)
    if match is None:
        return value, None
    return match.group(1), match.group(2)


def _has_userinfo(url: str) -> bool:
    """True if the authority of `url` holds user-info ("user:password@", "token@")."""
    return _URL_WITH_USERINFO.match(url) is not None


def pip_url(entry: str) -> str | None:
    """The URL a pip entry makes the installer fetch: a `PIP_URL_OPTIONS` value or the URL of a
    direct reference (`name @ URL`); None for other entries and for entries that do not parse.
    """
    if entry.startswith("-"):
        option, value = split_pip_option(entry)
        return value if option in PIP_URL_OPTIONS else None
    try:
        return Requirement(entry).url
    except InvalidRequirement:
        return None


def _looks_like_path(value: str) -> bool:
    """True for what pip would read as a file or directory (`./pkg`, `/srv/x.whl`, `C:\\x`)."""
    return (
        value.startswith((".", "~"))
        or "/" in value
        or "\\" in value
        or value.lower().startswith("file:")
        or value.lower().endswith(_ARCHIVE_SUFFIXES)
    )


def _pip_url_problem(url: str, schemes: tuple[str, ...]) -> str | None:
    """Why the URL of a pip entry cannot be accepted whatever the policy, or None.

    Which hosts may be fetched from is the policy's (`fetch_policy`); this refuses what no
    policy allows: local paths, other schemes, and credentials.
    """
    if "://" not in url:
        return f"{_LOCAL_PATHS}; {_PIP_SUPPORTED}"
    scheme = url.split("://", 1)[0].lower()
    if scheme not in schemes:
        return f"{scheme}:// URLs are not supported; {_PIP_SUPPORTED}"
    if _has_userinfo(url):
        return PIP_CREDENTIALS
    return None


def _pip_option_problem(value: str) -> str | None:
    """Why a pip option line is refused, or None: it must be a supported option with one value
    (none for `--pre`), and a URL option's value must be an acceptable URL."""
    shown = shown_value(mask_credentials(value))
    option, option_value = split_pip_option(value)
    if option not in SUPPORTED_PIP_OPTIONS:
        message = (
            f"Invalid pip option '{_plain(mask_credentials(value))}' "
            f"supported options are {list(SUPPORTED_PIP_OPTIONS)}"
        )
        hint = _PIP_OPTION_HINTS.get(option)
        return f"{message}; {hint}" if hint else message
    if option == "--pre":
        return None if option_value is None else f"Invalid pip option {shown}: --pre takes no value"
    if (
        option_value is None
        or option_value.strip() == ""
        or _has_control(option_value)
        or any(ch.isspace() for ch in option_value)
    ):
        return (
            f"Invalid pip option {shown}: {option} needs one value without spaces or "
            f"control characters, written '{option} VALUE' or '{option}=VALUE'"
        )
    problem = _pip_url_problem(option_value, _PIP_OPTION_SCHEMES)
    return None if problem is None else f"Invalid pip option {shown}: {problem}"


def _pip_requirement_problem(value: str) -> str | None:
    """Why a pip requirement is refused, or None: it must be PEP 508, and name its package
    when it is a URL; a direct reference's URL must be an acceptable URL."""
    prefix = f'Invalid pypi package dependency "{_plain(mask_credentials(value))}"'
    upstream = (
        f"{prefix} ensure it follows peps https://peps.python.org/pep-0508/ and "
        "https://peps.python.org/pep-0440/"
    )
    if _has_control(value):
        return upstream
    try:
        requirement = Requirement(value)
    except InvalidRequirement:
        if _URL_START.match(value):
            return f"{prefix}: a URL needs the name of its package, written 'name @ URL'"
        if "://" not in value and _looks_like_path(value):
            return f"{prefix}: {_LOCAL_PATHS}; {_PIP_SUPPORTED}"
        return upstream
    if requirement.url is None:
        archive = requirement.name.lower().endswith(_ARCHIVE_SUFFIXES)
        return f"{prefix}: {_LOCAL_PATHS}; {_PIP_SUPPORTED}" if archive else None
    problem = _pip_url_problem(requirement.url, _PIP_REFERENCE_SCHEMES)
    return None if problem is None else f"{prefix}: {problem}"


def _check_pip_dependency(value: str) -> str:
    """A pip entry is a PEP 508 requirement or one of SUPPORTED_PIP_OPTIONS.

    Refused whatever the policy: other options (editable installs, requirement files), local
    paths, URLs of other schemes and URLs holding credentials. The messages never show a
    credential. Which hosts the URLs may name is `fetch_policy.check_pip_index_urls`.
    """
    problem = _pip_option_problem(value) if value.startswith("-") else _pip_requirement_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _check_index_setting(value: str) -> str:
    """An index URL of the deployment (pypi_index_url, ...) is a URL of one token with a host
    (file:// URLs aside): a prefix such as "https://" would let specifications name any host."""
    shown = shown_value(mask_credentials(value))
    if "://" not in value or _has_control(value) or any(ch.isspace() for ch in value):
        raise ValueError(f"{shown} is not a URL such as https://pypi.example.org/simple")
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"{shown} is not a valid URL (its host or port cannot be read)") from exc
    if not parts.hostname and parts.scheme.lower() != "file":
        raise ValueError(
            f"{shown} names no host; write the URL of an index, such as https://pypi.example.org/simple"
        )
    return value


def _check_channel(value: str) -> str:
    """A channel is a name ("conda-forge") or a URL; neither can hold whitespace."""
    if value.strip() == "" or _has_control(value) or any(ch.isspace() for ch in value):
        raise ValueError(
            f"Invalid conda channel {shown_value(value)}: a channel is a name such as 'conda-forge' "
            "or a URL, without whitespace or control characters"
        )
    return value


def _check_variables(value: Any) -> Any:
    """Reject YAML floats and booleans with a hint, instead of silently coercing them.

    Upstream's `dict[str, str | int]` turns `true` into 1 and `12.0` into 12, and `11.8`
    yields two cryptic union errors; quoting the value is what the user has to do.
    """
    if not isinstance(value, Mapping):
        return value
    for key, item in value.items():
        if isinstance(key, str) and (key == "" or "=" in key or _has_control(key)):
            raise ValueError(
                f"Invalid variable name {shown_value(key)}: a variable name must be non-empty "
                "and contain no '=' or control characters"
            )
        if isinstance(item, bool | float):
            raise ValueError(
                f"Invalid value for variable {key!r}: {item!r} is a {type(item).__name__}; "
                f"variable values must be strings or integers, quote it: {key}: '{item}'"
            )
        if isinstance(item, str) and "\x00" in item:
            raise ValueError(f"Invalid value for variable {key!r}: it contains a NUL character")
    return value


# --------------------------------------------------------------------------- models


class CondaSpecificationPip(BaseModel):
    """The `{"pip": [...]}` entry of `dependencies`: requirements and a few pip options."""

    pip: list[Annotated[str, AfterValidator(_check_pip_dependency)]]


def _dependency_kind(value: Any) -> str | None:
    """Pick the arm of a dependency entry by its shape.

    Upstream validates each entry against both arms of the union and reports both failures
    (a bad conda string also says "Input should be a valid dictionary"). Choosing the arm from
    the input's type reports only the error that applies.
    """
    if isinstance(value, str):
        return "str"
    if isinstance(value, Mapping | CondaSpecificationPip):
        return "CondaSpecificationPip"
    return None


CondaDependency = Annotated[str, AfterValidator(_check_conda_dependency)]
Dependency = Annotated[
    Annotated[CondaDependency, Tag("str")] | Annotated[CondaSpecificationPip, Tag("CondaSpecificationPip")],
    Discriminator(
        _dependency_kind,
        custom_error_type="dependency_type",
        custom_error_message=(
            "Input should be a conda package specification string "
            "or a 'pip' mapping holding a list of pip requirements"
        ),
    ),
]
EnvironmentName = Annotated[str, AfterValidator(_check_name_field)]
Description = Annotated[str, BeforeValidator(_description_or_empty), AfterValidator(_check_description)]


class CondaSpecification(BaseModel):
    """An `environment.yaml` as conda-store understands it.

    `parse_specification` refuses top-level keys that are not fields here (upstream ignores
    them, so a misspelled `dependecies:` silently built an empty environment); the model
    itself ignores them, so specifications stored by older servers still load. `description:
    null` is stored as "" (see `Description`), so the attribute is always a string.
    """

    name: EnvironmentName
    channels: list[Annotated[str, AfterValidator(_check_channel)]] = []
    dependencies: list[Dependency] = []
    description: Description = ""
    prefix: str | None = None
    variables: Annotated[dict[str, str | int] | None, BeforeValidator(_check_variables)] = None

    @model_validator(mode="after")
    def _one_index_url(self) -> CondaSpecification:
        """Refuse a second `--index-url`: pip silently uses the last, uv refuses the file."""
        index_urls = [
            mask_credentials(entry)
            for entry in self.pip_dependencies()
            if split_pip_option(entry)[0] == "--index-url"
        ]
        if len(index_urls) > 1:
            raise ValueError(
                f"Pip option --index-url is given {len(index_urls)} times {index_urls}: a build "
                "installs from one index; name the others with --extra-index-url"
            )
        return self

    def conda_dependencies(self) -> list[str]:
        """The conda MatchSpec strings, in the order written."""
        return [dep for dep in self.dependencies if isinstance(dep, str)]

    def pip_dependencies(self) -> list[str]:
        """All pip entries (requirements and options) of every `{"pip": [...]}` entry."""
        return [
            item for dep in self.dependencies if isinstance(dep, CondaSpecificationPip) for item in dep.pip
        ]


class LockfileSpecification(BaseModel):
    """A user-supplied conda-lock v1 file, with the name and description sent beside it.

    The dump contains `lockfile.version == 1`: conda-lock's v1 model declares it as a
    `Literal[1]` field, which is what upstream achieves by re-adding the key on dump.
    """

    name: EnvironmentName
    description: Description = ""
    lockfile: Lockfile


# --------------------------------------------------------------------------- hashing


def _sort_key(value: Any) -> str:
    if isinstance(value, dict | list):
        return str(type(value))
    return f"{type(value)}-{value}"


def _recursive_sort(value: Any) -> Any:
    """Sort dict keys and list items, recursively, exactly as upstream does.

    List items are sorted *before* recursing, by type name for containers (so all dicts
    compare equal and keep their relative order) and by "type-value" for scalars.
    """
    if isinstance(value, dict):
        return {key: _recursive_sort(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_recursive_sort(item) for item in sorted(value, key=_sort_key)]
    return value


def datastructure_hash(value: Any) -> str:
    """sha256 of the canonical JSON of `value`: upstream's algorithm, bit for bit.

    Kept identical (default `json.dumps` separators, list items sorted too) so that a
    specification hashes to the same value here and in conda-store; as a consequence the
    order of dependencies does not change the hash.
    """
    text = json.dumps(_recursive_sort(value))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def specification_hash(spec: CondaSpecification | LockfileSpecification) -> str:
    """The deduplication key of a specification: the hash of its full JSON dump.

    Computed on what is stored (after policy, for conda specifications), with every field
    present (`description`, `prefix`, `variables`), as upstream does.
    """
    return datastructure_hash(spec.model_dump(mode="json"))


# --------------------------------------------------------------------------- parsing


def _error_lines(error: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[str]:
    """pydantic errors as upstream's lines: "<msg> (type=<type>, loc=<loc tuple>)"."""
    return [
        f"{item['msg']} (type={item['type']}, loc={prefix + tuple(item['loc'])})"
        for item in error.errors(include_url=False, include_context=False, include_input=False)
    ]


def _join_lines(lines: list[str]) -> str:
    """One message from error lines, capped at MAX_ERROR_LINES."""
    if len(lines) > MAX_ERROR_LINES:
        hidden = len(lines) - MAX_ERROR_LINES
        lines = [*lines[:MAX_ERROR_LINES], f"... and {hidden} more validation errors"]
    return "\n".join(lines)


def validation_message(error: ValidationError) -> str:
    """A pydantic error as the message a user gets: upstream's lines, capped."""
    return _join_lines(_error_lines(error))


_TOO_DEEP = "Unable to parse. Invalid YAML: the document is nested too deeply"
#: libyaml's parser, when PyYAML has it: far faster, and it refuses a document nested deeper
#: than it parses at once, where the pure-Python parser takes most of a second to overflow.
_FAST_LOADER = getattr(yaml, "CSafeLoader", None)


def _safe_yaml(text: str) -> Any:
    """`yaml.safe_load`, by libyaml where it can; what it refuses gets the pure parser's message
    (the one users know), but for nesting, which only libyaml refuses quickly."""
    if _FAST_LOADER is not None:
        try:
            return yaml.load(text, Loader=_FAST_LOADER)
        except yaml.YAMLError as error:
            if "maximum nesting depth" in str(error):
                raise SpecificationError(_TOO_DEEP) from error
    return yaml.safe_load(text)


def _load_document(text: str, what: str, limit: int) -> dict[str, Any]:
    """Parse YAML or JSON text into a mapping, or raise SpecificationError saying why not."""
    if not isinstance(text, str):
        raise SpecificationError(f"The {what} must be text (YAML or JSON)")
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > limit:
        raise SpecificationTooLargeError(
            f"The {what} is too large: {size} bytes, the maximum is {limit} bytes "
            f"({limit // (1024 * 1024)} MiB)"
        )
    try:
        stripped = text.lstrip()
        if stripped.startswith(("{", "[")):
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                data = _safe_yaml(text)  # flow-style YAML is not always JSON
        else:
            data = _safe_yaml(text)
    except yaml.MarkedYAMLError as exc:
        detail = ", ".join(part for part in (exc.context, exc.problem) if part)
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            detail += f" (line {mark.line + 1}, column {mark.column + 1})"
        raise SpecificationError(f"Unable to parse. Invalid YAML: {detail}") from exc
    except yaml.YAMLError as exc:
        raise SpecificationError(f"Unable to parse. Invalid YAML: {exc}") from exc
    except RecursionError as exc:
        raise SpecificationError(_TOO_DEEP) from exc
    if data is None:
        raise SpecificationError(f"The {what} is empty: expected a YAML mapping of keys to values")
    if not isinstance(data, dict):
        raise SpecificationError(
            f"The {what} must be a YAML mapping of keys to values (such as 'name: ...'), "
            f"not a {_yaml_type_name(data)}"
        )
    return data


def _yaml_type_name(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _unknown_key_lines(data: Mapping[Any, Any]) -> list[str]:
    """One line per top-level key that is not a specification field, with the likely fix."""
    known = list(CondaSpecification.model_fields)
    lines = []
    for key in data:
        if key in known:
            continue
        shown = shown_value(key) if isinstance(key, str) else repr(key)
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        lines.append(f"Unknown key {shown} in the specification{hint} Known keys: {', '.join(known)}")
    return lines


def parse_specification(text: str) -> CondaSpecification:
    """Parse an environment.yaml (YAML or JSON text) into a validated CondaSpecification.

    No policy is applied here (see `apply_policy`): this is the syntactic check that runs
    before authorization, so a malformed request gets a 400 that says what to fix. A key
    that is not a specification field is such an error: ignoring it would build something
    other than what the user meant (`dependecies:` would build an empty environment).
    """
    data = _load_document(text, "specification", MAX_SPECIFICATION_BYTES)
    unknown = _unknown_key_lines(data)
    if unknown:
        raise SpecificationError(_join_lines(unknown))
    try:
        return CondaSpecification.model_validate(data)
    except ValidationError as exc:
        raise SpecificationError(_join_lines(_error_lines(exc))) from exc


def _lockfile_shape_errors(lockfile: dict[str, Any]) -> list[str]:
    """Errors conda-lock's validators would turn into crashes instead of messages.

    Its `hash` validator reads the already-validated `manager` and raises a bare KeyError
    when that is missing or invalid, and its `channels` pre-validator iterates whatever it
    gets (TypeError on a number, one channel per character of a string). Outside a
    ValueError pydantic does not catch these, so they would surface as 500s.
    """
    lines = []
    metadata = lockfile.get("metadata")
    if isinstance(metadata, dict) and "channels" in metadata:
        if not isinstance(metadata["channels"], list):
            loc = ("lockfile", "metadata", "channels")
            lines.append(f"Input should be a valid list (type=list_type, loc={loc})")
    packages = lockfile.get("package")
    for index, package in enumerate(packages if isinstance(packages, list) else []):
        if not isinstance(package, dict):
            continue
        loc = ("lockfile", "package", index, "manager")
        manager = package.get("manager")
        if "manager" not in package:
            lines.append(f"Field required (type=missing, loc={loc})")
        elif not isinstance(manager, str) or manager not in _LOCKFILE_MANAGERS:
            lines.append(f"Input should be 'conda' or 'pip' (type=literal_error, loc={loc})")
    return lines


def _channels_as_mappings(lockfile: dict[str, Any]) -> dict[str, Any]:
    """Turn string channels into `{"url", "used_env_vars": []}` mappings (a shallow copy).

    conda-lock's `Channel.from_string` searches the process environment for variables whose
    value equals a credential in the URL and substitutes their names. On a server that is
    impure and an oracle for its secrets, so the string is taken literally instead.
    """
    metadata = lockfile.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("channels"), list):
        return lockfile
    channels = [
        {"url": channel, "used_env_vars": []} if isinstance(channel, str) else channel
        for channel in metadata["channels"]
    ]
    return {**lockfile, "metadata": {**metadata, "channels": channels}}


def parse_lockfile_specification(text: str, name: str, description: str | None) -> LockfileSpecification:
    """Parse a conda-lock v1 file (YAML or JSON text) into a LockfileSpecification.

    `name` and `description` come from the request (`environment_name`,
    `environment_description`); the name follows the same rule as specification names.
    No package policy applies to lockfiles (upstream behaviour); which package URLs they may
    name is checked against the deployment's channels by `fetch_policy.check_lockfile_urls`.
    """
    data = _load_document(text, "lockfile", MAX_LOCKFILE_BYTES)
    if "version" in data:
        version = data["version"]
        if isinstance(version, bool) or version != 1:
            raise SpecificationError(
                f"Unsupported lockfile version {version!r}: only conda-lock version 1 lockfiles are accepted"
            )
        data = {**data, "version": 1}  # accept `1.0` as written by some YAML tools
    shape_lines = _lockfile_shape_errors(data)
    if shape_lines:
        raise SpecificationError(_join_lines(shape_lines))
    payload = {"name": name, "description": description, "lockfile": _channels_as_mappings(data)}
    try:
        return LockfileSpecification.model_validate(payload)
    except ValidationError as exc:
        raise SpecificationError(_join_lines(_error_lines(exc))) from exc
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        # Last resort for another crash inside conda-lock's validators on odd input.
        raise SpecificationError(
            f"Invalid lockfile: conda-lock could not validate it ({type(exc).__name__}: {exc})"
        ) from exc


# --------------------------------------------------------------------------- policy


def is_url(channel: str) -> bool:
    return "://" in channel


def normalize_channel(channel: str, channel_alias: str) -> str:
    """The full URL of a channel: names are put under `channel_alias`, URLs kept.

    Upstream keeps anything starting with "http"; we keep anything with a scheme ("://"), so
    local `file://` and `s3://` channels work and a channel *named* "httpx-dev" is not
    mistaken for a URL. A trailing "/" is dropped so both spellings compare equal.
    """
    channel = channel.rstrip("/")
    if is_url(channel):
        return channel
    return f"{channel_alias.rstrip('/')}/{channel}"


def _to_tuple(field_name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"SpecificationPolicy.{field_name} must be a list of strings")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"SpecificationPolicy.{field_name} must be a list of strings")
    return items


#: Policy fields holding one string rather than a list.
_STRING_FIELDS = ("conda_channel_alias", "pypi_index_url")
#: Policy fields holding index URLs of the deployment rather than pip entries.
_INDEX_FIELDS = ("pypi_index_url", "pypi_extra_index_urls", "pypi_allowed_indexes")


@dataclass(frozen=True)
class SpecificationPolicy:
    """The (namespace, environment) settings that shape a specification (upstream §5.1).

    Fields are tuples so a policy can be shared and cached without being mutated; lists are
    accepted and converted. Package entries are checked when the policy is built, so a bad
    setting is reported (naming the setting) where it is configured, not blamed on a user.
    `conda_indexed_channels` shapes nothing, but the channels an administrator configured
    there are trusted by the URL rules (`fetch_policy`) like the default and allowed ones.

    The last three fields are deployment options, not settings (`Settings.specification_policy`
    fills them from the CondaStore): the indexes builds use, and the URL prefixes a
    specification may name. They may hold credentials, so `repr` leaves them out.
    """

    conda_channel_alias: str = "https://conda.anaconda.org"
    conda_default_channels: tuple[str, ...] = ("conda-forge",)
    conda_allowed_channels: tuple[str, ...] = ()
    conda_indexed_channels: tuple[str, ...] = ()
    conda_default_packages: tuple[str, ...] = ()
    conda_required_packages: tuple[str, ...] = ()
    conda_included_packages: tuple[str, ...] = ()
    pypi_default_packages: tuple[str, ...] = ()
    pypi_required_packages: tuple[str, ...] = ()
    pypi_included_packages: tuple[str, ...] = ()
    pypi_index_url: str = field(default="https://pypi.org/simple", repr=False)
    pypi_extra_index_urls: tuple[str, ...] = field(default=(), repr=False)
    pypi_allowed_indexes: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        for name in _STRING_FIELDS:
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise TypeError(f"SpecificationPolicy.{name} must be a non-empty string")
        for item in fields(self):
            if item.name == "conda_channel_alias":
                continue
            if item.name == "pypi_index_url":
                values: tuple[str, ...] = (self.pypi_index_url,)
            else:
                values = _to_tuple(item.name, getattr(self, item.name))
                object.__setattr__(self, item.name, values)
            check = _setting_check(item.name)
            for value in values:
                try:
                    check(value)
                except ValueError as exc:
                    raise SpecificationError(f"Invalid setting {item.name}: {exc}") from exc


def _setting_check(name: str) -> Callable[[str], str]:
    """The validator of one entry of the policy field `name`."""
    if name in _INDEX_FIELDS:
        return _check_index_setting
    if name.endswith("_channels"):
        return _check_channel
    if name.startswith("conda_"):
        return _check_conda_dependency
    return _check_pip_dependency


def _conda_name(spec: str) -> str:
    """The normalized package name of a MatchSpec ("conda-forge::NumPy>=1" -> "numpy")."""
    matcher = rattler.MatchSpec(spec).name
    return matcher.normalized


def _pypi_key(entry: str) -> str:
    """How pip entries are compared: canonical project name, or the option with its value.

    "--index-url=URL", "--index-url URL" and "--index-url URL/" name the same index, so an
    included option is not added again in another spelling.
    """
    if entry.startswith("-"):
        option, value = split_pip_option(entry)
        return option if value is None else f"{option} {value.rstrip('/')}"
    return canonicalize_name(Requirement(entry).name)


def _apply_channels(spec: dict[str, Any], policy: SpecificationPolicy) -> None:
    if not spec["channels"]:
        spec["channels"] = list(policy.conda_default_channels)
    if not policy.conda_allowed_channels:
        return
    alias = policy.conda_channel_alias
    allowed = {normalize_channel(channel, alias) for channel in policy.conda_allowed_channels}
    requested = {normalize_channel(channel, alias) for channel in spec["channels"]}
    disallowed = requested - allowed
    if disallowed:
        raise SpecificationError(
            f"Conda channels {sorted(disallowed)} not allowed in specification; "
            f"allowed channels are {sorted(allowed)}"
        )


def _apply_pypi(spec: dict[str, Any], policy: SpecificationPolicy) -> None:
    """Step 2 of `apply_policy`, on the dumped specification `spec` (modified in place)."""
    dependencies: list[Any] = spec["dependencies"]
    pip_entries = [dep for dep in dependencies if isinstance(dep, dict)]
    current = [item for dep in pip_entries for item in dep["pip"]]

    additions: list[str] = []
    if not current:
        additions.extend(policy.pypi_default_packages)
    present = {_pypi_key(item) for item in [*current, *additions]}
    for package in policy.pypi_included_packages:
        key = _pypi_key(package)
        if key not in present:
            additions.append(package)
            present.add(key)

    index_urls = sorted(
        {_pypi_key(item) for item in [*current, *additions] if split_pip_option(item)[0] == "--index-url"}
    )
    if len(index_urls) > 1:
        raise SpecificationError(
            f"Pip options {index_urls} name more than one --index-url (counting those added by "
            "pypi_default_packages and pypi_included_packages); a build installs from one index, "
            "name the others with --extra-index-url"
        )
    if additions:
        if pip_entries:
            pip_entries[0]["pip"].extend(additions)
        else:
            dependencies.append({"pip": additions})

    missing = [p for p in policy.pypi_required_packages if _pypi_key(p) not in present]
    if missing:
        raise SpecificationError(f"PyPI packages {missing} are required and missing from the specification")


def _apply_conda(spec: dict[str, Any], policy: SpecificationPolicy) -> None:
    dependencies: list[Any] = spec["dependencies"]
    if not dependencies:
        dependencies.extend(policy.conda_default_packages)
    present = {_conda_name(dep) for dep in dependencies if isinstance(dep, str)}
    for package in policy.conda_included_packages:
        name = _conda_name(package)
        if name not in present:
            dependencies.append(package)
            present.add(name)
    missing = [p for p in policy.conda_required_packages if _conda_name(p) not in present]
    if missing:
        raise SpecificationError(f"Conda packages {missing} are required and missing from the specification")


def apply_policy(spec: CondaSpecification, policy: SpecificationPolicy) -> CondaSpecification:
    """Return a new specification with the deployment policy applied (upstream §5.3).

    Steps, in upstream's order:

    1. Channels: an empty list becomes `conda_default_channels`. If `conda_allowed_channels`
       is set, every channel, normalized with `conda_channel_alias` (`normalize_channel`),
       must be among the normalized allowed channels. The stored specification keeps the
       channels *as written* (e.g. "conda-forge"), as upstream stores and hashes them; only
       the comparison uses URLs, so the alias can change without changing spec hashes.
    2. PyPI: with no pip entries at all, `pypi_default_packages` are added; then each
       `pypi_included_packages` entry whose project name (PEP 503 normalized; options by option
       and value, see `_pypi_key`) is absent is appended to the first `{"pip": [...]}` entry
       (created if needed); then every `pypi_required_packages` entry must be present. An
       included `--index-url` other than the specification's is a conflict (an error), not a
       second index: a build installs from one.
    3. Conda: if `dependencies` is entirely empty (pip entries count, as upstream), it becomes
       `conda_default_packages`; `conda_included_packages` missing by MatchSpec name are
       appended; every `conda_required_packages` name must be present.

    Neither `spec` nor `policy` is modified. A violation raises SpecificationError naming
    what is missing or not allowed.
    """
    data = spec.model_dump(mode="json")
    _apply_channels(data, policy)
    _apply_pypi(data, policy)
    _apply_conda(data, policy)
    try:
        return CondaSpecification.model_validate(data)
    except ValidationError as exc:  # only reachable if the policy adds an invalid entry
        raise SpecificationError(_join_lines(_error_lines(exc))) from exc
