"""One writer per cache: an OS file lock on ``CACHE_DIR/.lock``.

The OS releases the lock when the holder dies (even by SIGKILL), so a crash never
leaves a stale lock; the file's content only says who holds it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from ..errors import CacheLockedError, CacheWriteError

LOCK_NAME = ".lock"

if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(info["started"]))
        return f"process {info['pid']} on {info['host']}, started {started}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class CacheLock:
    """Context manager holding the cache's write lock; raises CacheLockedError if taken."""

    def __init__(self, cache_dir: Path):
        self.path = Path(cache_dir) / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> CacheLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CacheWriteError(
                f"Cannot create files in the cache folder {self.path.parent}: {exc.strerror}."
            ) from exc
        if not _try_lock(fd):
            os.close(fd)
            raise CacheLockedError(
                f"Another run is writing to this cache ({_holder_text(self.path)}); wait for it or cancel it."
            )
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        # Written after byte 0 is locked; readers on Windows read around the locked byte.
        os.ftruncate(fd, 0)
        os.write(fd, info.encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
                _unlock(self.fd)
            finally:
                os.close(self.fd)
                self.fd = None


def holder(cache_dir: Path) -> str | None:
    """Who holds the cache's lock right now, or None if no run is writing it."""
    path = Path(cache_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        if _try_lock(fd):
            _unlock(fd)
            return None
        return _holder_text(path)
    finally:
        os.close(fd)
