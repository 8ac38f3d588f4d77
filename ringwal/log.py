"""``WAL``: the in-process log over segment files; one writer per directory.

This is the storage core that the writer process drives; it can also be used directly by
a single process. Records are encoded at ``append`` into the on-disk record layout and
buffered; the buffer is written to ``current.wal`` as one checksummed frame when it fills,
on ``flush()``/``sync()``, by the background flusher, or at rotation.

Invariants:

* seqs start at 1, are assigned at ``append`` under the mutex, and are gap-free and strictly
  increasing across segments and restarts (recovery continues from the last valid frame on
  disk, never from the index);
* a record reaches the OS inside exactly one frame, and ``sync()`` returns only after
  ``fdatasync`` of ``current.wal``; every completed segment was fsynced before its rename and
  every create/rename is followed by a directory fsync, so a returned ``sync()`` covers
  directory entries too;
* any failed write, fsync or rotation step latches the log: every later call raises
  LogFailedError (an fsync is never retried; see ``_fileutil``). Reopen to recover.

Rotation order and its crash windows (each is tested in ``tests/test_crash.py``):

1. seal ``current.wal`` (truncate the preallocated tail, fsync)
   -> crash: a complete current.wal; the next open continues it.
2. rename it to the next ``NNNNNN.wal`` (one above the highest on disk), fsync the directory
   -> crash: NNNNNN.wal and no current.wal; the next open starts one after it.
3. create the new ``current.wal`` (via ``current.wal.tmp``)
   -> crash: a stray .tmp, deleted on the next open.
4. replace ``wal_index.json`` atomically
   -> crash: a stale index, rebuilt from the segments on the next open (with a warning).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

from ._fileutil import DirLock, FsyncFn, check_directory, fsync_dir
from .config import Config
from .errors import (
    ClosedError,
    CorruptSegmentError,
    FormatError,
    InvalidRecordError,
    LogFailedError,
    SerializerMismatchError,
)
from .format import FRAME_HEADER_SIZE, MAX_FRAME_BODY, SegmentHeader
from .holes import load_holes
from .index import IndexEntry, reconcile, write_index
from .record import Record, check_seq
from .replay import replay_into
from .segment import CURRENT, TORN, ActiveSegment, SegmentScan, read_file, read_header, segment_name, segment_number
from .serializers import with_batch_methods

__all__ = ["WAL"]

log = logging.getLogger("ringwal")

_TMP_NAMES = ("current.wal.tmp", "wal_index.json.tmp")


class WAL:
    """A write-ahead log in ``config.dir``, open for writing by this process.

    ``append`` returns the record's seq; ``flush`` hands buffered records to the OS; ``sync``
    makes them durable and returns the last durable seq; ``replay_from(seq, fn)`` calls
    ``fn`` for every record after ``seq``; ``close`` flushes, syncs and releases the lock.

    ``clock``, ``fsync`` and ``fdatasync`` are fault seams for tests.
    """

    _closed = True
    _dirlock: DirLock | None = None
    _seg: ActiveSegment | None = None
    _flusher: threading.Thread | None = None

    def __init__(
        self,
        config: Config | None = None,
        *,
        clock: Callable[[], int] = time.time_ns,
        fsync: FsyncFn = os.fsync,
        fdatasync: FsyncFn = os.fdatasync,
    ) -> None:
        config = Config() if config is None else config
        config.validate()
        self.config = config
        self._ser = with_batch_methods(config.serializer)
        self._frame = self._ser.frame
        self._frame_many = self._ser.frame_many
        self._clock = clock
        self._fsync = fsync
        self._fdatasync = fdatasync
        self._max_payload = config.max_record_size
        self._segment_size = config.segment_size
        self._duration_ns = int(config.segment_duration * 1e9)
        self._buffer_size = config.write_buffer_size
        self.dir = check_directory(config.dir, create=True)
        self._mutex = threading.Lock()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._failed: BaseException | None = None
        self._dirlock = DirLock(self.dir)
        try:
            self._open_storage()
        except BaseException:
            if self._seg is not None:
                self._seg.close()
            self._dirlock.release()
            raise
        self._next_seq = self._seg.next_seq
        if self._seg.records:
            # A writer killed before its fdatasync leaves frames that are only in the page
            # cache. They are not durable until someone syncs them; do it before calling
            # anything durable.
            try:
                self._seg.sync(self._fdatasync)
            except BaseException:
                self._seg.close()
                self._dirlock.release()
                raise
        self._durable_seq = self._seg.next_seq - 1
        self._closed = False
        if config.flush_interval is not None:
            self._stop = threading.Event()
            self._flusher = threading.Thread(target=self._flush_loop, name="ringwal-flusher", daemon=True)
            self._flusher.start()

    # ----------------------------------------------------------------- recovery

    def _open_storage(self) -> None:
        d = self.dir
        removed = False
        for name in _TMP_NAMES:
            try:
                os.unlink(os.path.join(d, name))
                removed = True
            except FileNotFoundError:
                pass
        if removed:
            fsync_dir(d, self._fsync)
        name = self._ser.name
        holes = load_holes(d)
        entries, reason = reconcile(d, full=True, holes=holes)
        prev = None
        for e in entries:
            path = os.path.join(d, e.file)
            header = read_header(path)
            self._check_serializer(header.serializer, path)
            if header.first_seq != e.first_seq:
                reason = reason or f"stale ({e.file} starts at {header.first_seq}, index says {e.first_seq})"
            if prev is not None and header.first_seq != prev.last_seq + 1 and not holes.bridging(prev.last_seq + 1, header.first_seq):
                raise CorruptSegmentError(
                    f"{path}: starts at seq {header.first_seq} but {prev.file} ends at {prev.last_seq}; "
                    "segments must join without gaps",
                    path=path,
                    offset=32,
                )
            prev = e
        self._entries = entries
        # entries list every NNNNNN.wal in the directory, in number order
        self._next_number = segment_number(entries[-1].file) + 1 if entries else 1
        expected = entries[-1].last_seq + 1 if entries else None
        cur = os.path.join(d, CURRENT)
        prealloc = self._segment_size
        if os.path.exists(cur):
            buf = read_file(cur)
            header = SegmentHeader.decode(buf[:64], cur)
            self._check_serializer(header.serializer, cur)
            if expected is not None and header.first_seq != expected and not holes.bridging(expected, header.first_seq):
                raise CorruptSegmentError(
                    f"{cur}: starts at seq {header.first_seq} but the last completed segment ends at {expected - 1}",
                    path=cur,
                    offset=32,
                )
            scan = SegmentScan(buf, cur, sealed=False, next_seq=header.first_seq, holes=holes)
            try:
                for _ in scan.frames():
                    pass
            except FormatError as exc:
                # Same error, type and coordinates; only the message says what the writer does.
                exc.args = (
                    f"{exc} -- refusing to open for writing: this is not a torn tail, and cutting it "
                    "away could lose valid records (run `ringwal repair --dir DIR` to salvage every valid batch and record the lost seqs)",
                )
                raise
            if scan.outcome == TORN:
                log.warning(
                    "%s: dropped a torn tail of %d bytes at offset %d (a crash mid-write); continuing at seq %d",
                    cur,
                    scan.tail_bytes,
                    scan.end,
                    scan.next_seq,
                )
            self._seg = ActiveSegment.recover(d, header, scan, prealloc, self._fsync)
        else:
            first = expected if expected is not None else 1
            self._seg = ActiveSegment.create(d, SegmentHeader(name, first, self._clock()), prealloc, self._fsync)
        if reason:
            if reason != "missing" or entries:
                log.warning("%s: wal_index.json %s; rebuilt it from the segment files", d, reason)
            write_index(d, name, entries, self._fsync)

    def _check_serializer(self, found: str, path: str) -> None:
        if found != self._ser.name:
            raise SerializerMismatchError(
                f"{path}: the log was written with serializer {found!r} but Config.serializer is "
                f"{self._ser.name!r}; open it with the serializer named in the log",
                path=path,
                offset=16,
            )

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

    def write_body(self, body: bytes | memoryview, count: int) -> int:
        """Write ``count`` records already in body layout as one frame; return its first seq.

        The writer process's path: the body comes straight from the ring. Rotates first when
        the segment is too old or the frame would not fit (a body larger than a segment gets
        a segment of its own).
        """
        with self._mutex:
            self._check_open()
            if self._pending:
                self._write_pending()
            try:
                if self._segment_expired():
                    self._rotate()
                seg = self._seg
                if seg.records and seg.write_pos + FRAME_HEADER_SIZE + len(body) + 7 > self._segment_size:
                    self._rotate()
                    seg = self._seg
                first = self._next_seq
                seg.append_frame(body, count)
            except BaseException as exc:
                raise self._fail(exc, "writing to current.wal") from exc
            self._next_seq = first + count
            return first

    def flush(self) -> None:
        """Write every buffered record to the OS (not yet durable)."""
        with self._mutex:
            self._check_open()
            self._write_pending()

    def sync(self) -> int:
        """Make every appended record durable; return the last durable seq (0 for an empty log)."""
        with self._mutex:
            self._check_open()
            self._sync_locked()
            return self._durable_seq

    def _sync_locked(self) -> None:
        self._write_pending()
        if self._durable_seq == self._next_seq - 1:
            return
        try:
            self._seg.sync(self._fdatasync)
        except BaseException as exc:
            raise self._fail(exc, "fdatasync of current.wal") from exc
        self._durable_seq = self._next_seq - 1

    def _write_pending(self) -> None:
        """Frame the buffered records into current.wal, rotating at segment_size (mutex held)."""
        if not self._pending:
            if self._segment_expired():
                self._rotate_guarded()
            return
        pending, total = self._pending, self._pending_bytes
        self._pending, self._pending_bytes = [], 0
        try:
            if self._segment_expired():
                self._rotate()
            seg = self._seg
            i, n = 0, len(pending)
            while i < n:
                room = min(self._segment_size - seg.write_pos - FRAME_HEADER_SIZE - 7, MAX_FRAME_BODY)
                if total <= room:
                    j = n
                    size = total
                else:
                    j, size = i, 0
                    while j < n and size + len(pending[j]) <= room:
                        size += len(pending[j])
                        j += 1
                    if j == i:
                        if seg.records:
                            self._rotate()
                            seg = self._seg
                            continue
                        size = len(pending[i])  # larger than a segment: it gets one of its own
                        j = i + 1
                body = pending[i] if j == i + 1 else b"".join(pending[i:j])
                seg.append_frame(body, j - i)
                total -= size
                i = j
        except BaseException as exc:
            raise self._fail(exc, "writing to current.wal") from exc

    # ----------------------------------------------------------------- rotation

    def _segment_expired(self) -> bool:
        """current.wal holds records and is older than segment_duration."""
        seg = self._seg
        return bool(seg.records) and self._clock() - seg.header.created_ns >= self._duration_ns

    def _rotate_guarded(self) -> None:
        try:
            self._rotate()
        except BaseException as exc:
            raise self._fail(exc, "rotating current.wal") from exc

    def _rotate(self) -> None:
        d = self.dir
        seg = self._seg
        # 1. Crash after this: a complete, fsynced current.wal that the next open continues.
        seg.seal(self._fsync)
        name = segment_name(self._next_number)
        target = os.path.join(d, name)
        if os.path.exists(target):
            raise CorruptSegmentError(f"{target} already exists; refusing to overwrite a segment", path=target)
        # 2. Crash after the rename: NNNNNN.wal and no current.wal; the next open starts a new
        #    current.wal after it. Either name may be what a reboot shows until the dir fsync.
        os.rename(seg.path, target)
        fsync_dir(d, self._fsync)
        self._next_number += 1
        entry = IndexEntry(name, seg.first_seq, seg.next_seq - 1, seg.write_pos, seg.header.created_ns, self._clock())
        self._entries.append(entry)
        seg.close()
        # 3. Crash here: no current.wal, maybe a current.wal.tmp; the next open recreates it.
        self._seg = ActiveSegment.create(d, SegmentHeader(self._ser.name, seg.next_seq, self._clock()), self._segment_size, self._fsync)
        # 4. Crash before this completes: a stale index, rebuilt on the next open.
        write_index(d, self._ser.name, self._entries, self._fsync)
        log.debug("rotated %s (seqs %d-%d, %d bytes)", name, entry.first_seq, entry.last_seq, entry.size)

    # ----------------------------------------------------------------- failure and lifecycle

    def _fail(self, exc: BaseException, what: str) -> LogFailedError:
        if self._failed is None:
            self._failed = exc
            log.error("%s: %s failed: %r; the log refuses further writes until reopened", self.dir, what, exc)
        return LogFailedError(f"{self.dir}: {what} failed ({exc!r}); the log accepts no more work: close and reopen it")

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"the log in {self.dir} is closed")
        if self._failed is not None:
            raise LogFailedError(
                f"{self.dir}: an earlier write or fsync failed ({self._failed!r}); close and reopen the log"
            ) from self._failed

    def _flush_loop(self) -> None:
        interval = self.config.flush_interval
        while not self._stop.wait(interval):
            with self._mutex:
                if self._closed or self._failed is not None:
                    return
                try:
                    self._sync_locked()
                except LogFailedError:
                    return

    # ----------------------------------------------------------------- retention

    def truncate_before(self, seq: int) -> tuple[list[IndexEntry], int]:
        """Remove the completed segments whose last seq is below ``seq``; never current.wal.

        Returns the entries removed and the first seq still in the log. Order: the files are
        unlinked oldest first, then the directory is fsynced, then the index is replaced.
        A crash in between leaves a contiguous suffix of the log (never a gap) and an index
        that names files which are gone: stale, rebuilt by the next writer with a warning;
        readers only ever look at files that exist.
        """
        check_seq(seq, "truncate_before's seq")
        with self._mutex:
            self._check_open()
            n = 0
            while n < len(self._entries) and self._entries[n].last_seq < seq:
                n += 1
            return self._remove_oldest(n)

    def apply_retention(self, max_bytes: int | None, max_age: float | None) -> tuple[list[IndexEntry], int]:
        """Remove the oldest completed segments beyond ``max_bytes`` in all or closed more than
        ``max_age`` seconds ago (the active segment counts towards the bytes, never goes)."""
        with self._mutex:
            self._check_open()
            entries = self._entries
            n = 0
            if max_bytes is not None:
                total = sum(e.size for e in entries) + self._seg.write_pos
                while n < len(entries) and total > max_bytes:
                    total -= entries[n].size
                    n += 1
            if max_age is not None:
                cutoff = self._clock() - int(max_age * 1e9)
                while n < len(entries) and entries[n].closed_ns < cutoff:
                    n += 1
            return self._remove_oldest(n)

    def _remove_oldest(self, n: int) -> tuple[list[IndexEntry], int]:
        victims = self._entries[:n]
        if victims:
            try:
                for e in victims:
                    try:
                        os.unlink(os.path.join(self.dir, e.file))
                    except FileNotFoundError:
                        pass
                fsync_dir(self.dir, self._fsync)
                self._entries = self._entries[n:]
                write_index(self.dir, self._ser.name, self._entries, self._fsync)
            except BaseException as exc:
                raise self._fail(exc, "removing old segments") from exc
        return victims, self.first_seq

    @property
    def first_seq(self) -> int:
        """The seq of the first record still in the log (1 unless retention removed some)."""
        return self._entries[0].first_seq if self._entries else self._seg.first_seq

    @property
    def last_seq(self) -> int:
        """The seq of the last appended record (0 when none)."""
        return self._next_seq - 1

    @property
    def durable_seq(self) -> int:
        """The seq of the last record known to be on stable storage."""
        with self._mutex:
            return self._durable_seq

    @property
    def closed(self) -> bool:
        return self._closed

    def replay_from(self, seq: int, fn: Callable[[Record], object]) -> int:
        """Flush, then call ``fn`` for every record with seq > ``seq``, in order; return the count."""
        self.flush()
        return replay_into(self.dir, seq, self._ser, fn)

    def close(self) -> None:
        """Flush and sync buffered records, stop the flusher, release the lock. Idempotent."""
        if self._closed:
            return
        if self._flusher is not None:
            self._stop.set()
            self._flusher.join()
        with self._mutex:
            if self._closed:
                return
            try:
                if self._failed is None:
                    self._sync_locked()
            finally:
                self._closed = True
                if self._seg is not None:
                    self._seg.close()
                if self._dirlock is not None:
                    self._dirlock.release()

    def __enter__(self) -> WAL:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("failed" if self._failed else "open")
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
