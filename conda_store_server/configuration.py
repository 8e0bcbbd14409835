"""Loading a configuration file so that every mistake in it stops the process, saying where.

traitlets logs an exception raised by a config file and carries on with the defaults: a
deployment whose file failed would then run with the Dummy login on 0.0.0.0. Here any error
(syntax, an import that fails, a value a trait refuses) becomes a `ConfigurationError` naming
the file, the line and what to do; names nobody defines get a warning naming the closest one.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import traceback
from collections.abc import Iterable
from dataclasses import dataclass

from traitlets import TraitError
from traitlets.config import Config, Configurable
from traitlets.config.loader import JSONFileConfigLoader, PyFileConfigLoader

__all__ = [
    "DEPLOYMENT_CONFIGURABLES",
    "SECTION_ALIASES",
    "TRAIT_ALIASES",
    "ConfigurationError",
    "apply_aliases",
    "check_values",
    "load_file",
    "unknown_option_warnings",
]

#: Every configurable class of a deployment, by import path: server and worker share one file,
#: so a name is unknown only when no process of the deployment defines it.
DEPLOYMENT_CONFIGURABLES = (
    "traitlets.config.application.Application",
    "conda_store_server.application.BaseApplication",
    "conda_store_server.app.CondaStore",
    "conda_store_server.storage.Storage",
    "conda_store_server.storage.LocalStorage",
    "conda_store_server.storage.S3Storage",
    "conda_store_server.server.app.CondaStoreServer",
    "conda_store_server.server.auth.AuthenticationBackend",
    "conda_store_server.server.auth.AuthorizationBackend",
    "conda_store_server.server.auth.RBACAuthorizationBackend",
    "conda_store_server.server.auth.Authentication",
    "conda_store_server.server.auth.DummyAuthentication",
    "conda_store_server.server.auth.GenericOAuthAuthentication",
    "conda_store_server.server.auth.GithubOAuthAuthentication",
    "conda_store_server.server.auth.JupyterHubOAuthAuthentication",
    "conda_store_server.worker.app.CondaStoreWorker",
    "conda_store_server.backup.BackupApplication",
    "conda_store_server.registry.ContainerRegistry",
)

#: Misspelled class names printed in the seed's documentation, honoured with a warning.
SECTION_ALIASES = {"GenericOauthAuthentication": "GenericOAuthAuthentication"}
#: Misspelled (class, option) pairs of the seed's documentation, honoured with a warning.
TRAIT_ALIASES = {
    ("GithubOAuthAuthentication", "jupyterhub_url"): ("JupyterHubOAuthAuthentication", "jupyterhub_url"),
}

_FIXES = {
    SyntaxError: "correct the Python syntax on that line",
    ImportError: "correct or remove the import on that line (is the module installed, and does this "
    "version of conda-store-server define that name?)",
    NameError: "define or import that name before the line that uses it",
    AttributeError: "check the spelling of the attribute used on that line",
    TraitError: "give the option a value of the type its help describes "
    "(`conda-store-server --help-all` lists every option)",
}


class ConfigurationError(Exception):
    """The configuration cannot be used; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class _Source:
    """Where an option was set: a file (with its text, to find the line) or the command line."""

    path: str | None
    text: str = ""

    def line_of(self, section: str, option: str) -> int | None:
        pattern = re.compile(rf"\bc\.{re.escape(section)}\.{re.escape(option)}\b")
        for number, line in enumerate(self.text.splitlines(), start=1):
            if pattern.search(line):
                return number
        return None

    def where(self, section: str, option: str) -> str:
        if self.path is None:
            return f"--{section}.{option} on the command line"
        line = self.line_of(section, option)
        return f"{self.path}, line {line}" if line else self.path


