"""`conda-store-server`: the HTTP API (CondaStoreServer traits from the seed) and `--standalone`."""

from __future__ import annotations

import gc
import ipaddress
import json
import logging
import os
import re
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from traitlets import Bool, Dict, Instance, Integer, List, TraitError, Type, Unicode, default, validate
from traitlets.config import Config

from conda_store_server.app import CondaStore
from conda_store_server.application import BaseApplication
from conda_store_server.exception import CondaStoreError, http_status
from conda_store_server.limits import MAX_BODY_BYTES
from conda_store_server.server import auth
from conda_store_server.server.api.listing import DEPRECATION_HEADERS
from conda_store_server.server.docs import add_docs
from conda_store_server.server.kept_pages import KeptPages
from conda_store_server.server.middleware import RequestGuard
from conda_store_server.server.response_cache import ListCache
from conda_store_server.server.schema import Login
from conda_store_server.service import ensure_default_namespace
from conda_store_server.storage import LocalStorage, S3Storage

SERVER_ARGUMENTS = "CONDA_STORE_SERVER_ARGUMENTS"  # the parent's command line, for its server processes


class CondaStoreServer(BaseApplication):
    name = "conda-store-server"
    description = "Serve the conda-store REST API; with --standalone also build environments."

    aliases = {
        **BaseApplication.aliases,
        "config": "BaseApplication.config_file",
        "port": "CondaStoreServer.port",
        "address": "CondaStoreServer.address",
    }
    flags = {
        **BaseApplication.flags,
        "standalone": (
            {"CondaStoreServer": {"standalone": True}},
            "Run a worker beside the server (one command: SQLite, local storage, demo channel).",
        ),
    }
    classes = [
        CondaStore,
        LocalStorage,
        S3Storage,
        auth.AuthenticationBackend,
        auth.RBACAuthorizationBackend,
        auth.DummyAuthentication,
        auth.GenericOAuthAuthentication,
        auth.GithubOAuthAuthentication,
        auth.JupyterHubOAuthAuthentication,
    ]

    enable_ui = Bool(
        True,
        config=True,
        help="Serve the browser UI (conda-store's React app, installed with the package) under "
        "{url_prefix}/ui, and redirect / there; login and logout are served either way.",
    )
    enable_api = Bool(True, config=True, help="Serve the REST API under {url_prefix}/api/v1.")
    enable_registry = Bool(
        False,
        config=True,
        help="Serve the docker registry read side (pull, HEAD, tags/list) at /v2, outside "
        "url_prefix, for the images builds make when build_artifacts includes DOCKER_MANIFEST; "
        "/v2/conda-store-dynamic/<spec>/... builds an image on demand.",
    )
    enable_metrics = Bool(
        True,
        config=True,
        help="Serve Prometheus metrics at {url_prefix}/metrics (builds by status, queue depth, "
        "build durations, disk usage; no authentication, as upstream).",
    )
    address = Unicode("0.0.0.0", config=True, help="Address to listen on, e.g. 127.0.0.1.")
    port = Integer(8080, config=True, help="Port to listen on.")
    registry_external_url = Unicode(
        "localhost:8080",
        config=True,
        help="host:port under which the registry is reached by users (no scheme).",
    )
    url_prefix = Unicode("/", config=True, help="Path prefix of every route except /v2, e.g. /conda-store.")
    authentication_class = Type(
        auth.DummyAuthentication,
        klass=auth.Authentication,
        config=True,
        help="Authentication class, e.g. conda_store_server.server.auth.DummyAuthentication.",
    )
    secret_key = Unicode(
        config=True,
        help="Secret for sessions; defaults to AuthenticationBackend.secret.",
    )
    max_page_size = Integer(100, config=True, help="Largest number of items in one page of a list response.")
    list_cache_bytes = Integer(
        32 * 1024 * 1024,
        min=0,
        config=True,
        help="Bytes of list pages (environments, builds, namespaces, packages) each server process "
        "keeps to answer the same request again while the database has not changed; any committed "
        "write, by any process, makes them old. 0 turns it off. SQLite files and PostgreSQL only. "
        "A page depends only on the caller's token and the database: an authorization backend "
        "that grants roles from anywhere else must set 0.",
    )
    behind_proxy = Bool(
        False,
        config=True,
        help="Trust X-Forwarded-* headers (only behind a reverse proxy that sets them).",
    )
    template = Instance(
        Jinja2Templates,
        allow_none=True,
        config=True,
        help="Initialized fastapi.templating.Jinja2Templates to use for the HTML pages under "
        "{url_prefix}/admin instead of ours, e.g. Jinja2Templates(directory='/etc/conda-store/"
        "templates'); it must hold templates of the same names (see conda_store_server/server/"
        "templates). Default None: ours.",
    )
    template_vars = Dict({}, config=True, help="Extra variables for the HTML templates.")
    additional_routes = List(
        [],
        config=True,
        help="Extra routes [(path, method, function), ...]; method is get, post, put or delete.",
    )
    cors_allow_origins = List(
        Unicode(),
        [],
        config=True,
        help="Origins (scheme://host[:port]) whose web pages may call this server's API from a "
        "browser with the user's login, e.g. ['https://jupyter.example.org']. Default: none, so "
        "no other site can. '*' lets every origin read public answers, never with credentials.",
    )
    cors_allow_origin_regex = Unicode(
        "",
        config=True,
        help="Regular expression of further origins allowed as cors_allow_origins, e.g. "
        r"'https://.*\.example\.org'. Default: empty (none). A pattern that matches any origin "
        "is treated as '*': no credentials.",
    )
    standalone = Bool(
        False,
        config=True,
        help="Also run a build worker as a child process of the server.",
    )
    workers = Integer(
        1,
        min=1,
        config=True,
        help="Server processes accepting on the same socket. One process runs Python on one core "
        "at a time; more let API requests use every core. Like replicas, they share only the "
        "database and the store.",
    )
    standalone_demo_channel = Bool(
        True,
        config=True,
        help="With --standalone: build the offline demo channel into the store and use it as the "
        "default channel when CondaStore.conda_default_channels is not configured.",
    )

    @validate("url_prefix")
    def _normalize_prefix(self, proposal: dict[str, Any]) -> str:
        value = "/" + proposal["value"].strip("/")
        return value

    @validate("max_page_size")
    def _check_page_size(self, proposal: dict[str, Any]) -> int:
        if proposal["value"] < 1:
            raise TraitError("c.CondaStoreServer.max_page_size must be at least 1")
        return proposal["value"]

    @validate("cors_allow_origin_regex")
    def _check_origin_regex(self, proposal: dict[str, Any]) -> str:
        try:
            re.compile(proposal["value"])
        except re.error as error:
            raise TraitError(f"{proposal['value']!r} is not a regular expression ({error})") from error
        return proposal["value"]

    @default("secret_key")
    def _default_secret_key(self) -> str:
        return ""

    # ------------------------------------------------------------------ application
    def configure_standalone(self, conda_store: CondaStore) -> None:
        """Make the demo channel and point unconfigured default channels at it."""
        if not (self.standalone and self.standalone_demo_channel):
            return
        from conda_store_server.testing.channel import build_demo_channel

        channel = Path(conda_store.store_directory) / "demo-channel"
        if not (channel / "noarch" / "repodata.json").exists():
            build_demo_channel(channel)
        configured = self.config.get("CondaStore", {})
        if "conda_default_channels" not in configured:
            conda_store.conda_default_channels = [channel.as_uri()]
            self.log.info(
                "standalone: environments without channels use the demo channel %s",
                channel.as_uri(),
            )
        if "conda_indexed_channels" not in configured:
            conda_store.conda_indexed_channels = [channel.as_uri()]  # package search works offline

    def create_app(self, conda_store: CondaStore | None = None) -> FastAPI:
        conda_store = conda_store or self.make_conda_store()
        authentication = self.authentication_class(parent=self, log=self.log)
        backend = authentication.authentication
        if "secret_file" not in self.config.get("AuthenticationBackend", {}):
            backend.secret_file = os.path.join(conda_store.store_directory, ".secret")
        return create_app(self, conda_store, authentication)

    def start(self) -> None:
        conda_store = self.make_conda_store()
        conda_store.ensure_database()
        ensure_default_namespace(conda_store)
        self.configure_standalone(conda_store)
        self.warn_if_insecure()
        app = self.create_app(conda_store)  # also checks the configuration before any child starts
        listening = self.bind_socket()  # before the worker starts: a port in use stops everything
        worker = self.spawn_worker(conda_store) if self.standalone else None
        try:
            if self.workers > 1:
                self.serve_in_processes(listening)
            else:
                freeze_startup_objects()
                uvicorn.Server(self.uvicorn_config(app)).run(sockets=[listening])
        except KeyboardInterrupt:
            pass  # uvicorn re-raises Ctrl-C once it has shut down; the shutdown was clean
        finally:
            if worker is not None:
                worker.terminate()
                try:
                    worker.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    worker.kill()

    def uvicorn_config(self, app: FastAPI | str) -> uvicorn.Config:
        """Forwarded headers (X-Forwarded-For/-Proto) are trusted only behind a proxy. `app` is an
        application, or the import path of a factory of one (in each of `workers` processes).
        Above INFO no request is logged, so uvicorn is told so: it formats each line's
        arguments before its logger drops it."""
        level = self.log_level if isinstance(self.log_level, int) else logging.getLevelName(self.log_level)
        return uvicorn.Config(
            app,
            host=self.address,
            port=self.port,
            log_level=self.log_level,
            access_log=not isinstance(level, int) or level <= logging.INFO,
            proxy_headers=self.behind_proxy,
            forwarded_allow_ips="*" if self.behind_proxy else None,
            workers=self.workers,
            factory=isinstance(app, str),
        )

    def bind_socket(self) -> socket.socket:
        """The listening socket, or one line saying why there is none (and exit code 1)."""
        try:
            family, kind, protocol, _, address = socket.getaddrinfo(
                self.address, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            listening = socket.socket(family, kind, protocol)
        except OSError as error:
            sys.exit(f"{self.name}: cannot listen on {self.address}:{self.port}: {error}")
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listening.bind(address)
        except OSError as error:
            listening.close()
            sys.exit(
                f"{self.name}: cannot listen on {self.address}:{self.port}: {error.strerror}; stop "
                "what uses that port or choose another with --port (CondaStoreServer.port)"
            )
        listening.set_inheritable(True)
        host = f"[{self.address}]" if ":" in self.address else self.address
        self.log.info("listening on http://%s:%d%s", host, listening.getsockname()[1], self.url_prefix)
        return listening

    def serve_in_processes(self, listening: socket.socket) -> None:
        """uvicorn's supervisor starts `workers` processes on the socket bound by `bind_socket`
        (and replaces any that dies). Each rebuilds this server from its command line, in
        `app_from_parent`: configuration files may hold functions, which do not pickle."""
        from uvicorn.supervisors import Multiprocess

        arguments = self.command_line_arguments()
        if self.standalone:
            arguments.append("--CondaStoreServer.standalone=True")
        os.environ[SERVER_ARGUMENTS] = json.dumps(arguments)
        config = self.uvicorn_config(f"{__name__}:app_from_parent")
        Multiprocess(config, sockets=[listening]).run()

    def warn_if_insecure(self) -> None:
        if not issubclass(self.authentication_class, auth.DummyAuthentication):
            return
        try:
            loopback = ipaddress.ip_address(self.address).is_loopback
        except ValueError:
            loopback = self.address == "localhost"
        if not loopback:
            self.log.warning(
                "DummyAuthentication lets anyone who knows its password log in as an admin, and "
                "the server listens on %s (not loopback). Configure a real "
                "CondaStoreServer.authentication_class before exposing it.",
                self.address,
            )

    def spawn_worker(self, conda_store: CondaStore) -> subprocess.Popen[bytes]:
        """The standalone worker: a child process with the same configuration."""
        arguments = self.worker_command(conda_store)
        self.log.info("standalone: starting worker: %s", " ".join(arguments[1:]))
        return subprocess.Popen(arguments)

    def worker_command(self, conda_store: CondaStore) -> list[str]:
        """`-P`: the directory the server was started in is not put on the worker's path, so a
        `conda_store_server/` folder there cannot stand in for the installed package."""
        arguments = [
            sys.executable,
            "-P",
            "-m",
            "conda_store_server.worker",
            *self.command_line_arguments(),
            "--CondaStoreWorker.stop_with_parent=True",
        ]
        for option in ("conda_default_channels", "conda_indexed_channels"):
            if option not in self.config.get("CondaStore", {}):
                arguments.append(f"--CondaStore.{option}={getattr(conda_store, option)!r}")
        return arguments


def _error(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"status": "error", "message": message}, status_code=status_code, headers=headers)


