"""The exception tree. Every error ringwal raises on purpose is a :class:`WALError`.

::

    WALError
    ├── ConfigError (ValueError)          a Config value that cannot work; names the setting
    ├── MissingExtraError (ImportError)   an optional feature's package is not installed; names
    │                                     the extra that installs it (``ringwal[proto]``)
    ├── UnsupportedPlatformError          not Linux on x86-64: ``open``/``serve`` refuse to run
    ├── InvalidRecordError (ValueError)   a record rejected at the call; nothing was written
    ├── LockedError                       another writer holds the directory; carries its pid
    ├── AccessError                       the log's directory, ring or semaphore has an owner
    │                                     or mode this process must not trust; names it, its
    │                                     owner and mode, and what to do
    ├── ClosedError                       the object was closed; open a new one
    ├── LogFailedError                    an earlier write or fsync failed; the log refuses
    │                                     all work until reopened (the cause is chained); after
    │                                     a failed fsync, names the seqs lost (never durable)
    ├── LogGoneError                      the log's directory was removed or moved while in use;
    │                                     the writer stopped, unacknowledged records may be lost
    ├── WriterGoneError                   the writer process died or stopped and no new one
    │                                     took over in time (``start_writer=False`` or it failed)
    ├── RingError                         the shared-memory ring cannot be used: an unknown
    │   │                                 layout version, or every producer slot is taken
    │   ├── SlotsExhaustedError           all ``producer_slots`` lanes are held by live producers
    │   ├── LanePoisonedError             the writer dropped bytes of this handle's lane that
    │   │                                 were not records; the handle refuses all work
    │   ├── ForeignRingError              the ring at this log's name belongs to another log
    │   │                                 (another id or directory); none of it was read
    │   ├── ShmTooSmallError              /dev/shm has no room for the ring; carries the bytes
    │   │                                 needed and free, names the settings that shrink it
    │   └── LockTimeoutError              a lock of the ring stayed held past its deadline by a
    │                                     process that is stopped or hung; names the lock file
    ├── RingFullError (TimeoutError)      ``append`` waited ``append_timeout`` for room in the
    │                                     ring while a live writer did not drain it
    ├── WaitTimeoutError (TimeoutError)   ``flush``/``sync`` waited ``sync_timeout`` on a live
    │                                     writer that did not finish
    ├── RecordsRemovedError               a reader needs seqs that retention or ``truncate_before``
    │                                     removed (before it started or while it read); carries
    │                                     the first seq gone and the first still in the log
    ├── ShipError                         shipping to or restoring from NATS JetStream cannot go
    │   │                                 on (no server, a stream that is not this log's, a gap);
    │   │                                 names the stream, the seq and what to change
    │   └── ShipLockedError               another shipper holds the log's ``wal.ship.lock``
    └── FormatError                       what is on disk cannot be read as a ringwal log
        ├── NoLogError                    the directory is missing or holds no ringwal log
        │                                 (a wrong or unmounted path); carries the path
        ├── UnsupportedVersionError       a format version this build does not know
        ├── SerializerMismatchError       the log was written with another serializer
        ├── CorruptSegmentError           a bad segment header, a seq gap between segments,
        │                                 or an index that cannot be rebuilt
        ├── CorruptRecordError            a bad checksum or impossible length *before* the
        │                                 tail; carries path, offset, expected and computed
        └── RecordsLostError              replay reached seqs recorded as lost in
                                          ``wal_holes.json``, by ``ringwal repair`` or after a
                                          failed fsync; carries the range

A torn tail (the last frame of the active segment left incomplete by a crash) is not an
error: readers stop there and the next writer truncates it.
"""

from __future__ import annotations


class WALError(Exception):
    """Base class of every error ringwal raises on purpose."""


class ConfigError(WALError, ValueError):
    """A Config value (or the directory it names) cannot work. The message names the setting."""


class MissingExtraError(WALError, ImportError):
    """An optional feature needs a package that is not installed (or not in a version it works
    with). ``extra`` names the extra that installs it: ``pip install 'ringwal[EXTRA]'``."""

    def __init__(self, message: str, *, extra: str) -> None:
        super().__init__(message)
        self.extra = extra


class UnsupportedPlatformError(WALError):
    """``open``/``serve`` run only on Linux on x86-64 (64-bit Python): the ring relies on
    x86-64's total store order and on Linux futexes and OFD locks. ``system`` and ``machine``
    are what this process runs on (``platform.system()``, ``platform.machine()``).
    Reading a log (``replay``, ``verify``, ``ringwal dump``) works anywhere."""

    def __init__(self, message: str, *, system: str, machine: str) -> None:
        super().__init__(message)
        self.system = system
        self.machine = machine


