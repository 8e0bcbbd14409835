"""Artifact storage. Writes are atomic (temporary name, then rename), logs are appended.

Storage knows nothing of the database or of permissions: the pipeline records artifacts, and
the HTTP layer checks read permission before it hands out bytes or a URL.
"""

from __future__ import annotations

import datetime
import functools
import io
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from traitlets import Bool, Callable, Dict, List, Unicode, default
from traitlets.config import LoggingConfigurable

from conda_store_server.app import conda_store_dir
from conda_store_server.exception import CondaStoreError

PRESIGNED_URL_MINUTES = 10
# a sealed log: an empty marker beside it (LocalStorage), or the composed object's record (S3)
SEALED_SUFFIX = ".sealed"
# S3 logs are appended as numbered part objects under `<key>.parts/`, composed when sealed
PARTS_SUFFIX = ".parts/"
LOG_READ_ATTEMPTS = 5


def check_key(key: str) -> str:
    """Keys are relative POSIX paths made by us; refuse anything that could leave the store."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or ".." in path.parts or "\x00" in key:
        raise ValueError(f"invalid storage key {key!r}")
    return key


@dataclass(frozen=True)
class LogRead:
    """A read of a log from some offset: its bytes, and whether the log was complete."""

    data: bytes
    sealed: bool


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
        """Add `value` at the end of a log: one batch of lines, never a rewrite of what is there."""
        raise NotImplementedError

    def read_log(self, key: str, offset: int = 0) -> LogRead:
        """The bytes of a log from byte `offset` on, and whether the log is sealed (complete).

        `sealed` is observed before the bytes are read: a sealed answer holds the whole rest.
        """
        raise NotImplementedError

    def seal_log(self, key: str) -> None:
        """Mark a log complete (its build has ended and nothing more will be appended)."""
        raise NotImplementedError

    def log_is_sealed(self, key: str) -> bool:
        """True when the log is complete and stored whole at `key` (servable as any artifact)."""
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

    def read_log(self, key: str, offset: int = 0) -> LogRead:
        path = self._path(key)
        sealed = self._sealed_marker(path).exists()
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                return LogRead(handle.read(), sealed)
        except FileNotFoundError:
            return LogRead(b"", sealed)

    def seal_log(self, key: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._sealed_marker(path).touch()

    def log_is_sealed(self, key: str) -> bool:
        return self._sealed_marker(self._path(key)).exists()

    @staticmethod
    def _sealed_marker(path: Path) -> Path:
        return path.with_name(path.name + SEALED_SUFFIX)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        self._sealed_marker(path).unlink(missing_ok=True)

    def get_url(self, key: str) -> str | None:
        if self.storage_url:
            return f"{self.storage_url.rstrip('/')}/{check_key(key)}"
        return None

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


class S3Storage(Storage):
    """Artifacts in an S3 bucket (AWS, MinIO, ...) through the minio SDK.

    Users download through presigned URLs on `external_endpoint`, handed out only after the
    server's permission check; server and workers talk to `internal_endpoint`.
    """

    internal_endpoint = Unicode(
        config=True,
        help="host[:port] of the S3 endpoint the server and workers use to read and write "
        "artifacts, e.g. minio:9000 or s3.amazonaws.com.",
    )
    external_endpoint = Unicode(
        config=True,
        help="host[:port] of the S3 endpoint users reach: presigned download URLs point there, "
        "e.g. s3.example.org or s3.amazonaws.com.",
    )
    access_key = Unicode(config=True, help="Access key of the bucket (unless `credentials` is set).")
    secret_key = Unicode(config=True, help="Secret key of the bucket (unless `credentials` is set).")
    region = Unicode("us-east-1", config=True, help="Region of the bucket.")
    bucket_name = Unicode("conda-store", config=True, help="Bucket of the artifacts; created if missing.")
    internal_secure = Bool(True, config=True, help="https (True) or http (False) for the internal endpoint.")
    external_secure = Bool(
        True, config=True, help="https (True) or http (False) in the URLs handed to users."
    )
    credentials = Callable(
        None,
        allow_none=True,
        config=True,
        help="A minio credentials provider class (e.g. minio.credentials.IamAwsProvider), "
        "instantiated with credentials_args and credentials_kwargs; overrides the keys.",
    )
    credentials_args = List([], config=True, help="Positional arguments of the credentials provider.")
    credentials_kwargs = Dict({}, config=True, help="Keyword arguments of the credentials provider.")

    def _client(self, endpoint: str, secure: bool) -> Any:
        from minio import Minio

        provider = (
            self.credentials(*self.credentials_args, **self.credentials_kwargs) if self.credentials else None
        )
        # The region is given so that presigning never asks the endpoint for it.
        return Minio(
            endpoint,
            access_key=None if provider else self.access_key,
            secret_key=None if provider else self.secret_key,
            region=self.region,
            secure=secure,
            credentials=provider,
        )

    @functools.cached_property
    def internal_client(self) -> Any:
        if not self.internal_endpoint:
            raise CondaStoreError("c.S3Storage.internal_endpoint is not configured")
        client = self._client(self.internal_endpoint, self.internal_secure)
        try:
            if not client.bucket_exists(self.bucket_name):
                client.make_bucket(self.bucket_name, location=self.region)
        except Exception as error:
            raise CondaStoreError(
                f"S3 storage at {self.internal_endpoint} (bucket {self.bucket_name}) is not usable: {error}"
            ) from error
        return client

    @functools.cached_property
    def external_client(self) -> Any:
        return self._client(self.external_endpoint or self.internal_endpoint, self.external_secure)

    def set(self, key: str, value: bytes, content_type: str = "application/octet-stream") -> None:
        self.internal_client.put_object(
            self.bucket_name, check_key(key), io.BytesIO(value), len(value), content_type=content_type
        )

    def fset(
        self,
        key: str,
        filename: str | os.PathLike[str],
        content_type: str = "application/octet-stream",
    ) -> None:
        # streamed in parts: archives of several GB never sit in memory
        self.internal_client.fput_object(
            self.bucket_name, check_key(key), str(filename), content_type=content_type
        )

    # Logs. S3 has no append, and rewriting the object per batch costs the whole log each time:
    # a batch is a part object `<key>.parts/<number>-<random>`, and a read concatenates the
    # object at `key` (if any) and the parts in order. Sealing composes them into the object at
    # `key` (one write of the whole log, once) and records in `<key>.sealed` how large the
    # composed object is and the last part it holds, before it deletes those parts: a reader
    # that lists the log while it is sealed never counts a part twice.
    def append(self, key: str, value: bytes) -> None:
        listing = self._log_listing(key)
        # after the parts there are, and after those a seal composed (and deleted) if any
        names = [*listing.parts, (listing.sealed or {}).get("through") or ""]
        number = 1 + max((_part_number(name) for name in names if name), default=-1)
        part = f"{check_key(key)}{PARTS_SUFFIX}{number:012d}-{uuid.uuid4().hex[:8]}"
        self.internal_client.put_object(
            self.bucket_name, part, io.BytesIO(value), len(value), content_type="text/plain; charset=utf-8"
        )

    def read_log(self, key: str, offset: int = 0) -> LogRead:
        from minio.error import S3Error

        for _ in range(LOG_READ_ATTEMPTS):
            listing = self._log_listing(key)
            try:
                return LogRead(self._read_pieces(listing.pieces(), offset), listing.sealed is not None)
            except S3Error as error:
                if error.code not in ("NoSuchKey", "NoSuchObject", "NotFound"):
                    raise
                # a part was deleted by a seal between the listing and the read: list again
        raise CondaStoreError(f"the log {key} kept changing while it was read; try again")

    def seal_log(self, key: str) -> None:
        listing = self._log_listing(key)
        if listing.composed() and not listing.parts_after_seal():
            # sealed already; parts left by a seal that was interrupted are removed
            for name in listing.parts:
                self.internal_client.remove_object(self.bucket_name, name)
            return
        data = self._read_pieces(listing.pieces(), 0)
        last = max([*listing.parts, (listing.sealed or {}).get("through") or ""])
        marker = json.dumps({"size": len(data), "through": last}).encode()
        # the record first: until the composed object replaces the old one (whose size differs),
        # readers ignore it and read the parts
        record = check_key(key) + SEALED_SUFFIX
        self.internal_client.put_object(self.bucket_name, record, io.BytesIO(marker), len(marker))
        self.internal_client.put_object(
            self.bucket_name, key, io.BytesIO(data), len(data), content_type="text/plain; charset=utf-8"
        )
        for name in listing.parts:
            if name <= last:
                self.internal_client.remove_object(self.bucket_name, name)

    def log_is_sealed(self, key: str) -> bool:
        listing = self._log_listing(key)
        return listing.composed() and not listing.parts_after_seal()

    def _log_listing(self, key: str) -> _LogListing:
        """One LIST request: the object at `key`, its parts and its seal record."""
        check_key(key)
        listing = _LogListing(key)
        for item in self.internal_client.list_objects(self.bucket_name, prefix=key, recursive=True):
            name = item.object_name
            if name == key:
                listing.base_size = item.size
            elif name.startswith(key + PARTS_SUFFIX):
                listing.parts[name] = item.size
            elif name == key + SEALED_SUFFIX:
                listing.sealed = self._seal_record(name)
        return listing

    def _seal_record(self, name: str) -> dict[str, Any]:
        from minio.error import S3Error

        try:
            response = self.internal_client.get_object(self.bucket_name, name)
        except S3Error as error:
            if error.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return {}
            raise
        try:
            record = json.loads(response.read() or b"{}")
        except ValueError:
            record = {}
        finally:
            response.close()
            response.release_conn()
        return record if isinstance(record, dict) else {}

    def _read_pieces(self, pieces: list[tuple[str, int]], offset: int) -> bytes:
        """Bytes from `offset` of the concatenated (name, size) pieces, each read only to its
        listed size (a composed object may have replaced a smaller one meanwhile)."""
        chunks = []
        start = 0
        for name, size in pieces:
            end = start + size
            if end > offset and size > 0:
                skip = max(offset - start, 0)
                response = self.internal_client.get_object(
                    self.bucket_name, name, offset=skip, length=size - skip
                )
                try:
                    chunks.append(response.read())
                finally:
                    response.close()
                    response.release_conn()
            start = end
        return b"".join(chunks)

    def get(self, key: str) -> bytes:
        listing = self._log_listing(key)
        if listing.parts or listing.sealed is not None:
            return self.read_log(key).data
        response = self.internal_client.get_object(self.bucket_name, check_key(key))
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.internal_client.stat_object(self.bucket_name, check_key(key))
        except S3Error as error:
            if error.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return bool(self._log_listing(key).parts)
            raise
        return True

    def delete(self, key: str) -> None:
        listing = self._log_listing(key)
        for name in listing.parts:
            self.internal_client.remove_object(self.bucket_name, name)
        if listing.sealed is not None:
            self.internal_client.remove_object(self.bucket_name, key + SEALED_SUFFIX)
        self.internal_client.remove_object(self.bucket_name, check_key(key))

    def get_url(self, key: str) -> str | None:
        return self.external_client.presigned_get_object(
            self.bucket_name, check_key(key), expires=datetime.timedelta(minutes=PRESIGNED_URL_MINUTES)
        )


def _part_number(name: str) -> int:
    return int(name.rpartition("/")[2].partition("-")[0])


@dataclass
class _LogListing:
    """What one LIST of an S3 log found: the object at its key, its parts, its seal record."""

    key: str
    base_size: int | None = None
    parts: dict[str, int] = field(default_factory=dict)  # name -> size; names sort in order
    sealed: dict[str, Any] | None = None

    def composed(self) -> bool:
        """True when the object at the key is the one the seal record describes."""
        return self.base_size is not None and (self.sealed or {}).get("size") == self.base_size

    def parts_after_seal(self) -> list[str]:
        through = (self.sealed or {}).get("through", "")
        return sorted(name for name in self.parts if name > through)

    def pieces(self) -> list[tuple[str, int]]:
        """The objects whose concatenation is the log, in order, with their sizes.

        A seal record whose size is the object's says the object holds the parts up to
        `through`: those are skipped (they are about to be deleted). Otherwise the object is an
        earlier one and every part follows it.
        """
        pieces = [(self.key, self.base_size)] if self.base_size is not None else []
        names = self.parts_after_seal() if self.composed() else sorted(self.parts)
        return [*pieces, *((name, self.parts[name]) for name in names)]
