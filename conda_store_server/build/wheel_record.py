"""The hash format of a Python distribution's RECORD file (PEP 376, as wheels write it).

Installed files that are rewritten after an installer wrote them (script shebangs) must have
their RECORD rows made true again, or tools that verify an installation would flag them.
"""

from __future__ import annotations

import base64
import hashlib

__all__ = ["record_hash"]


def record_hash(content: bytes) -> str:
    """`sha256=<urlsafe base64, unpadded>` of `content`, as a RECORD row holds it."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"
