"""The example deployment in examples/docker-compose stays consistent with the code.

No Docker engine runs here, so the compose file is checked for what the README promises (server,
two workers, PostgreSQL, Redis, MinIO, one shared configuration) and the configuration file is
loaded by the real applications, every option checked against the class it names.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from traitlets.config import Configurable, PyFileConfigLoader

from conda_store_server.server.app import CondaStoreServer
from conda_store_server.worker.app import CondaStoreWorker

EXAMPLE = Path(__file__).parent.parent / "examples" / "docker-compose"
CONFIG_IN_CONTAINER = "/etc/conda-store/conda_store_config.py"
CLASSES = {
    "CondaStore": "conda_store_server.app",
    "S3Storage": "conda_store_server.storage",
    "CondaStoreServer": "conda_store_server.server.app",
    "CondaStoreWorker": "conda_store_server.worker.app",
    "AuthenticationBackend": "conda_store_server.server.auth",
    "DummyAuthentication": "conda_store_server.server.auth",
}


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load((EXAMPLE / "docker-compose.yaml").read_text())
    for name, value in compose["x-conda-store"]["environment"].items():
        monkeypatch.setenv(name, value.split(":-", 1)[-1].rstrip("}"))


def test_compose_runs_a_server_two_workers_and_the_services() -> None:
    services = yaml.safe_load((EXAMPLE / "docker-compose.yaml").read_text())["services"]
    assert {"server", "worker-1", "worker-2", "db", "redis", "minio"} <= set(services)
    for name in ("server", "worker-1", "worker-2"):
        command = services[name]["command"]
        assert command[0] == ("conda-store-server" if name == "server" else "conda-store-worker")
        assert command[command.index("--config") + 1] == CONFIG_IN_CONTAINER
        mounts = services[name]["volumes"]
        assert f"./conda_store_config.py:{CONFIG_IN_CONTAINER}:ro" in mounts
        assert set(services[name]["depends_on"]) == {"db", "redis", "minio"}


def test_every_option_of_the_example_config_exists(environment: None) -> None:
    config = PyFileConfigLoader(str(EXAMPLE / "conda_store_config.py")).load_config()
    assert config, "the example configuration is empty"
    for class_name, options in config.items():
        assert class_name in CLASSES, f"{class_name} is not a class the example should configure"
        cls = getattr(importlib.import_module(CLASSES[class_name]), class_name)
        assert issubclass(cls, Configurable)
        traits = cls.class_traits(config=True)
        for option in options:
            assert option in traits, f"{class_name}.{option} is not an option"


@pytest.mark.parametrize("application", [CondaStoreServer, CondaStoreWorker])
def test_the_applications_load_the_example_config(application: type, environment: None) -> None:
    app = application()
    app.initialize([f"--config={EXAMPLE / 'conda_store_config.py'}"])
    store = app.make_conda_store()
    assert store.database_url.startswith("postgresql+psycopg2://")
    assert store.redis_url == "redis://redis:6379/0"
    assert store.storage_class.__name__ == "S3Storage"