def _route_headers(request: Request) -> dict[str, str]:
    """A deprecated route says so on its errors too, not only on success."""
    route = request.scope.get("route")
    return DEPRECATION_HEADERS if getattr(route, "deprecated", False) else {}


def create_app(
    server: CondaStoreServer, conda_store: CondaStore, authentication: auth.Authentication
) -> FastAPI:
    """The ASGI application; everything it needs comes in as arguments (no globals)."""
    from conda_store_server.server.api import routers

    prefix = "" if server.url_prefix == "/" else server.url_prefix
    app = FastAPI(title="conda-store", docs_url=None, redoc_url=None, openapi_url=f"{prefix}/openapi.json")
    add_docs(app, prefix, app.openapi_url, app.title)  # FastAPI's pages, with our copies of their assets
    app.state.conda_store = conda_store
    app.state.authentication = authentication
    app.state.server = server
    app.state.list_cache = ListCache(conda_store.engine, server.list_cache_bytes)
    app.add_middleware(KeptPages, cache=app.state.list_cache, authentication=authentication)  # innermost

    if server.cors_allow_origins or server.cors_allow_origin_regex:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=server.cors_allow_origins,
            allow_origin_regex=server.cors_allow_origin_regex or None,
            allow_credentials=not cors_allows_any_origin(server),
            allow_methods=["*"],
            allow_headers=["*"],
        )

    app.add_middleware(RequestGuard, max_body_bytes=MAX_BODY_BYTES)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's own subclass included
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        headers = {**(error.headers or {}), **_route_headers(request)}
        return _error(error.status_code, str(error.detail), headers)

    @app.exception_handler(CondaStoreError)
    async def domain_error(request: Request, error: CondaStoreError) -> JSONResponse:
        return _error(http_status(error), error.message, _route_headers(request))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _jsonable_errors(error.errors())}, status_code=422)

    if server.enable_api:
        from conda_store_server.server.celery_status import celery_router

        for router in routers():
            app.include_router(router, prefix=prefix)
        app.include_router(celery_router(prefix))
    if server.enable_registry:
        from conda_store_server.server.registry_v2 import registry_router

        app.include_router(registry_router())  # at the root: registry clients know no prefix
    if server.enable_metrics:
        from conda_store_server.server.metrics import metrics_router

        app.include_router(metrics_router(conda_store), prefix=prefix)

    if server.enable_ui:
        from conda_store_server.server.admin import admin_router
        from conda_store_server.server.ui import static_files, ui_router

        app.include_router(ui_router(prefix))
        app.include_router(admin_router(), prefix=prefix)
        app.mount(f"{prefix}/static", static_files(), name="static")

    if isinstance(authentication, auth.GenericOAuthAuthentication):
        from conda_store_server.server.oauth import oauth_router

        app.include_router(oauth_router(authentication, prefix, safe_redirect))
    else:

        @app.get(f"{prefix}/login/", response_class=HTMLResponse)
        def login_page(request: Request, next: str | None = None) -> HTMLResponse:
            template = Environment(autoescape=True).from_string(authentication.login_html)
            return HTMLResponse(
                template.render(next=safe_redirect(request, next, None), **server.template_vars)
            )

        @app.post(f"{prefix}/login/")
        def login(body: Login, request: Request, next: str | None = None) -> JSONResponse:
            entity = authentication.authenticate(body.username, body.password)
            if entity is None:
                return _error(403, "Invalid authentication credentials")
            token = authentication.authentication.encrypt_token(entity)
            response = JSONResponse(
                {
                    "status": "ok",
                    "data": {"redirect_url": safe_redirect(request, next, f"{prefix}/")},
                    "message": None,
                }
            )
            response.set_cookie(
                authentication.cookie_name,
                token,
                httponly=True,
                samesite="strict",
                max_age=int((entity.exp - _now()).total_seconds()),
                domain=authentication.cookie_domain,
                path="/",
            )
            return response

    @app.post(f"{prefix}/logout/")
    def logout(request: Request, next: str | None = None) -> RedirectResponse:
        response = RedirectResponse(safe_redirect(request, next, f"{prefix}/"), status_code=303)
        response.delete_cookie(authentication.cookie_name, domain=authentication.cookie_domain, path="/")
        return response

    for path, method, function in server.additional_routes:
        app.add_api_route(f"{prefix}{path}", function, methods=[method.upper()])
    return app


