"""Authentication (who is calling) and authorization (what their role bindings allow).

Classes and traits sit at the seed's import paths. Deviations from the original, on purpose:
the signing secret persists across restarts, ARN patterns are matched literally (only `*` is a
wildcard), and an environment-level binding does not grant namespace-level permissions.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import enum
import os
import re
import secrets
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from starlette.requests import HTTPConnection
from traitlets import Bool, Dict, Instance, Integer, TraitError, Type, Unicode, default, observe, validate
from traitlets.config import LoggingConfigurable

from conda_store_server.app import conda_store_dir


class Permissions(enum.Enum):
    ENVIRONMENT_CREATE = "environment:create"
    ENVIRONMENT_READ = "environment::read"
    ENVIRONMENT_UPDATE = "environment::update"
    ENVIRONMENT_DELETE = "environment::delete"
    ENVIRONMENT_SOLVE = "environment::solve"
    BUILD_CANCEL = "build::cancel"
    BUILD_DELETE = "build::delete"
    NAMESPACE_CREATE = "namespace::create"
    NAMESPACE_READ = "namespace::read"
    NAMESPACE_UPDATE = "namespace::update"
    NAMESPACE_DELETE = "namespace::delete"
    NAMESPACE_ROLE_MAPPING_CREATE = "namespace-role-mapping::create"
    NAMESPACE_ROLE_MAPPING_READ = "namespace-role-mapping::read"
    NAMESPACE_ROLE_MAPPING_UPDATE = "namespace-role-mapping::update"
    NAMESPACE_ROLE_MAPPING_DELETE = "namespace-role-mapping::delete"
    SETTING_READ = "setting::read"
    SETTING_UPDATE = "setting::update"


_VIEWER = {
    Permissions.ENVIRONMENT_READ,
    Permissions.NAMESPACE_READ,
    Permissions.NAMESPACE_ROLE_MAPPING_READ,
}
_EDITOR = _VIEWER | {
    Permissions.BUILD_CANCEL,
    Permissions.ENVIRONMENT_CREATE,
    Permissions.ENVIRONMENT_UPDATE,
    Permissions.ENVIRONMENT_SOLVE,
    Permissions.SETTING_READ,
}
DEFAULT_ROLE_MAPPINGS: dict[str, set[Permissions]] = {
    "viewer": _VIEWER,
    "editor": _EDITOR,
    "developer": _EDITOR,
    "admin": set(Permissions),
}
ARN_CHARACTERS = r"A-Za-z0-9\-+_@$&?^~.="
ARN_PATTERN = re.compile(rf"^([{ARN_CHARACTERS}*]+)/([{ARN_CHARACTERS}*]+)$")


def normalize_role(role: str) -> str:
    """`editor` is the preferred name; the database and tokens store the legacy `developer`."""
    return "developer" if role == "editor" else role


def _segment_regex(pattern: str) -> str:
    return "".join(f"[{ARN_CHARACTERS}]*" if c == "*" else re.escape(c) for c in pattern)


def arn_matches(binding: str, arn: str) -> bool:
    """Does a binding `ns/env` (with `*` wildcards) cover the resource ARN `ns` or `ns/env`?

    A binding covers a namespace ARN only when its environment part is `*`: access to one
    environment is not access to its namespace.
    """
    match = ARN_PATTERN.match(binding)
    if match is None:
        return False
    namespace_pattern, name_pattern = match.groups()
    if "/" in arn:
        namespace, name = arn.split("/", 1)
        return bool(
            re.fullmatch(_segment_regex(namespace_pattern), namespace)
            and re.fullmatch(_segment_regex(name_pattern), name)
        )
    return bool(name_pattern == "*" and re.fullmatch(_segment_regex(namespace_pattern), arn))


@dataclass
class AuthenticationToken:
    primary_namespace: str = "default"
    role_bindings: dict[str, list[str]] = field(default_factory=dict)
    exp: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    )

    def claims(self) -> dict[str, Any]:
        return {
            "exp": int(self.exp.timestamp()),
            "primary_namespace": self.primary_namespace,
            "role_bindings": {k: sorted(set(v)) for k, v in self.role_bindings.items()},
        }


class AuthenticationBackend(LoggingConfigurable):
    secret = Unicode(
        config=True,
        help="Symmetric secret that signs tokens and cookies. Default: generated once and kept "
        "(mode 0600) in `secret_file`, so sessions survive restarts and are shared by replicas "
        "that share the store.",
    )
    secret_file = Unicode(
        config=True,
        help="Where the generated secret is kept when `secret` is not configured. Default: "
        "`<store_directory>/.secret` when run by the server.",
    )
    jwt_algorithm = Unicode("HS256", config=True, help="JWT signing algorithm, e.g. HS256.")
    predefined_tokens = Dict(
        {},
        config=True,
        help="Service-account tokens: {token string: {'primary_namespace': ..., 'role_bindings': "
        "{arn: [roles]}, 'exp': ...}}; every field optional.",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._verified: dict[str, dict[str, Any]] = {}

    @observe("secret", "jwt_algorithm")
    def _forget_verified(self, _change: Any) -> None:
        if hasattr(self, "_verified"):  # set in __init__, after configured values are observed
            self._verified.clear()

    @default("secret_file")
    def _default_secret_file(self) -> str:
        return os.path.join(conda_store_dir(), ".secret")

    @default("secret")
    def _default_secret(self) -> str:
        return load_or_create_secret(self.secret_file)

    def encrypt_token(self, token: AuthenticationToken) -> str:
        return jwt.encode(token.claims(), self.secret, algorithm=self.jwt_algorithm)

    def decrypt_token(self, value: str) -> AuthenticationToken | None:
        """A valid token's claims, or None (expired, forged, malformed): the caller is anonymous."""
        if value in self.predefined_tokens:
            predefined = dict(self.predefined_tokens[value])
            return None if _expired(predefined) else _token_from_claims(predefined)
        claims = self._verified.get(value)
        if claims is None:
            try:
                claims = jwt.decode(value, self.secret, algorithms=[self.jwt_algorithm])
            except jwt.PyJWTError:
                return None
            self._remember(value, claims)
        elif _expired(claims):
            self._verified.pop(value, None)
            return None
        return _token_from_claims(claims)

    def _remember(self, value: str, claims: dict[str, Any]) -> None:
        """Verifying a signature is most of what a kept list page costs to serve (~40 us of
        ~170): a token verified once is valid until it expires, the one claim that changes
        with time (a token valid now is not "not yet valid" later). Forged or malformed ones
        are not kept. A few thousand at most: all are dropped when the dict is full."""
        if len(self._verified) >= VERIFIED_TOKENS_KEPT:
            self._verified.clear()
        self._verified[value] = claims


