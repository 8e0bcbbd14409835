"""The storage lifecycle's settings (retention and quotas): their names and valid ranges.

Pure: shared by the CondaStore traits, the layered settings and their API, so a value refused
in a configuration file is refused the same way, with the same words, in a request.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["LIFECYCLE_KEYS", "NAMESPACE_LIMIT_KEYS", "check_lifecycle_value"]

#: key -> (accepts fractions, smallest allowed, whether the smallest is excluded, meaning)
_RANGES: dict[str, tuple[bool, float, bool, str]] = {
    "build_retention_count": (False, 1, False, "completed builds kept per environment"),
    "build_retention_days": (True, 0, True, "days a completed build stays live"),
    "max_environments": (False, 0, False, "environments per namespace"),
    "max_storage_bytes": (False, 0, False, "bytes of live prefixes per namespace"),
}
LIFECYCLE_KEYS = frozenset(_RANGES)
#: Limits of a whole namespace: set globally or per namespace, never on one environment.
NAMESPACE_LIMIT_KEYS = frozenset({"max_environments", "max_storage_bytes"})


def check_lifecycle_value(key: str, value: Any) -> int | float | None:
    """The value if it is valid for `key` (None: no limit); else ValueError saying what is allowed."""
    if value is None:
        return None
    fractional, lowest, exclusive, meaning = _RANGES[key]
    kinds = (int, float) if fractional else (int,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "a number" if fractional else "an integer"
        raise ValueError(f"{key} ({meaning}) must be {kind} or null, not {value!r}")
    if not math.isfinite(value) or value < lowest or (exclusive and value == lowest):
        bound = f"greater than {lowest:g}" if exclusive else f"at least {lowest:g}"
        raise ValueError(f"{key} ({meaning}) must be {bound} or null, not {value!r}")
    return value
