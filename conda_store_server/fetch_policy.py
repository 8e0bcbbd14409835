"""Which URLs a worker may be made to fetch: channels, lockfile packages, pip indexes.

A specification names URLs that a worker then downloads from; without a rule, a user could make
it read the worker's files (`file:///etc/...`) or reach services on its network (Redis on
127.0.0.1, cloud metadata on 169.254.169.254). Channels an administrator configured are trusted;
anything else must be http(s) on a public host. The server checks what is written (literal
addresses, no DNS); the worker checks again with a resolver (`Resolver`) before it fetches, so
a name pointing at 127.0.0.1 is refused like 127.0.0.1.

Pip URLs (index options, `--find-links`, direct references, lockfile pip packages) follow the
same address rule, with their own trust: the deployment's indexes (`CondaStore.pypi_index_url`,
`pypi_extra_index_urls`), the prefixes of `pypi_allowed_indexes` (which, when set, are the only
URLs a specification may name) and the URLs of the pypi_* package settings. A credential never
comes from a specification, and no message shows one.
"""

from __future__ import annotations

import ipaddress
import re
import string
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from conda_store_server.exception import SpecificationError
from conda_store_server.redact import mask_credentials
from conda_store_server.specification import (
    PIP_CREDENTIALS,
    CondaSpecification,
    LockfileSpecification,
    SpecificationPolicy,
    _has_userinfo,
    is_url,
    normalize_channel,
    pip_url,
    shown_value,
    split_pip_option,
)

__all__ = [
    "CHANNEL_SETTINGS",
    "PIP_INDEX_SETTINGS",
    "Resolver",
    "check_channels",
    "check_lockfile_urls",
    "check_package_urls",
    "check_pip_index_urls",
    "check_resolved_pip_urls",
    "check_specification_urls",
]

#: Resolves a host name to its IP addresses (as strings); raises OSError when it cannot.
Resolver = Callable[[str], Iterable[str]]

#: The settings that make a channel, or a package URL inside one, trusted; named in refusals
#: so an administrator knows where to configure a channel that users need.
CHANNEL_SETTINGS = "conda_default_channels, conda_allowed_channels, conda_indexed_channels"
#: Where an administrator lets specifications name pip URLs; named in refusals.
PIP_INDEX_SETTINGS = "pypi_allowed_indexes, pypi_index_url, pypi_extra_index_urls"
#: How a refusal names the URL of a pip entry, by option (direct references are packages).
_PIP_URL_KINDS = {
    "--index-url": "Pip index URL",
    "--extra-index-url": "Pip index URL",
    "--find-links": "Pip find-links URL",
}
_FETCH_SCHEMES = ("http", "https")
_HOST_LABEL = re.compile(r"[a-z0-9_-]+")


def _address_kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """What makes `address` unfit for a fetch ("loopback", "private", ...), or None if public.

    IPv6 forms that carry an IPv4 address (mapped, compatible, 6to4, Teredo) are judged by
    the IPv4 address too, so "::ffff:127.0.0.1" is loopback.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = [address.ipv4_mapped, address.sixtofour, address.teredo[1] if address.teredo else None]
        if int(address) >> 32 == 0 and int(address) > 1:  # deprecated IPv4-compatible "::a.b.c.d"
            embedded.append(ipaddress.IPv4Address(int(address)))
        for inner in embedded:
            kind = None if inner is None else _address_kind(inner)
            if kind is not None:
                return kind
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_private:
        return "private"
    if address.is_multicast or not address.is_global:
        return "non-public"
    return None


def _a(kind: str) -> str:
    """`kind` with its indefinite article ("a loopback", "an unspecified")."""
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _ends_in_number(host: str) -> bool:
    """WHATWG's test for a host to be read as IPv4: its last label is a number."""
    labels = host.split(".")
    if labels[-1] == "" and len(labels) > 1:
        labels.pop()
    last = labels[-1]
    return last.isdigit() or (last[:2] == "0x" and all(ch in string.hexdigits for ch in last[2:]))