def cors_allows_any_origin(server: CondaStoreServer) -> bool:
    """Credentials for every origin would let any web page act as the logged-in user."""
    if "*" in server.cors_allow_origins:
        return True
    pattern = server.cors_allow_origin_regex
    return bool(pattern) and re.fullmatch(pattern, "https://any-origin.invalid") is not None


def safe_redirect(request: Request, target: str | None, default: str | None) -> str | None:
    """`next` only within this server: a path, or an absolute URL on the host the request named.

    The UI sends its own absolute URL; anything else would make login and logout open redirects.
    """
    if not target:
        return default
    url = urllib.parse.urlsplit(target)
    if not url.scheme and not url.netloc:
        return target if target.startswith("/") and not target.startswith("//") else default
    if url.scheme in ("http", "https") and url.netloc == request.url.netloc:
        return target
    return default


def _now() -> Any:
    import datetime

    return datetime.datetime.now(datetime.UTC)


#: Longest input echoed back in a 422: a 10 MB body must not come back whole.
MAX_ECHOED_INPUT_CHARACTERS = 200


def _jsonable_errors(errors: Any) -> Any:
    """Pydantic's error details can hold exceptions (ctx); keep what JSON can carry, and echo
    only short inputs."""
    result = []
    for error in errors:
        item = dict(error)
        if isinstance(item.get("input"), bytes):  # a body that is not JSON
            item["input"] = item["input"].decode("utf-8", "replace")
        if "input" in item and len(json.dumps(item["input"], default=str)) > MAX_ECHOED_INPUT_CHARACTERS:
            del item["input"]
        if "ctx" in item:
            item["ctx"] = {k: str(v) for k, v in item["ctx"].items()}
        result.append(item)
    return result


def app_from_parent() -> FastAPI:
    """The application of one of `workers` server processes (see `serve_in_processes`)."""
    server = CondaStoreServer()
    server.initialize(json.loads(os.environ[SERVER_ARGUMENTS]))
    conda_store = CondaStore(parent=server, log=server.log)  # the parent reported its settings
    server.configure_standalone(conda_store)
    app = server.create_app(conda_store)
    freeze_startup_objects()
    return app


def freeze_startup_objects() -> None:
    """Move what start-up made (modules, routes, models, configuration: most of the process's
    objects) out of the garbage collector's sight before requests are served.

    Those objects live as long as the process, yet every full collection walked them all: a
    pause of tens of milliseconds, now and then, in whichever requests were running. At 16
    connections it was most of the p99 of the list routes (about 100 ms against a 12 ms median;
    25 ms with them frozen, see BENCHMARKS.md).
    """
    gc.collect()
    gc.freeze()


def main(argv: list[str] | None = None) -> None:
    CondaStoreServer.main(argv)


__all__ = ["CondaStoreServer", "Config", "create_app", "main"]
