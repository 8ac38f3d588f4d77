"""``WAL``: the record-level log of one process, over a ``SegmentLog``; one writer per directory.

It adds records to the segment-level log (``seglog.py``: frames, rotation, index, recovery,
sync, the failure latch): records are encoded at ``append`` into the on-disk record layout
with ``config.serializer`` and buffered; the buffer goes to the segment log (framed within
``segment_size``) when it reaches ``write_buffer_size``, on ``flush()``/``sync()``/``close()``,
or by the background flusher every ``flush_interval`` seconds.

Invariants:

* seqs are assigned at ``append`` under the mutex: the next seq is the segment log's
  ``last_seq + 1`` plus the records buffered before it, and every buffered record is written
  in order, so the segment log gives each record exactly the seq ``append`` returned;
* a record reaches the OS inside exactly one frame, and ``sync()`` returns only after the
  segment log's ``sync()`` (the fdatasync of ``current.wal``) covered it;
* once the segment log latches (a failed write, fsync or rotation step), every call raises
  LogFailedError, and buffered records are never written. Reopen to recover.

The segment log's invariants, and the rotation order with its crash windows, are in
``seglog.py``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable

from . import _fileutil
from ._fileutil import FsyncFn
from .config import Config
from .errors import InvalidRecordError, LogFailedError
from .index import IndexEntry
from .record import Record
from .replay import replay_into
from .seglog import SegmentLog
from .serializers import with_batch_methods

__all__ = ["WAL"]


class WAL:
    """A write-ahead log in ``config.dir``, open for writing by this process.

    ``append`` returns the record's seq; ``flush`` hands buffered records to the OS; ``sync``
    makes them durable and returns the last durable seq; ``replay_from(seq, fn)`` calls
    ``fn`` for every record after ``seq``; ``close`` flushes, syncs and releases the lock.

    ``clock`` (wall), ``monotonic`` (ages of segments), ``fsync`` and ``fdatasync`` are
    fault seams for tests (passed to the ``SegmentLog``).
    """

    _flusher: threading.Thread | None = None

    def __init__(
        self,
        config: Config | None = None,
        *,
        clock: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], int] = time.monotonic_ns,
        fsync: FsyncFn = os.fsync,
        fdatasync: FsyncFn = _fileutil.fdatasync,
    ) -> None:
        config = Config() if config is None else config
        config.validate()
        self.config = config
        self._ser = with_batch_methods(config.serializer)
        self._frame = self._ser.frame
        self._frame_many = self._ser.frame_many
        self._max_payload = config.max_record_size
        self._buffer_size = config.write_buffer_size
        self._mutex = threading.Lock()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._log = seglog = SegmentLog(
            config, self._ser.name, clock=clock, monotonic=monotonic, fsync=fsync, fdatasync=fdatasync
        )
        self.dir = seglog.dir
        self._check_open = seglog.check_open  # ClosedError / LogFailedError
        self._next_seq = seglog.last_seq + 1
        if config.flush_interval is not None:
            self._stop = threading.Event()
            self._flusher = threading.Thread(target=self._flush_loop, name="ringwal-flusher", daemon=True)
            self._flusher.start()

    # ----------------------------------------------------------------- appending

    def append(self, record: Record) -> int:
        """Buffer one record and return its seq. Raises InvalidRecordError for a bad record."""
        if record.__class__ is not Record:
            record = _as_record(record)
        elif record[3]:
            raise InvalidRecordError(f"record seq is assigned by the log; create it with seq=0 (got seq={record[3]})")
        framed = self._frame(record)
        if len(framed) - 4 > self._max_payload:
            raise _too_large(len(framed) - 4, self._max_payload)
        with self._mutex:
            self._check_open()
            seq = self._next_seq
            self._pending.append(framed)
            self._pending_bytes += len(framed)
            self._next_seq = seq + 1
            if self._pending_bytes >= self._buffer_size:
                self._write_pending()
        return seq

    def append_many(self, records: Iterable[Record]) -> range:
        """Buffer records in order; return the range of their seqs. All or none are accepted."""
        recs = [r if r.__class__ is Record and not r[3] else _as_record(r) for r in records]
        framed = self._frame_many(recs)
        limit = self._max_payload + 4
        total = 0
        for f in framed:
            n = len(f)
            if n > limit:
                raise _too_large(n - 4, self._max_payload)
            total += n
        with self._mutex:
            self._check_open()
            first = self._next_seq
            self._pending.extend(framed)
            self._pending_bytes += total
            self._next_seq = first + len(framed)
            if self._pending_bytes >= self._buffer_size:
                self._write_pending()
        return range(first, first + len(framed))

    def write_body(self, body: bytes, count: int) -> int:
        """Write ``count`` records already in body layout as one frame; return its first seq.

        Buffered records are written first, so seqs stay in append order; then see
        ``SegmentLog.write_body`` (the writer process's path).
        """
        with self._mutex:
            self._check_open()
            if self._pending:
                self._write_pending()
            first = self._log.write_body(body, count)
            self._next_seq = first + count
            return first

    def flush(self) -> None:
        """Write every buffered record to the OS (not yet durable)."""
        with self._mutex:
            self._check_open()
            if self._pending:
                self._write_pending()
            else:
                self._log.flush()  # an idle current.wal still rotates when it is too old

    def sync(self) -> int:
        """Make every appended record durable; return the last durable seq (0 for an empty log)."""
        with self._mutex:
            self._check_open()
            return self._sync_locked()

    def _sync_locked(self) -> int:
        if self._pending:
            self._write_pending()
        return self._log.sync()

    def _write_pending(self) -> None:
        """Hand the buffered records to the segment log (mutex held)."""
        pending = self._pending
        self._pending, self._pending_bytes = [], 0
        self._log.write_records(pending)

    def _flush_loop(self) -> None:
        interval = self.config.flush_interval
        seglog = self._log
        while not self._stop.wait(interval):
            with self._mutex:
                if seglog.closed or seglog.failed is not None:
                    return
                try:
                    self._sync_locked()
                except LogFailedError:
                    return

    # ----------------------------------------------------------------- retention

    def truncate_before(self, seq: int) -> tuple[list[IndexEntry], int]:
        """Remove the completed segments whose last seq is below ``seq``; never current.wal.

        Returns the entries removed and the first seq still in the log; see
        ``SegmentLog.truncate_before`` for the order of steps and its crash windows.
        """
        with self._mutex:
            return self._log.truncate_before(seq)

    def apply_retention(self, max_bytes: int | None, max_age: float | None) -> tuple[list[IndexEntry], int]:
        """Remove the oldest completed segments beyond ``max_bytes`` in all or closed more than
        ``max_age`` seconds ago (the active segment counts towards the bytes, never goes)."""
        with self._mutex:
            return self._log.apply_retention(max_bytes, max_age)

    # ----------------------------------------------------------------- state and lifecycle

    @property
    def first_seq(self) -> int:
        """The seq of the first record still in the log (1 unless retention removed some)."""
        return self._log.first_seq

    @property
    def last_seq(self) -> int:
        """The seq of the last appended record (0 when none)."""
        return self._next_seq - 1

    @property
    def durable_seq(self) -> int:
        """The seq of the last record known to be on stable storage."""
        with self._mutex:
            return self._log.durable_seq

    @property
    def closed(self) -> bool:
        return self._log.closed

    def replay_from(self, seq: int, fn: Callable[[Record], object]) -> int:
        """Flush, then call ``fn`` for every record with seq > ``seq``, in order; return the count.

        ``seq=0`` starts at the first record still in the log; raises RecordsRemovedError when
        retention removed seq + 1 (``replay``)."""
        self.flush()
        return replay_into(self.dir, seq, self._ser, fn)

    def close(self) -> None:
        """Flush and sync buffered records, stop the flusher, release the lock. Idempotent."""
        seglog = self._log
        if seglog.closed:
            return
        if self._flusher is not None:
            self._stop.set()
            self._flusher.join()
        with self._mutex:
            if seglog.closed:
                return
            try:
                if seglog.failed is None and self._pending:
                    self._write_pending()
            finally:
                seglog.close()  # syncs unless the log failed

    def __enter__(self) -> WAL:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("failed" if self._log.failed else "open")
        return f"<WAL {self.dir} {state} last_seq={self.last_seq}>"


def _as_record(obj: object) -> Record:
    if isinstance(obj, Record):
        if obj[3]:
            raise InvalidRecordError(f"record seq is assigned by the log; create it with seq=0 (got seq={obj[3]})")
        return Record(*obj)
    raise InvalidRecordError(f"append takes ringwal.Record objects, got {obj.__class__.__name__}")


def _too_large(size: int, limit: int) -> InvalidRecordError:
    return InvalidRecordError(
        f"record encodes to {size} bytes, more than max_record_size={limit}; raise max_record_size in Config"
    )
