"""Durable writes: files replaced atomically, data fsynced before what depends on it."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CacheWriteError


def disk_error(what: str, exc: OSError | RuntimeError) -> CacheWriteError:
    """A one-sentence CacheWriteError for a failed write of ``what`` (disk full named as such)."""
    errno = getattr(exc, "errno", None)
    if errno == 28 or "No space left" in str(exc):
        return CacheWriteError(f"The disk is full while writing {what}; free space and resume.")
    reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
    return CacheWriteError(f"Cannot write {what}: {reason}.")


def fsync_dir(path: Path) -> None:
    # Some filesystems (and Windows) cannot open or fsync a directory; the rename is still done.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` (created or truncated) and, if ``durable``, fsync it before returning."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        if durable:
            os.fsync(f.fileno())


def write_atomic(path: Path, data: bytes, *, read_only: bool = False) -> None:
    """Replace ``path`` with ``data`` so readers see the old file or the new one, never half.

    ``read_only`` leaves the file without write permission (POSIX), so a program
    that opened it for update cannot write its own copy back over it.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_synced(tmp, data)
        if read_only and os.name == "posix":
            os.chmod(tmp, 0o444)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
