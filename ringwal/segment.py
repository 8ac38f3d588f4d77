"""Segment files: scanning frames (shared by replay, recovery and verify) and the active segment.

Vocabulary: frames, offsets and sync. A segment is ``current.wal`` (the active one, written
to) or ``NNNNNN.wal`` (completed: sealed, read-only, never written again).

Scanning outcomes are three different answers (see :class:`SegmentScan`):

* clean end: the data ends in zero-filled space or exactly at end of file;
* torn tail: an invalid or incomplete frame with no valid frame anywhere after it, in the
  active segment only. It is what a writer dying mid-write leaves; readers stop there
  without error and the next writer truncates it;
* corruption: an invalid frame followed by a valid one, any invalid frame in a completed
  segment (those were fsynced before they were renamed, so they are never torn), or a
  valid frame whose seq does not continue the previous one. Raised as CorruptRecordError or
  CorruptSegmentError with the file and byte offset.

Sealing and creating (the rotation steps that touch segment files; ``log.py`` orders them):

1. ``seal``: ftruncate the preallocated tail away, fsync. A crash here leaves a complete
   ``current.wal`` that recovery simply continues.
2. rename ``current.wal`` -> ``NNNNNN.wal``, fsync the directory. A crash before the
   directory fsync shows either name after reboot; both states open correctly (with no
   ``current.wal`` the next writer starts one after the last completed segment).
3. ``ActiveSegment.create``: the new active segment is built as ``current.wal.tmp`` (header
   written, space preallocated, fsynced) and renamed into place, then the directory is
   fsynced. So a ``current.wal`` always has a valid header; a crash leaves at most a stray
   ``.tmp`` that the next writer deletes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from ._fileutil import FsyncFn, fsync_dir, preallocate
from .errors import CorruptRecordError, CorruptSegmentError
from .holes import Holes
from .format import (
    FRAME_BAD,
    FRAME_END,
    FRAME_HEADER_SIZE,
    FRAME_INCOMPLETE,
    FRAME_OK,
    SEGMENT_HEADER_SIZE,
    SegmentHeader,
    encode_frame,
    parse_frame,
)

__all__ = [
    "CURRENT",
    "ActiveSegment",
    "SegmentScan",
    "list_segments",
    "read_file",
    "segment_name",
    "segment_number",
]

CURRENT = "current.wal"
_SEGMENT_RE = re.compile(r"^(\d{6,})\.wal$")

CLEAN = "clean"
TORN = "torn"


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


def read_file(path: str) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


def read_fd(fd: int) -> bytes:
    """Everything in an open file, read from offset 0 (the file may be growing)."""
    size = os.fstat(fd).st_size
    chunks = []
    pos = 0
    while True:
        chunk = os.pread(fd, max(size - pos, 1 << 20), pos)
        if not chunk:
            break
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks)


class SegmentScan:
    """Walk the frames of one segment's bytes, checking every checksum and seq.

    Iterate :meth:`frames` for (offset, first_seq, count, length) of each valid frame, in
    order; the body is ``buf[offset + 24 : offset + 24 + length]``. Corruption raises during
    iteration. Afterwards ``end`` is the offset just past the last valid frame, ``next_seq``
    the seq after its last record, ``outcome`` is CLEAN or TORN and ``tail_bytes`` how many
    non-zero bytes a torn tail holds.

    ``holes`` (from ``wal_holes.json``) lets a frame skip exactly a recorded lost range;
    each such jump is appended to ``crossed`` as (expected seq, seq found). Any other jump
    is corruption.
    """

    def __init__(
        self,
        buf: bytes,
        path: str,
        *,
        sealed: bool,
        start: int = SEGMENT_HEADER_SIZE,
        next_seq: int,
        holes: Holes | None = None,
    ) -> None:
        self.buf = buf
        self.holes = holes
        self.crossed: list[tuple[int, int]] = []
        self.path = path
        self.sealed = sealed
        self.end = start
        self.next_seq = next_seq
        self.records = 0
        self.outcome = CLEAN
        self.tail_bytes = 0

    def frames(self) -> Iterator[tuple[int, int, int, int]]:
        buf = memoryview(self.buf)
        limit = len(buf)
        pos = self.end
        try:
            while True:
                outcome, length, count, first_seq, stored, computed, nxt = parse_frame(buf, pos, limit)
                if outcome == FRAME_OK:
                    if first_seq != self.next_seq:
                        if self.holes and first_seq > self.next_seq and self.holes.bridging(self.next_seq, first_seq):
                            self.crossed.append((self.next_seq, first_seq))
                            self.next_seq = first_seq
                            continue
                        raise CorruptSegmentError(
                            f"{self.path}: frame at offset {pos} starts at seq {first_seq}, expected "
                            f"{self.next_seq} (seqs must be gap-free)",
                            path=self.path,
                            offset=pos,
                        )
                    yield pos, first_seq, count, length
                    pos = self.end = nxt
                    self.next_seq = first_seq + count
                    self.records += count
                    continue
                if outcome == FRAME_END:
                    if pos >= limit or _all_zero(buf[pos:]):
                        return
                self._bad_tail(buf, pos, limit, outcome, stored, computed, length)
                return
        finally:
            buf.release()

    def _bad_tail(self, buf: memoryview, pos: int, limit: int, outcome: int, stored: int, computed: int, length: int) -> None:
        """Decide torn tail vs corruption for the invalid bytes at ``pos``."""
        later = find_valid_frame(buf, pos + 8, limit, self.next_seq)
        if later is None and not self.sealed:
            self.outcome = TORN
            self.tail_bytes = limit - pos - _trailing_zeros(buf, pos, limit)
            return
        if outcome == FRAME_BAD and stored >= 0:
            what = f"checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        elif outcome == FRAME_INCOMPLETE:
            what = f"frame of {length} bytes runs past the end of the file ({limit} bytes)"
        elif outcome == FRAME_END:
            what = "zero-filled gap"
        else:
            what = "invalid frame header"
        where = (
            f"; a valid frame follows at offset {later}" if later is not None else " in a completed segment (never torn)"
        )
        raise CorruptRecordError(
            f"{self.path}: corrupt frame at offset {pos}: {what}{where}",
            path=self.path,
            offset=pos,
            expected=stored if stored >= 0 else None,
            computed=computed if computed >= 0 else None,
        )


def find_valid_frame(buf: memoryview, start: int, limit: int, min_seq: int) -> int | None:
    """Offset of the first valid frame at or after ``start`` (8-aligned) with a plausible seq."""
    pos = (start + 7) & ~7
    while pos + FRAME_HEADER_SIZE <= limit:
        if buf[pos] or buf[pos + 1] or buf[pos + 2] or buf[pos + 3]:  # non-zero length
            outcome, _, _, first_seq, _, _, _ = parse_frame(buf, pos, limit)
            if outcome == FRAME_OK and first_seq >= min_seq:
                return pos
        pos += 8
    return None


def _all_zero(view: memoryview) -> bool:
    return not bytes(view).strip(b"\x00")


def _trailing_zeros(buf: memoryview, pos: int, limit: int) -> int:
    tail = bytes(buf[pos:limit])
    return len(tail) - len(tail.rstrip(b"\x00"))


def read_header(path: str) -> SegmentHeader:
    with open(path, "rb", buffering=0) as f:
        return SegmentHeader.decode(f.read(SEGMENT_HEADER_SIZE), path)


def scan_file(path: str, *, sealed: bool, holes: Holes | None = None) -> tuple[SegmentHeader, SegmentScan]:
    """Read and fully check one segment file; raise on corruption."""
    buf = read_file(path)
    header = SegmentHeader.decode(buf[:SEGMENT_HEADER_SIZE], path)
    scan = SegmentScan(buf, path, sealed=sealed, next_seq=header.first_seq, holes=holes)
    for _ in scan.frames():
        pass
    return header, scan


class ActiveSegment:
    """The open ``current.wal``: appends whole frames at ``write_pos``, syncs, seals.

    Only the writer touches it. Space is preallocated up to ``prealloc`` bytes so an append
    overwrites zeros instead of growing the file (much cheaper to fdatasync). Any OSError
    propagates; the owner latches into its failed state.
    """

    fd: int | None = None

    def __init__(self, path: str, fd: int, header: SegmentHeader, write_pos: int, next_seq: int, records: int) -> None:
        self.path = path
        self.fd = fd
        self.header = header
        self.write_pos = write_pos
        self.next_seq = next_seq
        self.records = records

    @property
    def first_seq(self) -> int:
        return self.header.first_seq

    @classmethod
    def create(cls, directory: str, header: SegmentHeader, prealloc: int, fsync: FsyncFn) -> ActiveSegment:
        path = os.path.join(directory, CURRENT)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            preallocate(fd, max(prealloc, SEGMENT_HEADER_SIZE))
            os.pwrite(fd, header.encode(), 0)
            fsync(fd)
            # Crash window: a complete current.wal.tmp and no current.wal. The next writer
            # deletes the .tmp and creates the segment again.
            os.rename(tmp, path)
            fsync_dir(directory, fsync)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, header, SEGMENT_HEADER_SIZE, header.first_seq, 0)

    @classmethod
    def recover(cls, directory: str, header: SegmentHeader, scan: SegmentScan, prealloc: int, fsync: FsyncFn) -> ActiveSegment:
        """Open the scanned ``current.wal`` for appending, cutting a torn tail back to ``scan.end``."""
        path = os.path.join(directory, CURRENT)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if scan.outcome == TORN or size > scan.end:
                # Zero everything after the last valid frame: truncate, then preallocate again
                # (fresh zero blocks). A crash in between leaves a shorter file, which is fine.
                os.ftruncate(fd, scan.end)
                preallocate(fd, max(prealloc, scan.end))
                fsync(fd)
            elif size < prealloc:
                preallocate(fd, prealloc)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, header, scan.end, scan.next_seq, scan.records)

    def append_frame(self, body: bytes, count: int) -> int:
        """Write one frame of ``count`` records at the end; return the bytes written."""
        first = self.next_seq
        iov = encode_frame(body, count, first)
        size = len(iov[0]) + len(iov[1]) + len(iov[2])
        pos = self.write_pos
        written = os.pwritev(self.fd, iov, pos)
        if written != size:
            data = b"".join(iov)[written:]
            while data:
                n = os.pwrite(self.fd, data, pos + written)
                written += n
                data = data[n:]
        self.write_pos = pos + size
        self.next_seq = first + count
        self.records += count
        return size

    def sync(self, datasync: FsyncFn) -> None:
        datasync(self.fd)

    def seal(self, fsync: FsyncFn) -> None:
        """Cut the preallocated tail and fsync: the file becomes exactly its frames."""
        os.ftruncate(self.fd, self.write_pos)
        fsync(self.fd)

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
