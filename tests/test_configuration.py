"""The seed's configuration surface: classes at their import paths, every trait documented."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from traitlets import TraitError
from traitlets.config import Config, Configurable

from conda_store_server.app import CondaStore

SEED_TRAITS = {
    "conda_store_server.app.CondaStore": [
        "storage_class",
        "conda_solve_platforms",
        "store_directory",
        "build_directory",
        "environment_directory",
        "build_key_version",
        "validate_specification",
        "validate_action",
        "conda_command",
        "conda_channel_alias",
        "conda_platforms",
        "conda_default_channels",
        "conda_allowed_channels",
        "conda_indexed_channels",
        "conda_default_packages",
        "conda_required_packages",
        "conda_included_packages",
        "pypi_default_packages",
        "pypi_required_packages",
        "pypi_included_packages",
        "storage_thresold",
        "storage_threshold",
        "database_url",
        "redis_url",
        "celery_broker_url",
        "build_artifacts",
        "build_artifacts_kept_on_deletion",
        "celery_results_backend",
        "default_namespace",
        "filesystem_namespace",
        "default_uid",
        "default_gid",
        "default_permissions",
        "default_docker_base_image",
        "serialize_builds",
        "post_update_environment_build_hook",
        "conda_max_solve_time",
        "upgrade_db",
    ],
    "conda_store_server.storage.LocalStorage": ["storage_path", "storage_url"],
    "conda_store_server.server.auth.GenericOAuthAuthentication": [
        "access_token_url",
        "authorize_url",
        "authorizie_url",
        "client_id",
        "client_secret",
        "access_scope",
        "user_data_url",
        "user_data_key",
        "oauth_callback_url",
        "tls_verify",
    ],
    "conda_store_server.server.auth.GithubOAuthAuthentication": ["github_url", "github_api"],
    "conda_store_server.server.auth.JupyterHubOAuthAuthentication": ["jupyterhub_url"],
    "conda_store_server.storage.S3Storage": [
        "internal_endpoint",
        "external_endpoint",
        "access_key",
        "secret_key",
        "region",
        "bucket_name",
        "internal_secure",
        "external_secure",
        "credentials",
        "credentials_args",
        "credentials_kwargs",
    ],
    "conda_store_server.server.auth.AuthenticationBackend": [
        "secret",
        "jwt_algorithm",
        "predefined_tokens",
    ],
    "conda_store_server.server.auth.AuthorizationBackend": [
        "role_mappings",
        "unauthenticated_role_bindings",
        "authenticated_role_bindings",
    ],
    "conda_store_server.server.auth.RBACAuthorizationBackend": ["role_mappings_version"],
    "conda_store_server.server.auth.Authentication": [
        "cookie_name",
        "cookie_domain",
        "authentication_backend",
        "authorization_backend",
        "login_html",
    ],
    "conda_store_server.server.auth.DummyAuthentication": ["password"],
    "conda_store_server.server.app.CondaStoreServer": [
        "log_level",
        "enable_ui",
        "enable_api",
        "enable_registry",
        "enable_metrics",
        "address",
        "port",
        "registry_external_url",
        "url_prefix",
        "authentication_class",
        "secret_key",
        "max_page_size",
        "behind_proxy",
        "template_vars",
        "additional_routes",
    ],
    "conda_store_server.worker.app.CondaStoreWorker": ["log_level", "watch_paths", "concurrency"],
}


def load(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("path", sorted(SEED_TRAITS))
def test_seed_traits_exist_with_help(path: str) -> None:
    cls = load(path)
    traits = cls.class_traits(config=True)
    for name in SEED_TRAITS[path]:
        assert name in traits, f"{path}.{name} missing"
        assert traits[name].help and len(traits[name].help) > 15, f"{path}.{name} has no help"


def test_every_configurable_trait_has_help() -> None:
    for path in SEED_TRAITS:
        for name, trait in load(path).class_traits(config=True).items():
            assert trait.help, f"{path}.{name} has no help"


def test_defaults_match_the_seed() -> None:
    store = CondaStore()
    assert store.build_key_version == 2
    assert store.conda_channel_alias == "https://conda.anaconda.org"
    assert store.conda_default_channels == ["conda-forge"]
    assert store.conda_allowed_channels == []
    assert store.default_namespace == "default" and store.filesystem_namespace == "filesystem"
    assert store.storage_threshold == 5 * 1024**3
    assert store.build_artifacts_kept_on_deletion == ["LOGS", "LOCKFILE", "YAML"]
    assert store.build_directory == "{store_directory}/{namespace}"
    assert store.environment_directory == "{store_directory}/{namespace}/envs/{name}"
    assert store.database_url.startswith("sqlite:///") and store.upgrade_db is True


def test_seed_spelling_of_storage_threshold_is_honoured() -> None:
    store = CondaStore(config=Config({"CondaStore": {"storage_thresold": 1234}}))
    assert store.storage_threshold == 1234


def test_invalid_values_are_refused_with_the_trait_name() -> None:
    with pytest.raises(TraitError, match="build_key_version"):
        CondaStore(build_key_version=4)
    with pytest.raises(TraitError, match="default_permissions"):
        CondaStore(default_permissions="rwx")
    from conda_store_server.server.auth import RBACAuthorizationBackend

    with pytest.raises(TraitError, match=r"invalid role mappings version: 3, expected: \(1, 2\)"):
        RBACAuthorizationBackend(role_mappings_version=3)


def test_validators_with_the_original_signature_still_work() -> None:
    seen = []

    def old_style(conda_store: object, namespace: str, specification: object) -> object:
        seen.append(namespace)
        return specification

    store = CondaStore(validate_specification=old_style)
    assert store.call_validate_specification("ns", "spec", object()) == "spec"
    assert seen == ["ns"]


def test_conda_command_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    store = CondaStore(conda_command="mamba")
    store.log.propagate = True
    with caplog.at_level("WARNING"):
        store.report_conda_command()
    assert "py-rattler" in caplog.text


@pytest.mark.parametrize("command", ["conda_store_server.server.app", "conda_store_server.worker.app"])
def test_generate_config_lists_every_trait(command: str, tmp_path: Path) -> None:
    output = subprocess.run(
        [sys.executable, "-c", f"import {command} as m; m.main(['--generate-config', '-y'])"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    generated = list(tmp_path.glob("*_config.py"))
    assert generated, output.stderr
    text = generated[0].read_text()
    for name in SEED_TRAITS["conda_store_server.app.CondaStore"]:
        assert f"c.CondaStore.{name}" in text, name


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "conda_store_server.worker", f"--config={tmp_path / 'nope.py'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "does not exist" in result.stderr + result.stdout


def test_every_configurable_in_the_package_documents_its_traits() -> None:
    import pkgutil

    import conda_store_server

    for module_info in pkgutil.walk_packages(conda_store_server.__path__, "conda_store_server."):
        if ".db.migrations" in module_info.name or module_info.name.endswith("__main__"):
            continue
        module = importlib.import_module(module_info.name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Configurable)
                and value.__module__ == module.__name__
            ):
                for name, trait in value.class_traits(config=True).items():
                    assert trait.help, f"{module.__name__}.{value.__name__}.{name} has no help"


@pytest.mark.parametrize(
    ("application", "argument", "expected"),
    [
        ("conda_store_server.server.app.CondaStoreServer", "--CondaStoreServer.log_level=WARNING", 30),
        ("conda_store_server.worker.app.CondaStoreWorker", "--log-level=DEBUG", 10),
        ("conda_store_server.worker.app.CondaStoreWorker", "--CondaStoreWorker.log_level=40", 40),
    ],
)
def test_log_level_is_accepted_by_name_or_number(application: str, argument: str, expected: int) -> None:
    module, name = application.rsplit(".", 1)
    app = getattr(importlib.import_module(module), name)()
    app.initialize([argument])
    assert app.log_level == expected
    with pytest.raises(TraitError):
        app.log_level = "LOUD"
