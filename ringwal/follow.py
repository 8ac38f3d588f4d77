"""``follow(dir, after_seq)``: every record after ``after_seq``, then each new one as it
becomes durable, across rotations and writer restarts, until the caller stops iterating.

For a shipper or a read replica (and ``ringwal tail -f``). It only reads the segment files;
the ring is used for two words and one futex, never for records:

* what is durable: completed segments always are (sealed with fsync before their rename);
  in ``current.wal`` only frames up to the ring's durable seq are yielded while a writer
  is alive. With no writer alive, everything on disk is yielded: a dead writer's unsynced
  frames are fsynced by the next writer when it opens the log, before it accepts records;
* when to look again: a follower registers in the ring (``followers`` word) and sleeps on
  its follow word, which the writer bumps and wakes after each fsync while followers are
  registered. Without a writer it looks again every ``poll_interval`` seconds, which also
  bounds every sleep (a writer that dies cannot leave a follower asleep).

Reading is incremental: catch-up goes through ``replay`` for the completed segments; then
``current.wal`` is kept open and only the bytes after the last frame read are read again
(``pread`` of the next frames). A rename of ``current.wal`` (rotation) is noticed when no
new frame is there: the rest of the old file is read through the open descriptor (it was
sealed before the rename) and the new ``current.wal`` is opened. A new writer recovering
the same ``current.wal`` truncates only a torn tail the follower never read past.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

from . import _futex
from .errors import RecordsLostError, WALError
from .format import (
    FRAME_HEADER_SIZE,
    FRAME_INCOMPLETE,
    FRAME_OK,
    RH_DURABLE_SEQ,
    RH_FOLLOW_WAKE,
    RH_FOLLOWERS,
    RH_STATE,
    RING_CLOSED,
    RING_READY,
    SEGMENT_HEADER_SIZE,
    SegmentHeader,
    align8,
    parse_frame,
)
from .holes import load_holes
from .record import Record, check_seq
from .replay import replay
from .ring import M32, Ring, claim_lock
from .segment import CURRENT
from .serializers import Serializer, get_serializer, with_batch_methods

__all__ = ["follow"]

CHUNK = 1 << 16  # bytes read per look at current.wal (a larger frame is read whole)


def follow(
    directory: str,
    after_seq: int = 0,
    *,
    serializer: Serializer | None = None,
    poll_interval: float = 0.1,
    skip_holes: bool = False,
    stop: threading.Event | None = None,
) -> Iterator[Record]:
    """Yield every record with ``seq > after_seq``, then new ones as they become durable.

    Runs until the caller stops iterating (``break``, ``close()`` on the generator) or
    ``stop`` is set; never wedges on a dead writer (every sleep is at most
    ``poll_interval``). Raises what ``replay`` raises (corruption, RecordsLostError unless
    ``skip_holes``).
    """
    check_seq(after_seq, "after_seq")
    if not (isinstance(poll_interval, (int, float)) and poll_interval > 0):
        raise ValueError(f"poll_interval must be a positive number of seconds, got {poll_interval!r}")
    f = _Follower(os.path.abspath(directory), after_seq + 1, serializer, poll_interval, skip_holes, stop)
    try:
        yield from f.run()
    finally:
        f.close()


class _Follower:
    def __init__(self, directory, want, serializer, poll_interval, skip_holes, stop) -> None:
        self.dir = directory
        self.want = want  # next seq to yield
        self.serializer = serializer
        self.poll = poll_interval
        self.skip_holes = skip_holes
        self.stop = stop
        self.ring: Ring | None = None
        self.registered = False
        self.next_attach = 0.0
        self.fd = -1
        self.ino = 0
        self.pos = 0
        self.cur_next = 0  # seq after the last frame read from the open current.wal
        self.decode = None
        self.holes = load_holes(directory)

    # ------------------------------------------------------------------ the ring (optional)

    def _writer(self) -> Ring | None:
        """The ring, when a live writer serves it; attaches (and registers) lazily."""
        ring = self.ring
        if ring is not None:
            w = ring.words
            if w[RH_STATE] == RING_READY and ring.writer_alive():
                return ring
            if w[RH_STATE] != RING_CLOSED:
                return None  # writer dead or stopping: keep the mapping, a new writer reuses the ring
            self._detach()
        now = time.monotonic()
        if now < self.next_attach:
            return None
        self.next_attach = now + self.poll
        try:
            ring = Ring.attach(self.dir)
        except (OSError, WALError):
            return None  # no ring, or one of another layout: follow the files alone
        with claim_lock(self.dir):
            ring.words[RH_FOLLOWERS] += 1
        self.ring, self.registered = ring, True
        w = ring.words
        return ring if w[RH_STATE] == RING_READY and ring.writer_alive() else None

    def _detach(self) -> None:
        ring, self.ring = self.ring, None
        if ring is None:
            return
        if self.registered:
            with contextlib.suppress(OSError), claim_lock(self.dir):
                if ring.words[RH_FOLLOWERS]:
                    ring.words[RH_FOLLOWERS] -= 1
        self.registered = False
        ring.close()

    def close(self) -> None:
        self._close_current()
        self._detach()

    # ------------------------------------------------------------------ reading

    def run(self) -> Iterator[Record]:
        while self.stop is None or not self.stop.is_set():
            ring = self._writer()
            word = ring.words[RH_FOLLOW_WAKE] if ring is not None else 0  # before looking: no lost wake-up
            bound = ring.words[RH_DURABLE_SEQ] if ring is not None else None
            before = self.want
            yield from self._advance(bound)
            if self.want != before:
                continue
            deadline = time.monotonic() + self.poll
            if ring is not None:
                _futex.wait(ring.follow_addr, word, deadline, M32)
            elif self.stop is not None:
                self.stop.wait(self.poll)
            else:
                time.sleep(self.poll)  # no writer to wake us: look at the files again

    def _advance(self, bound: int | None) -> Iterator[Record]:
        if self.fd < 0 and not self._open_current():
            yield from self._catch_up()
            if not self._open_current():
                return
        yield from self._read_frames(bound)
        if self.fd >= 0 and self._rotated():
            yield from self._read_frames(None)  # sealed before the rename: all of it is durable
            self._close_current()
            yield from self._catch_up()

    def _catch_up(self) -> Iterator[Record]:
        """Records in completed segments (replay), up to where current.wal starts."""
        cur = os.path.join(self.dir, CURRENT)
        try:
            with open(cur, "rb") as f:
                start = SegmentHeader.decode(f.read(SEGMENT_HEADER_SIZE), cur).first_seq
        except FileNotFoundError:
            start = None  # mid-rotation: every record is in a completed segment
        if start is not None and start <= self.want:
            return
        for rec in replay(self.dir, self.want - 1, self.serializer, skip_holes=self.skip_holes):
            if start is not None and rec.seq >= start:
                break
            self.want = rec.seq + 1
            yield rec
        if start is not None and self.want < start:
            # replay skipped what is gone (retention, or recorded holes with skip_holes)
            self.want = start

    def _open_current(self) -> bool:
        path = os.path.join(self.dir, CURRENT)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            header = SegmentHeader.decode(os.pread(fd, SEGMENT_HEADER_SIZE, 0), path)
        except Exception:
            os.close(fd)
            raise
        if header.first_seq > self.want:
            os.close(fd)  # the records we want next are in a completed segment
            return False
        ser = self.serializer
        if ser is None:
            ser = get_serializer(header.serializer)
        self.decode = with_batch_methods(ser).decode_batch
        self.fd, self.ino = fd, os.fstat(fd).st_ino
        self.pos, self.cur_next = SEGMENT_HEADER_SIZE, header.first_seq
        self.path = path
        return True

    def _close_current(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def _rotated(self) -> bool:
        try:
            return os.stat(os.path.join(self.dir, CURRENT)).st_ino != self.ino
        except FileNotFoundError:
            return True

    def _read_frames(self, bound: int | None) -> Iterator[Record]:
        """Yield the records of whole frames after ``pos`` (up to ``bound`` when given)."""
        fd = self.fd
        while True:
            data = os.pread(fd, CHUNK, self.pos)
            off = 0
            progressed = False
            while True:
                outcome, length, count, first, _s, _c, end = parse_frame(data, off, len(data))
                if outcome == FRAME_INCOMPLETE and off == 0 and length:
                    data = os.pread(fd, FRAME_HEADER_SIZE + align8(length), self.pos)
                    outcome, length, count, first, _s, _c, end = parse_frame(data, 0, len(data))
                if outcome != FRAME_OK:
                    break  # end of data, a frame still being written, or a torn tail: look later
                if bound is not None and first + count - 1 > bound:
                    self.pos += off
                    return  # not durable yet
                if first != self.cur_next:
                    self._jump(self.cur_next, first)
                body = data[off + FRAME_HEADER_SIZE : off + FRAME_HEADER_SIZE + length]
                recs = self.decode(body, count, first, (self.path, self.pos + off))
                if first < self.want:
                    recs = list(recs)[self.want - first :] if first + count > self.want else ()
                yield from recs
                self.cur_next = first + count
                self.want = max(self.want, self.cur_next)
                off = end
                progressed = True
                if off >= len(data):
                    break
            self.pos += off
            if not progressed or off < CHUNK // 2:
                return

    def _jump(self, expected: int, found: int) -> None:
        """Frames skip seqs ``expected..found-1``: allowed only over recorded holes."""
        if found < expected:
            return
        self.holes = load_holes(self.dir)
        lost = self.holes.explains(expected, found - 1)
        if lost is None:
            raise RecordsLostError(
                f"{self.path}: seqs {expected}-{found - 1} are missing and not recorded as lost; run ringwal verify",
                path=self.path,
                first_seq=expected,
                last_seq=found - 1,
            )
        if not self.skip_holes:
            raise RecordsLostError(
                f"{self.path}: seqs {expected}-{found - 1} were recorded as lost by ringwal repair; follow with skip_holes=True to step over them",
                path=self.path,
                first_seq=expected,
                last_seq=found - 1,
            )
