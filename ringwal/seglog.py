"""``SegmentLog``: the segment-level log. Frames in, segment files out; one writer per directory.

Vocabulary: frames, segments, offsets and sync. It appends checksummed frames to
``current.wal``, rotates segments by size and age, keeps ``wal_index.json``, recovers the
directory at open, syncs, and removes old segments. It never encodes or decodes a record:
it knows the serializer only by its name, which it writes into every segment header and
checks against the segments already on disk.

Two callers drive it: the writer process (``write_body``: a body straight from the ring)
and ``log.WAL`` (records encoded and buffered in this process, written with
``write_records``). It is not thread-safe: one call at a time (``WAL`` holds its mutex
around every call; the writer process drains on one thread). It runs one thread of its own,
which prepares the next segment and writes the index ("Rotation", below) and touches
nothing a call uses but the files it is given.

Invariants:

* seqs start at 1 and are gap-free and strictly increasing across segments and restarts:
  a frame takes the seqs after ``last_seq``, and recovery continues from the last valid
  frame on disk, never from the index (only a range recorded in ``wal_holes.json`` is
  skipped);
* a frame is written whole at the end of ``current.wal`` and never rewritten; ``sync()``
  returns only after ``fdatasync`` of ``current.wal``; every completed segment was fsynced
  before its rename and every create/rename/unlink is followed by a directory fsync before
  ``sync()`` next returns (the one after a rotation's last rename runs in the background and
  ``sync()`` waits for it), so a returned ``sync()`` covers directory entries too; frames a dead writer left in the page
  cache are fdatasynced at open, before ``durable_seq`` counts them;
* any failed write, fsync, rotation or removal step latches the log: every later call raises
  LogFailedError (an fsync is never retried; see ``_fileutil``). Reopen to recover;
* the log has one id (``log_id``), chosen once by the open that creates its first segment
  (only the holder of ``wal.lock`` creates segments) and written into every segment header
  after it; segments whose headers carry different ids are refused at open. A version 1
  ``current.wal`` (written before ids) is replaced by a version 2 one at open (``_give_id``).

When an fsync fails (docs/FORMAT.md, "When fsync fails")
    Linux reports a writeback error once per open file description (``errseq_t``) and may
    already have marked the failed pages clean: after a failed fdatasync the page cache can
    hold frames the disk does not, and a later fdatasync -- on this descriptor or a fresh
    one -- succeeds without writing them. So the records written after the durable end
    (``ActiveSegment.durable_pos``: everything below it was covered by a completed
    fdatasync; seqs ``durable_next`` .. ``last_seq``) are never made durable and never
    acknowledged. ``_fsync_failed``, in the failing process, in this order:

    1. copies those bytes (the page cache's version) to ``current.wal.failed-<first>-<last>``;
       -> crash: an extra file; the ring's failure words (the writer stores them before it
       exits) or nothing (see 3) tell the next writer;
    2. records the range as a hole in ``wal_holes.json`` (temp, fsync, rename, dir fsync);
       -> crash: the hole is on record while the frames are still in ``current.wal``: scans
       stop at them (outcome LOST) and the next writer cuts them;
    3. cuts ``current.wal`` back to the durable end (ftruncate: the page cache's copy is
       gone for every reader; not fsynced, the next writer's cut is);
    then latches (``lost`` names the range). When 2 fails too (the disk refuses every fsync),
    the writer's ring words carry the range to the next writer, which records it.

    Recovery, in the next writer: a valid frame whose seqs are a recorded hole is cut with
    everything after it (copy kept as above); a range the ring reports (``Prior.failed``)
    and no hole records is recorded first, then cut; and when the log ends right before a
    recorded hole, seqs continue after it, so no seq is ever given twice. The range is
    ``recovered_loss``, for the writer to report in the ring. A failure of the fdatasync at
    open (frames a dead writer left) is handled the same way, from the durable end that the
    frames claim (their ``synced`` field) or the previous writer acknowledged in the ring
    (``Prior.acked_seq``), whichever is further. A failed directory fsync loses no record
    (the segment was fsynced before its rename, and every open fsyncs the directory).

Rotation order and its crash windows (each is killed at, with a real SIGKILL, in
``tests/test_crash.py``; the names are the ``at`` crash points)

The next segment is prepared ahead of time by a background thread (``_Background``: one
thread of this process, jobs in order): ``next.wal.tmp`` is created, preallocated to
``segment_size`` and fsynced (``segment.prepare_spare``). So the writer, which drains the
ring on its own thread, makes two fsync calls at a rotation: the seal of the segment it
closes and one directory fsync (and two renames); never a preallocation, a file creation
or the index. The steps (the writer waits for the spare first if it is not ready yet):

1. seal ``current.wal`` (truncate the preallocated tail, fsync)                 ``sealed``
   -> crash: a complete current.wal (and maybe next.wal.tmp); the next open continues
   current.wal and removes next.wal.tmp.
2. write the new header (first seq = the next seq) into next.wal.tmp; its fdatasync runs
   on the background thread while this one runs step 1; both done before 3       ``header``
   -> crash: the same; the spare's header is never read (it is not a segment's name).
3. rename current.wal to the next ``NNNNNN.wal`` (one above the highest on disk), fsync
   the directory                                                                  ``renamed``
   -> crash: NNNNNN.wal, no current.wal, next.wal.tmp with a header; the next open removes
   the spare and creates a current.wal after the last segment (as before spares existed).
   This fsync comes before step 4 so that step 4's rename can never be durable without
   this one: current.wal would then name the new file and the sealed one be lost.
4. rename next.wal.tmp to current.wal                                            ``current``
   -> crash (process): the new, empty current.wal; the next open continues it. Power loss
   before the directory fsync of step 5: either name may be what the disk shows; with
   next.wal.tmp it is the case after step 3. Nothing in it was acknowledged (step 5).
5. in the background: fsync the directory (current.wal's name durable)            ``named``;
   ``sync()`` waits for this job before it reports any seq durable, so an acknowledged
   record is never in a file whose name a power loss could take back. Then prepare the
   next spare (``spare``), then replace ``wal_index.json`` atomically           ``indexed``
   -> crash before the index: a stale index, rebuilt from the segments on the next open
   (with a warning); before the spare: none, or a partly built next.wal.tmp (removed).

The background thread's first failure (an fsync, a preallocation on a full disk) is kept
and every later job skipped; it latches the log at the next rotation, ``sync`` or
``close`` (LogFailedError, as a failure on the writer's thread would): an fsync is never
retried. None of these failures loses a record: the sealed segment was fsynced before its
rename, and every open fsyncs the directory. ``close`` waits for the thread (so the index is
current for the next writer), then closes and removes the spare. The index written at open
and by retention goes through the same thread once it runs, so two writes of
``wal_index.json.tmp`` never overlap.

Clocks. Two are used, both seams: ``clock`` (wall, ns since the epoch) for what humans read
and what outlives this process -- the segment header's created time and the index's
``closed_ns`` -- and ``monotonic`` for every age measured within this writer's life, so that
a wall-clock step while it runs (NTP, an operator, a VM resumed) changes no decision:

* ``current.wal`` created by this writer ages on the monotonic clock from its creation;
* ``current.wal`` recovered at open ages from its header's created time, bounded: its age at
  open is ``wall now - created``, clamped to >= 0 (a created time in the future means the
  clock was stepped back since: age 0), then it ages monotonically; one older than
  ``segment_duration`` rotates at the first chance;
* a completed segment's age, for retention, is its wall age at this writer's open (``wall now
  - closed_ns``, clamped to >= 0) plus monotonic time since; one closed during this writer's
  life starts at age 0 when it is closed.

A step *before* the writer starts still counts: a forward step of D (or D of downtime -- the
two look the same) makes every segment D older at the next open, so retention by age may
remove segments at once and a non-empty ``current.wal`` rotates at once; a backward step
makes them younger (never below 0), so they are kept up to D longer (a segment from "the
future" at most ``retention_max_age`` after the open) and rotation waits at most
``segment_duration`` after the open. The same holds for wall times written by an earlier
writer whose clock was later corrected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

from . import _fileutil
from ._fileutil import DirLock, FsyncFn, check_directory, fsync_dir
from .config import Config
from .errors import (
    ClosedError,
    ConfigError,
    CorruptSegmentError,
    FormatError,
    LogFailedError,
    LogGoneError,
    SerializerMismatchError,
)
from .format import (
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    FSYNC_DATASYNC,
    FSYNC_FAILURES,
    FSYNC_OPEN,
    FSYNC_SEAL,
    LOG_ID_SIZE,
    MAX_FRAME_BODY,
    SEGMENT_HEADER_SIZE,
    SERIALIZER_NAME_SIZE,
    SegmentHeader,
    align8,
)
from .holes import Hole, Holes, load_holes, write_holes
from .index import IndexEntry, reconcile, write_index
from .record import check_seq
from .segment import (
    CURRENT,
    LOST,
    SPARE,
    TORN,
    ActiveSegment,
    SegmentScan,
    data_end,
    keep_aside,
    prepare_spare,
    read_file,
    read_header,
    segment_name,
    segment_number,
)
from .shipped import shipped_seq

__all__ = ["LostRange", "Prior", "SegmentLog"]

log = logging.getLogger("ringwal")

_TMP_NAMES = ("current.wal.tmp", "wal_index.json.tmp", SPARE)

_T = TypeVar("_T")


def _no_crash_point(name: str) -> None:
    """The default ``at`` seam: crash points are named, nothing happens at them."""


class _Background:
    """One thread that runs jobs in order, off the writer's path (module docstring, "Rotation").

    ``error`` is (what, exception) of the first job that failed; every job after it is
    skipped (its future raises RuntimeError), so an fsync is never retried. The owner turns
    ``error`` into its latch.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ringwal-segments")
        self._pid = os.getpid()
        self.error: tuple[str, BaseException] | None = None

    def submit(self, what: str, fn: Callable[..., _T], *args: Any) -> Future[_T]:
        if os.getpid() != self._pid:
            # A fork copies no threads: a job submitted here would never run, and whoever
            # waits for it would wait forever. The log belongs to the process that opened it.
            raise ClosedError(
                f"{what}: this log was opened in process {self._pid}, before a fork; open it again in this process"
            )
        return self._pool.submit(self._run, what, fn, *args)

    def _run(self, what: str, fn: Callable[..., _T], *args: Any) -> _T:
        if self.error is not None:
            raise RuntimeError(f"{what}: skipped after an earlier failure ({self.error[0]})")
        try:
            return fn(*args)
        except BaseException as exc:
            self.error = (what, exc)
            raise

    def close(self) -> None:
        """Wait for every job submitted, then stop the thread. Idempotent."""
        self._pool.shutdown(wait=True)


