"""What the server and worker commands share: `--config FILE`, `--Class.trait=value`, logging."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from traitlets import Bool, Enum, Unicode
from traitlets.config import Application, catch_config_error

from conda_store_server import __version__, configuration
from conda_store_server.app import CondaStore

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class BaseApplication(Application):
    version = __version__

    config_file = Unicode(
        "",
        config=True,
        help="Python configuration file (`c.CondaStore.* = ...`) loaded at start, e.g. "
        "`conda_store_config.py`. A missing file is an error.",
    )
    # traitlets' Application turns level names into numbers before validating, so both are listed
    log_level = Enum(
        (*LOG_LEVELS, *(getattr(logging, name) for name in LOG_LEVELS)),
        logging.INFO,
        config=True,
        help="Level of all logging: DEBUG, INFO, WARNING, ERROR or CRITICAL (or its number).",
    )

    generate_config = Bool(
        False,
        config=True,
        help="Write `<command>_config.py` with every option, its default and help, then exit.",
    )
    answer_yes = Bool(False, config=True, help="Overwrite an existing file without asking.")

    aliases = {**Application.aliases, "config": "BaseApplication.config_file"}
    flags = {
        **Application.flags,
        "generate-config": (
            {"BaseApplication": {"generate_config": True}},
            "Write the default configuration file (every option documented) and exit.",
        ),
        "y": ({"BaseApplication": {"answer_yes": True}}, "Answer yes: overwrite files."),
    }

    @catch_config_error
    def initialize(self, argv: list[str] | None = None) -> None:
        """Parse the command line, then load the config file; its errors raise ConfigurationError.

        The file's warnings (misspelled names, unknown options) are kept in
        `configuration_warnings` for `main` to log once, not in every process that re-reads it.
        """
        super().initialize(argv)
        self.configuration_warnings: list[str] = []
        classes = [type(self), *self.classes]
        if self.config_file:
            path = os.path.abspath(self.config_file)
            file_config = configuration.load_file(path)
            self.configuration_warnings += configuration.apply_aliases(file_config)
            with open(path, encoding="utf-8", errors="replace") as handle:
                configuration.check_values(file_config, classes, path, handle.read())
            self.update_config(file_config)
        if self.cli_config:
            self.configuration_warnings += configuration.apply_aliases(self.cli_config)
            configuration.check_values(self.cli_config, classes, None)
            # command-line values win over the file, as in every traitlets application
            self.update_config(self.cli_config)
        logging.basicConfig(
            level=self.log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        self.log.setLevel(self.log_level)

    def write_generated_config(self) -> str:
        """The reference documentation of every option, as a config file (JupyterHub's habit)."""
        path = os.path.abspath(f"{self.name.replace('-', '_')}_config.py")
        if os.path.exists(path) and not self.answer_yes:
            raise SystemExit(f"{path} exists; pass -y to overwrite it")
        with open(path, "w") as handle:
            handle.write(self.generate_config_file())
        print(f"Wrote {path}")
        return path

    def make_conda_store(self) -> CondaStore:
        conda_store = CondaStore(parent=self, log=self.log)
        conda_store.report_conda_command()
        return conda_store

    def command_line_arguments(self) -> list[str]:
        """Arguments that reproduce this application's configuration in a child command."""
        arguments = [f"--config={os.path.abspath(self.config_file)}"] if self.config_file else []
        arguments.extend(
            a
            for a in self.extra_args_given
            if a.startswith("--")
            and "=" in a
            and not a.startswith(("--config=", "--BaseApplication.config_file="))
        )
        return arguments

    @property
    def extra_args_given(self) -> list[str]:
        return list(getattr(self, "_argv", []))

    def parse_command_line(self, argv: Any = None) -> None:
        self._argv = list(sys.argv[1:] if argv is None else argv)
        super().parse_command_line(argv)

    def report_configuration(self) -> None:
        """Warn once per start about names the deployment does not define or spells the old way."""
        for warning in self.configuration_warnings + configuration.unknown_option_warnings(self.config):
            self.log.warning("%s", warning)

    @classmethod
    def main(cls, argv: list[str] | None = None) -> None:
        """The console entry point: configure, then generate the config file or start.

        A configuration that cannot be used stops the command with one message and exit code 1,
        before anything starts.
        """
        app = cls()
        try:
            app.initialize(argv)
        except configuration.ConfigurationError as error:
            sys.exit(f"{app.name}: {error}")
        if app.generate_config:
            app.write_generated_config()
            return
        app.report_configuration()
        app.start()