VERIFIED_TOKENS_KEPT = 4096


def _expired(claims: dict[str, Any]) -> bool:
    """As PyJWT judges `exp` (an integer, no leeway): expired from that second on. A predefined
    token's may also be a datetime (naive: UTC)."""
    exp = claims.get("exp")
    if exp is None:
        return False
    if isinstance(exp, datetime.datetime):
        exp = (exp if exp.tzinfo else exp.replace(tzinfo=datetime.UTC)).timestamp()
    try:
        return int(exp) <= time.time()
    except (TypeError, ValueError, OverflowError):
        return True


def _token_from_claims(claims: dict[str, Any]) -> AuthenticationToken | None:
    try:
        exp = claims.get("exp")
        role_bindings = {
            str(k): [str(r) for r in v] for k, v in dict(claims.get("role_bindings") or {}).items()
        }
        namespace = str(claims.get("primary_namespace", "default"))
        if isinstance(exp, int | float):
            expires = datetime.datetime.fromtimestamp(exp, datetime.UTC)
        elif isinstance(exp, datetime.datetime):
            expires = exp if exp.tzinfo else exp.replace(tzinfo=datetime.UTC)
        else:
            return AuthenticationToken(primary_namespace=namespace, role_bindings=role_bindings)
        return AuthenticationToken(primary_namespace=namespace, role_bindings=role_bindings, exp=expires)
    except (TypeError, ValueError, AttributeError, OverflowError, OSError):
        return None


