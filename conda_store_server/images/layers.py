"""Reproducible image layers: the same files give the same bytes, so the same digest.

A layer is written from a list of `LayerFile`s (paths inside the image). Every entry is
normalised (sorted, mtime 0, owner root, modes 0644/0755, parent directories listed), and the
gzip stream has no name and no timestamp, so two builds of one package on any worker produce one
blob, which storage, registries and users' caches then hold once.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
# gzip level: the archive format's default (6) costs twice the time of 4 for 3 % fewer bytes on
# conda packages, and the image step must keep pace with conda-pack.
COMPRESS_LEVEL = 4


@dataclass(frozen=True)
class LayerFile:
    """One entry of a layer: `path` inside the image, and where its bytes come from.

    `source` is a file or symlink on this machine; `content` replaces its bytes (a file whose
    prefix was rewritten for the image)."""

    path: str
    source: Path
    content: bytes | None = None


@dataclass(frozen=True)
class Layer:
    """A written layer blob: `digest` of the gzip stream, `diff_id` of the tar inside it."""

    digest: str
    diff_id: str
    size: int
    path: Path

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": LAYER_MEDIA_TYPE, "digest": self.digest, "size": self.size}


class _HashingWriter(io.RawIOBase):
    """Counts and hashes what passes through to `target` (the tar on its way to gzip, and the
    gzip stream on its way to disk), so a layer is read and written once."""

    def __init__(self, target: io.RawIOBase | io.BufferedIOBase | gzip.GzipFile) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.sha256.update(data)
        self.size += len(data)
        self.target.write(data)
        return len(data)


def write_layer(files: Iterable[LayerFile], destination: Path) -> Layer:
    """Write `files` as one gzip-compressed tar layer at `destination`."""
    entries = sorted(files, key=lambda entry: entry.path)
    with open(destination, "wb") as raw:
        compressed = _HashingWriter(raw)
        with gzip.GzipFile(
            filename="", mode="wb", fileobj=compressed, compresslevel=COMPRESS_LEVEL, mtime=0
        ) as gz:
            uncompressed = _HashingWriter(gz)
            with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                written_directories: set[str] = set()
                for entry in entries:
                    _add_parents(tar, entry.path, written_directories)
                    _add_entry(tar, entry, written_directories)
    return Layer(
        digest=f"sha256:{compressed.sha256.hexdigest()}",
        diff_id=f"sha256:{uncompressed.sha256.hexdigest()}",
        size=compressed.size,
        path=destination,
    )


def _member(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_parents(tar: tarfile.TarFile, path: str, written: set[str]) -> None:
    """Each layer lists the directories above its files, so unpacking it alone gives them
    root-owned 0755 modes instead of whatever the unpacker defaults to."""
    for parent in reversed(PurePosixPath(path).parents):
        name = str(parent).lstrip("/")
        if name and name not in written:
            written.add(name)
            tar.addfile(_member(name, tarfile.DIRTYPE, 0o755))


def _add_entry(tar: tarfile.TarFile, entry: LayerFile, written_directories: set[str]) -> None:
    name = entry.path.lstrip("/")
    status = os.lstat(entry.source)
    if stat.S_ISLNK(status.st_mode):
        info = _member(name, tarfile.SYMTYPE, 0o777)
        info.linkname = os.readlink(entry.source)
        tar.addfile(info)
    elif stat.S_ISDIR(status.st_mode):
        if name not in written_directories:
            written_directories.add(name)
            tar.addfile(_member(name, tarfile.DIRTYPE, 0o755))
    else:
        mode = 0o755 if status.st_mode & 0o111 else 0o644
        info = _member(name, tarfile.REGTYPE, mode)
        if entry.content is not None:
            info.size = len(entry.content)
            tar.addfile(info, io.BytesIO(entry.content))
        else:
            info.size = status.st_size
            with open(entry.source, "rb") as source:
                tar.addfile(info, source)
