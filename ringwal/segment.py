"""Segment files: the one frame reader (``SegmentScan``) and the active segment.

Vocabulary: frames, offsets and sync. A segment is ``current.wal`` (the active one, written
to) or ``NNNNNN.wal`` (completed: sealed, read-only, never written again).

One reader of frames
    :class:`SegmentScan` is the only code that walks frames. Replay, follow, verify, stats,
    repair, the index rebuild and the writer's recovery all run it and differ only in the
    policy they give it (as leveldb's ``log::Reader`` reports to a ``Reporter``, and etcd's
    decoder serves ReadAll, Verify and Repair):

    * ``sealed``: a completed segment is never torn, so any bad byte in it is damage;
    * ``written``: for ``current.wal``, whether a writer may still be appending and how far
      it has written (the live-reading rule below); None judges the bytes as a crash left them;
    * ``reporter``: what to do with damage and with a seq that does not continue. The default
      raises; repair cuts the damage out and goes on;
    * ``upto``: stop before the first frame holding a seq past it (follow's durable bound).

    A scan over a file descriptor is incremental: ``frames()`` can be called again and goes
    on from ``end`` with fresh bytes, so a follower reads only what is new.

Reading outcomes, decided once here (``docs/FORMAT.md``, "Reading"):

* clean end: the data ends in zero-filled space or exactly at end of file;
* torn tail: an invalid or incomplete frame with no valid frame anywhere after it, in
  ``current.wal`` with no writer holding it. It is what a writer dying mid-write leaves;
  readers stop there without error and the next writer truncates it (keeping the dropped
  bytes beside the file). In a version 2 ``current.wal`` also damage followed by valid
  frames, when it lies at or after the largest durable end any valid frame claims (its
  ``synced`` field): power loss persisted unsynced writes out of order, nothing there was
  ever acknowledged (docs/FORMAT.md, "Power loss reorders unsynced writes");
* lost: in ``current.wal``, a valid frame whose seqs ``wal_holes.json`` records as lost.
  A writer whose fsync failed recorded them so (docs/FORMAT.md, "When fsync fails"): the
  bytes are what the page cache held, not what the disk has. The scan stops there as at an
  end; the next writer cuts them away;
* not yet written (UNWRITTEN): in ``current.wal`` while a writer holds ``wal.lock``, an
  invalid, zero or incomplete frame where a seq above the writer's written seq is due. The
  writer is writing it; readers stop there (follow looks again later);
* corruption: an invalid frame followed by a valid one (no writer; in version 2 only below
  the largest durable end a valid frame claims), an invalid frame where
  a seq the writer had already written is due (live), any invalid frame in a completed
  segment, or a valid frame whose seq does not continue the previous one. Raised as
  CorruptRecordError or CorruptSegmentError with the file and byte offset.

Reading a live ``current.wal`` (the rule, in full in ``docs/FORMAT.md``)
    A ``read`` of the file is not atomic with the writer's ``pwritev``: the page cache copies
    page by page, so one read can hold a frame's old zeros next to later frames' new bytes.
    The crash rule ("bad followed by valid is corruption") is therefore applied only to bytes
    no writer can be changing. Whenever a scan meets anything but a valid frame or a clean end
    in ``current.wal`` it asks ``written()`` *first* and only then reads that region again;
    the writer stores its written seq in the ring after ``pwritev`` returns, so every frame up
    to that seq is complete in what is read afterwards. A frame that is still bad where a seq
    <= the written seq is due is re-read a few times (``REREAD_DELAYS``, about 1 s in all);
    if ``current.wal`` was renamed meanwhile, the rest of the file is read as the sealed
    segment it became; otherwise it is corruption.

Sealing and creating (the rotation steps that touch segment files; ``seglog.py`` orders them
and names the crash window after each):

* ``prepare_spare`` (ahead of time, off the writer's path): ``next.wal.tmp`` is created,
  preallocated to ``segment_size`` and fsynced. The name is never a segment's, so no reader
  opens it and recovery removes it.
* ``seal``: ftruncate the preallocated tail away, fsync. A crash here leaves a complete
  ``current.wal`` that recovery simply continues.
* ``ActiveSegment.from_spare``: the new segment's header is written into the spare and
  fdatasynced (an overwrite of allocated space), so ``current.wal`` never names a file
  whose header is not durable.
* rename ``current.wal`` -> ``NNNNNN.wal``, fsync the directory (before the next rename:
  that one must never become durable without this one).
* ``become_current``: rename ``next.wal.tmp`` -> ``current.wal``. Its directory fsync may
  come later, but before anything in the new segment is acknowledged.
* ``ActiveSegment.create`` (a new log, or no ``current.wal`` at open): built as
  ``current.wal.tmp`` (header written, space preallocated, fsynced), renamed into place, the
  directory fsynced. A crash leaves at most a stray ``.tmp`` that the next writer deletes.

So a ``current.wal`` always has a valid, durable header.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._fileutil import Access, FsyncFn, create_file, fsync_dir, preallocate, start_writeback, writer_holds_lock
from .errors import ClosedError, CorruptRecordError, CorruptSegmentError, FormatError, NoLogError
from .format import (
    FORMAT_VERSION,
    FRAME_BAD,
    FRAME_END,
    FRAME_HEADER_SIZE,
    FRAME_INCOMPLETE,
    FRAME_OK,
    SEGMENT_HEADER_SIZE,
    SegmentHeader,
    align8,
    encode_frame,
    frame_durable_end,
    parse_frame,
)
from .holes import Holes

if TYPE_CHECKING:
    from .ring import RingView

__all__ = [
    "ActiveSegment",
    "CLEAN",
    "CURRENT",
    "DAMAGED",
    "Damage",
    "LOST",
    "LiveWriter",
    "NO_WRITER",
    "REREAD_DELAYS",
    "Reporter",
    "SPARE",
    "SegmentScan",
    "TORN",
    "UNWRITTEN",
    "find_valid_frame",
    "data_end",
    "keep_aside",
    "list_segments",
    "log_id",
    "max_durable_claim",
    "prepare_spare",
    "read_fd",
    "read_file",
    "read_header",
    "read_log_id",
    "require_log",
    "scan_file",
    "segment_name",
    "segment_number",
]

CURRENT = "current.wal"
#: The next segment, prepared ahead of a rotation (``prepare_spare``). Never a segment name
#: (neither ``current.wal`` nor ``NNNNNN.wal``), so no reader ever opens it; a writer removes
#: one it finds at open (docs/FORMAT.md, "Rotation").
SPARE = "next.wal.tmp"
_SEGMENT_RE = re.compile(r"^(\d{6,})\.wal$")

#: ``SegmentScan.outcome`` after a walk.
CLEAN = "clean"  # zero-filled space or end of file: nothing more was ever written here
TORN = "torn"  # current.wal, no writer: an invalid tail with nothing valid after it (a crash)
UNWRITTEN = "unwritten"  # current.wal, a writer holds it: the next frame is not written yet
DAMAGED = "damaged"  # the reporter chose to stop at damage (repair cuts it off)
LOST = "lost"  # current.wal: valid frames holding seqs wal_holes.json records as lost (a failed fsync)

#: What ``written()`` returns when no writer holds the directory (the crash rule applies).
NO_WRITER = -1
_NOT_ASKED = -2  # ``written()`` not asked yet during this walk

#: The seam through which a scan asks how far a live writer has written: the last seq whose
#: frame the writer has finished writing (its ``pwritev`` returned); None when a writer holds
#: ``wal.lock`` but that seq cannot be read (no ring, or it is starting); NO_WRITER when no
#: writer holds the lock. :class:`LiveWriter` is the real one; tests pass plain functions.
WrittenFn = Callable[[], "int | None"]

#: Pauses before each re-read of a frame that reads bad although the writer has written it
#: (or may be writing it, with no written seq to go by): about 1 s in all. A page the kernel
#: was still copying settles in microseconds, so only real damage outlasts them.
REREAD_DELAYS: tuple[float, ...] = (0.0, 0.002, 0.01, 0.04, 0.15, 0.3, 0.5)

#: Bytes a scan that does not read a whole file loads at a time (a larger frame is read whole).
READ_CHUNK = 1 << 20

#: The active segment asks the kernel to start writing its frames to the disk every this many
#: bytes (``ActiveSegment.write_back``), so that the fsync that seals it at a rotation, and a
#: group commit's fdatasync, find little left to write: the writer does not stall for a
#: whole segment's worth of writes at each rotation (RocksDB's ``wal_bytes_per_sync``).
WRITEBACK_EVERY = 1 << 20

_FileState = tuple[int, int, int, int, int]  # offset, inode, size, mtime, ctime


def segment_name(number: int) -> str:
    return f"{number:06d}.wal"


def segment_number(name: str) -> int:
    """The number of a completed segment's file name (``000042.wal`` -> 42)."""
    m = _SEGMENT_RE.match(name)
    if m is None:
        raise ValueError(f"{name!r} is not a segment file name")
    return int(m.group(1))


