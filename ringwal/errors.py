"""The exception tree. Every error ringwal raises on purpose is a :class:`WALError`.

::

    WALError
    ├── ConfigError (ValueError)          a Config value that cannot work; names the setting
    ├── MissingExtraError (ImportError)   an optional feature's package is not installed; names
    │                                     the extra that installs it (``ringwal[proto]``)
    ├── UnsupportedPlatformError          not Linux on x86-64: ``open``/``serve`` refuse to run
    ├── InvalidRecordError (ValueError)   a record rejected at the call; nothing was written
    ├── LockedError                       another writer holds the directory; carries its pid
    ├── ClosedError                       the object was closed; open a new one
    ├── LogFailedError                    an earlier write or fsync failed; the log refuses
    │                                     all work until reopened (the cause is chained); after
    │                                     a failed fsync, names the seqs lost (never durable)
    ├── WriterGoneError                   the writer process died or stopped and no new one
    │                                     took over in time (``start_writer=False`` or it failed)
    ├── RingError                         the shared-memory ring cannot be used: an unknown
    │   │                                 layout version, or every producer slot is taken
    │   ├── SlotsExhaustedError           all ``producer_slots`` lanes are held by live producers
    │   ├── LanePoisonedError             the writer dropped bytes of this handle's lane that
    │   │                                 were not records; the handle refuses all work
    │   ├── ShmTooSmallError              /dev/shm has no room for the ring; carries the bytes
    │   │                                 needed and free, names the settings that shrink it
    │   └── LockTimeoutError              a lock of the ring stayed held past its deadline by a
    │                                     process that is stopped or hung; names the lock file
    ├── RingFullError (TimeoutError)      ``append`` waited ``append_timeout`` for room in the
    │                                     ring while a live writer did not drain it
    ├── WaitTimeoutError (TimeoutError)   ``flush``/``sync`` waited ``sync_timeout`` on a live
    │                                     writer that did not finish
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
        └── RecordsLostError              replay reached seqs that ``ringwal repair`` recorded
                                          as lost (``wal_holes.json``); carries the range

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
    ``WAL``, which create a log. ``path`` is the directory."""


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
