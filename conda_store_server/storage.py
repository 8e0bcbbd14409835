"""Artifact storage. Writes are atomic (temporary name, then rename), logs are appended.

Storage knows nothing of the database or of permissions: the pipeline records artifacts, and
the HTTP layer checks read permission before it hands out bytes or a URL.
"""

from __future__ import annotations

import datetime
import functools
import io
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from traitlets import Bool, Callable, Dict, List, Unicode, default
from traitlets.config import LoggingConfigurable

from conda_store_server.app import conda_store_dir
from conda_store_server.exception import CondaStoreError

PRESIGNED_URL_MINUTES = 10


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

    def append(self, key: str, value: bytes) -> None:
        """S3 has no append: the object is rewritten. Only logs append, a few KB at a time."""
        existing = self.get(key) if self.exists(key) else b""
        self.set(key, existing + value, "text/plain; charset=utf-8")

    def get(self, key: str) -> bytes:
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
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self.internal_client.remove_object(self.bucket_name, check_key(key))

    def get_url(self, key: str) -> str | None:
        return self.external_client.presigned_get_object(
            self.bucket_name, check_key(key), expires=datetime.timedelta(minutes=PRESIGNED_URL_MINUTES)
        )
