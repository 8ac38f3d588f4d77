"""File-system primitives: the only module that fsyncs, renames atomically or locks.

Durability rules applied everywhere through these helpers:

* a file is fsynced before it is renamed into place, and the directory is fsynced after
  every create, rename and unlink, so a name never points at unsynced data and a synced
  name never disappears;
* a failed fsync is never retried: it is raised, and callers latch into a failed state
  (after an fsync error the kernel may already have dropped the dirty pages);
* ``fsync`` is a parameter wherever it is called, so tests can inject a failure.

Locks: ``DirLock`` (``flock`` on ``wal.lock``, one writer per directory) and ``ByteLocks``
(open-file-description byte-range locks, many independent locks in one file, for the ring).
Neither ever blocks: every attempt is non-blocking, retried against a deadline where a wait
makes sense, so a process stopped (SIGSTOP, a debugger) while holding one delays others by at
most that deadline and then they get a typed error naming the file.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import time
import weakref
from collections.abc import Callable

from .errors import ConfigError, LockedError, LockTimeoutError

__all__ = [
    "ByteLocks",
    "DirLock",
    "FsyncFn",
    "atomic_write",
    "fsync_dir",
    "preallocate",
    "start_writeback",
    "writer_holds_lock",
]

FsyncFn = Callable[[int], None]
#: ``os.fdatasync``; ``os.fsync`` where the OS has none (macOS), so that ``import ringwal``
#: works there and ``open``/``serve`` can refuse the platform with a typed error.
fdatasync: FsyncFn = getattr(os, "fdatasync", os.fsync)

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


_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    _sync_file_range.restype = ctypes.c_int


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing ``nbytes`` at ``offset`` of a file to the disk without waiting for it
    (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; RocksDB's ``bytes_per_sync``). It makes
    nothing durable (no device flush, no metadata) and reports no earlier writeback error,
    which the next fsync still does; it only leaves less for that fsync to write. A no-op
    where the C library has no ``sync_file_range``. Raises OSError when the call fails."""
    if _sync_file_range is None or nbytes <= 0:
        return
    if _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sync_file_range: {os.strerror(err)}")


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


# --------------------------------------------------------------------------- byte-range locks

#: ``struct flock`` for the F_OFD_* commands, in the platform's native layout (l_type, l_whence,
#: l_start, l_len, l_pid), padded to its alignment as the C struct is (32 bytes on x86-64).
_FLOCK = struct.Struct("hhqqi0q")
#: First and longest pause between attempts of ``ByteLocks.lock``, seconds.
_RETRY_FIRST = 0.0005
_RETRY_MAX = 0.02

_open_byte_locks: weakref.WeakSet[ByteLocks] = weakref.WeakSet()


