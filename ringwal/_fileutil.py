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
import grp
import logging
import os
import pwd
import stat
import struct
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from .errors import AccessError, ConfigError, LockedError, LockTimeoutError

__all__ = [
    "Access",
    "ByteLocks",
    "DirLock",
    "FsyncFn",
    "atomic_write",
    "check_directory",
    "create_file",
    "describe_owner",
    "fsync_dir",
    "group_id",
    "preallocate",
    "start_writeback",
    "writer_holds_lock",
]

FsyncFn = Callable[[int], None]
#: ``os.fdatasync``; ``os.fsync`` where the OS has none (macOS), so that ``import ringwal``
#: works there and ``open``/``serve`` can refuse the platform with a typed error.
fdatasync: FsyncFn = getattr(os, "fdatasync", os.fsync)

log = logging.getLogger("ringwal")

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
    fd = create_file(tmp, os.O_WRONLY | os.O_TRUNC)
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


# --------------------------------------------------------------------------- who may use a log


@dataclass(frozen=True)
class Access:
    """Who may use a log directory, read from the directory itself (the one source of truth,
    so that every process, whatever its Config, agrees; README "Trust model"):

    * its owner and root always (they control the directory anyway);
    * its group too when the directory is group-writable (``Config.group`` makes it so:
      ``2770``); a group-readable one (``750``) lets the group read the files, not append.

    ``file_mode`` is the mode of every file ringwal creates in it: owner read-write, the
    directory's group bits (no execute), never anything for others. ``shm_mode`` is the mode
    of the shared-memory ring and semaphore: ``0660`` when the group may append, else
    ``0600``. New files and shared objects are given the directory's group when a group bit
    is set (a directory without the setgid bit would give them the creator's group).
    """

    directory: str
    uid: int
    gid: int
    mode: int

    @classmethod
    def of(cls, directory: str, st: os.stat_result | None = None) -> Access:
        st = os.stat(directory) if st is None else st
        return cls(directory, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))

    @property
    def shared(self) -> bool:
        """The directory's group may append (it is group-writable)."""
        return bool(self.mode & 0o020)

    @property
    def file_mode(self) -> int:
        return 0o600 | (self.mode & 0o060)

    @property
    def shm_mode(self) -> int:
        return 0o660 if self.shared else 0o600

    def trusted_users(self) -> set[int]:
        return {os.geteuid(), 0, self.uid}

    def apply(self, fd: int, mode: int) -> None:
        """Give a file (or shared object) this process just created exactly ``mode`` (the
        umask narrowed what ``open`` gave it) and, when ``mode`` has group bits, the
        directory's group. A group this process may not give (not a member) leaves the
        object private (0600) rather than readable by the creator's own group."""
        if mode & 0o070 and os.fstat(fd).st_gid != self.gid:
            try:
                os.fchown(fd, -1, self.gid)
            except PermissionError:
                log.warning(
                    "%s: this process (uid %d) may not give files the directory's group %s; "
                    "creating them private (0600): its group cannot use them",
                    self.directory, os.geteuid(), _group_name(self.gid),
                )  # fmt: skip
                mode = 0o600
        os.fchmod(fd, mode)

    def problem(self, st: os.stat_result) -> str:
        """Why a shared object (the ring, its semaphore) with this owner and mode must not be
        trusted by processes of this log, or "" when it may be.

        Trusted: an object owned by a trusted user (us, root, the directory's owner), or one
        whose group is the directory's group while that group may append (only a member or
        root can give an object that group). Never: any permission for others, or group
        write for a group that may not append here.
        """
        mode = stat.S_IMODE(st.st_mode)
        why = []
        group_ok = self.shared and st.st_gid == self.gid
        if st.st_uid not in self.trusted_users() and not group_ok:
            why.append(
                f"it belongs to {_user_name(st.st_uid)}, who is not this process's user, root, or the owner of "
                f"{self.directory}" + ("" if self.shared else " (the directory gives no group access)")
            )
        if mode & 0o007:
            why.append(f"it is open to every local user (mode {mode:04o})")
        elif mode & 0o020 and not group_ok:
            why.append(f"its group {_group_name(st.st_gid)} may write it (mode {mode:04o}) but may not append here")
        return "; ".join(why)


