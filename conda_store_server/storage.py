"""Artifact storage. Writes are atomic (temporary name, then rename), logs are appended.

Storage knows nothing of the database or of permissions: the pipeline records artifacts, and
the HTTP layer checks read permission before it hands out bytes or a URL.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from traitlets import Unicode, default
from traitlets.config import LoggingConfigurable

from conda_store_server.app import conda_store_dir


def check_key(key: str) -> str:
    """Keys are relative POSIX paths made by us; refuse anything that could leave the store."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or ".." in path.parts or "\x00" in key:
        raise ValueError(f"invalid storage key {key!r}")
    return key


class Storage(LoggingConfigurable):
    """Interface of an artifact store."""

    def set(self, key: str, value: bytes, content_type: str = "application/octet-stream") -> None:
        raise NotImplementedError

    def fset(
        self,
        key: str,
        filename: str | os.PathLike[str],
        content_type: str = "application/octet-stream",
    ) -> None:
        raise NotImplementedError

    def append(self, key: str, value: bytes) -> None:
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def get_url(self, key: str) -> str | None:
        """A URL the client may be redirected to, or None when the server streams the bytes."""
        raise NotImplementedError

    def local_path(self, key: str) -> Path | None:
        """The file behind a key when it is on this machine (served directly), else None."""
        return None


class LocalStorage(Storage):
    storage_path = Unicode(
        config=True,
        help="Directory in which artifacts are stored. Default: `<user data dir>/conda-store/storage`.",
    )
    storage_url = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Base URL of a static file server that serves storage_path. When set, artifact "
        "routes redirect there after the permission check; when unset (default) the server "
        "streams artifacts itself, so nothing is readable without permission.",
    )

    @default("storage_path")
    def _default_storage_path(self) -> str:
        return os.path.join(conda_store_dir(), "storage")

    def _path(self, key: str) -> Path:
        return Path(self.storage_path) / check_key(key)

    def set(self, key: str, value: bytes, content_type: str = "application/octet-stream") -> None:
        destination = self._path(key)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=destination.parent, prefix=f".{destination.name}.", delete=False
        ) as handle:
            handle.write(value)
        os.replace(handle.name, destination)

    def fset(
        self,
        key: str,
        filename: str | os.PathLike[str],
        content_type: str = "application/octet-stream",
    ) -> None:
        destination = self._path(key)
        destination.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.")
        os.close(fd)
        try:
            shutil.copyfile(filename, temporary)
            os.replace(temporary, destination)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def append(self, key: str, value: bytes) -> None:
        destination = self._path(key)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with open(destination, "ab") as handle:
            handle.write(value)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def get_url(self, key: str) -> str | None:
        if self.storage_url:
            return f"{self.storage_url.rstrip('/')}/{check_key(key)}"
        return None

    def local_path(self, key: str) -> Path | None:
        return self._path(key)