def list_segments(directory: str) -> list[tuple[int, str]]:
    """Completed segments as (number, file name), in number order."""
    out = []
    for name in os.listdir(directory):
        m = _SEGMENT_RE.match(name)
        if m:
            out.append((int(m.group(1)), name))
    out.sort()
    return out


def require_log(directory: str | os.PathLike[str]) -> str:
    """``directory`` as an absolute path, when it holds a ringwal log: a ``current.wal`` or a
    completed segment (``NNNNNN.wal``). Raises NoLogError (with ``path``) when it does not
    exist or holds neither: a wrong or unmounted path must fail a reader, not read as an
    empty log. (``open`` and ``WAL`` create a log and never ask.)"""
    path = os.path.abspath(directory)
    if not os.path.isdir(path):
        what = "is not a directory" if os.path.exists(path) else "does not exist"
        raise NoLogError(f"{path} {what}; no ringwal log there (check the path, or RINGWAL_DIR)", path=path)
    if not os.path.exists(os.path.join(path, CURRENT)) and not list_segments(path):
        raise NoLogError(
            f"{path} holds no ringwal log (no {CURRENT}, no NNNNNN.wal segment): a wrong or unmounted path?",
            path=path,
        )
    return path


def read_file(path: str) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


def read_fd(fd: int, start: int = 0) -> bytes:
    """Everything in an open file from ``start`` to its end (the file may be growing).

    One read of the size ``fstat`` gives, then reads of at most 64 KiB past it until one
    returns nothing: a reader holds one segment's bytes, not a megabyte more for the probe."""
    size = os.fstat(fd).st_size
    chunks = []
    pos = start
    while True:
        chunk = os.pread(fd, max(size - pos, 1 << 16), pos)
        if not chunk:
            break
        chunks.append(chunk)
        pos += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_header(source: str | int, path: str | None = None) -> SegmentHeader:
    """Read and check the header of a segment (80 bytes; 64 in version 1), from its path or an open descriptor
    (``path`` then names it in errors). Raises FormatError naming the file when it is bad,
    FileNotFoundError when the path does not exist."""
    if isinstance(source, int):
        return SegmentHeader.decode(os.pread(source, SEGMENT_HEADER_SIZE, 0), path or f"fd {source}")
    with open(source, "rb", buffering=0) as f:
        return SegmentHeader.decode(f.read(SEGMENT_HEADER_SIZE), source)