class Prior(NamedTuple):
    """What the writers before this one left in the ring (the writer reads it there; a seam).

    ``acked_seq``: the last seq a previous writer reported durable (stored before any
    producer is told, so nothing above it was acknowledged); 0 when not known.
    ``failed``: (first seq, last seq, what) of records a writer whose fsync failed had written
    but never made durable (``format.FSYNC_FAILURES`` names ``what``); None when none.
    """

    acked_seq: int
    failed: tuple[int, int, int] | None


class LostRange(NamedTuple):
    """Seqs lost to a failed fsync: written, never durable, never acknowledged."""

    first_seq: int
    last_seq: int
    what: int  # format.FSYNC_FAILURES
    path: str
    offset: int  # where they began in ``path`` (the durable end)


#: Frames are padded to a multiple of 8 bytes: up to 7 bytes follow a body.
_MAX_PAD = 7


class SegmentLog:
    """The segment files of ``config.dir``, open for writing by this process.

    ``write_body(body, count)`` and ``write_records(records)`` append frames and return the
    first seq they took; ``flush`` rotates a ``current.wal`` older than ``segment_duration``;
    ``sync`` makes every frame durable and returns ``durable_seq``; ``truncate_before`` and
    ``apply_retention`` remove completed segments; ``close`` syncs and releases the lock.

    From ``config`` it uses ``dir``, ``segment_size`` and ``segment_duration``.
    ``clock`` (wall, ns since the epoch), ``monotonic`` (ns, any origin), ``fsync`` and
    ``fdatasync`` are fault seams for tests; ages are measured on ``monotonic`` (see the
    module docstring, "Clocks"). ``fsync`` and ``fdatasync`` are also called from the background
    thread (module docstring, "Rotation"), so a seam must be thread-safe.
    ``at(name)`` is called at each named crash point of a rotation (module docstring,
    "Rotation"; the writer passes its own, which tests override to SIGKILL there).
    """

    # Class-level defaults, so close() and repr work on a half-built object.
    _closed = True
    _failed: BaseException | None = None
    _dirlock: DirLock | None = None
    #: The seqs this log declared lost when its fsync failed (set as it latches); None otherwise.
    lost: LostRange | None = None
    #: The lost range recovery continued after (a recorded hole at the end of the log); None otherwise.
    recovered_loss: LostRange | None = None
    _bg: _Background | None = None
    _spare: Future[int] | None = None  # the next segment, being prepared (a descriptor)
    _named: Future[None] | None = None  # the directory fsync after a rotation's last rename
    _seg: ActiveSegment  # set by _open_storage; absent while it has not succeeded
    log_id: bytes  # the log's identity (LOG_ID_SIZE bytes), in every segment header it writes
    _seg_born: int  # monotonic ns at which current.wal had age 0
    _closed_at: dict[str, int]  # completed segment -> monotonic ns at which it had age 0

    _id_pending: int | None = None  # a version 1 current.wal to give the log id to (records in it)

    def __init__(
        self,
        config: Config,
        serializer_name: str,
        *,
        clock: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], int] = time.monotonic_ns,
        fsync: FsyncFn = os.fsync,
        fdatasync: FsyncFn = _fileutil.fdatasync,
        prior: Callable[[], Prior | None] | None = None,
        at: Callable[[str], None] = _no_crash_point,
    ) -> None:
        config.validate()
        _check_name(serializer_name)
        self.config = config
        self.serializer_name = serializer_name
        self._clock = clock
        self._mono = monotonic
        self._fsync = fsync
        self._fdatasync = fdatasync
        self._at = at
        self._segment_size = config.segment_size
        self._duration_ns = int(config.segment_duration * 1e9)
        self.dir = check_directory(config.dir, create=True, group=config.group)
        # The directory as opened: ``check_place`` compares its path with this (``_dir_fd``
        # keeps it, so its inode number is not handed to another directory meanwhile).
        self._dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(self._dir_fd)
        self._place = (st.st_dev, st.st_ino)
        try:
            self._dirlock = DirLock(self.dir)
        except BaseException:
            os.close(self._dir_fd)
            raise
        try:
            # Asked holding the lock: no writer runs, so what the ring says is final.
            self._open_storage(prior() if prior is not None else None)
            seg = self._seg
            if seg.records and seg.durable_pos < seg.write_pos:
                # A writer killed before its fdatasync leaves frames that are only in the page
                # cache. They are not durable until someone syncs them; do it before calling
                # anything durable.
                try:
                    seg.sync(self._fdatasync)
                except OSError as exc:
                    raise self._fsync_failed(exc, FSYNC_OPEN) from exc
        except BaseException:
            opened: ActiveSegment | None = getattr(self, "_seg", None)
            if opened is not None:
                opened.close()
            self._dirlock.release()
            os.close(self._dir_fd)
            raise
        self._durable_seq = self._seg.next_seq - 1
        self._bg = _Background()
        self._prepare_next()
        self._closed = False
        if self._id_pending is not None:
            records, self._id_pending = self._id_pending, None
            try:
                self._give_id(records)
            except BaseException:
                self.close()
                raise

    # ----------------------------------------------------------------- recovery

    def _open_storage(self, prior: Prior | None) -> None:
        d = self.dir
        for name in _TMP_NAMES:
            try:
                os.unlink(os.path.join(d, name))
            except FileNotFoundError:
                pass
        # Also completes a directory fsync that failed in an earlier writer (its renames and
        # creates are in the directory in memory): nothing is acknowledged before it.
        fsync_dir(d, self._fsync)
        name = self.serializer_name
        holes = load_holes(d)
        entries, reason = reconcile(d, full=True, holes=holes)
        prev = None
        ids = _LogIds(d)
        for e in entries:
            path = os.path.join(d, e.file)
            header = read_header(path)
            self._check_serializer(header.serializer, path)
            ids.add(header, e.file)
            if (
                prev is not None
                and header.first_seq != prev.last_seq + 1
                and not holes.bridging(prev.last_seq + 1, header.first_seq)
            ):
                raise CorruptSegmentError(
                    f"{path}: starts at seq {header.first_seq} but {prev.file} ends at {prev.last_seq}; "
                    "segments must join without gaps",
                    path=path,
                    offset=32,
                )
            prev = e
        self._entries = entries
        # Ages from wall times written by earlier writers: taken once, here, clamped to >= 0
        # (a time in the future: the clock was stepped back since), then monotonic.
        wall0, mono0 = self._clock(), self._mono()
        self._closed_at = {e.file: mono0 - max(0, wall0 - e.closed_ns) for e in entries}
        # entries list every NNNNNN.wal in the directory, in number order
        self._next_number = segment_number(entries[-1].file) + 1 if entries else 1
        expected = entries[-1].last_seq + 1 if entries else None
        cur = os.path.join(d, CURRENT)
        prealloc = self._segment_size
        failed = prior.failed if prior is not None else None
        what = 0
        if failed is not None:
            what = failed[2]
            if holes.explains(failed[0], failed[1]) is not None:
                failed = None  # the failing writer recorded it
        if os.path.exists(cur):
            buf = read_file(cur)
            header = SegmentHeader.decode(buf[:SEGMENT_HEADER_SIZE], cur)
            self._check_serializer(header.serializer, cur)
            ids.add(header, CURRENT)
            if expected is not None and header.first_seq != expected and not holes.bridging(expected, header.first_seq):
                raise CorruptSegmentError(
                    f"{cur}: starts at seq {header.first_seq} but the last completed segment ends at {expected - 1}",
                    path=cur,
                    offset=32,
                )
            scan, frames = self._scan_current(buf, cur, header, holes)
            if failed is not None:
                # The ring says a writer's fsync failed and the range is not on record (its
                # disk refused that too, or it died first): record it before cutting anything.
                off = next((o for o, s, _ in frames if s >= failed[0]), scan.end)
                holes = self._record_hole(failed[0], failed[1], what, off, "in an earlier writer", holes)
                scan, frames = self._scan_current(buf, cur, header, holes)
            keep = None
            if scan.outcome == LOST:
                at = FRAME_HEADER.unpack_from(buf, scan.end)[2]  # the first seq of the frame it stopped at
                lost = (holes.explains(at, at) or [])[-1]
                keep = (
                    f"{CURRENT}.failed-{lost.first_seq}-{lost.last_seq}",
                    buf[scan.end : data_end(buf, scan.end, header.version)],
                )
            elif scan.outcome == TORN:
                keep = (f"{CURRENT}.torn-{scan.next_seq}", buf[scan.end : data_end(buf, scan.end, header.version)])
            seg = self._seg = ActiveSegment.recover(d, header, scan, prealloc, self._fsync, keep=keep)
            if scan.outcome == TORN:
                log.warning(
                    "%s: dropped a torn tail of %d bytes at offset %d (%s); continuing at seq %d%s",
                    cur,
                    scan.tail_bytes,
                    scan.end,
                    "a crash mid-write"
                    if scan.tail is None or scan.tail.later is None
                    else "unsynced writes that a power loss persisted out of order",
                    scan.next_seq,
                    f"; the dropped bytes are kept in {seg.kept}" if seg.kept else "",
                )
            elif scan.outcome == LOST:
                log.warning(
                    "%s: cut the frames from offset %d on: their seqs are recorded as lost in wal_holes.json "
                    "(a writer's fsync failed after writing them, so the page cache's copy is not trusted)%s",
                    cur,
                    scan.end,
                    f"; the cut bytes are kept in {seg.kept}" if seg.kept else "",
                )
            # The durable end: what the frames claim, or what the previous writer acknowledged.
            acked = prior.acked_seq if prior is not None else 0
            floor = max([seg.durable_pos] + [end for _, s, end in frames if end <= seg.write_pos and s <= acked])
            seg.durable_pos = floor
            seg.durable_next = next((s for o, s, _ in frames if o >= floor), seg.next_seq)
            self.log_id = ids.chosen()
            self._seg_born = mono0 - max(0, wall0 - header.created_ns)
            if header.log_id is None:
                self._id_pending = scan.records  # given once the background thread runs (_rotate needs a spare)
        else:
            if failed is not None:
                holes = self._record_hole(failed[0], failed[1], what, 0, "in an earlier writer", holes)
            # Only the holder of wal.lock gets here, so a log's id is chosen exactly once:
            # it exists from the moment current.wal does (created whole, then renamed in).
            self.log_id = ids.chosen()
            first = expected if expected is not None else 1
            self._seg = ActiveSegment.create(d, SegmentHeader(name, first, wall0, self.log_id), prealloc, self._fsync)
            self._seg_born = mono0
        # Seqs go on after recorded holes that start where the log ends (a failed fsync's
        # range): a seq once given to a record is never given to another.
        seg = self._seg
        nxt = seg.next_seq
        while (found := holes.explains(nxt, nxt)) is not None:
            nxt = found[-1].last_seq + 1
        if nxt != seg.next_seq:
            self.recovered_loss = LostRange(seg.next_seq, nxt - 1, what, cur, seg.write_pos)
            log.warning("%s: seqs %d-%d are recorded as lost; continuing at seq %d", d, seg.next_seq, nxt - 1, nxt)
            if seg.durable_next == seg.next_seq:
                seg.durable_next = nxt
            seg.next_seq = nxt
        if reason:
            if reason != "missing" or entries:
                log.warning("%s: wal_index.json %s; rebuilt it from the segment files", d, reason)
            write_index(d, name, entries, self._fsync)

    def _scan_current(
        self, buf: bytes, cur: str, header: SegmentHeader, holes: Holes
    ) -> tuple[SegmentScan, list[tuple[int, int, int]]]:
        """Scan the bytes of current.wal as a crash left them; (scan, [(offset, first seq, end)
        of each valid frame]). Raises FormatError, saying the writer refuses, on corruption."""
        scan = SegmentScan(buf, cur, sealed=False, next_seq=header.first_seq, holes=holes, header=header)
        try:
            frames = [(o, s, o + FRAME_HEADER_SIZE + align8(n)) for o, s, _, n in scan.frames()]
        except FormatError as exc:
            # Same error, type and coordinates; only the message says what the writer does.
            exc.args = (
                (
                    f"{exc} -- refusing to open for writing: this is not a torn tail, and cutting it away "
                    "could lose valid records (run `ringwal repair --dir DIR` to salvage every valid batch "
                    "and record the lost seqs)"
                ),
            )
            raise
        return scan, frames

    def _record_hole(self, first: int, last: int, what: int, offset: int, whose: str, holes: Holes) -> Holes:
        """Record seqs ``first``..``last`` lost to a failed fsync in wal_holes.json (durably);
        the holes now on record. Raises OSError when that cannot be done."""
        copy = f"{CURRENT}.failed-{first}-{last}"
        hole = Hole(
            first,
            last,
            CURRENT,
            offset,
            f"{FSYNC_FAILURES.get(what, FSYNC_FAILURES[0])} failed ({whose}) after these records were written: "
            "they were never durable and never acknowledged",
            copy if os.path.exists(os.path.join(self.dir, copy)) else "",
            self._clock(),
        )
        holes = holes.with_added([hole])
        write_holes(self.dir, holes, self._fsync)
        log.warning("%s: recorded seqs %d-%d as lost in wal_holes.json: %s", self.dir, first, last, hole.reason)
        return holes

    def _fsync_failed(self, exc: BaseException, what: int) -> LogFailedError:
        """An fsync of current.wal failed: declare what it should have made durable lost
        (module docstring, "When fsync fails"), latch, and return the error to raise.

        Each step is best effort and says so in the log when it fails: the disk may refuse
        more. The writer's ring words and the next writer's recovery cover what is left."""
        seg = self._seg
        first, last = seg.durable_next, seg.next_seq - 1
        fd = seg.fd
        if self._failed is None and last >= first and fd is not None:
            d, pos = self.dir, seg.durable_pos
            self.lost = LostRange(first, last, what, seg.path, pos)
            name = f"{CURRENT}.failed-{first}-{last}"
            try:
                data = os.pread(fd, seg.write_pos - pos, pos)
                keep_aside(d, name, data, _fsync_quietly(self._fsync))  # a copy to look at, not a record
            except OSError as e:
                log.error("%s: could not keep a copy of the bytes of seqs %d-%d: %r", d, first, last, e)
            try:
                self._record_hole(first, last, what, pos, "in the writer that wrote them", load_holes(d))
            except (OSError, FormatError) as e:
                log.error(
                    "%s: could not record seqs %d-%d as lost in wal_holes.json (%r); the ring tells the next writer",
                    d, first, last, e,
                )  # fmt: skip
            try:
                seg.cut_back(pos)
            except OSError as e:
                log.error("%s: could not cut current.wal back to offset %d: %r", d, pos, e)
        err = self._fail(exc, FSYNC_FAILURES[what])
        lost = self.lost
        if lost is not None:
            err = LogFailedError(
                f"{err}; seqs {lost.first_seq}-{lost.last_seq} were written but never durable: recorded as lost "
                f"in wal_holes.json, never acknowledged",
                path=lost.path,
                first_seq=lost.first_seq,
                last_seq=lost.last_seq,
            )
        return err

    def _give_id(self, records: int) -> None:
        """``current.wal`` is a version 1 segment (no log id): make a version 2 one the active
        segment, so that the log's id is on disk before any ring is named after it. With
        records, by a rotation (its crash windows, ``_rotate``); empty, by creating a new
        ``current.wal`` with the same first seq over it (a crash before the rename leaves the
        old one, and the next writer does this again)."""
        if records:
            self._rotate()
        else:
            seg = self._seg
            seg.close()
            self._seg = ActiveSegment.create(
                self.dir,
                SegmentHeader(self.serializer_name, seg.first_seq, self._clock(), self.log_id),
                self._segment_size,
                self._fsync,
            )
            self._seg_born = self._mono()
        log.info("%s: the log was written before log ids (format 1); its id is now %s", self.dir, self.log_id.hex())

    def _check_serializer(self, found: str, path: str) -> None:
        if found != self.serializer_name:
            raise SerializerMismatchError(
                f"{path}: the log was written with serializer {found!r} but Config.serializer is "
                f"{self.serializer_name!r}; open it with the serializer named in the log",
                path=path,
                offset=16,
            )

    # ----------------------------------------------------------------- writing frames

    def write_body(self, body: bytes, count: int) -> int:
        """Write ``count`` records already in body layout as one frame; return its first seq.

        The writer process's path: the body comes straight from the ring. Rotates first when
        the segment is too old or the frame would not fit (a body larger than a segment gets
        a segment of its own). A body or count that cannot be a frame is misuse: ValueError,
        and the log carries on.
        """
        self.check_open()
        if count < 1 or not 0 < len(body) <= MAX_FRAME_BODY:
            raise ValueError(
                f"a frame holds 1..{MAX_FRAME_BODY} bytes of at least one record, got {len(body)} bytes, count={count}"
            )
        try:
            if self._segment_expired():
                self._rotate()
            seg = self._seg
            if seg.records and seg.write_pos + FRAME_HEADER_SIZE + len(body) + _MAX_PAD > self._segment_size:
                self._rotate()
                seg = self._seg
            first = seg.next_seq
            seg.append_frame(body, count)
        except LogFailedError:
            raise  # latched by _fsync_failed: keep its cause (the OSError)
        except BaseException as exc:
            raise self._fail(exc, "writing to current.wal") from exc
        self._write_back(seg)
        return first

    def write_records(self, records: Sequence[bytes]) -> int:
        """Write records already in the on-disk record layout (length prefix included, as
        ``Serializer.frame`` makes them), in order; return the seq of the first.

        They go in as few frames as fit: each frame ends before ``segment_size``, rotating when
        the next record does not fit (a record larger than a segment gets a segment of its
        own). Rotates first when the segment is too old. An empty list writes nothing.
        """
        self.check_open()
        first = self._seg.next_seq
        total = sum(map(len, records))
        try:
            if records and self._segment_expired():
                self._rotate()
            seg = self._seg
            i, n = 0, len(records)
            while i < n:
                room = min(self._segment_size - seg.write_pos - FRAME_HEADER_SIZE - _MAX_PAD, MAX_FRAME_BODY)
                if total <= room:
                    j = n
                    size = total
                else:
                    j, size = i, 0
                    while j < n and size + len(records[j]) <= room:
                        size += len(records[j])
                        j += 1
                    if j == i:
                        if seg.records:
                            self._rotate()
                            seg = self._seg
                            continue
                        size = len(records[i])  # larger than a segment: it gets one of its own
                        j = i + 1
                body = records[i] if j == i + 1 else b"".join(records[i:j])
                seg.append_frame(body, j - i)
                total -= size
                i = j
        except LogFailedError:
            raise  # latched by _fsync_failed: keep its cause (the OSError)
        except BaseException as exc:
            raise self._fail(exc, "writing to current.wal") from exc
        self._write_back(seg)
        return first

    def _write_back(self, seg: ActiveSegment) -> None:
        """Have the kernel start writing what gathered in current.wal (``segment.WRITEBACK_EVERY``).
        A failure is taken as a failed fdatasync (poison on doubt): the frames after the
        durable end are declared lost, never acknowledged."""
        try:
            seg.write_back()
        except OSError as exc:
            raise self._fsync_failed(exc, FSYNC_DATASYNC) from exc

    def flush(self) -> None:
        """Rotate ``current.wal`` if it holds records and is older than ``segment_duration``.

        Frames reach the OS as they are written, so this is all there is to flush; call it
        periodically so that an idle log still closes its segment on time.
        """
        self.check_open()
        self._check_background()
        self._rotate_if_expired()

    def sync(self) -> int:
        """Make every written frame durable; return the last durable seq (0 for an empty log).

        Rotates an expired ``current.wal`` first, as ``flush`` does. Never retries a failed
        fdatasync: the log latches instead.
        """
        self.check_open()
        self._rotate_if_expired()
        seg = self._seg
        if self._durable_seq != seg.next_seq - 1:
            try:
                seg.sync(self._fdatasync)
            except OSError as exc:
                raise self._fsync_failed(exc, FSYNC_DATASYNC) from exc
            except LogFailedError:
                raise  # latched by _fsync_failed: keep its cause (the OSError)
            except BaseException as exc:
                raise self._fail(exc, "fdatasync of current.wal") from exc
            # A record is acknowledged only once a power cut cannot take back the name of its file.
            self._await_named()
            self._durable_seq = seg.next_seq - 1
        self._check_background()
        return self._durable_seq

    def continue_at(self, seq: int) -> None:
        """Make ``seq`` the seq of the next record: the log goes on after a gap (restore uses
        it to reproduce a source log's holes, and to start a log at a source's first seq).

        A log that holds no record yet simply starts at ``seq``. Otherwise every seq from
        ``last_seq + 1`` to ``seq - 1`` must already be recorded in ``wal_holes.json`` (read
        again here): seqs are gap-free except over recorded holes, so a gap is written down
        before it is made. ValueError (nothing changed) when it is not, or ``seq`` is not
        after ``last_seq``.

        Steps and crash windows: with records in ``current.wal`` it is a rotation whose new
        ``current.wal`` starts at ``seq`` (the windows of ``_rotate``: a crash leaves the old
        ``current.wal`` to continue, or a completed segment and none, or both segments; the
        index and the segment headers then join over the recorded holes). Without records,
        the empty ``current.wal`` is replaced by a new one built aside (``current.wal.tmp``,
        fsynced, renamed over it, directory fsynced): a crash leaves the old or the new one.
        Afterwards everything before ``seq`` is durable (sealed or in completed segments).
        """
        check_seq(seq, "continue_at's seq")
        self.check_open()
        nxt = self._seg.next_seq
        if seq == nxt:
            return
        if seq < nxt:
            raise ValueError(f"{self.dir}: continue_at({seq}) would reuse seqs; the log is at seq {nxt - 1}")
        if self._entries or self._seg.records:
            holes = load_holes(self.dir)
            if not holes.bridging(nxt, seq):
                raise ValueError(
                    f"{self.dir}: seqs {nxt}-{seq - 1} are not recorded as holes in wal_holes.json; "
                    f"record them (holes.write_holes) before continuing the log at seq {seq}"
                )
        try:
            if self._seg.records:
                self._rotate(next_first=seq)
            else:
                old = self._seg
                # Crash before the rename: the old empty current.wal and a stray .tmp (deleted
                # at the next open); after it: the new one. Both are complete.
                self._seg = ActiveSegment.create(
                    self.dir,
                    SegmentHeader(self.serializer_name, seq, self._clock(), self.log_id),
                    self._segment_size,
                    self._fsync,
                )
                old.close()
                self._seg_born = self._mono()
        except LogFailedError:
            raise  # latched by _fsync_failed: keep its cause (the OSError)
        except BaseException as exc:
            raise self._fail(exc, f"continuing the log at seq {seq}") from exc
        self._durable_seq = seq - 1

    # ----------------------------------------------------------------- rotation

    def _segment_expired(self) -> bool:
        """current.wal holds records and is older than segment_duration (monotonic age)."""
        return bool(self._seg.records) and self._mono() - self._seg_born >= self._duration_ns

    def _rotate_if_expired(self) -> None:
        if self._segment_expired():
            try:
                self._rotate()
            except LogFailedError:
                raise  # latched by _fsync_failed: keep its cause (the OSError)
            except BaseException as exc:
                raise self._fail(exc, "rotating current.wal") from exc

    def _rotate(self, next_first: int | None = None) -> None:
        """Close current.wal as the next NNNNNN.wal and continue in the prepared spare, which
        starts at ``next_first`` (default: the next seq; a larger one only over recorded
        holes, see ``continue_at``). The module docstring, "Rotation", names the crash window
        after each step."""
        d = self.dir
        seg = self._seg
        name = segment_name(self._next_number)
        target = os.path.join(d, name)
        if os.path.exists(target):
            raise CorruptSegmentError(f"{target} already exists; refusing to overwrite a segment", path=target)
        try:
            new = ActiveSegment.from_spare(
                d,
                self._take_spare(),
                SegmentHeader(
                    self.serializer_name,
                    seg.next_seq if next_first is None else next_first,
                    self._clock(),
                    self.log_id,
                ),
            )
        except BaseException as exc:
            raise self._fail(exc, "rotating current.wal") from exc
        # Steps 1 and 2 run at once: the new header's fdatasync on the background thread
        # while this one seals; both are done before step 3.
        header = self._background().submit("the fdatasync of the new header in next.wal.tmp", new.sync, self._fdatasync)
        # 1. Crash after this: a complete, fsynced current.wal that the next open continues.
        try:
            seg.seal(self._fsync)
        except OSError as exc:
            _wait(header)
            new.close()
            raise self._fsync_failed(exc, FSYNC_SEAL) from exc
        self._at("sealed")
        # 2. Crash after this: as after 1; next.wal.tmp holds a header nobody reads.
        _wait(header)
        try:
            self._check_background()
        except BaseException:
            new.close()
            raise
        self._at("header")
        try:
            # 3. Crash after the rename: NNNNNN.wal, no current.wal; the next open removes the
            #    spare and starts a current.wal after NNNNNN.wal. Either name may be what a
            #    power cut shows until the directory fsync, which must come before step 4.
            os.rename(seg.path, target)
            fsync_dir(d, self._fsync)
        except BaseException as exc:
            new.close()
            raise self._fail(exc, "rotating current.wal") from exc
        self._at("renamed")
        self._next_number += 1
        entry = IndexEntry(name, seg.first_seq, seg.next_seq - 1, seg.write_pos, seg.header.created_ns, self._clock())
        self._entries.append(entry)
        self._closed_at[name] = self._mono()
        seg.close()
        self._seg = new
        self._seg_born = self._mono()
        # 4. Crash after the rename (a process): the new, empty current.wal, continued. A
        #    power cut before step 5's directory fsync may show next.wal.tmp instead: as 3.
        try:
            new.become_current()
        except BaseException as exc:
            raise self._fail(exc, "rotating current.wal") from exc
        self._at("current")
        # 5. In the background: current.wal's name made durable (sync() waits for it), the
        #    next spare, the index. A crash before the index is written: a stale index,
        #    rebuilt (with a warning) on the next open.
        bg = self._background()
        self._named = bg.submit("the directory fsync after a rotation", self._name_current)
        self._prepare_next()
        self._write_index()
        log.debug("rotated %s (seqs %d-%d, %d bytes)", name, entry.first_seq, entry.last_seq, entry.size)

    # ----------------------------------------------------------------- the background thread

    def _background(self) -> _Background:
        bg = self._bg
        if bg is None:
            raise ClosedError(f"the log in {self.dir} is closed")
        return bg

    def _name_current(self) -> None:
        fsync_dir(self.dir, self._fsync)
        self._at("named")

    def _prepare_next(self) -> None:
        """Have the background thread prepare the next segment (next.wal.tmp)."""
        self._spare = self._background().submit("preparing next.wal.tmp", self._make_spare)

    def _make_spare(self) -> int:
        fd = prepare_spare(self.dir, self._segment_size, self._fsync)
        self._at("spare")
        return fd

    def _take_spare(self) -> int:
        """The prepared spare's descriptor (waiting for the thread if it is still at it)."""
        spare, self._spare = self._spare, None
        if spare is not None:
            with contextlib.suppress(BaseException):
                return spare.result()  # a failure is in bg.error
        self._check_background()
        raise LogFailedError(f"{self.dir}: no next segment was prepared")  # not reached: the thread failed

    def _write_index(self, *, wait: bool = False) -> None:
        """Replace wal_index.json with the current entries on the background thread (in order
        with every other write of it); with ``wait``, return once it is replaced."""
        entries = list(self._entries)

        def write() -> None:
            write_index(self.dir, self.serializer_name, entries, self._fsync)
            self._at("indexed")

        done = self._background().submit("writing wal_index.json", write)
        if wait:
            with contextlib.suppress(BaseException):
                done.result()  # a failure is in bg.error
            self._check_background()

    def _check_background(self) -> None:
        """Latch with the background thread's first failure, if it had one."""
        bg = self._bg
        if bg is not None and bg.error is not None:
            what, exc = bg.error
            raise self._fail(exc, what) from exc

    def _await_named(self) -> None:
        """Wait until current.wal's name is durable (step 5 of the last rotation)."""
        named, self._named = self._named, None
        if named is not None:
            with contextlib.suppress(BaseException):
                named.result()  # a failure (its own or an earlier job's) is in bg.error
            self._check_background()

    # ----------------------------------------------------------------- retention

    def truncate_before(self, seq: int) -> tuple[list[IndexEntry], int]:
        """Remove the completed segments whose last seq is below ``seq``; never current.wal.

        Returns the entries removed and the first seq still in the log. Order: the files are
        unlinked oldest first, then the directory is fsynced, then the index is replaced.
        A crash in between leaves a contiguous suffix of the log (never a gap) and an index
        that names files which are gone: stale, rebuilt by the next writer with a warning;
        readers only ever look at files that exist. With ``config.keep_unshipped`` no segment
        holding a seq above the shipped seq (``wal_shipped.json``) goes.
        """
        check_seq(seq, "truncate_before's seq")
        self.check_open()
        n = 0
        while n < len(self._entries) and self._entries[n].last_seq < seq:
            n += 1
        return self._remove_oldest(n)

    def apply_retention(self, max_bytes: int | None, max_age: float | None) -> tuple[list[IndexEntry], int]:
        """Remove the oldest completed segments beyond ``max_bytes`` in all or closed more than
        ``max_age`` seconds ago (the active segment counts towards the bytes, never goes).

        The age is monotonic within this writer's life (module docstring, "Clocks"): a
        wall-clock step while the log is open neither removes young segments nor keeps old ones.
        With ``config.keep_unshipped`` no segment holding a seq above the shipped seq
        (``wal_shipped.json``, read at each call) goes, whatever the limits say.
        """
        self.check_open()
        entries = self._entries
        n = 0
        if max_bytes is not None:
            total = sum(e.size for e in entries) + self._seg.write_pos
            while n < len(entries) and total > max_bytes:
                total -= entries[n].size
                n += 1
        if max_age is not None:
            limit = int(max_age * 1e9)
            now = self._mono()
            while n < len(entries) and now - self._closed_at[entries[n].file] > limit:
                n += 1
        return self._remove_oldest(n)

    def _remove_oldest(self, n: int) -> tuple[list[IndexEntry], int]:
        if n and self.config.keep_unshipped:
            # Keep every segment holding a record the stream has not acknowledged (shipped.py).
            shipped = shipped_seq(self.dir)
            while n and self._entries[n - 1].last_seq > shipped:
                n -= 1
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
                for e in victims:
                    self._closed_at.pop(e.file, None)
                # A crash before this: a stale index naming files that are gone, rebuilt by the
                # next writer. Written by the background thread (never two writes at once),
                # waited for: retention is not on the writer's hot path.
                self._write_index(wait=True)
            except LogFailedError:
                raise  # latched already: keep its cause
            except BaseException as exc:
                raise self._fail(exc, "removing old segments") from exc
        return victims, self.first_seq

    # ----------------------------------------------------------------- state

    @property
    def first_seq(self) -> int:
        """The seq of the first record still in the log (1 unless retention removed some)."""
        return self._entries[0].first_seq if self._entries else self._seg.first_seq

    @property
    def last_seq(self) -> int:
        """The seq of the last record written (0 when none)."""
        return self._seg.next_seq - 1

    @property
    def frame_room(self) -> int:
        """The largest body ``write_body`` puts in ``current.wal`` without rotating first
        (0 when it is full): a writer that sizes its frames to this fills segments to
        ``segment_size`` instead of leaving the rest of one unused."""
        return max(0, self._segment_size - self._seg.write_pos - FRAME_HEADER_SIZE - _MAX_PAD)

    @property
    def fresh_frame_room(self) -> int:
        """``frame_room`` of a new, empty ``current.wal``: the largest body that keeps a
        segment that starts with it within ``segment_size`` (0 when even a header does not fit)."""
        return max(0, self._segment_size - SEGMENT_HEADER_SIZE - FRAME_HEADER_SIZE - _MAX_PAD)

    def check_place(self) -> None:
        """Raise LogGoneError when ``dir`` no longer names the directory this log was opened
        in: it was removed (``rm -r``), or moved or replaced (``mv``). Costs a stat and an
        fstat. A writer that went on would write where no reader looks (or into files that
        are deleted), so the writer process calls this at least every PLACE_INTERVAL."""
        try:
            st = os.stat(self.dir)
            if (st.st_dev, st.st_ino) == self._place:
                return
        except (FileNotFoundError, NotADirectoryError):
            pass
        removed = os.fstat(self._dir_fd).st_nlink == 0
        raise LogGoneError(
            f"{self.dir}: the log directory was {'removed' if removed else 'moved or replaced'} while this writer "
            "served it; the writer stops (records not yet durable may be lost): open the log where it is now",
            path=self.dir,
        )

    @property
    def durable_seq(self) -> int:
        """The seq of the last record known to be on stable storage."""
        return self._durable_seq

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def failed(self) -> BaseException | None:
        """The error that latched the log, or None while it accepts work."""
        return self._failed

    # ----------------------------------------------------------------- failure and lifecycle

    def check_open(self) -> None:
        """Raise ClosedError after ``close``, LogFailedError once a failure latched the log."""
        if self._closed:
            raise ClosedError(f"the log in {self.dir} is closed")
        if self._failed is not None:
            raise LogFailedError(
                f"{self.dir}: an earlier write or fsync failed ({self._failed!r}); close and reopen the log"
            ) from self._failed

    def _fail(self, exc: BaseException, what: str) -> LogFailedError:
        if isinstance(exc, LogFailedError) and self._failed is not None:
            return exc  # raised by _fsync_failed, which latched already
        if self._failed is None:
            self._failed = exc
            log.error("%s: %s failed: %r; the log refuses further writes until reopened", self.dir, what, exc)
        return LogFailedError(f"{self.dir}: {what} failed ({exc!r}); the log accepts no more work: close and reopen it")

    def close(self) -> None:
        """Sync (unless the log failed), give back current.wal's preallocated space, wait for
        the background thread (the index), close current.wal and remove the spare, release the
        lock. Idempotent. A closed log holds its frames and no preallocated space; the next
        writer preallocates again."""
        if self._closed:
            return
        try:
            if self._failed is None:
                self.sync()
                # After the sync: what goes is zeros past the last frame. Not fsynced: after a
                # power cut either length reads the same (zeros are the end of the data).
                try:
                    self._seg.trim()
                except OSError as exc:
                    log.warning("%s: could not give back current.wal's preallocated space: %r", self.dir, exc)
        finally:
            self._closed = True
            self._seg.close()
            self._stop_background()
            if self._dirlock is not None:
                self._dirlock.release()
            os.close(self._dir_fd)

    def abandon(self) -> None:
        """Close without syncing (the directory is gone: ``check_place``); release the lock.
        Idempotent; the log is closed afterwards."""
        if self._closed:
            return
        self._closed = True
        self._seg.close()
        if self._dirlock is not None:
            self._dirlock.release()
        os.close(self._dir_fd)

    def _stop_background(self) -> None:
        bg, self._bg = self._bg, None
        if bg is None:
            return
        bg.close()
        spare, self._spare = self._spare, None
        if spare is not None and spare.exception() is None:
            os.close(spare.result())
            try:
                os.unlink(os.path.join(self.dir, SPARE))
            except OSError:
                pass  # a stray spare is removed by the next open
        if bg.error is not None and self._failed is None:
            what, exc = bg.error  # after the last sync: the index; the next open rebuilds it
            log.error("%s: %s failed while closing: %r", self.dir, what, exc)

    def __enter__(self) -> SegmentLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("failed" if self._failed else "open")
        seg = getattr(self, "_seg", None)
        last = seg.next_seq - 1 if seg is not None else 0
        name = getattr(self, "serializer_name", "?")
        return f"<SegmentLog {getattr(self, 'dir', '?')} {state} serializer={name!r} last_seq={last}>"


