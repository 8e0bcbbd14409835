"""`python -m conda_store_server.backup create|restore --config FILE PATH`: a whole deployment as a bundle.

`create` writes every live namespace (metadata, role mappings), every setting and every live
environment with its builds' specifications, lockfiles, statuses, timestamps and logs to PATH
(`-` for standard output), in the format of `conda_store_server.bundle` (docs/bundle.md).
`restore` recreates them in the deployment FILE configures, in one transaction: builds arrive
archived, and each environment's current build is queued to be rebuilt from its lockfile by the
deployment's workers (prefixes are rebuilt, never copied). A configuration that does not load,
an unreadable or invalid bundle, or a name the target already has stops it with exit code 1 and
changes nothing.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

from conda_store_server.app import CondaStore
from conda_store_server.application import BaseApplication
from conda_store_server.bundle import deployment_bundle, import_bundle, parse_bundle
from conda_store_server.exception import CondaStoreError
from conda_store_server.storage import LocalStorage, S3Storage

USAGE = "usage: python -m conda_store_server.backup {create,restore} --config FILE PATH"
FLAGS = frozenset(
    {"--debug", "--show-config", "--show-config-json", "--generate-config", "-y", "-h", "--help"}
)


class BackupApplication(BaseApplication):
    name = "conda-store-backup"
    description = "Back up a conda-store deployment to a bundle file, or restore one into it."
    examples = (
        "python -m conda_store_server.backup create --config conda_store_config.py backup.json\n"
        "python -m conda_store_server.backup restore --config new_config.py backup.json"
    )
    classes = [CondaStore, LocalStorage, S3Storage]
    action = ""
    path = ""

    def start(self) -> None:
        action, path = self.action, self.path
        if action not in ("create", "restore") or not path or self.extra_args:
            sys.stderr.write(f"{USAGE}\n")
            sys.exit(2)
        conda_store = self.make_conda_store()
        try:
            conda_store.ensure_database()
            if action == "create":
                self._create(conda_store, path)
            else:
                self._restore(conda_store, path)
        except CondaStoreError as error:
            sys.exit(f"{self.name}: {error}")
        finally:
            conda_store.engine.dispose()

    def _create(self, conda_store: CondaStore, path: str) -> None:
        with conda_store.session() as session:
            document = deployment_bundle(session, conda_store)
        text = json.dumps(document, indent=1, sort_keys=True)
        if path == "-":
            sys.stdout.write(text + "\n")
        else:
            _write_atomically(path, text)
        builds = sum(len(environment["builds"]) for environment in document["environments"])
        self.log.info(
            "backed up %d namespaces, %d environments, %d builds, %d settings to %s",
            len(document["namespaces"]),
            len(document["environments"]),
            builds,
            len(document["settings"]),
            path,
        )

    def _restore(self, conda_store: CondaStore, path: str) -> None:
        document = _read(path)
        bundle = parse_bundle(document)
        with conda_store.session() as session:
            imported = import_bundle(session, conda_store, bundle)
        rebuilding = sum(1 for item in imported if item.rebuilding is not None)
        self.log.info(
            "restored %d environments (%d builds) from %s; %d current builds are queued to be "
            "rebuilt from their lockfiles by the workers",
            len(imported),
            sum(len(item.build_ids) for item in imported),
            path,
            rebuilding,
        )


def _read(path: str) -> Any:
    try:
        with open(path, "rb") if path != "-" else sys.stdin.buffer as handle:
            return json.loads(handle.read())
    except OSError as error:
        raise CondaStoreError(f"cannot read the backup {path}: {error}") from error
    except (ValueError, UnicodeDecodeError) as error:
        raise CondaStoreError(f"the backup {path} is not JSON: {error}") from error


def _write_atomically(path: str, text: str) -> None:
    """A backup is whole or absent: an interrupted write never leaves a truncated file at `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = None
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=".backup-", dir=directory)  # mode 0600
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except OSError as error:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)
        raise CondaStoreError(f"cannot write the backup to {path}: {error}") from error


def split_arguments(argv: list[str]) -> tuple[str, str, list[str]]:
    """The action (first), the path (last, unless it is an option's value) and the options, which
    traitlets parses (it accepts no positional argument after an option)."""
    arguments = list(argv)
    action = arguments.pop(0) if arguments and not arguments[0].startswith("-") else ""
    path = ""
    if arguments and not arguments[-1].startswith("-"):
        before = arguments[-2] if len(arguments) > 1 else ""
        takes_value = before.startswith("-") and "=" not in before and before not in FLAGS
        if not takes_value:
            path = arguments.pop()
    return action, path, arguments


def main(argv: list[str] | None = None) -> None:
    action, path, options = split_arguments(sys.argv[1:] if argv is None else argv)
    BackupApplication.action, BackupApplication.path = action, path
    BackupApplication.main(options)


if __name__ == "__main__":
    main()