def log_id(directory: str) -> str:
    """The identity of the log in ``directory``: 32 lowercase hex characters (16 random
    bytes chosen when its first segment was created; every segment header carries them).

    It never changes for the life of the log (rotation, restarts, retention, repair keep it)
    and a new log made in the same place gets another one, so ``f"{log_id}:{seq}"`` names a
    record uniquely across logs. A copy of the directory keeps it. Raises NoLogError (a
    FormatError; ``path`` is the directory) when the directory holds no log, or one written
    before log ids that no writer of this version has opened yet. Reads one 80-byte header;
    never waits for a writer. Format: docs/FORMAT.md, "Segment header".
    """
    return read_log_id(os.path.abspath(directory)).hex()


def read_log_id(directory: str) -> bytes:
    """The log id of the log in ``directory`` (``LOG_ID_SIZE`` bytes), from the header of
    ``current.wal``, else of the newest completed segment (``current.wal`` is missing for a
    moment during a rotation, and after a crash between its steps 2 and 3).

    Raises NoLogError naming the directory when it holds no log, or a log written before
    log ids that no writer of this version has opened yet. Cost: one 80-byte read.
    """
    problem = "it holds no segment file (no writer has opened it yet)"
    for _attempt in range(3):  # a rotation may rename current.wal between the two looks
        try:
            names = [CURRENT] + [name for _, name in reversed(list_segments(directory))]
        except FileNotFoundError:
            raise NoLogError(f"{directory}: no such directory, so no log", path=directory) from None
        except NotADirectoryError:
            raise NoLogError(f"{directory}: not a directory, so no log", path=directory) from None
        for name in names:
            try:
                header = read_header(os.path.join(directory, name))
            except FileNotFoundError:
                continue
            except FormatError as exc:
                problem = f"the header of {name} does not read ({exc})"
                continue
            if header.log_id is not None:
                return header.log_id
            raise NoLogError(
                f"{directory}: the log has no id yet: {name} was written by a ringwal from before log ids "
                "(segment format 1); open it once with a writer of this version (ringwal serve, ringwal.open, "
                "or WAL) and it gets one",
                path=directory,
            )
        if names[1:]:
            break  # no current.wal, and the completed segments' headers do not read
    raise NoLogError(f"{directory}: no ringwal log here: {problem}", path=directory)


class LiveWriter:
    """The real ``written`` seam for ``current.wal`` of ``directory``: a running writer's
    written seq from the ring, else whether anything holds ``wal.lock``.

    ``view`` is a ``ring.RingView`` to ask (follow keeps one); without it each call attaches
    and detaches one, which only happens when a scan meets something other than a valid
    frame or a clean end.
    """

    def __init__(self, directory: str, view: RingView | None = None) -> None:
        self.directory = directory
        self.view = view

    def __call__(self) -> int | None:
        view, own = self.view, None
        if view is None:
            from .ring import RingView  # loaded only when a live check is due

            view = own = RingView.attach(self.directory)
        try:
            # A writer serving the ring holds wal.lock for as long as it lives.
            if view is not None and view.writer_alive():
                return view.written_seq()
        finally:
            if own is not None:
                own.close()
        return None if writer_holds_lock(self.directory) else NO_WRITER


@dataclass(frozen=True)
class Damage:
    """Invalid bytes a scan met where a frame should start, and what it knows about them."""

    path: str
    offset: int
    what: str  # "checksum mismatch: stored ..., computed ...", "zero-filled gap", ...
    stored: int | None  # the frame's checksum, when it got as far as comparing one
    computed: int | None
    later: int | None  # offset of the next valid frame, if one was looked for and found
    later_seq: int | None  # its first seq
    why: str  # why this is damage and not an end: "; a valid frame follows at offset N", ...

    @property
    def message(self) -> str:
        return f"{self.path}: corrupt frame at offset {self.offset}: {self.what}{self.why}"


class Reporter:
    """The policy a scan applies to what is not the next valid frame. This one raises.

    Subclass it to go on instead (``ringwal repair`` does). Each method is called only on
    damage, never per valid frame.
    """

    def damage(self, scan: SegmentScan, d: Damage) -> bool:
        """Invalid bytes at ``d.offset`` that are not an end. Return True to go on at ``d.later``
        (when it is not None; the scan's next seq becomes at least ``d.later_seq``), False to
        stop there (outcome DAMAGED). Raises CorruptRecordError."""
        raise CorruptRecordError(d.message, path=d.path, offset=d.offset, expected=d.stored, computed=d.computed)

    def seq_jump(self, scan: SegmentScan, offset: int, first_seq: int, count: int) -> bool:
        """A valid frame at ``offset`` starts at ``first_seq``, not ``scan.next_seq``, and no
        recorded hole explains it. Return True to take it (seqs go on from it), False to skip
        it. Raises CorruptSegmentError."""
        raise CorruptSegmentError(
            f"{scan.path}: frame at offset {offset} starts at seq {first_seq}, expected "
            f"{scan.next_seq} (seqs must be gap-free)",
            path=scan.path,
            offset=offset,
        )


_RAISE = Reporter()