def _wait(job: Future[Any]) -> None:
    """Wait for a background job; its failure, if any, is in ``_Background.error``."""
    with contextlib.suppress(BaseException):
        job.result()


def _fsync_quietly(fsync: FsyncFn) -> FsyncFn:
    def quiet(fd: int) -> None:
        try:
            fsync(fd)
        except OSError as exc:
            log.error("an fsync of a kept copy failed too: %r", exc)

    return quiet


class _LogIds:
    """The log ids in a directory's segment headers, gathered at open: they must agree."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.first: tuple[bytes, str] | None = None

    def add(self, header: SegmentHeader, file: str) -> None:
        lid = header.log_id
        if lid is None:
            return  # a version 1 segment: written before log ids
        if self.first is None:
            self.first = (lid, file)
        elif self.first[0] != lid:
            path = os.path.join(self.directory, file)
            raise CorruptSegmentError(
                f"{path} belongs to log {lid.hex()}, but {self.first[1]} to log {self.first[0].hex()}: segments of "
                "two logs are in one directory; move the files of the other log away (ringwal.log_id and "
                "`ringwal verify` name each file's log)",
                path=path,
                offset=48,
            )

    def chosen(self) -> bytes:
        """The log's id: the one its headers carry, or a new random one (the log has none yet)."""
        return self.first[0] if self.first is not None else secrets.token_bytes(LOG_ID_SIZE)


def _check_name(name: object) -> None:
    if not (isinstance(name, str) and name.isascii() and 0 < len(name) <= SERIALIZER_NAME_SIZE):
        raise ConfigError(
            f"serializer name must be 1-{SERIALIZER_NAME_SIZE} ASCII characters, got {name!r}; "
            "it is written into every segment header"
        )
