"""A small client of the OCI distribution API: what pulling a base image and pushing need.

Registries differ in how they authenticate: none, HTTP Basic, or (Docker Hub, GHCR, Quay,
Harbor...) a Bearer token fetched from the realm the 401 challenge names. The client answers
whichever challenge comes and keeps tokens per scope, so a pull or push costs one token per
repository. Every error names the registry (with any userinfo masked), the repository, the
HTTP status and the registry's own error code: administrators read these in build logs, so
passwords and tokens never appear in them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from conda_store_server.images.oci import sha256_digest
from conda_store_server.redact import mask_credentials

__all__ = ["Manifest", "RegistryClient", "RegistryError", "sha256_digest"]

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CHALLENGE_PARAMETER = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_CHUNK = 1 << 20


class RegistryError(Exception):
    """A registry refused or could not be reached; `status` is None for connection failures."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        """Worth retrying: the registry was unreachable, overloaded or failing."""
        return self.status is None or self.status in (408, 429) or self.status >= 500


@dataclass(frozen=True)
class Manifest:
    content: bytes
    media_type: str
    digest: str


def _check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError(f"invalid digest {digest!r}: expected sha256: and 64 lowercase hex digits")
    return digest


def _check_repository(repository: str) -> str:
    if not isinstance(repository, str) or not re.fullmatch(
        r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*", repository
    ):
        raise ValueError(f"invalid repository name {repository!r}: lowercase components split by /")
    return repository


def _check_reference(reference: str) -> str:
    if not isinstance(reference, str) or not (
        _DIGEST.fullmatch(reference) or re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", reference)
    ):
        raise ValueError(f"invalid tag or digest {reference!r}")
    return reference


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    parameters = {
        match.group(1).lower(): match.group(2) if match.group(2) is not None else match.group(3)
        for match in _CHALLENGE_PARAMETER.finditer(rest)
    }
    return scheme.lower(), parameters


class RegistryClient:
    """One registry at `url` (`https://host[:port]`, `http://` for a local one)."""

    def __init__(
        self, url: str, username: str | None = None, password: str | None = None, timeout: float = 60.0
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"invalid registry URL {mask_credentials(url)!r}: expected http(s)://host[:port]"
            )
        if parts.username is not None and username is None:
            # credentials in the URL (https://user:password@host) are honoured, then dropped
            username = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
        netloc = parts.netloc.rpartition("@")[2]
        self.url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.username = username
        self._password = password
        self._secrets = {secret for secret in (password,) if secret}
        self._tokens: dict[str, str] = {}
        self._basic = False  # the registry asked for Basic: send it up front from then on
        self._http = httpx.Client(timeout=timeout, follow_redirects=True)

    def __repr__(self) -> str:
        return f"RegistryClient({self.url!r}, username={self.username!r}, password='****')"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the API
    def get_manifest(self, repository: str, reference: str, accept: list[str]) -> Manifest:
        """The manifest (or index) at a tag or digest, its digest computed from its bytes."""
        _check_repository(repository)
        _check_reference(reference)
        response = self._send(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            repository,
            "pull",
            headers={"Accept": ", ".join(accept)},
        )
        if response.status_code != 200:
            raise self._error(response, repository, f"cannot get the manifest {reference}")
        content = response.content
        digest = sha256_digest(content)
        announced = response.headers.get("Docker-Content-Digest")
        if announced and announced.startswith("sha256:") and announced != digest:
            raise RegistryError(
                f"registry {self.url}, repository {repository}: the manifest {reference} announced "
                f"digest {announced} but its content has digest {digest}"
            )
        if reference.startswith("sha256:") and reference != digest:
            raise RegistryError(
                f"registry {self.url}, repository {repository}: the manifest asked for as {reference} "
                f"has digest {digest}"
            )
        media_type = response.headers.get("Content-Type", "").partition(";")[0].strip()
        if not media_type or media_type in ("application/json", "application/octet-stream"):
            try:
                media_type = json.loads(content).get("mediaType") or media_type
            except (ValueError, AttributeError):
                pass
        return Manifest(content=content, media_type=media_type, digest=digest)

    def fetch_blob(self, repository: str, digest: str, destination: Path) -> int:
        """Stream a blob into `destination` (following the registry's redirects, e.g. to a CDN)
        and verify its sha256; returns its size. A blob that does not match is not kept."""
        _check_repository(repository)
        _check_digest(digest)
        hasher = hashlib.sha256()
        size = 0
        response = self._send("GET", f"/v2/{repository}/blobs/{digest}", repository, "pull", stream=True)
        try:
            if response.status_code != 200:
                response.read()
                raise self._error(response, repository, f"cannot get the blob {digest}")
            with open(destination, "wb") as handle:
                for chunk in response.iter_bytes(_CHUNK):
                    hasher.update(chunk)
                    handle.write(chunk)
                    size += len(chunk)
        except httpx.TransportError as error:
            Path(destination).unlink(missing_ok=True)
            raise self._unreachable(error, repository) from error
        finally:
            response.close()
        if f"sha256:{hasher.hexdigest()}" != digest:
            Path(destination).unlink(missing_ok=True)
            raise RegistryError(
                f"registry {self.url}, repository {repository}: the blob {digest} arrived with digest "
                f"sha256:{hasher.hexdigest()} ({size} bytes)"
            )
        return size

    def has_blob(self, repository: str, digest: str) -> bool:
        _check_repository(repository)
        _check_digest(digest)
        response = self._send("HEAD", f"/v2/{repository}/blobs/{digest}", repository, "pull,push")
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise self._error(response, repository, f"cannot check for the blob {digest}")

    def upload_blob(self, repository: str, digest: str, source: Path | bytes) -> None:
        """Start an upload session, then send the whole blob in one PUT (`?digest=`)."""
        _check_repository(repository)
        _check_digest(digest)
        if isinstance(source, bytes) and sha256_digest(source) != digest:
            raise ValueError(f"the bytes given for blob {digest} have digest {sha256_digest(source)}")
        response = self._send("POST", f"/v2/{repository}/blobs/uploads/", repository, "pull,push")
        if response.status_code != 202 or "Location" not in response.headers:
            raise self._error(response, repository, f"cannot start the upload of blob {digest}")
        location = httpx.URL(self.url + "/").join(response.headers["Location"])
        location = location.copy_merge_params({"digest": digest})
        if isinstance(source, bytes):
            size = len(source)
            content: Callable[[], Any] = lambda: source  # noqa: E731 - resent as is on a retry
        else:
            size = Path(source).stat().st_size
            content = lambda: open(source, "rb")  # noqa: E731, SIM115 - closed after the request
        response = self._send(
            "PUT",
            str(location),
            repository,
            "pull,push",
            content=content,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        if response.status_code != 201:
            raise self._error(response, repository, f"cannot upload the blob {digest}")

    def put_manifest(self, repository: str, reference: str, content: bytes, media_type: str) -> str:
        """Store a manifest under a tag (or its digest); returns its digest."""
        _check_repository(repository)
        _check_reference(reference)
        digest = sha256_digest(content)
        if reference.startswith("sha256:") and reference != digest:
            raise ValueError(f"the manifest put as {reference} has digest {digest}")
        response = self._send(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            repository,
            "pull,push",
            content=lambda: content,
            headers={"Content-Type": media_type},
        )
        if response.status_code not in (200, 201):
            raise self._error(response, repository, f"cannot put the manifest {reference}")
        announced = response.headers.get("Docker-Content-Digest")
        if announced and announced != digest:
            raise RegistryError(
                f"registry {self.url}, repository {repository}: the manifest {reference} was stored "
                f"with digest {announced}, not {digest}"
            )
        return digest

    # ------------------------------------------------------------------ requests and auth
    def _send(
        self,
        method: str,
        path: str,
        repository: str,
        actions: str,
        *,
        headers: dict[str, str] | None = None,
        content: Callable[[], Any] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """One request, answering at most one authentication challenge (two if a cached token
        expired). `content` is a factory so that the body can be sent again after a 401."""
        url = path if path.startswith(("http://", "https://")) else self.url + path
        scope = f"repository:{repository}:{actions}"
        refreshed = False
        for _ in range(3):
            request_headers = dict(headers or {})
            request_headers.update(self._authorization(scope))
            body = content() if content is not None else None
            try:
                request = self._http.build_request(method, url, headers=request_headers, content=body)
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as error:
                raise self._unreachable(error, repository) from error
            finally:
                if hasattr(body, "close"):
                    body.close()
            if response.status_code != 401:
                return response
            if stream:
                response.read()
            response.close()
            challenge = response.headers.get("WWW-Authenticate", "")
            scheme, parameters = _parse_challenge(challenge)
            if scheme == "basic":
                if self._basic or self.username is None:
                    return response  # refused as given, or credentials needed and missing
                self._basic = True
            elif scheme == "bearer" and "realm" in parameters:
                if scope in self._tokens:
                    if refreshed:
                        return response
                    del self._tokens[scope]  # expired or too narrow: fetch a new one once
                    refreshed = True
                self._tokens[scope] = self._token(parameters, scope, repository)
            else:
                return response
        return response

    def _authorization(self, scope: str) -> dict[str, str]:
        if scope in self._tokens:
            return {"Authorization": f"Bearer {self._tokens[scope]}"}
        if self._basic and self.username is not None:
            return {"Authorization": self._basic_header()}
        return {}

    def _basic_header(self) -> str:
        pair = f"{self.username}:{self._password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def _token(self, challenge: dict[str, str], scope: str, repository: str) -> str:
        """A Bearer token for `scope` from the challenge's realm (with Basic credentials when
        the client has some: anonymous tokens allow public pulls only)."""
        realm = challenge["realm"]
        params = {"scope": challenge.get("scope") or scope}
        if challenge.get("service"):
            params["service"] = challenge["service"]
        headers = {"Authorization": self._basic_header()} if self.username is not None else {}
        try:
            response = self._http.get(realm, params=params, headers=headers)
        except httpx.TransportError as error:
            reason = self._scrub(str(error)) or type(error).__name__
            raise RegistryError(
                f"registry {self.url}, repository {repository}: its token service "
                f"{mask_credentials(realm)} cannot be reached: {reason}"
            ) from error
        if response.status_code != 200:
            detail = self._error_detail(response)
            raise RegistryError(
                f"registry {self.url}, repository {repository}: its token service {mask_credentials(realm)} "
                f"answered HTTP {response.status_code}{detail}"
                + (" (are the username and password right?)" if response.status_code in (401, 403) else ""),
                response.status_code,
            )
        try:
            answer = response.json()
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not token or not isinstance(token, str):
            raise RegistryError(
                f"registry {self.url}, repository {repository}: its token service "
                f"{mask_credentials(realm)} answered without a token"
            )
        self._secrets.add(token)
        return token

    # ------------------------------------------------------------------ errors
    def _scrub(self, text: str) -> str:
        text = mask_credentials(text)
        for secret in self._secrets:
            text = text.replace(secret, "****")
        return text

    def _error_detail(self, response: httpx.Response) -> str:
        """`: CODE: message; ...` from a distribution error body, or its start as text."""
        try:
            body = response.content
        except httpx.ResponseNotRead:
            body = b""
        try:
            errors = json.loads(body).get("errors") or []
            parts = [
                ": ".join(str(part) for part in (error.get("code"), error.get("message")) if part)
                for error in errors
                if isinstance(error, dict)
            ]
            detail = "; ".join(part for part in parts if part)
        except (ValueError, AttributeError):
            detail = body[:200].decode("utf-8", "replace").strip()
        return f": {self._scrub(detail)}" if detail else ""

    def _error(self, response: httpx.Response, repository: str, what: str) -> RegistryError:
        status = response.status_code
        hint = ""
        if status == 401:
            hint = " (credentials missing or refused)" if self.username is None else " (credentials refused)"
        elif status == 403:
            hint = " (not allowed with these credentials)"
        return RegistryError(
            f"{what}: registry {self.url}, repository {repository}: HTTP {status}"
            f"{self._error_detail(response)}{hint}",
            status,
        )

    def _unreachable(self, error: Exception, repository: str) -> RegistryError:
        reason = self._scrub(str(error)) or type(error).__name__
        return RegistryError(f"registry {self.url} cannot be reached (repository {repository}): {reason}")
