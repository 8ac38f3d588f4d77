"""Replay: read records back from the segment files, with or without a writer running.

Vocabulary: records, sequence numbers and corruption reports. ``replay(dir, after_seq)``
yields every record with ``seq > after_seq`` in order, opening only the segments it needs
(the index, checked against the segment headers, says where each starts and ends;
where it disagrees with them the headers decide: ``index.reconcile``).

Reading while a writer appends:

* ``current.wal`` is read as it is at that moment; the read stops cleanly at the first
  frame the writer has not finished writing. One read is not atomic with the writer's
  ``pwritev``, so what looks damaged is judged by the live-reading rule (``segment.py``,
  ``docs/FORMAT.md``): against the seq the writer says it has written, after reading again.
* If ``current.wal`` was renamed meanwhile (rotation), the open descriptor still names the
  now-completed segment, which the writer fsynced and truncated *before* the rename: the
  rest of it is read through that descriptor, then replay continues with the next segment.

A checksum failure or impossible length before the tail raises CorruptRecordError with the
path, offset and both checksums. Nothing is skipped silently: seqs that ``ringwal repair``
cut out of a damaged log are listed in ``wal_holes.json``, and replay raises
RecordsLostError when the records it must yield cross one, unless ``skip_holes=True``
(then each hole crossed is logged as a warning).

Records removed by retention (``retention_max_bytes``/``retention_max_age``,
``truncate_before``, ``ringwal truncate``) are not a hole, and never skipped silently either:

* ``after_seq=0`` means "from the start": the first record still in the log, wherever
  retention has moved it by the time replay opens the first segment;
* ``after_seq`` > 0 below the log's first seq - 1 raises RecordsRemovedError at once
  (the caller's position is gone; like Kafka's OffsetOutOfRange, it is not reset quietly);
* a segment removed while replay runs (between the plan and its opening) raises
  RecordsRemovedError when replay reaches it, after yielding every seq before it. A segment
  already open is read to its end: an unlinked file stays readable through its descriptor.

The error carries ``first_gone`` and ``first_available``: ``replay(dir,
e.first_available - 1)`` goes on, accepting the loss.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Generator, Iterable, Iterator
from datetime import datetime
from itertools import chain, islice
from typing import NamedTuple

from .errors import CorruptSegmentError, FormatError, RecordsLostError, RecordsRemovedError, SerializerMismatchError
from .format import FRAME_HEADER_SIZE, SegmentHeader
from .holes import Holes, load_holes
from .index import reconcile
from .record import Record, check_seq
from .segment import CURRENT, LiveWriter, SegmentScan, list_segments, read_header, require_log
from .serializers import Serializer, get_serializer, with_batch_methods
from .since import DEFAULT_CLOCK_SKEW, frames_starting_at, start_after, to_ns

__all__ = ["replay"]

log = logging.getLogger("ringwal")

PLAN_ATTEMPTS = 100  # a writer rotating faster than a directory listing could starve the check


class _Seg(NamedTuple):
    first_seq: int
    last_seq: int  # -1 when not known (the active segment, or a stale index)
    path: str
    current: bool


def replay(
    directory: str | os.PathLike[str],
    after_seq: int = 0,
    serializer: Serializer | None = None,
    *,
    skip_holes: bool = False,
    since: int | datetime | str | None = None,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
) -> Iterator[Record]:
    """Yield every record with ``seq > after_seq``, in seq order.

    ``serializer=None`` decodes with the serializer named in each segment header; passing one
    checks that the log was written with it (SerializerMismatchError otherwise).
    ``skip_holes=True`` steps over seq ranges that repair recorded as lost (with a warning)
    instead of raising RecordsLostError. ``directory`` is a ``str`` or ``os.PathLike``; one
    that is missing or holds no log raises NoLogError (at the call, not at the first ``next``).

    ``after_seq=0`` starts at the first record still in the log. A larger ``after_seq``
    whose next seq retention (or ``truncate_before``) has removed raises
    RecordsRemovedError, at once or, when removed while replay runs, where replay reaches
    it (module docstring); nothing is ever skipped silently. Also raises CorruptRecordError,
    CorruptSegmentError, RecordsLostError and SerializerMismatchError (module docstring).
    ``since`` (ns since the epoch, an aware datetime, or ISO 8601 text): start at the first
    of those records whose ``time >= since`` and yield every record from there on, in seq
    order, whatever its time. Completed segments the writer closed before
    ``since - clock_skew`` seconds are skipped unread; the rule, and what a producer clock
    running further ahead than ``clock_skew`` does to it, are in ``ringwal/since.py``.
    ValueError for a bad ``since`` or ``clock_skew``.
    """
    check_seq(after_seq, "after_seq")
    directory = require_log(directory)
    if since is not None:
        since_ns = to_ns(since)
        start = start_after(directory, since_ns, after_seq, clock_skew=clock_skew)
        frames = _replay(directory, start + 1, serializer, _HoleCheck(directory, skip_holes))
        return chain.from_iterable(frames_starting_at(frames, since_ns))
    # The generators below yield one iterable per frame; chain flattens them in C, so no
    # Python frame runs per record (the binary fast path decodes a frame in C as well).
    return chain.from_iterable(_replay(directory, after_seq + 1, serializer, _HoleCheck(directory, skip_holes)))


def _plan(directory: str, holes: Holes) -> list[_Seg]:
    """Completed segments plus ``current.wal``, as one consistent picture.

    The index says where each completed segment starts and ends only after ``reconcile``
    checked it against the segment headers (one header read per segment); where it
    disagrees, the plan uses the headers and reads the segment to learn where it ends.

    A rotation between listing the segments and opening ``current.wal`` would pair a listing
    from before the rename with the ``current.wal`` (or its absence) from after it, and
    replay would see an empty or gapped log. So the listing is taken again afterwards and
    the plan is kept only if no segment appeared meanwhile.
    """
    for _attempt in range(PLAN_ATTEMPTS):
        before = list_segments(directory)
        entries, _ = reconcile(directory, full=False, holes=holes)
        plan = [_Seg(e.first_seq, e.last_seq, os.path.join(directory, e.file), False) for e in entries]
        cur = os.path.join(directory, CURRENT)
        try:
            plan.append(_Seg(read_header(cur).first_seq, -1, cur, True))
        except FileNotFoundError:
            pass
        if list_segments(directory) == before:
            break
    return plan


def _pick(plan: list[_Seg], want: int, done: set[str]) -> _Seg | None:
    """The segment to read for seq ``want``: the last unread one starting at or before it;
    failing that the first unread one (which then starts after ``want``: a gap). None when
    every segment is read or known to end before ``want``."""
    holder = first_live = None
    for seg in plan:
        if seg.path in done or (seg.last_seq != -1 and seg.last_seq < want):
            continue
        if first_live is None:
            first_live = seg
        if seg.first_seq > want:
            break
        holder = seg
    return holder if holder is not None else first_live


class _HoleCheck:
    """What replay does on meeting seqs that repair recorded as lost: raise, or warn and go on."""

    def __init__(self, directory: str, skip: bool) -> None:
        self.holes = load_holes(directory)
        self.skip = skip

    def cross(self, lo: int, hi: int, path: str) -> bool:
        """Seqs ``lo..hi`` are absent where replay needs them. True if they are recorded holes
        and may be stepped over; raises RecordsLostError if they are holes and skipping was
        not asked for; False if they are not recorded at all (real corruption)."""
        found = self.holes.explains(lo, hi)
        if found is None:
            return False
        what = "; ".join(h.describe() for h in found)
        if not self.skip:
            raise RecordsLostError(
                f"{path}: seqs {lo}-{hi} are not in the log: they are recorded as lost in wal_holes.json ({what}); "
                "replay with skip_holes=True (ringwal dump/tail --skip-holes) to step over them",
                path=path,
                first_seq=lo,
                last_seq=hi,
                reason=what,
            )
        log.warning("replay: stepping over seqs %d-%d, recorded as lost in wal_holes.json (%s)", lo, hi, what)
        return True


def _replay(directory: str, want: int, serializer: Serializer | None, holes: _HoleCheck) -> Iterator[Iterable[Record]]:
    """The records from seq ``want`` on, one iterable per frame (``replay``'s body).

    Retention removes whole completed segments, oldest first, at any moment; an open
    descriptor keeps reading a file that was unlinked, so only a segment not yet opened can
    be lost. Every (re)plan is checked at its front: a log that now starts after ``want``
    lost seqs this reader needs. With ``after_seq=0`` and nothing yielded yet ("from the
    start") the start just moves to the log's first seq; otherwise RecordsRemovedError
    (or, where ``wal_holes.json`` explains the seqs, the hole rule). A gap after a segment
    that still exists cannot be retention's (oldest first): it is corruption, as before.
    """
    floating = want == 1  # from the start, and nothing yielded yet: wherever the log starts now
    plan = _plan(directory, holes.holes)
    done: set[str] = set()
    fresh = True  # whether ``plan`` was read after the last segment we finished
    while True:
        seg = _pick(plan, want, done)
        if seg is None or seg.first_seq > want:
            if not fresh:
                # A rotation or a removal may have happened since the plan was made: look again, once.
                plan, fresh = _plan(directory, holes.holes), True
                continue
            if seg is None:
                return
            if seg is plan[0]:
                # Nothing in the log before seq seg.first_seq: retention took the seqs we need
                # (or repair recorded them as lost, or we start from the start).
                if not floating and not holes.cross(want, seg.first_seq - 1, seg.path):
                    raise RecordsRemovedError.for_reader(directory, want, seg.first_seq)
                want = seg.first_seq
                continue
            if holes.cross(want, seg.first_seq - 1, seg.path):
                want = seg.first_seq
                continue
            raise CorruptSegmentError(
                f"{seg.path}: starts at seq {seg.first_seq} but seq {want} is in no segment; "
                f"records {want}-{seg.first_seq - 1} are missing",
                path=seg.path,
                offset=32,
            )
        if not seg.current:
            got = yield from _replay_completed(seg, want, serializer, holes)
            if got is None:
                # Removed (retention) after we planned, before we opened it: plan again, and
                # the front check above decides.
                plan, fresh = _plan(directory, holes.holes), True
                continue
            floating = floating and got == want
            want = got
            done.add(seg.path)
            fresh = False
            continue
        result = yield from _replay_current(seg, want, serializer, holes)
        if result is None:
            # Rotated away (or replaced by a newer one) between planning and opening.
            plan, fresh = _plan(directory, holes.holes), True
            continue
        floating = floating and result[0] == want
        want, renamed = result
        if not renamed:
            return
        plan, fresh = _plan(directory, holes.holes), True


def _serializer_for(header: SegmentHeader, path: str, serializer: Serializer | None) -> Serializer:
    if serializer is None:
        try:
            return get_serializer(header.serializer)
        except KeyError:
            raise FormatError(
                f"{path}: written with serializer {header.serializer!r}, which is not registered in this "
                "process; register it with ringwal.register_serializer",
                path=path,
                offset=16,
            ) from None
    if serializer.name != header.serializer:
        raise SerializerMismatchError(
            f"{path}: written with serializer {header.serializer!r}, not {serializer.name!r}; "
            "pass serializer=None to use the one named in the log",
            path=path,
            offset=16,
        )
    return serializer


def _records(scan: SegmentScan, want: int, ser: Serializer, holes: _HoleCheck) -> Iterator[Iterable[Record]]:
    """The records with seq >= want of each valid frame of ``scan``, one iterable per frame."""
    path = scan.path
    decode = with_batch_methods(ser).decode_span  # in place: no frame body is copied out
    crossed = scan.crossed
    seen = len(crossed)
    for off, first, count, length in scan.frames():
        if len(crossed) > seen:  # the scan stepped over a recorded hole to reach this frame
            lo, found = crossed[-1]
            seen = len(crossed)
            if found > want:
                holes.cross(max(lo, want), found - 1, path)
        if first + count <= want:
            continue
        recs = decode(scan.buf, off - scan.base + FRAME_HEADER_SIZE, length, count, first, (path, off))
        if first < want:
            recs = islice(recs, want - first, None)
        yield recs


def _replay_completed(
    seg: _Seg, want: int, serializer: Serializer | None, holes: _HoleCheck
) -> Generator[Iterable[Record], None, int | None]:
    try:
        scan = SegmentScan.open(seg.path, sealed=True, holes=holes.holes)
    except FileNotFoundError:
        return None
    with scan:
        header = scan.header
        if header.first_seq != seg.first_seq:
            raise CorruptSegmentError(
                f"{seg.path}: header says first seq {header.first_seq}, expected {seg.first_seq}",
                path=seg.path,
                offset=32,
            )
        ser = _serializer_for(header, seg.path, serializer)
        yield from _records(scan, want, ser, holes)
    return max(want, scan.next_seq)


def _replay_current(
    seg: _Seg, want: int, serializer: Serializer | None, holes: _HoleCheck
) -> Generator[Iterable[Record], None, tuple[int, bool] | None]:
    """Replay current.wal; returns (next want, renamed) or None if it vanished before opening.

    A writer may be appending: the scan applies the live-reading rule (``segment.py``), so
    it stops at the first frame the writer has not finished writing, and raises only on
    damage no write in progress can explain.
    """
    directory = os.path.dirname(seg.path)
    try:
        scan = SegmentScan.open(seg.path, sealed=False, holes=holes.holes, written=LiveWriter(directory))
    except FileNotFoundError:
        return None
    with scan:
        header = scan.header
        if header.first_seq != seg.first_seq:
            return None  # a newer current.wal replaced the planned one
        ser = _serializer_for(header, seg.path, serializer)
        yield from _records(scan, want, ser, holes)
        want = max(want, scan.next_seq)
        if not scan.renamed():
            return want, False
        # Rotated while we read: the file behind the scan is sealed now (truncated and
        # fsynced before the rename), so whatever follows scan.end is complete.
        scan.seal()
        yield from _records(scan, want, ser, holes)
        return max(want, scan.next_seq), True


def replay_into(directory: str, after_seq: int, serializer: Serializer | None, fn: Callable[[Record], object]) -> int:
    """Call ``fn`` for every record with seq > ``after_seq``, in order; return how many
    (raises what ``replay`` raises, RecordsRemovedError included).

    The body of ``WAL.replay_from`` and ``Handle.replay_from`` (the Go original's callback form).
    """
    n = 0
    for rec in replay(directory, after_seq, serializer):
        fn(rec)
        n += 1
    return n
