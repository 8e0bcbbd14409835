"""Prefixes of builds that ended FAILED or CANCELED: moved out of the way at once, deleted after.

Whatever such a build installed is of no use to anyone (it is never linked as an environment,
never measured, never counted against a quota), and a pip failure leaves a whole conda
environment behind: users iterating on a specification would fill the disk with them. Renaming
the prefix into the store's `.discarded-prefixes` directory is instant, so it happens before the
build's final status is committed: until that commit the build is BUILDING, no restore or retry
can start installing into the same prefix, and the rename cannot take a newer attempt's files.
The deletion (seconds for a large prefix) follows outside the transaction, and each storage
lifecycle pass empties whatever a crash left in the directory.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid

__all__ = ["DIRECTORY_NAME", "delete", "delete_in_background", "discard", "empty"]

#: Inside store_directory: the same filesystem as the prefixes, so that a rename moves them.
DIRECTORY_NAME = ".discarded-prefixes"


def discard(store_directory: str, prefix: str) -> str | None:
    """Move `prefix` into the store's discarded directory; where it went, or None.

    None when there is nothing to move, or when the prefix is not inside the store (as for
    `service.remove_prefix`, nothing outside it is ever touched). A prefix on another
    filesystem than the store (a `build_directory` mounted elsewhere) cannot be renamed there
    and is deleted in place instead.
    """
    store = os.path.realpath(store_directory)
    target = os.path.realpath(prefix)
    if not target.startswith(store + os.sep) or not os.path.isdir(target):
        return None
    trash = os.path.join(store, DIRECTORY_NAME)
    os.makedirs(trash, exist_ok=True)
    destination = os.path.join(trash, uuid.uuid4().hex)
    try:
        os.rename(target, destination)
    except FileNotFoundError:
        return None
    except OSError:
        shutil.rmtree(target, ignore_errors=True)
        return None
    return destination


def delete(discarded: str | None) -> None:
    if discarded is not None:
        shutil.rmtree(discarded, ignore_errors=True)


def delete_in_background(discarded: str | None) -> None:
    """For a supervisor: its loop sends heartbeats and must not wait for a large tree to go."""
    if discarded is not None:
        threading.Thread(
            target=delete, args=(discarded,), name="delete-discarded-prefix", daemon=True
        ).start()


def empty(store_directory: str) -> int:
    """Delete every discarded prefix left in the store; how many there were."""
    trash = os.path.join(store_directory, DIRECTORY_NAME)
    try:
        entries = os.listdir(trash)
    except FileNotFoundError:
        return 0
    for name in entries:
        delete(os.path.join(trash, name))
    return len(entries)
