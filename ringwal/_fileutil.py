"""File-system primitives: the only module that fsyncs, renames atomically or locks.

Durability rules applied everywhere through these helpers:

* a file is fsynced before it is renamed into place, and the directory is fsynced after
  every create, rename and unlink, so a name never points at unsynced data and a synced
  name never disappears;
* a failed fsync is never retried: it is raised, and callers latch into a failed state
  (after an fsync error the kernel may already have dropped the dirty pages);
* ``fsync`` is a parameter wherever it is called, so tests can inject a failure.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable

from .errors import ConfigError, LockedError

__all__ = ["DirLock", "FsyncFn", "atomic_write", "fsync_dir", "preallocate", "writer_holds_lock"]

FsyncFn = Callable[[int], None]

LOCK_NAME = "wal.lock"

#: ``writer_holds_lock`` takes a shared lock on wal.lock for a few microseconds; an exclusive
#: attempt landing in that instant tries again this many times, LOCK_RETRY apart, before it
#: believes that another process holds the directory.
LOCK_ATTEMPTS = 5
LOCK_RETRY = 0.002


def fsync_dir(path: str, fsync: FsyncFn = os.fsync) -> None:
    """fsync a directory so that creates, renames and unlinks in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, fsync: FsyncFn = os.fsync) -> None:
    """Replace ``path`` with ``data`` atomically: temp file, fsync, rename, directory fsync.

    Crash windows: before the rename the old file is intact and a ``.tmp`` file may be left
    (removed by the next writer); after the rename but before the directory fsync either the
    old or the new file is what a reboot shows, both complete.
    """
    directory = os.path.dirname(path) or "."
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory, fsync)


def preallocate(fd: int, size: int) -> None:
    """Reserve ``size`` bytes of zero-filled space, so appends do not change the file size
    (fdatasync of an overwrite is far cheaper than of an append). Falls back to a sparse
    extension where the file system cannot preallocate."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)


def check_directory(path: str, *, create: bool) -> str:
    """Resolve ``path`` to an absolute directory, creating it if asked; ConfigError otherwise."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"dir={path!r} exists and is not a directory; point Config.dir at a directory")
    if not os.path.isdir(path):
        if not create:
            raise ConfigError(f"dir={path!r} does not exist")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"dir={path!r} cannot be created: {exc.strerror}") from exc
        parent = os.path.dirname(path)
        fsync_dir(parent)
    if create and not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"dir={path!r} is not writable by this process")
    return path


class DirLock:
    """An exclusive ``flock`` on ``<dir>/wal.lock``: exactly one writer per directory.

    The holder's pid is written into the file so that a refused process can say who holds
    it. The kernel drops the lock when the holder dies, however it dies, so a stale lock file
    never blocks a new writer.
    """

    fd: int | None = None

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, LOCK_NAME)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            _flock_exclusive(fd)
        except BlockingIOError:
            holder = read_lock_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise LockedError(
                f"{directory} is already open for writing by {who} (lock {self.path}); "
                "one writer per directory: attach to it or stop it first",
                path=self.path,
                pid=holder,
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor drops the flock


def read_lock_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def _flock_exclusive(fd: int) -> None:
    for _ in range(LOCK_ATTEMPTS - 1):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(LOCK_RETRY)  # perhaps a reader's writer_holds_lock probe
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def writer_holds_lock(directory: str) -> bool:
    """Whether a process holds ``<directory>/wal.lock`` (a writer, or repair), right now.

    Probes with a non-blocking shared lock, dropped at once; DirLock retries briefly so that
    a writer starting at that instant is not refused.
    """
    try:
        fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops our shared lock