class ByteLocks:
    """Exclusive byte-range locks on one lock file, as open-file-description (OFD) locks.

    Each byte of the file is an independent lock; the file itself stays empty. Why OFD locks
    (``fcntl`` ``F_OFD_SETLK``) rather than ``flock`` or classic POSIX locks:

    * they belong to the open file description, like ``flock``: a lock taken through one
      ``open`` conflicts with every other ``open`` of the file, in this process or another,
      and the kernel drops it when the last descriptor of that description closes, however
      the process ends (classic POSIX locks are per process and dropped by *any* close);
    * they are kernel state on the file's inode, so they work across PID namespaces (a writer
      and producers in separate containers sharing the volume) and need no pid to judge;
    * unlike ``flock`` they lock byte ranges, so one file holds the ring's claim lock, its
      writer's lock and one lock per lane, and a range of lanes is taken in one call;
    * ``F_OFD_GETLK`` *tests* a range without taking it, so a liveness probe never disturbs
      the holder or a process about to take the lock (a ``flock`` probe has to take it).

    A ``fork`` duplicates the descriptor and the child would share every lock of this
    object: a child that kept it would keep a lane "alive" after its parent died. So every
    ByteLocks is closed in a forked child (``os.register_at_fork``) before other code runs
    there; closing the child's copy leaves the parent's locks in place, since the parent's
    descriptor still refers to the description. A later use in the child reopens the file
    (a new description, holding nothing).

    The file is opened read-write (an exclusive lock needs it); when that is refused (a
    read-only mount, another user's file) it is opened read-only, which still serves
    ``held_elsewhere``. ``close`` drops every lock this object holds; idempotent.
    """

    _fd = -1

    def __init__(self, path: str, mode: int = 0o644) -> None:
        self.path = path
        self._mode = mode
        _open_byte_locks.add(self)

    def _file(self) -> int:
        if self._fd < 0:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self._mode)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        return self._fd

    def _fcntl(self, cmd: int, kind: int, start: int, length: int) -> int:
        res = fcntl.fcntl(self._file(), cmd, _FLOCK.pack(kind, os.SEEK_SET, start, length, 0))
        got: int = _FLOCK.unpack(res)[0]
        return got

    def try_lock(self, start: int, length: int = 1) -> bool:
        """Take bytes ``[start, start + length)`` exclusively if no other description holds any
        of them; False (at once) otherwise. Taking a range this object already holds is a no-op."""
        try:
            self._fcntl(fcntl.F_OFD_SETLK, fcntl.F_WRLCK, start, length)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            if exc.errno == errno.EBADF:  # opened read-only: an exclusive lock needs write access
                raise PermissionError(
                    errno.EACCES, f"{self.path} is not writable by this process, so it cannot take its locks"
                ) from None
            raise
        return True

    def lock(self, start: int, length: int, timeout: float, what: str) -> None:
        """``try_lock`` until it succeeds or ``timeout`` seconds pass; then LockTimeoutError
        saying that another process holds ``what`` (bytes ``start``.. of this file)."""
        deadline = time.monotonic() + timeout
        pause = _RETRY_FIRST
        while not self.try_lock(start, length):
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockTimeoutError(
                    f"{what} (byte {start} of {self.path}) stayed held by another process for {timeout:g}s; "
                    "a process holding it is stopped (SIGSTOP, a debugger) or hung: resume or kill it",
                    path=self.path,
                )
            time.sleep(min(pause, left))
            pause = min(pause * 2, _RETRY_MAX)

    def unlock(self, start: int, length: int = 1) -> None:
        """Release bytes ``[start, start + length)`` held by this object (no-op where not held)."""
        if self._fd >= 0:
            self._fcntl(fcntl.F_OFD_SETLK, fcntl.F_UNLCK, start, length)

    def held_elsewhere(self, start: int, length: int = 1) -> bool:
        """Whether another open file description holds any byte of the range, right now.
        Takes nothing. A range held through *this* object does not count."""
        try:
            return self._fcntl(fcntl.F_OFD_GETLK, fcntl.F_WRLCK, start, length) != fcntl.F_UNLCK
        except FileNotFoundError:
            return False  # no lock file: nobody ever locked anything in it

    def count_held_elsewhere(self, start: int, length: int) -> int:
        """How many bytes of ``[start, start + length)`` other open file descriptions hold
        right now. Takes nothing: ``F_OFD_GETLK`` reports one conflicting lock at a time, so
        this asks again after each one it reports (one call per lock, plus one)."""
        n = 0
        end = start + length
        pos = start
        while pos < end:
            try:
                res = fcntl.fcntl(
                    self._file(), fcntl.F_OFD_GETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, pos, end - pos, 0)
                )
            except FileNotFoundError:
                return n
            kind, _whence, at, size, _pid = _FLOCK.unpack(res)
            if kind == fcntl.F_UNLCK:
                break
            stop = end if size == 0 else min(end, at + size)  # 0: to the end of the file
            n += stop - max(at, pos)
            pos = stop
        return n

    def close(self) -> None:
        """Close the file: drops every lock held through this object. Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def _forget_in_child(self) -> None:
        # Closing the child's copy of the descriptor leaves the parent's locks in place.
        self.close()


def _close_byte_locks_in_child() -> None:
    for locks in list(_open_byte_locks):
        locks._forget_in_child()


os.register_at_fork(after_in_child=_close_byte_locks_in_child)
