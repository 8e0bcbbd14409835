"""Schemathesis over our OpenAPI document: generated requests never get a 5xx.

Bounded in count so that it runs in CI; an admin token lets requests reach past the permission
checks into the handlers, where a 500 would hide. Schemathesis reads the schema when the module
is collected, so the app under test (SQLite in a temporary directory) is made at import.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from traitlets.config import Config

from conda_store_server.app import CondaStore
from conda_store_server.server.app import CondaStoreServer
from conda_store_server.server.auth import AuthenticationToken

DIRECTORY = Path(tempfile.mkdtemp(prefix="cs-fuzz-"))
atexit.register(shutil.rmtree, DIRECTORY, ignore_errors=True)
CONFIG = Config(
    {
        "CondaStore": {
            "database_url": f"sqlite:///{DIRECTORY / 'fuzz.sqlite'}",
            "store_directory": str(DIRECTORY / "store"),
            "conda_default_channels": [(DIRECTORY / "no-channel").as_uri()],
        },
        "LocalStorage": {"storage_path": str(DIRECTORY / "storage")},
        "AuthenticationBackend": {"secret": "fuzz-secret-" + "0123456789abcdef" * 3},
    }
)
STORE = CondaStore(config=CONFIG)
STORE.ensure_database()
atexit.register(STORE.engine.dispose)
APP = CondaStoreServer(config=CONFIG).create_app(STORE)
TOKEN = APP.state.authentication.authentication.encrypt_token(
    AuthenticationToken("fuzzer", {"*/*": ["admin"]})
)

schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_no_generated_request_gets_a_server_error(case: Any) -> None:
    response = case.call(headers={"Authorization": f"Bearer {TOKEN}"}, allow_redirects=False)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:500]}"