def _whatwg_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a URL parser reads from `host` ("0x7f.1", "2130706433", "0"), or None.

    rattler's `url` crate follows the WHATWG URL standard, which accepts one to four labels
    in decimal, octal ("0177") or hex ("0x7f"); `inet_aton` differs on corner cases ("0x").
    """
    labels = host.split(".")
    if labels[-1] == "" and len(labels) > 1:
        labels.pop()
    if len(labels) > 4:
        return None
    numbers = []
    for label in labels:
        if label == "":
            return None
        radix, digits = 10, label
        if label[:2] == "0x":
            radix, digits = 16, label[2:]
        elif len(label) > 1 and label[0] == "0":
            radix, digits = 8, label[1:]
        try:
            numbers.append(int(digits, radix) if digits else 0)
        except ValueError:
            return None
    *leading, last = numbers
    if any(number > 255 for number in leading) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last + sum(number * 256 ** (3 - index) for index, number in enumerate(leading))
    return ipaddress.IPv4Address(value)


def _host_problem(host: str, bracketed: bool, only_configured: str) -> str | None:
    """Why `host` is refused as written, or None (a public address, or a name to resolve)."""
    bare = host[:-1] if host.endswith(".") else host
    if bracketed:
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(
                bare.split("%", 1)[0]
            )
        except ValueError:
            return f"its host {shown_value(host)} is not a valid IPv6 address"
    elif _ends_in_number(bare):
        ipv4 = _whatwg_ipv4(bare)
        if ipv4 is None:
            return f"its host {shown_value(host)} is not a valid IPv4 address"
        address = ipv4
    elif not all(_HOST_LABEL.fullmatch(label) for label in bare.split(".")):
        return f"its host {shown_value(host)} is not a plain host name (ASCII letters, digits, '.', '-')"
    elif bare == "localhost" or bare.endswith(".localhost"):
        return f"its host {host} is localhost, and such hosts are {only_configured}"
    else:
        return None
    kind = _address_kind(address)
    if kind is not None:
        return f"its host {host} is {_a(kind)} address, and such hosts are {only_configured}"
    return None


def _address_problem(url: str, settings: str, resolve: Resolver | None) -> str | None:
    """Why a worker must not fetch `url` unless an administrator configured it, or None.

    Only http(s) URLs with a public host pass: no local files, no loopback, link-local or
    private hosts. Without `resolve` only literal addresses and `localhost` are judged; with
    it every address the name resolves to must be public too.
    """
    only_configured = f"only allowed when the administrator configures them ({settings})"
    if "\\" in url:
        return "it contains a backslash, which URL parsers disagree about"
    if "://" not in url:
        return "it is not a URL (such as https://example.org/channel)"
    try:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _FETCH_SCHEMES:
            return f"{scheme}:// URLs are {only_configured}"
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        host = parts.hostname or ""
    except ValueError:
        return "it is not a valid URL (its host or port cannot be read)"
    if not host:
        return "it names no host"
    bracketed = parts.netloc.rpartition("@")[2].startswith("[")
    bare = host[:-1] if host.endswith(".") else host
    problem = _host_problem(host, bracketed, only_configured)
    if problem is not None or resolve is None or bracketed or _ends_in_number(bare):
        return problem  # a literal address needs no lookup
    try:
        resolved = sorted(set(resolve(bare)))
    except (OSError, UnicodeError):
        return f"its host {host} could not be resolved"
    for text in resolved:
        kind = _address_kind(ipaddress.ip_address(text.split("%", 1)[0]))
        if kind is not None:
            resolved_to = f"its host {host} resolves to {text}, {_a(kind)} address"
            return f"{resolved_to}, and such hosts are {only_configured}"
    return None


def _within(url: str, base: str) -> bool:
    """True if `url` lies inside `base` (a normalized channel URL), never leaving it via `..`."""
    if not url.startswith(base + "/"):
        return False
    rest = urllib.parse.unquote(url[len(base) + 1 :]).replace("\\", "/")
    path = re.split(r"[?#]", rest, maxsplit=1)[0]
    return not any(segment in (".", "..") for segment in path.split("/"))


def _configured_channels(policy: SpecificationPolicy) -> set[str]:
    """The normalized channels of `CHANNEL_SETTINGS`: those an administrator chose."""
    configured = (
        *policy.conda_default_channels,
        *policy.conda_allowed_channels,
        *policy.conda_indexed_channels,
    )
    return {normalize_channel(channel, policy.conda_channel_alias) for channel in configured}


def _trusted_channel(url: str, policy: SpecificationPolicy) -> bool:
    """True for a normalized channel URL an administrator configured or one under the alias."""
    return url in _configured_channels(policy) or _within(url, policy.conda_channel_alias.rstrip("/"))


def _channel_problem(channel: str, policy: SpecificationPolicy, resolve: Resolver | None) -> str | None:
    alias = policy.conda_channel_alias
    url = normalize_channel(channel, alias)
    if policy.conda_allowed_channels:
        allowed = sorted({normalize_channel(c, alias) for c in policy.conda_allowed_channels})
        if url not in allowed:
            return f"it is not one of the allowed channels {allowed} (conda_allowed_channels)"
        return None
    if _trusted_channel(url, policy):
        return None
    if not is_url(channel.rstrip("/")):  # a name is under the alias unless it climbs out of it
        return "its name contains '.' or '..' path segments"
    return _address_problem(url, CHANNEL_SETTINGS, resolve)


def check_channels(
    channels: Iterable[str], policy: SpecificationPolicy, resolve: Resolver | None = None
) -> None:
    """Raise SpecificationError for the first channel a worker must not fetch from.

    Channels the administrator configured (`CHANNEL_SETTINGS`, compared after
    `normalize_channel`) are trusted, and so are names (they live under
    `conda_channel_alias`). With `conda_allowed_channels` set only those are allowed. Any
    other channel must be an http(s) URL of a public host (see `_address_problem`), so a
    specification cannot make the worker read its files or reach services on its network.
    The message names the channel as the user wrote it.
    """
    for channel in channels:
        problem = _channel_problem(channel, policy, resolve)
        if problem is not None:
            raise SpecificationError(f"Conda channel {shown_value(channel)} is not allowed: {problem}")


def _inside_configured(url: str, policy: SpecificationPolicy) -> bool:
    """True if a package URL lies inside a configured channel or under the channel alias."""
    channels = [*_configured_channels(policy), policy.conda_channel_alias.rstrip("/")]
    return any(_within(url, channel) for channel in channels)


def check_package_urls(
    packages: Iterable[tuple[str, str]], policy: SpecificationPolicy, resolve: Resolver | None = None
) -> None:
    """Raise SpecificationError for the first solved package a worker must not download.

    `packages` are (channel, URL) pairs. A channel's repodata may place its packages anywhere
    (its `base_url`); the administrator vouches for the channels they configured, but a
    package of any other channel must lie inside a configured channel or pass the same
    address rules as a channel.
    """
    for channel, url in packages:
        if _trusted_channel(normalize_channel(channel, policy.conda_channel_alias), policy):
            continue
        problem = (
            None if _inside_configured(url, policy) else _address_problem(url, CHANNEL_SETTINGS, resolve)
        )
        if problem is not None:
            raise SpecificationError(f"Package URL {shown_value(url)} is not allowed: {problem}")


def _without_vcs(url: str) -> str:
    """The URL a VCS reference fetches over: "git+https://h/r" is fetched from "https://h/r"."""
    return url[4:] if url[:4].lower() == "git+" else url


def _comparable(url: str) -> str | None:
    """`url` as "scheme://host[:port]/path", for prefix comparisons; None if it cannot be read.

    Without user-info (an administrator's index URL may hold credentials that a specification's
    URL must not repeat), query, fragment, trailing "/" or a "git+" prefix; scheme and host in
    lower case. None too for a URL without a host (other than file://): as a prefix, "https://"
    would otherwise hold every https URL, loopback ones included.
    """
    try:
        parts = urllib.parse.urlsplit(_without_vcs(url))
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname or ""
    if not host and parts.scheme.lower() != "file":
        return None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme.lower()}://{netloc}{parts.path}".rstrip("/")


def _under(url: str, prefix: str) -> bool:
    """True if `url` is `prefix` or lies inside it (by path segments, never via `..`)."""
    target, base = _comparable(url), _comparable(prefix)
    return target is not None and base is not None and (target == base or _within(target, base))


def _configured_pip_urls(policy: SpecificationPolicy) -> list[str]:
    """The URLs an administrator configured: the deployment's indexes, the allowed prefixes and
    every URL in the pypi_* package settings (which the policy adds to specifications)."""
    entries = (*policy.pypi_default_packages, *policy.pypi_included_packages, *policy.pypi_required_packages)
    in_settings = [url for url in map(pip_url, entries) if url is not None]
    return [policy.pypi_index_url, *policy.pypi_extra_index_urls, *policy.pypi_allowed_indexes, *in_settings]


def _pip_url_problem(url: str, policy: SpecificationPolicy, resolve: Resolver | None) -> str | None:
    """Why the installer must not fetch `url` for a specification or lockfile, or None.

    In order: a URL holding credentials is refused; one inside a URL the administrator
    configured is allowed; with `pypi_allowed_indexes` set nothing else is; otherwise the
    channels' address rule applies (public http(s) hosts only, git+ URLs judged by their
    transport).
    """
    if _has_userinfo(url):
        return f"it holds credentials, and {PIP_CREDENTIALS}"
    if any(_under(url, configured) for configured in _configured_pip_urls(policy)):
        return None
    if policy.pypi_allowed_indexes:
        allowed = [mask_credentials(prefix) for prefix in policy.pypi_allowed_indexes]
        return f"it is not under one of the allowed indexes {allowed} (pypi_allowed_indexes)"
    return _address_problem(_without_vcs(url), PIP_INDEX_SETTINGS, resolve)


def check_pip_index_urls(
    entries: Iterable[str], policy: SpecificationPolicy, resolve: Resolver | None = None
) -> None:
    """Raise SpecificationError for the first pip URL the installer must not fetch.

    The URLs are the values of `--index-url`, `--extra-index-url` and `--find-links` and the
    URLs of direct references (`name @ URL`), judged by `_pip_url_problem`. The message shows
    the URL with any credentials masked. The worker runs this again, with `resolve`, on what a
    server stored (perhaps an older server, with other rules).
    """
    for entry in entries:
        url = pip_url(entry)
        if url is None:
            continue
        problem = _pip_url_problem(url, policy, resolve)
        if problem is not None:
            kind = _PIP_URL_KINDS.get(split_pip_option(entry)[0], "Pip package URL")
            raise SpecificationError(f"{kind} {shown_value(mask_credentials(url))} is not allowed: {problem}")


def check_resolved_pip_urls(
    urls: Iterable[str], policy: SpecificationPolicy, resolve: Resolver | None = None
) -> None:
    """Raise SpecificationError for the first file the installer resolved that it must not fetch.

    An index decides where its files live (PyPI's are on files.pythonhosted.org), so
    `pypi_allowed_indexes`, which limits what a specification names, does not apply here: like a
    conda channel's packages (`check_package_urls`), a resolved file must lie inside a URL the
    administrator configured or pass the address rule. Such URLs come from the indexes, not from
    a user, so credentials in them are masked, not refused.
    """
    configured = _configured_pip_urls(policy)
    for url in urls:
        if any(_under(url, trusted) for trusted in configured):
            continue
        problem = _address_problem(_without_vcs(url), PIP_INDEX_SETTINGS, resolve)
        if problem is not None:
            raise SpecificationError(
                f"Pip package URL {shown_value(mask_credentials(url))} is not allowed: {problem}"
            )


def check_lockfile_urls(
    lockfile: Mapping[str, Any], policy: SpecificationPolicy, resolve: Resolver | None = None
) -> None:
    """Raise SpecificationError for the first package URL of a conda-lock v1 dict not allowed.

    A conda package must lie inside one of `conda_allowed_channels` when that is set;
    otherwise inside a configured channel or at a URL passing the channels' address rules.
    pip packages are not in conda channels: they follow the rules of pip URLs in a
    specification (`_pip_url_problem`). An index's files may live on another host (PyPI's on
    files.pythonhosted.org), so with `pypi_allowed_indexes` set that host must be listed too.
    """
    alias = policy.conda_channel_alias
    allowed = sorted({normalize_channel(channel, alias) for channel in policy.conda_allowed_channels})
    for package in lockfile.get("package") or []:
        url = package.get("url") if isinstance(package, Mapping) else None
        if not isinstance(url, str):
            continue
        problem = None
        if package.get("manager") == "pip":
            problem = _pip_url_problem(url, policy, resolve)
        elif allowed:
            if not any(_within(url, channel) for channel in allowed):
                problem = f"it is not inside one of the allowed channels {allowed} (conda_allowed_channels)"
        elif not _inside_configured(url, policy):
            problem = _address_problem(url, CHANNEL_SETTINGS, resolve)
        if problem is not None:
            shown = shown_value(mask_credentials(url))
            raise SpecificationError(f"Package URL {shown} is not allowed: {problem}")


def check_specification_urls(
    spec: CondaSpecification | LockfileSpecification,
    policy: SpecificationPolicy,
    resolve: Resolver | None = None,
) -> None:
    """Every URL a worker would fetch for `spec` must be allowed (raises SpecificationError).

    Run at submission without `resolve` (literal addresses only) after any
    `validate_specification` hook, so a custom hook cannot lift the rule; the worker runs the
    same checks with a resolver before it fetches anything.
    """
    if isinstance(spec, LockfileSpecification):
        check_lockfile_urls(spec.model_dump(mode="json")["lockfile"], policy, resolve)
        return
    check_channels(spec.channels or policy.conda_default_channels, policy, resolve)
    check_pip_index_urls(spec.pip_dependencies(), policy, resolve)