def load_file(path: str) -> Config:
    """The file's configuration, or a ConfigurationError saying where and why it failed."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ConfigurationError(
            f"configuration file {path} does not exist; check the path given to --config"
        )
    directory, name = os.path.split(path)
    loader_class = JSONFileConfigLoader if name.endswith(".json") else PyFileConfigLoader
    try:
        return loader_class(name, path=directory).load_config()
    except Exception as error:  # noqa: BLE001 - a config file can raise anything; each is reported
        line = _failing_line(error, path)
        location = f"{path}, line {line}" if line else path
        raise ConfigurationError(
            f"cannot load configuration file {location}: {type(error).__name__}: {error}. "
            f"Fix: {_fix_for(error)}"
        ) from error


def _failing_line(error: BaseException, path: str) -> int | None:
    if isinstance(error, SyntaxError) and error.filename and os.path.abspath(error.filename) == path:
        return error.lineno
    frames = [f for f in traceback.extract_tb(error.__traceback__) if os.path.abspath(f.filename) == path]
    return frames[-1].lineno if frames else None


def _fix_for(error: BaseException) -> str:
    for kind, fix in _FIXES.items():
        if isinstance(error, kind):
            return fix
    return "correct that line"


def apply_aliases(config: Config) -> list[str]:
    """Move options set under the seed's misspelled names to the real ones; say so."""
    warnings = []
    for alias, real in SECTION_ALIASES.items():
        if alias in config:
            options = config.pop(alias)
            for option, value in options.items():
                config[real].setdefault(option, value)
                warnings.append(
                    f"c.{alias}.{option} is an old misspelling: it was applied as c.{real}.{option}; "
                    f"write c.{real}.{option}"
                )
    for (section, option), (real_section, real_option) in TRAIT_ALIASES.items():
        if section in config and option in config[section]:
            value = config[section].pop(option)
            config[real_section].setdefault(real_option, value)
            warnings.append(
                f"c.{section}.{option} is an old misspelling: it was applied as "
                f"c.{real_section}.{real_option}; write c.{real_section}.{real_option}"
            )
    return warnings


def _load(path: str) -> type[Configurable]:
    module, _, name = path.rpartition(".")
    value = getattr(importlib.import_module(module), name)
    assert isinstance(value, type) and issubclass(value, Configurable)
    return value


def _sections(config: Config) -> Iterable[tuple[str, dict[str, object]]]:
    for section, options in config.items():
        if isinstance(options, dict):
            yield section, options


def unknown_option_warnings(config: Config) -> list[str]:
    """One warning per class or option that no process of the deployment defines."""
    classes = {cls.__name__: cls for cls in map(_load, DEPLOYMENT_CONFIGURABLES)}
    warnings = []
    for section, options in _sections(config):
        cls = classes.get(section)
        if cls is None:
            guess = difflib.get_close_matches(section, list(classes), n=1)
            hint = f"; did you mean {guess[0]}?" if guess else ""
            warnings.append(f"c.{section} is not a conda-store-server class: its options are ignored{hint}")
            continue
        known = sorted(cls.class_traits(config=True))
        for option in options:
            if option not in known:
                guess = difflib.get_close_matches(option, known, n=1)
                hint = f"; did you mean c.{section}.{guess[0]}?" if guess else ""
                warnings.append(f"c.{section}.{option} is not an option of {section}: it is ignored{hint}")
    return warnings


def check_values(
    config: Config, classes: Iterable[type[Configurable]], path: str | None, text: str = ""
) -> None:
    """Every value configured for these classes, tried on a fresh instance, one option at a time.

    Trying each option alone is what lets the error name it (and its line); a TraitError raised
    later, when the process builds its objects, could name neither.
    """
    source = _Source(path, text)
    by_name = {cls.__name__: cls for cls in classes}
    for section, options in _sections(config):
        cls = by_name.get(section)
        if cls is None:
            continue
        instance = cls()
        for option, value in options.items():
            if option not in cls.class_traits(config=True):
                continue
            try:
                setattr(instance, option, value)
            except TraitError as error:
                raise ConfigurationError(
                    f"invalid value for c.{section}.{option} in {source.where(section, option)}: "
                    f"{_trait_message(error)}. Fix: {_FIXES[TraitError]}"
                ) from error


def _trait_message(error: TraitError) -> str:
    """traitlets names the instance (`<...object at 0x...>`), which says nothing to a reader."""
    return re.sub(r" of <[^>]*> instance", "", str(error))