class SegmentScan:
    """Walk the frames of one segment, checking every checksum and seq.

    Two sources: ``buf``, all of a segment's bytes already read (``fd`` None; the crash rule
    judges them as they are), or ``buf=None`` and ``fd``, an open segment file the scan reads
    itself, from ``start`` (``SegmentScan.open`` opens one by path and checks its header).
    ``start`` is where the frames begin: by default the end of ``header`` (80 bytes, 64 in a
    version 1 segment), or of a version 2 header when no header is given.

    Iterate :meth:`frames` for (offset, first_seq, count, length) of each valid frame, in
    order; while that tuple is current, the frame is ``buf[offset - base : ...]`` (see
    :meth:`body`). Corruption raises during iteration (or goes to ``reporter``). Afterwards
    ``end`` is the offset just past the last valid frame, ``next_seq`` the seq after its last
    record, ``records`` how many were walked, ``outcome`` CLEAN, TORN, UNWRITTEN or DAMAGED,
    and for TORN/DAMAGED ``tail`` describes the bytes at ``end`` and ``tail_bytes`` counts
    their non-zero span. ``size`` is the file size as last read.

    ``holes`` (from ``wal_holes.json``) lets a frame skip exactly a recorded lost range;
    each such jump is appended to ``crossed`` as (expected seq, seq found). Any other jump
    goes to ``reporter.seq_jump``. In ``current.wal`` a valid frame whose first seq lies in
    a recorded hole ends the walk with outcome LOST (``end`` is its offset).

    ``version`` is the segment's format version (from ``header`` when given): version 2
    frames carry the durable end (``synced``); ``durable_claim`` is the largest one read so
    far (each clamped to its frame's offset), and the crash rule uses the claims of every
    valid frame in the file to tell reordered unsynced writes (a torn tail) from damage.

    ``written`` (only with ``fd``, only for an unsealed segment) applies the live-reading
    rule (module docstring); ``rereads`` are its pauses and ``sleep`` how it pauses (seams).
    ``chunk`` makes the scan read that many bytes at a time instead of whole files (follow).
    """

    fd: int | None = None
    _own_fd = False

    def __init__(
        self,
        buf: bytes | None,
        path: str,
        *,
        sealed: bool,
        start: int | None = None,
        next_seq: int,
        holes: Holes | None = None,
        fd: int | None = None,
        written: WrittenFn | None = None,
        reporter: Reporter | None = None,
        chunk: int | None = None,
        rereads: Sequence[float] = REREAD_DELAYS,
        sleep: Callable[[float], object] = time.sleep,
        header: SegmentHeader | None = None,
        version: int | None = None,
    ) -> None:
        if buf is None and fd is None:
            raise ValueError("SegmentScan needs the segment's bytes or an open descriptor")
        if start is None:  # frames start right after the header (80 bytes, or 64 in version 1)
            start = header.size if header is not None else SEGMENT_HEADER_SIZE
        self.path = path
        self.sealed = sealed
        self.holes = holes
        self.crossed: list[tuple[int, int]] = []
        self.end = start
        self.next_seq = next_seq
        self.records = 0
        self.outcome = CLEAN
        self.tail: Damage | None = None
        self.tail_bytes = 0
        self._header = header
        self.version = header.version if header is not None else (version or FORMAT_VERSION)
        self.durable_claim = 0
        self.written = written
        self.reporter = reporter if reporter is not None else _RAISE
        self.chunk = chunk
        self.rereads = rereads
        self._sleep = sleep
        # (file state, outcome, tail, tail_bytes) of the last crash-rule end, no writer (follow)
        self._quiet: tuple[_FileState, str, Damage | None, int] | None = None
        self._w: int | None = _NOT_ASKED
        if buf is not None:
            buf = buf if isinstance(buf, bytes) else bytes(buf)
            self.buf, self.base, self.eof, self.size = buf, 0, True, len(buf)
        else:
            self.fd = fd
            self.buf, self.base, self.eof, self.size = b"", start, False, start

    @property
    def log_bytes(self) -> int:
        """What this segment adds to a log's ``bytes`` (``ringwal stats`` and ``ringwal
        verify`` both count this, and nothing else): a completed segment's file size; for
        ``current.wal``, the bytes up to the end of its last complete frame, since the
        preallocated zeros after it (and a torn tail) hold no records. Read after ``frames``."""
        return self.size if self.sealed else self.end

    @classmethod
    def open(cls, path: str, *, sealed: bool, holes: Holes | None = None, **kw: Any) -> SegmentScan:
        """Open the segment at ``path``, check its header (``scan.header``) and return a scan
        of its frames that reads the file itself; close it (or use ``with``) when done.
        FileNotFoundError when it does not exist; FormatError for a bad header."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            header = read_header(fd, path)
            scan = cls(None, path, sealed=sealed, next_seq=header.first_seq, holes=holes, fd=fd, header=header, **kw)
        except BaseException:
            os.close(fd)
            raise
        scan._own_fd = True
        return scan

    @property
    def header(self) -> SegmentHeader:
        """The segment header, checked (a scan made by :meth:`open`)."""
        if self._header is None:
            raise ValueError(f"{self.path}: this scan was given bytes, not opened: it has no header")
        return self._header

    def _fd(self) -> int:
        fd = self.fd
        if fd is None:
            raise ValueError(f"{self.path}: the scan is closed (or reads a buffer, not a file)")
        return fd

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None and self._own_fd:
            os.close(fd)

    def __enter__(self) -> SegmentScan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def body(self, offset: int, length: int) -> bytes:
        """The body of the frame at ``offset`` just yielded by :meth:`frames`."""
        start = offset - self.base + FRAME_HEADER_SIZE
        return self.buf[start : start + length]

    def renamed(self) -> bool:
        """Whether the file this scan reads is no longer at ``path`` (``current.wal`` rotated)."""
        try:
            return os.stat(self.path).st_ino != os.fstat(self._fd()).st_ino
        except FileNotFoundError:
            return True

    def seal(self) -> None:
        """The file was renamed from ``current.wal`` to a completed segment, which the writer
        sealed (truncated and fsynced) before the rename: the next :meth:`frames` call reads
        the rest of it under the sealed rule."""
        self.sealed = True

    # ------------------------------------------------------------------ the walk

    def frames(self, upto: int | None = None) -> Iterator[tuple[int, int, int, int]]:
        """Yield each valid frame after ``end``; stop at the end of what is written, or before
        a frame holding a seq past ``upto``. Called again, goes on from ``end`` (re-reading
        the file when the scan has one)."""
        self.outcome = CLEAN
        self._w = _NOT_ASKED
        if self.fd is not None:
            self._load(self.end, self.chunk)
        version = self.version
        claims = version >= 2
        holes = self.holes if self.holes and not self.sealed else None
        while True:
            buf = self.buf
            base = self.base
            view = memoryview(buf)
            limit = len(buf)
            pos = self.end - base
            while True:
                outcome, length, count, first_seq, _stored, _computed, nxt = parse_frame(view, pos, limit, version)
                if outcome != FRAME_OK:
                    break
                if holes is not None and holes.explains(first_seq, first_seq) is not None:
                    self.outcome = LOST  # a failed fsync's page-cache copy (docs/FORMAT.md)
                    return
                if claims:
                    claim = min(frame_durable_end(view, pos), base + pos)
                    if claim > self.durable_claim:
                        self.durable_claim = claim
                if first_seq != self.next_seq and not self._jump(base + pos, first_seq, count):
                    pos = nxt
                    self.end = base + nxt
                    continue
                if upto is not None and first_seq + count - 1 > upto:
                    return
                yield base + pos, first_seq, count, length
                pos = nxt
                self.end = base + nxt
                self.next_seq = first_seq + count
                self.records += count
            if not self._settle(base + pos, outcome, length):
                return

    def _jump(self, offset: int, first_seq: int, count: int) -> bool:
        """A valid frame that does not continue the seqs: True to take it, False to skip it."""
        if self.holes and first_seq > self.next_seq and self.holes.bridging(self.next_seq, first_seq):
            self.crossed.append((self.next_seq, first_seq))
            self.next_seq = first_seq
            return True
        if self.reporter.seq_jump(self, offset, first_seq, count):
            self.next_seq = first_seq
            return True
        return False

    def _settle(self, off: int, outcome: int, length: int) -> bool:
        """Something other than a valid frame is at ``off``: decide what. True when the walk
        goes on (more bytes were read, or the reporter skipped damage), False when it ends."""
        if not self.eof and (outcome == FRAME_INCOMPLETE or off + FRAME_HEADER_SIZE > self.base + len(self.buf)):
            # Only the bytes read so far end here: read on (a frame whole, up to the file size).
            self._load(off, max(self.chunk or READ_CHUNK, FRAME_HEADER_SIZE + align8(length)))
            return True
        clean = outcome == FRAME_END and self.eof and _zeros_from(self.buf, off - self.base)
        if self.sealed or self.fd is None or self.written is None:
            return False if clean else self._crash_rule(off)
        w = self._w
        stale = w == _NOT_ASKED  # the bytes at off were read before any answer: read them again
        if stale:
            w = self._ask()
        if clean and (w is None or w < 0 or self.next_seq > w):
            return False  # nothing is written here, and no writer says otherwise: the usual end
        return self._live(off, w, stale)

    def _load(self, off: int, want: int | None) -> None:
        """Read the file from ``off``: ``want`` bytes (never past its size), or all (None)."""
        fd = self._fd()
        if want is None:
            data = read_fd(fd, off)
            self.eof = True
            self.size = off + len(data)
        else:
            size = os.fstat(fd).st_size
            data = os.pread(fd, max(0, min(want, size - off)), off)
            self.eof = off + len(data) >= size
            self.size = max(size, off + len(data))
        self.buf, self.base = data, off

    def _look(self, off: int) -> tuple[int, int, int, int, int, int, int]:
        return parse_frame(memoryview(self.buf), off - self.base, len(self.buf), self.version)

    def _crash_rule(self, off: int) -> bool:
        """Judge the bytes at ``off`` as a crash left them (no writer can be changing them)."""
        if not self.eof:
            self._load(off, None)
        view = memoryview(self.buf)
        pos, limit = off - self.base, len(self.buf)
        outcome, length, _, _, stored, computed, _ = parse_frame(view, pos, limit, self.version)
        if outcome == FRAME_OK:
            return True  # written since the bytes we had were read
        if outcome == FRAME_END and _zeros_from(self.buf, pos):
            self.outcome = CLEAN
            return False
        later = find_valid_frame(self.buf, pos + 8, limit, self.next_seq, self.version)
        claim = -1
        if later is not None and not self.sealed and self.version >= 2:
            # Every byte below a claimed durable end had been fdatasynced before that frame was
            # written; damage at or past the largest claim is unsynced writes that power loss
            # persisted out of order (a later frame kept, an earlier one lost): a torn tail.
            claim = max(self.durable_claim, max_durable_claim(self.buf, pos + 8, limit, self.version, self.base))
            if off >= claim:
                self.outcome = TORN
                why = (
                    f"; valid frames follow (the first at offset {self.base + later[0]}) but no frame claims an "
                    f"fdatasync past offset {claim}: unsynced writes persisted out of order (a torn tail)"
                )
                first_later = (self.base + later[0], later[1])
                self.tail = self._damage(off, outcome, length, stored, computed, first_later, why)
                self.tail_bytes = limit - pos - _trailing_zeros(view, pos, limit)
                return False
        if later is None and not self.sealed:
            self.outcome = TORN
            why = "; nothing valid follows (a torn tail)"
            self.tail = self._damage(off, outcome, length, stored, computed, None, why)
            self.tail_bytes = limit - pos - _trailing_zeros(view, pos, limit)
            return False
        if later is None:
            why = " in a completed segment (never torn)"
        else:
            later = (self.base + later[0], later[1])
            why = f"; a valid frame follows at offset {later[0]}"
            if claim >= 0:
                why += f", and a frame claims an fdatasync had completed up to offset {claim}, past this damage"
        return self._report(self._damage(off, outcome, length, stored, computed, later, why))

    def _live(self, off: int, w: int | None, stale: bool) -> bool:
        """Judge the bytes at ``off`` of a current.wal that a writer may be appending to.

        ``w`` is what ``written()`` answered; ``stale`` says the buffer was read before that
        answer. One answer serves a whole ``frames()`` call, so a walk ends at most at the
        writer's position when it first asked, instead of chasing a writer that keeps writing.
        """
        delays = iter(self.rereads)
        while True:
            if w is not None and w >= 0:
                if stale:
                    self._load(off, self.chunk or READ_CHUNK)
                outcome, length, _, _, stored, computed, _ = self._look(off)
                if outcome == FRAME_INCOMPLETE and not self.eof:
                    self._load(off, FRAME_HEADER_SIZE + align8(length))
                    outcome, length, _, _, stored, computed, _ = self._look(off)
                if outcome == FRAME_OK:
                    return True
                if self.next_seq > w:  # the writer had not finished writing this frame
                    zeros = outcome == FRAME_END and _zeros_from(self.buf, off - self.base)
                    self.outcome = CLEAN if zeros else UNWRITTEN
                    return False
                if self.renamed():
                    self.seal()  # rotated: what is due is in the next segment; read the rest as sealed
                    self._load(off, None)
                    return True
                delay = next(delays, None)
                if delay is None:
                    why = (
                        f"; the writer had already written up to seq {w}, so the frame holding seq "
                        f"{self.next_seq} is complete (this is not a frame being written)"
                    )
                    return self._report(self._damage(off, outcome, length, stored, computed, None, why))
            else:
                # No written seq to go by: the crash rule, on bytes read after asking.
                if w == NO_WRITER:
                    state = self._file_state(off)
                    if self._quiet is not None and self._quiet[0] == state:
                        _, self.outcome, self.tail, self.tail_bytes = self._quiet
                        return False  # nothing changed since the last look (follow)
                if stale:
                    self._load(off, None)
                try:
                    going = self._crash_rule(off)
                except FormatError:
                    delay = next(delays, None)
                    if delay is None or (w == NO_WRITER and self._ask() == NO_WRITER):
                        raise
                else:
                    if going or w == NO_WRITER or self.outcome != TORN:
                        if not going and w == NO_WRITER:
                            self._quiet = (state, self.outcome, self.tail, self.tail_bytes)
                        return going
                    delay = next(delays, None)  # a writer without a ring: this may be its frame in flight
                    if delay is None:
                        return going
            self._sleep(delay)
            w = self._ask()
            stale = True

    def _ask(self) -> int | None:
        written = self.written
        self._w = written() if written is not None else NO_WRITER
        return self._w

    def _file_state(self, off: int) -> _FileState:
        st = os.fstat(self._fd())
        return (off, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _damage(
        self, off: int, outcome: int, length: int, stored: int, computed: int, later: tuple[int, int] | None, why: str
    ) -> Damage:
        return Damage(
            self.path,
            off,
            _describe(outcome, length, stored, computed, self.size),
            stored if stored >= 0 else None,
            computed if computed >= 0 else None,
            later[0] if later is not None else None,
            later[1] if later is not None else None,
            why,
        )

    def _report(self, d: Damage) -> bool:
        if self.reporter.damage(self, d) and d.later is not None and d.later_seq is not None:
            self.end = d.later
            self.next_seq = max(self.next_seq, d.later_seq)
            return True
        self.outcome = DAMAGED
        self.tail = d
        view = memoryview(self.buf)
        self.tail_bytes = len(view) - (d.offset - self.base) - _trailing_zeros(view, d.offset - self.base, len(view))
        return False


def _describe(outcome: int, length: int, stored: int, computed: int, size: int) -> str:
    if outcome == FRAME_BAD and stored >= 0:
        return f"checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
    if outcome == FRAME_INCOMPLETE:
        return f"frame of {length} bytes runs past the end of the file ({size} bytes)"
    if outcome == FRAME_END:
        return "zero-filled gap"
    return "invalid frame header"


def find_valid_frame(
    buf: bytes, start: int, limit: int, min_seq: int, version: int = FORMAT_VERSION
) -> tuple[int, int] | None:
    """(offset, first seq) of the first valid frame at or after ``start`` (8-aligned) in
    ``buf[:limit]`` whose seq is at least ``min_seq``; None when there is none. Zero runs are
    skipped at C speed, so a mostly preallocated file costs little."""
    for pos, first_seq in _valid_frames(buf, start, limit, version):
        if first_seq >= min_seq:
            return pos, first_seq
    return None


def max_durable_claim(buf: bytes, start: int, limit: int, version: int, base: int = 0) -> int:
    """The largest durable end claimed by a valid frame at or after ``start`` of ``buf[:limit]``
    (each claim clamped to its frame's file offset, ``base`` + its position); 0 when there is
    none, or for a version 1 segment (its frames claim nothing)."""
    if version < 2:
        return 0
    best = 0
    for pos, _ in _valid_frames(buf, start, limit, version):
        best = max(best, min(frame_durable_end(buf, pos), base + pos))
    return best


def _valid_frames(buf: bytes, start: int, limit: int, version: int) -> Iterator[tuple[int, int]]:
    """(offset, first seq) of every valid frame at an 8-aligned offset from ``start``."""
    pos = (start + 7) & ~7
    while pos + FRAME_HEADER_SIZE <= limit:
        nz = _next_nonzero(buf, pos, limit)
        if nz == limit:
            return
        pos = nz & ~7
        if pos + FRAME_HEADER_SIZE > limit:
            return
        if nz - pos < 4:  # the length word of the frame that would start at pos is not zero
            outcome, _, _, first_seq, _, _, _ = parse_frame(buf, pos, limit, version)
            if outcome == FRAME_OK:
                yield pos, first_seq
        pos += 8


def data_end(buf: bytes, start: int, version: int) -> int:
    """Where the bytes worth keeping end in ``buf`` from ``start``: past the last non-zero byte
    (8-aligned) and past the last valid frame (whose payload may end in zeros)."""
    end = align8(len(buf.rstrip(b"\x00")))
    for pos, _ in _valid_frames(buf, start, len(buf), version):
        length = int.from_bytes(buf[pos : pos + 4], "little")
        end = max(end, pos + FRAME_HEADER_SIZE + align8(length))
    return max(end, start)


def keep_aside(directory: str, name: str, data: bytes, fsync: FsyncFn) -> str:
    """Write ``data`` to a new file ``name`` in ``directory`` (``name.1``, ``name.2``, ... if
    taken), fsync it and the directory; return the name used. For bytes a writer cuts from
    ``current.wal`` (a torn tail, a failed fsync's range), kept for a human to look at.
    Record bytes: the file gets the mode and group every log file gets (``Access.file_mode``,
    0600 or 0660 with ``Config.group``), whatever the umask."""
    access = Access.of(directory)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    k = 0
    while True:
        used = name if not k else f"{name}.{k}"
        try:
            fd = os.open(os.path.join(directory, used), flags, access.file_mode)
            break
        except FileExistsError:
            k += 1
    try:
        access.apply(fd, access.file_mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(directory, fsync)
    return used


def _zeros_from(buf: bytes, pos: int) -> bool:
    """Whether ``buf[pos:]`` is all zero bytes (bytes.count runs at memory speed)."""
    return buf.count(0, pos) == len(buf) - pos if pos < len(buf) else True


def _next_nonzero(buf: bytes, pos: int, limit: int) -> int:
    """Offset of the first non-zero byte of ``buf[pos:limit]``, or ``limit``."""
    step = 4096
    while pos < limit:
        end = min(pos + step, limit)
        if buf.count(0, pos, end) != end - pos:
            chunk = buf[pos:end]
            return pos + len(chunk) - len(chunk.lstrip(b"\x00"))
        pos = end
        step = min(step * 4, 1 << 20)
    return limit


def _trailing_zeros(buf: bytes | memoryview, pos: int, limit: int) -> int:
    tail = bytes(buf[pos:limit])
    return len(tail) - len(tail.rstrip(b"\x00"))


def scan_file(path: str, *, sealed: bool, holes: Holes | None = None) -> tuple[SegmentHeader, SegmentScan]:
    """Read and fully check one segment file; raise on corruption."""
    with SegmentScan.open(path, sealed=sealed, holes=holes) as scan:
        for _ in scan.frames():
            pass
    return scan.header, scan


def prepare_spare(directory: str, size: int, fsync: FsyncFn) -> int:
    """Create (or empty) ``next.wal.tmp`` in ``directory``, preallocate ``size`` bytes (at least
    a header's) and fsync it; return its descriptor (read-write). Its header is written at the
    rotation that uses it (``ActiveSegment.from_spare``), when the first seq is known.

    The fsync makes the allocation durable ahead of time, so that the rotation's fdatasync of
    the header is an overwrite of allocated space. The name is not fsynced into the directory:
    a spare lost in a crash is only made again (the rotation that uses it fsyncs the
    directory before acknowledging anything in it). Raises OSError; the caller latches.
    """
    path = os.path.join(directory, SPARE)
    try:  # made fresh: private (the directory's mode: create_file), whatever was there before
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = create_file(path, os.O_RDWR)
    try:
        preallocate(fd, max(size, SEGMENT_HEADER_SIZE))
        fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


class ActiveSegment:
    """The open ``current.wal``: appends whole frames at ``write_pos``, syncs, seals.

    Only the writer touches it. Space is preallocated up to ``prealloc`` bytes so an append
    overwrites zeros instead of growing the file (much cheaper to fdatasync). Any OSError
    propagates; the owner latches into its failed state.

    ``durable_pos`` is the durable end: every byte below it was covered by a completed
    fdatasync (or fsync) of this file, and ``durable_next`` the seq of the first record at
    or after it. Each frame of a version 2 segment carries ``durable_pos`` (``synced``), so
    a reader after a power loss can tell unsynced writes persisted out of order (all at or
    past the largest claim) from damage to durable data (below it).
    """

    fd: int | None = None
    kept: str | None = None  # recover: the file the cut bytes were kept in
    _written_back = 0  # write_back started the kernel's writeback up to here

    def __init__(
        self,
        path: str,
        fd: int,
        header: SegmentHeader,
        write_pos: int,
        next_seq: int,
        records: int,
        durable_pos: int = SEGMENT_HEADER_SIZE,
        durable_next: int | None = None,
    ) -> None:
        self.path = path
        self.fd = fd
        self.header = header
        self.write_pos = write_pos
        self.next_seq = next_seq
        self.records = records
        self.durable_pos = durable_pos
        self.durable_next = header.first_seq if durable_next is None else durable_next
        self._claims = header.version >= 2

    @property
    def first_seq(self) -> int:
        return self.header.first_seq

    @classmethod
    def create(cls, directory: str, header: SegmentHeader, prealloc: int, fsync: FsyncFn) -> ActiveSegment:
        path = os.path.join(directory, CURRENT)
        tmp = path + ".tmp"
        fd = create_file(tmp, os.O_RDWR | os.O_TRUNC)
        try:
            preallocate(fd, max(prealloc, header.size))
            os.pwrite(fd, header.encode(), 0)
            fsync(fd)
            # Crash window: a complete current.wal.tmp and no current.wal. The next writer
            # deletes the .tmp and creates the segment again.
            os.rename(tmp, path)
            fsync_dir(directory, fsync)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, header, header.size, header.first_seq, 0)

    @classmethod
    def from_spare(cls, directory: str, fd: int, header: SegmentHeader) -> ActiveSegment:
        """The prepared ``next.wal.tmp`` (``prepare_spare``, descriptor ``fd``, now owned by the
        segment) as the next active segment: ``header`` is written into it, not synced (the
        caller fdatasyncs it, ``sync``, before the file may take the name ``current.wal``).
        It keeps the spare's name until ``become_current``. On an OSError ``fd`` is closed."""
        try:
            os.pwrite(fd, header.encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(os.path.join(directory, SPARE), fd, header, SEGMENT_HEADER_SIZE, header.first_seq, 0)

    def become_current(self) -> None:
        """Rename the segment (a spare) to ``current.wal``; no directory fsync (the caller's)."""
        path = os.path.join(os.path.dirname(self.path), CURRENT)
        os.rename(self.path, path)
        self.path = path

    @classmethod
    def recover(
        cls,
        directory: str,
        header: SegmentHeader,
        scan: SegmentScan,
        prealloc: int,
        fsync: FsyncFn,
        cut: int | None = None,
        keep: tuple[str, bytes] | None = None,
    ) -> ActiveSegment:
        """Open the scanned ``current.wal`` for appending, cutting it back to ``cut`` (default
        ``scan.end``, the end of the last valid frame). ``keep`` = (name, bytes): the bytes
        being cut away, written first to a new file of that name (``keep_aside``; the name
        used is ``kept``) when any is non-zero. ``durable_pos`` starts at
        ``scan.durable_claim`` (at least the header): the caller's fdatasync raises it."""
        path = os.path.join(directory, CURRENT)
        end = scan.end if cut is None else cut
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        kept = None
        try:
            size = os.fstat(fd).st_size
            if scan.outcome != CLEAN or size > end:
                if keep is not None:
                    data = keep[1]
                    if any(data):
                        # Crash window: the copy exists and the file is not cut yet; the next
                        # writer cuts it and keeps another copy (name.1).
                        kept = keep_aside(directory, keep[0], data, fsync)
                # Zero everything after the last valid frame: truncate, then preallocate again
                # (fresh zero blocks). A crash in between leaves a shorter file, which is fine.
                os.ftruncate(fd, end)
                preallocate(fd, max(prealloc, end))
                fsync(fd)
            elif size < prealloc:
                preallocate(fd, prealloc)
        except BaseException:
            os.close(fd)
            raise
        # The caller sets durable_next (it knows where each frame starts).
        durable = max(SEGMENT_HEADER_SIZE, min(scan.durable_claim, end))
        seg = cls(path, fd, header, end, scan.next_seq, scan.records, durable)
        seg.kept = kept
        return seg

    def append_frame(self, body: bytes, count: int) -> int:
        """Write one frame of ``count`` records at the end; return the bytes written."""
        first = self.next_seq
        iov = encode_frame(body, count, first, self.durable_pos if self._claims else 0)
        size = len(iov[0]) + len(iov[1]) + len(iov[2])
        pos = self.write_pos
        fd = self._fd()
        written = os.pwritev(fd, iov, pos)
        if written != size:
            data = b"".join(iov)[written:]
            while data:
                n = os.pwrite(fd, data, pos + written)
                written += n
                data = data[n:]
        self.write_pos = pos + size
        self.next_seq = first + count
        self.records += count
        return size

    def write_back(self) -> None:
        """Start the kernel writing the frames written since the last call to the disk, once
        ``WRITEBACK_EVERY`` bytes have gathered (``_fileutil.start_writeback``; no waiting, no
        durability: only ``sync`` and ``seal`` make frames durable). Raises OSError."""
        start = self._written_back
        if self.write_pos - start >= WRITEBACK_EVERY:
            start_writeback(self._fd(), start, self.write_pos - start)
            self._written_back = self.write_pos

    def sync(self, datasync: FsyncFn) -> None:
        """fdatasync the file; on success every frame written so far is durable."""
        pos, nxt = self.write_pos, self.next_seq
        datasync(self._fd())
        self.durable_pos, self.durable_next = pos, nxt

    def seal(self, fsync: FsyncFn) -> None:
        """Cut the preallocated tail and fsync: the file becomes exactly its frames."""
        fd = self._fd()
        os.ftruncate(fd, self.write_pos)
        fsync(fd)
        self.durable_pos, self.durable_next = self.write_pos, self.next_seq

    def trim(self) -> None:
        """Drop the preallocated zeros after the last frame (an ftruncate, no fsync: a file of
        either length reads the same). For a log being closed; the next writer preallocates."""
        os.ftruncate(self._fd(), self.write_pos)

    def cut_back(self, pos: int) -> None:
        """Drop every frame from ``pos`` on (an ftruncate, no fsync: after a failed fsync this
        only stops the page cache's copy from being read; the next writer cuts it durably).
        ``next_seq`` stays: the seqs cut were given to records and are never given again."""
        os.ftruncate(self._fd(), pos)
        self.write_pos = pos

    def _fd(self) -> int:
        fd = self.fd
        if fd is None:
            raise ClosedError(f"{self.path}: this active segment was closed")
        return fd

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