def load_or_create_secret(path: str) -> str:
    """Read the secret, or write a new one exactly once: it is written to a private file first
    and linked into place, so concurrent starters (server processes, replicas) never read a
    half-written file and all agree on the first one linked."""
    try:
        with open(path) as handle:
            return handle.read().strip()
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    draft = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32))
    try:
        os.link(draft, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(draft)
    with open(path) as handle:
        return handle.read().strip()


class AuthorizationBackend(LoggingConfigurable):
    role_mappings = Dict(
        {role: {p.value for p in permissions} for role, permissions in DEFAULT_ROLE_MAPPINGS.items()},
        config=True,
        help="Role name -> set of permission strings. Defaults: viewer, editor (alias developer), admin.",
    )
    unauthenticated_role_bindings = Dict(
        {"default/*": {"viewer"}},
        config=True,
        help="Role bindings {arn: {roles}} of anonymous callers.",
    )
    authenticated_role_bindings = Dict(
        {"default/*": {"viewer"}, "filesystem/*": {"viewer"}},
        config=True,
        help="Role bindings every authenticated caller has in addition to their token's.",
    )

    def permissions_of_roles(self, roles: Iterable[str]) -> set[str]:
        result: set[str] = set()
        for role in roles:
            names = ("editor", "developer") if normalize_role(role) == "developer" else (role,)
            for name in names:
                if name in self.role_mappings:
                    result |= {p.value if isinstance(p, Permissions) else p for p in self.role_mappings[name]}
                    break
        return result

    def entity_bindings(
        self, entity: AuthenticationToken | None, database_bindings: dict[str, set[str]] | None = None
    ) -> dict[str, set[str]]:
        """Defaults, then the token's, then the database's: a later binding of an ARN replaces one."""
        if entity is None:
            return {arn: set(roles) for arn, roles in self.unauthenticated_role_bindings.items()}
        bindings = {arn: set(roles) for arn, roles in self.authenticated_role_bindings.items()}
        bindings.update({arn: set(roles) for arn, roles in entity.role_bindings.items()})
        bindings.update(database_bindings or {})
        return bindings

    def database_role_bindings(self, session: Any, entity: AuthenticationToken | None) -> dict[str, set[str]]:
        """Bindings granted through namespace role mappings in the database; none by default."""
        return {}

    def permissions_on(self, bindings: dict[str, set[str]], arn: str) -> set[str]:
        granted: set[str] = set()
        for binding, roles in bindings.items():
            if arn_matches(binding, arn):
                granted |= self.permissions_of_roles(roles)
        return granted

    def permissions(self, entity: AuthenticationToken | None, arn: str) -> set[str]:
        return self.permissions_on(self.entity_bindings(entity), arn)

    def authorize(
        self, entity: AuthenticationToken | None, arn: str, required: Iterable[Permissions]
    ) -> bool:
        granted = self.permissions(entity, arn)
        return all(p.value in granted for p in required)


class RBACAuthorizationBackend(AuthorizationBackend):
    role_mappings_version = Integer(
        1,
        config=True,
        help="Which database role mappings are consulted: 1 (legacy, default) or 2 (recommended).",
    )

    @validate("role_mappings_version")
    def _check_version(self, proposal: dict[str, Any]) -> int:
        if proposal["value"] not in (1, 2):
            raise TraitError(
                "c.RBACAuthorizationBackend.role_mappings_version: invalid role mappings "
                f"version: {proposal['value']}, expected: (1, 2)"
            )
        return proposal["value"]

    def database_role_bindings(self, session: Any, entity: AuthenticationToken | None) -> dict[str, set[str]]:
        """v1: the mappings of the caller's primary namespace, `{entity ARN: {role}}`; v2: the
        namespaces that granted the caller's primary namespace a role, `{"N/*": {role}}`."""
        if entity is None:
            return {}
        from conda_store_server.namespaces import role_bindings_v1, role_bindings_v2

        if self.role_mappings_version == 2:
            return role_bindings_v2(session, entity.primary_namespace)
        return role_bindings_v1(session, entity.primary_namespace)


class Authentication(LoggingConfigurable):
    cookie_name = Unicode("conda-store-auth", config=True, help="Name of the browser cookie.")
    cookie_domain = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Domain of the cookie, e.g. `example.com` to make it valid on *.example.com too.",
    )
    authentication_backend = Type(
        AuthenticationBackend,
        klass=AuthenticationBackend,
        config=True,
        help="Class that signs and reads tokens.",
    )
    authorization_backend = Type(
        RBACAuthorizationBackend,
        klass=AuthorizationBackend,
        config=True,
        help="Class that turns role bindings into permissions.",
    )
    login_html = Unicode(
        config=True,
        help="HTML of the login form (rendered with Jinja2; `next` is available).",
    )

    authentication = Instance(AuthenticationBackend)
    authorization = Instance(AuthorizationBackend)

    @default("authentication")
    def _default_authentication(self) -> AuthenticationBackend:
        return self.authentication_backend(parent=self, log=self.log)

    @default("authorization")
    def _default_authorization(self) -> AuthorizationBackend:
        return self.authorization_backend(parent=self, log=self.log)

    @default("login_html")
    def _default_login_html(self) -> str:
        return LOGIN_FORM

    def authenticate(self, username: str, password: str) -> AuthenticationToken | None:
        """Whom a username/password identifies; the base class trusts nobody."""
        return None

    def entity_of(self, connection: HTTPConnection) -> AuthenticationToken | None:
        """Who sent this request (None: anonymous), from its cookie or Authorization header."""
        return self.entity_from_headers(
            connection.cookies.get(self.cookie_name), connection.headers.get("authorization")
        )

    def entity_from_headers(
        self, cookie: str | None, authorization: str | None
    ) -> AuthenticationToken | None:
        """Cookie first, then `Bearer <jwt>`, then `Basic` with the token as password."""
        if cookie is not None:
            return self.authentication.decrypt_token(cookie)
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer":
                return self.authentication.decrypt_token(value.strip())
            if scheme.lower() == "basic":
                try:
                    decoded = base64.b64decode(value.strip(), validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    return None
                return self.authentication.decrypt_token(decoded.partition(":")[2])
        return None


class DummyAuthentication(Authentication):
    password = Unicode(
        "password",
        config=True,
        help="Password every user logs in with (testing only). Empty accepts any password.",
    )

    def authenticate(self, username: str, password: str) -> AuthenticationToken | None:
        if not username or (
            self.password and not secrets.compare_digest(password.encode(), self.password.encode())
        ):
            return None
        return AuthenticationToken(primary_namespace=username, role_bindings={"*/*": ["admin"]})


class GenericOAuthAuthentication(Authentication):
    """Log in through any OAuth 2 provider (authorization code flow).

    Unlike upstream, where every OAuth user becomes an admin of everything, a user gets
    `oauth_role_bindings` (admin of their own namespace by default) on top of the authenticated
    defaults; grant more through namespace role mappings.
    """

    access_token_url = Unicode(config=True, help="URL that exchanges the authorization code for a token.")
    authorize_url = Unicode(config=True, help="URL of the provider's authorization page.")
    authorizie_url = Unicode(config=True, help="Alias of authorize_url (the spelling of conda-store's docs).")
    client_id = Unicode(config=True, help="The app's client id at the provider.")
    client_secret = Unicode(config=True, help="The app's client secret at the provider.")
    access_scope = Unicode(config=True, help="Space-separated scopes to request, e.g. `profile`.")
    user_data_url = Unicode(config=True, help="API URL that returns the user's data (JSON) for a token.")
    user_data_key = Unicode(config=True, help="Key of the user name in the user_data_url payload.")
    oauth_callback_url = Unicode(
        config=True,
        help="Callback URL registered at the provider. Default: `{url_prefix}/oauth_callback/` on the "
        "host the request came to (set it behind a proxy that rewrites hosts).",
    )
    tls_verify = Bool(True, config=True, help="Verify the provider's TLS certificates.")
    oauth_role_bindings = Dict(
        {"{username}/*": ["admin"]},
        config=True,
        help="Role bindings of a user who logged in; `{username}` is replaced by their name.",
    )

    @observe("authorizie_url")
    def _alias_authorize_url(self, change: dict[str, Any]) -> None:
        self.authorize_url = change["new"]

    def authorization_redirect(self, callback_url: str, state: str) -> str:
        query = {
            "client_id": self.client_id,
            "redirect_uri": callback_url,
            "response_type": "code",
            "state": state,
        }
        if self.access_scope:
            query["scope"] = self.access_scope
        return f"{self.authorize_url}?{urllib.parse.urlencode(query)}"

    def username_for_code(self, code: str, callback_url: str) -> str:
        """Exchange the code, then ask the provider who the user is (blocking: run in a thread)."""
        with httpx.Client(verify=self.tls_verify, timeout=30) as client:
            response = client.post(
                self.access_token_url,
                data={
                    "code": code,
                    "grant_type": "authorization_code",
                    "client_id": self.client_id,
                    "client_secret": self.client_secret,
                    "redirect_uri": callback_url,
                },
                headers={"Accept": "application/json"},
            )
            access_token = response.json().get("access_token") if response.is_success else None
            if not access_token:
                raise PermissionError(f"the OAuth provider refused the code ({response.status_code})")
            user = client.get(self.user_data_url, headers={"Authorization": f"Bearer {access_token}"})
            username = user.json().get(self.user_data_key) if user.is_success else None
        if not isinstance(username, str) or not username:
            raise PermissionError(f"the OAuth provider returned no {self.user_data_key!r} for the user")
        return username

    def entity_for(self, username: str) -> AuthenticationToken:
        bindings = {
            arn.replace("{username}", username): list(roles)
            for arn, roles in self.oauth_role_bindings.items()
        }
        return AuthenticationToken(primary_namespace=username, role_bindings=bindings)


class GithubOAuthAuthentication(GenericOAuthAuthentication):
    github_url = Unicode("https://github.com", config=True, help="URL of GitHub (or GitHub Enterprise).")
    github_api = Unicode("https://api.github.com", config=True, help="URL of GitHub's REST API.")

    @default("access_token_url")
    def _default_access_token_url(self) -> str:
        return f"{self.github_url}/login/oauth/access_token"

    @default("authorize_url")
    def _default_authorize_url(self) -> str:
        return f"{self.github_url}/login/oauth/authorize"

    @default("access_scope")
    def _default_access_scope(self) -> str:
        return "user:email"

    @default("user_data_url")
    def _default_user_data_url(self) -> str:
        return f"{self.github_api}/user"

    @default("user_data_key")
    def _default_user_data_key(self) -> str:
        return "login"


class JupyterHubOAuthAuthentication(GenericOAuthAuthentication):
    jupyterhub_url = Unicode(config=True, help="URL of JupyterHub, without /hub/.")

    @default("access_token_url")
    def _default_access_token_url(self) -> str:
        return f"{self.jupyterhub_url}/hub/api/oauth2/token"

    @default("authorize_url")
    def _default_authorize_url(self) -> str:
        return f"{self.jupyterhub_url}/hub/api/oauth2/authorize"

    @default("access_scope")
    def _default_access_scope(self) -> str:
        return "profile"

    @default("user_data_url")
    def _default_user_data_url(self) -> str:
        return f"{self.jupyterhub_url}/hub/api/user"

    @default("user_data_key")
    def _default_user_data_key(self) -> str:
        return "name"


LOGIN_FORM = """<!DOCTYPE html>
<html><head><title>conda-store login</title></head>
<body>
<h1>Log in to conda-store</h1>
<form id="login">
  <label>Username <input name="username" autocomplete="username" required></label>
  <label>Password <input name="password" type="password" autocomplete="current-password"></label>
  <button type="submit">Log in</button>
  <p id="error" role="alert"></p>
</form>
<script>
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const response = await fetch(window.location.href, {
    method: "POST", headers: {"Content-Type": "application/json"}, credentials: "same-origin",
    body: JSON.stringify({username: form.get("username"), password: form.get("password")}),
  });
  const body = await response.json();
  if (response.ok) { window.location = body.data.redirect_url; }
  else { document.getElementById("error").textContent = body.message; }
});
</script>
</body></html>
"""
