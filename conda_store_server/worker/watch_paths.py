"""CondaStoreWorker.watch_paths: environment files on disk become builds in the filesystem namespace.

Operators keep environments in a directory (often a git checkout); editing a file queues a
build, and a file that did not change queues nothing, however often it is scanned.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from conda_store_server.exception import CondaStoreError
from conda_store_server.service import register_environment
from conda_store_server.specification import parse_specification

if TYPE_CHECKING:
    from conda_store_server.app import CondaStore

log = logging.getLogger(__name__)

ENVIRONMENT_FILE_SUFFIXES = (".yaml", ".yml")


def environment_files(watch_paths: Iterable[str]) -> Iterator[Path]:
    """The files named, and the environment files directly inside the directories named."""
    for watched in watch_paths:
        path = Path(watched)
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from sorted(
                child
                for child in path.iterdir()
                if child.suffix in ENVIRONMENT_FILE_SUFFIXES and child.is_file()
            )
        else:
            log.warning("CondaStoreWorker.watch_paths: %s does not exist", path)


def register_watched_environments(conda_store: CondaStore, watch_paths: Iterable[str]) -> list[int]:
    """Queue a build for every new or changed environment file; returns the new build ids.

    A file that is not a valid environment is named in a warning and skipped: one bad file
    must not stop the others.
    """
    queued = []
    for path in environment_files(watch_paths):
        try:
            specification = parse_specification(path.read_text())
            with conda_store.session() as session:
                build = register_environment(
                    session, conda_store, conda_store.filesystem_namespace, specification, force=False
                )
                build_id = build.id if build is not None else None
        except (OSError, UnicodeDecodeError, CondaStoreError) as error:
            log.warning("watch_paths: %s skipped: %s", path, error)
            continue
        if build_id is not None:
            log.info("watch_paths: %s changed: build %s queued", path, build_id)
            queued.append(build_id)
    return queued