def describe_owner(st: os.stat_result) -> str:
    """``owner alice (uid 1000), group staff (gid 50), mode 0660`` for error messages."""
    return f"owner {_user_name(st.st_uid)}, group {_group_name(st.st_gid)}, mode {stat.S_IMODE(st.st_mode):04o}"


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _group_name(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"


def group_id(group: str) -> int:
    """The gid of ``Config.group`` (a group name, or a number); ConfigError when unknown."""
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise ConfigError(f"group={group!r} is not a group on this machine (getent group {group})") from None


def create_file(path: str, flags: int) -> int:
    """Open ``path`` with ``flags`` (never following a symbolic link), creating it when it is
    missing with the mode and group its directory gives (``Access.file_mode``), whatever
    the umask. Returns the descriptor.

    Created with O_EXCL, then given its mode with fchmod: an existing file is opened as it
    is. A process opening it in the microseconds between the create and the fchmod sees the
    bits the umask left, never more.
    """
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    access = Access.of(os.path.dirname(path) or ".")
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, access.file_mode)
    except FileExistsError:
        return os.open(path, flags & ~os.O_CREAT)
    try:
        access.apply(fd, access.file_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


_warned: set[str] = set()


def check_directory(path: str, *, create: bool, group: str | None = None) -> str:
    """Resolve ``path`` to an absolute directory, creating it if asked; ConfigError otherwise.

    A directory it creates is private, ``0700``, whatever the umask; with ``group`` (a group
    name, ``Config.group``) it is ``2770`` and belongs to that group, so that the group's
    members may append and read (and files made in it inherit the group). The parents it
    creates get the usual mode (umask).

    An existing directory is checked: writable by others (any local user could plant or
    replace files) is refused with AccessError; readable or searchable by others is
    warned about once (logs made by ringwal before 0.2 were ``0755`` with ``0644`` files);
    with ``group``, a directory not of that group or without group read-write-search is a
    ConfigError that names the commands that fix it.
    """
    path = os.path.abspath(path)
    gid = group_id(group) if group is not None else None
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"dir={path!r} exists and is not a directory; point Config.dir at a directory")
    if not os.path.isdir(path):
        if not create:
            raise ConfigError(f"dir={path!r} does not exist")
        parent = os.path.dirname(path)
        made = False
        try:
            os.makedirs(parent, exist_ok=True)
            try:
                os.mkdir(path, 0o700)
                made = True
            except FileExistsError:
                pass  # another process made it first: checked below like any existing directory
        except OSError as exc:
            raise ConfigError(f"dir={path!r} cannot be created: {exc.strerror}") from exc
        if made:
            try:
                # Crash window: a directory left 0700 (private) by a crash here, which a
                # ``group`` open then reports with the commands that finish the job.
                if gid is not None:
                    os.chown(path, -1, gid)
                os.chmod(path, 0o2770 if gid is not None else 0o700)
            except OSError as exc:
                raise ConfigError(
                    f"dir={path!r}: cannot give it group {group!r} (this process must be a member): {exc.strerror}"
                ) from exc
        fsync_dir(parent)
    _check_existing(path, group, gid)
    if create and not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"dir={path!r} is not writable by this process")
    return path


def _check_existing(path: str, group: str | None, gid: int | None) -> None:
    st = os.stat(path)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o002:
        raise AccessError(
            f"{path}: the log directory is writable by every local user ({describe_owner(st)}), so anyone could "
            f"replace its files; make it private: chmod 700 {path} (or share it with a group: Config.group)",
            path=path,
            uid=st.st_uid,
            mode=mode,
        )
    if gid is not None and (st.st_gid != gid or mode & 0o070 != 0o070):
        raise ConfigError(
            f"{path}: Config.group={group!r} but the directory has {describe_owner(st)}: the group's members could "
            f"not append. Share it: chgrp -R {group} {path} && chmod 2770 {path} && chmod 660 {path}/*, "
            "or drop the group setting"
        )
    if mode & 0o005 and path not in _warned:
        _warned.add(path)
        log.warning(
            "%s: the log directory is readable by every local user (%s); files ringwal made before it made them "
            "private may be too: chmod 700 %s (or 750 / 2770 for a group), and chmod 600 its files",
            path, describe_owner(st), path,
        )  # fmt: skip


class DirLock:
    """An exclusive ``flock`` on ``<dir>/wal.lock``: exactly one writer per directory.

    The holder's pid is written into the file so that a refused process can say who holds
    it. The kernel drops the lock when the holder dies, however it dies, so a stale lock file
    never blocks a new writer.
    """

    fd: int | None = None

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, LOCK_NAME)
        fd = create_file(self.path, os.O_RDWR)
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
    ``held_elsewhere``. With ``create`` (the default) a missing file is created with the mode
    its directory gives (``create_file``); without, a missing file is FileNotFoundError (a shared-memory object is never
    created by locking it). A symbolic link is never followed. ``close`` drops every lock
    this object holds; idempotent.
    """

    _fd = -1

    def __init__(self, path: str, *, create: bool = True) -> None:
        self.path = path
        self._create = create
        _open_byte_locks.add(self)

    def _file(self) -> int:
        if self._fd < 0:
            flags = os.O_CLOEXEC | os.O_NOFOLLOW
            try:
                if self._create:
                    self._fd = create_file(self.path, os.O_RDWR)
                else:
                    self._fd = os.open(self.path, os.O_RDWR | flags)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
                self._fd = os.open(self.path, os.O_RDONLY | flags)
        return self._fd

    def fileno(self) -> int:
        """The descriptor the locks are taken through (opened on first use)."""
        return self._file()

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
