"""``follow(dir, after_seq)``: every record after ``after_seq``, then each new one as it
becomes durable, across rotations and writer restarts, until the caller stops iterating.

For a shipper or a read replica (and ``ringwal tail -f``). It only reads the segment files;
the ring (``ring.RingView``) tells it what is durable and when to look again, never records:

* what is durable: completed segments always are (sealed with fsync before their rename);
  in ``current.wal`` only frames up to the ring's durable seq are yielded while a writer
  is alive. With no writer alive, everything on disk is yielded: a dead writer's unsynced
  frames are fsynced by the next writer when it opens the log, before it accepts records;
* when to look again: a follower registers in the ring and sleeps on its follow word,
  which the writer bumps and wakes after each fsync while followers are registered.
  Without a writer it looks again every ``poll_interval`` seconds, which also bounds every
  sleep (a writer that dies cannot leave a follower asleep).

Reading is incremental: catch-up goes through ``replay`` for the completed segments; then
``current.wal`` is kept open in a ``SegmentScan`` that reads only the bytes after the last
frame read, a chunk at a time. Frames are judged by the same rules as replay's (the scan's
live-reading rule, ``docs/FORMAT.md``): a frame the writer has not finished writing is
"look again later", damage is CorruptRecordError, never a reason to wait. A rename of
``current.wal`` (rotation) is noticed when no new frame is there: the rest of the old file
is read through the open descriptor as the sealed segment it became, and the new
``current.wal`` is opened. A new writer recovering the same ``current.wal`` truncates only
a torn tail the follower never read past.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from datetime import datetime

from .errors import CorruptSegmentError, LockTimeoutError
from .format import FRAME_HEADER_SIZE
from .record import Record, check_seq
from .replay import _HoleCheck, replay
from .ring import RingView
from .segment import CURRENT, LiveWriter, SegmentScan, read_header, require_log
from .serializers import Serializer, get_serializer, with_batch_methods
from .since import DEFAULT_CLOCK_SKEW, start_after, starting_at, to_ns

__all__ = ["follow"]

CHUNK = 1 << 16  # bytes read per look at current.wal (a larger frame is read whole)


def follow(
    directory: str | os.PathLike[str],
    after_seq: int = 0,
    *,
    serializer: Serializer | None = None,
    poll_interval: float = 0.1,
    skip_holes: bool = False,
    stop: threading.Event | None = None,
    since: int | datetime | str | None = None,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
) -> Generator[Record, None, None]:
    """Yield every record with ``seq > after_seq``, then new ones as they become durable.

    Runs until the caller stops iterating (``break``, ``close()`` on the generator) or
    ``stop`` is set; never wedges on a dead writer (every sleep is at most
    ``poll_interval``). Raises what ``replay`` raises (corruption, RecordsLostError unless
    ``skip_holes``; NoLogError, at the first ``next``, when ``directory`` holds no log).

    Retention, as in ``replay``: ``after_seq=0`` starts at the first record still in the
    log; a larger ``after_seq`` below the log's first seq - 1 raises RecordsRemovedError,
    and so does a follower that falls behind the writer's retention (a completed segment it
    has not opened yet is removed), after yielding every seq before the removed ones.
    Records are never skipped silently: ``follow(dir, e.first_available - 1)`` goes on
    from where the log now starts.
    ``since``/``clock_skew``: start at the first record with ``time >= since`` and yield
    everything from there on, as ``replay`` does (``ringwal/since.py``); until such a record
    is durable, nothing is yielded.
    """
    check_seq(after_seq, "after_seq")
    if not (isinstance(poll_interval, (int, float)) and poll_interval > 0):
        raise ValueError(f"poll_interval must be a positive number of seconds, got {poll_interval!r}")
    directory = require_log(directory)
    since_ns = None
    if since is not None:
        since_ns = to_ns(since)
        after_seq = start_after(directory, since_ns, after_seq, clock_skew=clock_skew)
    f = _Follower(directory, after_seq + 1, serializer, poll_interval, skip_holes, stop)
    try:
        yield from f.run() if since_ns is None else starting_at(f.run(), since_ns)
    finally:
        f.close()


class _Follower:
    def __init__(
        self,
        directory: str,
        want: int,
        serializer: Serializer | None,
        poll_interval: float,
        skip_holes: bool,
        stop: threading.Event | None,
    ) -> None:
        self.dir = directory
        self.want = want  # next seq to yield
        self.serializer = serializer
        self.poll = poll_interval
        self.skip_holes = skip_holes
        self.stop = stop
        self.view: RingView | None = None
        self.next_attach = 0.0
        self.live = LiveWriter(directory)
        self.scan: SegmentScan | None = None
        self.decode: Callable[[bytes, int, int, tuple[str, int]], Iterable[Record]] | None = None
        self.holes = _HoleCheck(directory, skip_holes)

    # ------------------------------------------------------------------ the ring (optional)

    def _writer(self) -> RingView | None:
        """The ring, when a live writer serves it; attaches (and registers) lazily."""
        view = self.view
        if view is not None:
            if view.writer_alive():
                return view
            if not view.closed():
                return None  # writer dead or stopping: keep the mapping, a new writer reuses the ring
            self._detach()
        now = time.monotonic()
        if now < self.next_attach:
            return None
        self.next_attach = now + self.poll
        view = RingView.attach(self.dir)
        if view is None:
            return None  # no ring, or one of another layout: follow the files alone
        # A process stopped while holding the claim lock makes this give up after its
        # deadline: follow on unregistered, looking every poll_interval instead of being woken.
        with contextlib.suppress(LockTimeoutError):
            view.register_follower()
        self.view = self.live.view = view
        return view if view.writer_alive() else None

    def _detach(self) -> None:
        view, self.view = self.view, None
        self.live.view = None
        if view is not None:
            view.close()

    def close(self) -> None:
        self._close_current()
        self._detach()

    # ------------------------------------------------------------------ reading

    def run(self) -> Iterator[Record]:
        while self.stop is None or not self.stop.is_set():
            view = self._writer()
            word = view.follow_word() if view is not None else 0  # before looking: no lost wake-up
            bound = view.durable_seq() if view is not None else None
            before = self.want
            yield from self._advance(bound)
            if self.want != before:
                continue
            deadline = time.monotonic() + self.poll
            if view is not None:
                view.wait_follow(word, deadline)
            elif self.stop is not None:
                self.stop.wait(self.poll)
            else:
                time.sleep(self.poll)  # no writer to wake us: look at the files again

    def _advance(self, bound: int | None) -> Iterator[Record]:
        if self.scan is None and not self._open_current():
            yield from self._catch_up()
            if not self._open_current():
                return
        yield from self._read(bound)
        scan = self.scan
        if scan is not None and scan.renamed():
            scan.seal()
            yield from self._read(None)  # sealed before the rename: all of it is durable
            self._close_current()
            yield from self._catch_up()

    def _catch_up(self) -> Iterator[Record]:
        """Records in completed segments (replay), up to where current.wal starts."""
        try:
            start: int | None = read_header(os.path.join(self.dir, CURRENT)).first_seq
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
            # replay stopped at current.wal's first seq without yielding what is below it. It
            # raises on anything removed under a reader that has a position, so this is "from
            # the start" (after_seq=0, nothing yielded: the log starts later) or a recorded
            # hole that skip_holes stepped over; anything else would be a silent skip.
            gap = self.holes.holes.explains(self.want, start - 1)
            if self.want != 1 and (gap is None or not self.skip_holes):
                raise CorruptSegmentError(
                    f"{self.dir}/{CURRENT}: starts at seq {start} but seqs {self.want}-{start - 1} are in no "
                    "segment and not recorded as lost",
                    path=os.path.join(self.dir, CURRENT),
                    offset=32,
                )
            self.want = start

    def _open_current(self) -> bool:
        self.holes = _HoleCheck(self.dir, self.skip_holes)
        try:
            scan = SegmentScan.open(
                os.path.join(self.dir, CURRENT), sealed=False, holes=self.holes.holes, written=self.live, chunk=CHUNK
            )
        except FileNotFoundError:
            return False
        header = scan.header
        if header.first_seq > self.want:
            scan.close()  # the records we want next are in a completed segment
            return False
        ser = self.serializer
        if ser is None:
            ser = get_serializer(header.serializer)
        self.decode = with_batch_methods(ser).decode_batch
        self.scan = scan
        return True

    def _close_current(self) -> None:
        scan, self.scan = self.scan, None
        if scan is not None:
            scan.close()

    def _read(self, bound: int | None) -> Iterator[Record]:
        """Yield the records of the frames after the last one read (up to ``bound`` when given)."""
        scan, decode = self.scan, self.decode
        if scan is None or decode is None:
            return
        path = scan.path
        crossed = scan.crossed
        seen = len(crossed)
        for off, first, count, length in scan.frames(upto=bound):
            if len(crossed) > seen:  # the scan stepped over a recorded hole to reach this frame
                lo, found = crossed[-1]
                seen = len(crossed)
                if found > self.want:
                    self.holes.cross(max(lo, self.want), found - 1, path)
            if first + count <= self.want:
                continue
            start = off - scan.base + FRAME_HEADER_SIZE
            recs = decode(scan.buf[start : start + length], count, first, (path, off))
            if first < self.want:
                recs = list(recs)[self.want - first :]
            yield from recs
            self.want = first + count
