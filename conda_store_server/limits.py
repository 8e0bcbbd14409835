"""The sizes the service accepts from a user, in one place (the README's "Limits" lists them).

Every value a user stores is returned to every reader (namespace metadata by each namespace
list) or fed to every build (settings): without a bound, one request could slow down or break
the service for everyone. Over a limit is a 413 that names the limit.
"""

from __future__ import annotations

import json
from typing import Any

from conda_store_server.exception import TooLargeError

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_DESCRIPTION_CHARACTERS",
    "MAX_METADATA_BYTES",
    "MAX_ROLE_MAPPINGS",
    "MAX_SETTINGS_BYTES",
    "MAX_SETTING_ITEMS",
    "TooLargeError",
    "check_json_size",
    "check_setting_items",
]

#: Largest request body: room for the largest lockfile (16 MiB, see
#: `specification.MAX_LOCKFILE_BYTES`) once JSON-escaped inside a request.
MAX_BODY_BYTES = 40 * 1024 * 1024
#: Namespace metadata, as JSON: returned with the namespace by every namespace and environment read.
MAX_METADATA_BYTES = 64 * 1024
#: One settings update, as JSON.
MAX_SETTINGS_BYTES = 64 * 1024
#: Entries of one list-valued setting (for example conda_included_packages).
MAX_SETTING_ITEMS = 1000
#: Role mappings of one namespace (v1: entities; each with at most the three roles).
MAX_ROLE_MAPPINGS = 1000
#: An environment's description.
MAX_DESCRIPTION_CHARACTERS = 10_000


def _size_text(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} bytes"


def check_json_size(value: Any, what: str, limit: int) -> None:
    """Refuse `value` when its JSON text is larger than `limit` bytes."""
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > limit:
        raise TooLargeError(f"{what} is {size} bytes as JSON; the limit is {_size_text(limit)}")


def check_setting_items(data: dict[str, Any]) -> None:
    """Refuse list settings longer than MAX_SETTING_ITEMS: every build applies each entry."""
    for key, value in data.items():
        if isinstance(value, list) and len(value) > MAX_SETTING_ITEMS:
            raise TooLargeError(
                f"setting {key} has {len(value)} entries; the limit is {MAX_SETTING_ITEMS}"
            )
