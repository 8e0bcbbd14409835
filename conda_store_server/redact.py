"""Keeping credentials out of what builds log and store.

Administrators put private index credentials into URLs (`https://user:password@host/simple`).
Those URLs reach uv, and uv's messages, our own log lines and failure reasons may quote them;
logs, lockfiles, exports, status_info and API answers are read by every user who may read the
environment, so everything written there passes through `mask_credentials` first.
"""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["mask_credentials", "strip_credentials"]

#: The userinfo of a URL: after `://`, up to the last `@` before the host's end (a password may
#: hold an unescaped `@`). It stops at characters that end a URL in prose or in uv's messages.
_USERINFO = re.compile(r"://[^/\s'\"`<>()\[\]{}]*@")


def mask_credentials(text: str) -> str:
    """`text` with the userinfo of every URL in it replaced by `****`."""
    return _USERINFO.sub("://****@", text)


def strip_credentials(url: str) -> str:
    """`url` without its userinfo: what a lockfile records, usable by anyone with their own login."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