class InvalidRecordError(WALError, ValueError):
    """A record was rejected at the call (bad type, time, data or size); nothing was written."""


class LockedError(WALError):
    """Another process holds the writer lock of the directory.

    ``pid`` is the holder's process id as it recorded it (None when unreadable).
    """

    def __init__(self, message: str, *, path: str, pid: int | None) -> None:
        super().__init__(message)
        self.path = path
        self.pid = pid


class AccessError(WALError):
    """An object of the log has an owner or permissions that this process must not trust:
    the log directory is writable by every local user, or the shared-memory ring or its
    semaphore in ``/dev/shm`` was made by a user this log does not trust or is open to
    others (another local user could read records, inject them, or act as a fake writer).
    Nothing was read from it. ``path`` names the object, ``uid`` its owner, ``mode`` its
    permission bits; the message says what to do (README, "Trust model")."""

    def __init__(self, message: str, *, path: str, uid: int | None = None, mode: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.uid = uid
        self.mode = mode


class ClosedError(WALError):
    """The log, handle or reader was closed."""


class LogFailedError(WALError):
    """A write, fsync or rotation failed earlier; the log accepts no more work.

    fsync failures can drop dirty pages, so retrying and carrying on could silently lose
    records. Close the log and open it again: recovery finds what really reached the disk.

    When records were lost to a failed fsync (written, never durable, never acknowledged;
    recorded in ``wal_holes.json``), ``first_seq``/``last_seq`` is that seq range and
    ``path`` the file whose fsync failed; all three are None otherwise.
    """

    def __init__(
        self, message: str, *, path: str | None = None, first_seq: int | None = None, last_seq: int | None = None
    ) -> None:
        super().__init__(message)
        self.path = path
        self.first_seq = first_seq
        self.last_seq = last_seq


class LogGoneError(WALError):
    """The log's directory was removed, or moved or replaced, while a writer served it: the
    writer stopped (it never writes into a directory that is no longer the log's), failed the
    waits of attached producers with this error, removed its ring and exited non-zero.
    Records appended and not yet acknowledged durable may be lost (if the directory was
    moved, those the writer had written are in its files there). ``path`` is the directory
    as it was opened. Open the log again where it is now."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class WriterGoneError(WALError):
    """The writer serving the directory is gone and no new writer took over in time.

    Records appended but not yet written stay in the shared-memory ring; the next writer
    started on the directory writes them (exactly once).
    """


class RingError(WALError):
    """The shared-memory ring cannot be used (an unknown layout version, a damaged header)."""


class SlotsExhaustedError(RingError):
    """Every producer slot of the ring is held by a live process; raise ``producer_slots``."""


class LanePoisonedError(RingError):
    """The writer found bytes in this handle's ring lane that are not whole records (something
    in the process wrote into the shared memory) and dropped them without writing them.

    ``lane`` is the ring lane; ``first_dropped`` is n when the n-th record the handle
    appended on that lane (1-based; for a handle that never changed lanes, the n-th it
    appended) is the first that is not in the log; the records before it are. ``reason``
    says what was wrong. The handle has given back its lane and raises this for every later
    call: open a new one.
    """

    def __init__(self, message: str, *, lane: int, first_dropped: int, reason: str) -> None:
        super().__init__(message)
        self.lane = lane
        self.first_dropped = first_dropped
        self.reason = reason


class ForeignRingError(RingError):
    """The shared-memory object at this log's ring name records another log (another log id,
    or another directory's device and inode): a ring serves exactly one log, so none of its
    records were read or written. ``path`` names the object. Remove it if no process of that
    log runs (``ringwal rings --remove NAME``)."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class ShmTooSmallError(RingError):
    """``/dev/shm`` has no room for the ring the writer must create (Docker gives a container
    64 MiB by default). Raised by ``ringwal serve`` and by the ``open`` that started the
    writer; nothing is left behind in ``/dev/shm``.

    ``needed`` and ``available`` are bytes; ``path`` is the shared-memory object that could
    not be created. Lower ``ring_size`` or ``producer_slots``, or give ``/dev/shm`` more room.
    """

    def __init__(
        self, message: str, *, path: str | None = None, needed: int | None = None, available: int | None = None
    ) -> None:
        super().__init__(message)
        self.path = path
        self.needed = needed
        self.available = available


