"""Ownership and mode of a built prefix (CondaStore.default_uid/gid/permissions)."""

from __future__ import annotations

import os
import stat

from conda_store_server.exception import BuildFailure


def apply_ownership(prefix: str, uid: int | None, gid: int | None, permissions: str | None) -> None:
    """chown/chmod every entry; files only get execute bits the mode grants and they already had.

    The mode is set through hard links into the shared package cache: `default_permissions` is
    a deployment-wide setting, so every environment wants the same mode on a shared file, and
    copying each file instead would give up the shared package store. Ownership is different
    (a file owned by `default_uid` could be changed by that user in every environment), so
    hard links are broken first where the owner must change.
    """
    mode = int(permissions, 8) if permissions else None
    wants_owner = (uid is not None and uid != os.getuid()) or (gid is not None and gid != os.getgid())
    if mode is None and not wants_owner:
        return
    try:
        for root, directories, files in os.walk(prefix):
            for name in directories:
                path = os.path.join(root, name)
                if mode is not None and not os.path.islink(path):
                    os.chmod(path, mode)
                if wants_owner:
                    os.lchown(path, -1 if uid is None else uid, -1 if gid is None else gid)
            for name in files:
                path = os.path.join(root, name)
                info = os.lstat(path)
                if stat.S_ISLNK(info.st_mode):
                    if wants_owner:
                        os.lchown(path, -1 if uid is None else uid, -1 if gid is None else gid)
                    continue
                if mode is not None:
                    executable = info.st_mode & 0o111
                    wanted = (mode & ~0o111) | (mode & executable)
                    if stat.S_IMODE(info.st_mode) != wanted:
                        os.chmod(path, wanted)
                if wants_owner:
                    if info.st_nlink > 1:
                        _unshare(path)
                    os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
        if mode is not None:
            os.chmod(prefix, mode)
        if wants_owner:
            os.chown(prefix, -1 if uid is None else uid, -1 if gid is None else gid)
    except PermissionError as error:
        raise BuildFailure(
            f"Cannot apply default_uid={uid}, default_gid={gid}, default_permissions={permissions} "
            f"to the environment: {error}. The worker needs the right to chown (run it as root or "
            "leave default_uid/default_gid unset)."
        ) from error


def _unshare(path: str) -> None:
    temporary = f"{path}.unshare"
    with open(path, "rb") as source, open(temporary, "wb") as target:
        while chunk := source.read(1 << 20):
            target.write(chunk)
    os.chmod(temporary, stat.S_IMODE(os.lstat(path).st_mode))
    os.replace(temporary, path)