class LockTimeoutError(RingError):
    """A lock of the ring (a byte of ``<dir>/wal.ring.lock``) stayed held by another process
    past its deadline: that process is stopped (SIGSTOP, a debugger) or hung while holding
    it. ``path`` names the lock file. Nothing was changed; resume or kill that process."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class RingFullError(WALError, TimeoutError):
    """``append`` waited ``append_timeout`` seconds for room in the ring; nothing was written."""


class WaitTimeoutError(WALError, TimeoutError):
    """``flush``/``sync`` waited ``sync_timeout`` seconds on a live writer that did not finish."""


class RecordsRemovedError(WALError):
    """The records a reader needs were removed by retention (``retention_max_bytes``,
    ``retention_max_age``) or by ``truncate_before`` / ``ringwal truncate``: either before
    it started (``replay(dir, after_seq)`` with ``0 < after_seq < first_available - 1``) or
    while it read (it fell behind the writer's retention). Nothing was skipped: the reader
    yielded every seq up to ``first_gone - 1`` and stops here.

    ``first_gone`` is the first seq the reader needed that is no longer in the log;
    ``first_available`` the first seq still in it (its oldest segment's first seq);
    ``directory`` the log. To go on, read again after ``first_available - 1`` (accepting the
    loss), read faster, or keep more: raise ``retention_max_bytes`` / ``retention_max_age``
    or truncate less. Not a FormatError: the log itself is consistent.
    """

    def __init__(self, message: str, *, directory: str, first_gone: int, first_available: int) -> None:
        super().__init__(message)
        self.directory = directory
        self.first_gone = first_gone
        self.first_available = first_available

    @classmethod
    def for_reader(cls, directory: str, first_gone: int, first_available: int) -> RecordsRemovedError:
        """The error for a reader of ``directory`` that needs seq ``first_gone`` of a log that
        now starts at ``first_available``."""
        last = first_available - 1
        span = f"seq {first_gone} was" if first_gone == last else f"seqs {first_gone}-{last} were"
        return cls(
            f"{directory}: {span} removed by retention or truncate_before before this reader got to them; "
            f"the log now starts at seq {first_available}. Read again after seq {last} to go on without them, "
            "read faster, or keep more (raise retention_max_bytes / retention_max_age, truncate less)",
            directory=directory,
            first_gone=first_gone,
            first_available=first_available,
        )


class ShipError(WALError):
    """Shipping the log to NATS JetStream, or restoring one from it, cannot go on.

    ``stream`` is the JetStream stream, ``seq`` the log seq concerned (None when none is),
    ``path`` the log directory or file. The message says what was found and what to change
    (a server list, a stream of its own for the log, ``max_payload``...). Transient failures
    (a node restarting, a leader election) are retried and never raise this before
    ``retry_timeout`` seconds without progress.
    """

    def __init__(
        self, message: str, *, stream: str | None = None, seq: int | None = None, path: str | None = None
    ) -> None:
        super().__init__(message)
        self.stream = stream
        self.seq = seq
        self.path = path


class ShipLockedError(ShipError):
    """Another shipper holds ``<dir>/wal.ship.lock`` past ``lock_timeout``: one shipper per log.
    Stop the other one (``ringwal stats`` says whether one runs), or wait for it to exit."""


class FormatError(WALError):
    """The bytes on disk cannot be read as a ringwal log."""

    def __init__(self, message: str, *, path: str | None = None, offset: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset


class NoLogError(FormatError):
    """The directory does not exist or holds no ringwal log (no segment file, no index): a
    wrong or unmounted path. Raised by readers (``replay``, ``follow``, ``verify``, the CLI's
    ``dump``/``tail``/``stats``/``verify``/``repair``/``truncate``), never by ``open`` or
    ``WAL``, which create a log. ``log_id`` raises it too for a log whose segments were all
    written before log ids (format version 1) until a writer of this version opens it and gives
    it one. ``path`` is the directory."""


class UnsupportedVersionError(FormatError):
    """A segment carries a format version this build of ringwal does not read."""


class SerializerMismatchError(FormatError):
    """The log was written with a serializer other than the one asked for."""


class CorruptSegmentError(FormatError):
    """A segment header is damaged, or segments do not join up (a seq gap or overlap)."""


class CorruptRecordError(FormatError):
    """A frame before the tail fails its checksum or claims an impossible length.

    ``expected`` and ``computed`` are the stored and recomputed checksums when the failure
    was a checksum mismatch (None otherwise).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        offset: int | None = None,
        expected: int | None = None,
        computed: int | None = None,
    ) -> None:
        super().__init__(message, path=path, offset=offset)
        self.expected = expected
        self.computed = computed


class RecordsLostError(FormatError):
    """Replay reached a range of seqs recorded as lost (cut out by ``ringwal repair``, or lost to a failed fsync).

    ``first_seq``/``last_seq`` is the lost range, ``reason`` what was damaged. Replay with
    ``skip_holes=True`` to step over recorded holes (each is logged as a warning).
    """

    def __init__(
        self, message: str, *, path: str | None = None, first_seq: int, last_seq: int, reason: str = ""
    ) -> None:
        super().__init__(message, path=path, offset=None)
        self.first_seq = first_seq
        self.last_seq = last_seq
        self.reason = reason
