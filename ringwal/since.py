"""Reading by time: where ``replay``/``follow``/``ringwal dump|tail --since T`` start.

The rule
    ``since=T`` yields the records, in seq order, from the first one whose ``time >= T``
    (among those with ``seq > after_seq``): that record and *every* record after it,
    including later records whose ``time`` is below ``T``. It is
    ``itertools.dropwhile(lambda r: r.time < T, log)``, never a filter on each record.

    Why not "every record with time >= T": a record's ``time`` is its producer's clock (or
    any value the producer chose), and seq order is the writer's drain order, so times are
    not monotonic in seq order: two producers whose clocks differ interleave, and a
    producer may stamp an event with the time it happened. A start position keeps what a
    reader of a log needs: a contiguous range of seqs (``after_seq`` of the last record
    read resumes it exactly), the total order, and no record after the start left out.
    When no record has ``time >= T`` yet, nothing is yielded (``follow`` waits for one).

Finding the start without reading the whole log
    Only the segments that may hold the start are read. A completed segment is skipped
    without being opened when every record in it was written before ``T - clock_skew`` by
    the writer's wall clock: its ``closed_ns`` in ``wal_index.json`` (the time the writer
    closed it; for an entry rebuilt from the files, the next segment's header ``created``
    time, which the writer stamps after sealing this one) is below ``T - clock_skew``. The
    first segment not skipped is read from its first record (``replay``), and the start is
    the first record there, or later, with ``time >= T``. Costs: the index check (one header
    read per segment, as every replay does), then about one segment of records.

    Skipping is exact when no producer's clock runs more than ``clock_skew`` (default
    1 s) ahead of the writer's, and records carry the time they were appended: a record
    appended at producer time ``t`` is written at writer time ``>= t - clock_skew``, so a
    segment closed before ``T - clock_skew`` holds no record with ``time >= T``. A record
    from a producer whose clock ran further ahead, or stamped with a time in the future,
    can be passed over as the start when it sits in a skipped segment: the start is then
    the first record with ``time >= T`` after the skipped segments. Raise ``clock_skew`` to
    cover such producers (each extra second reads the segments closed in that second);
    ``clock_skew=math.inf`` reads every segment after ``after_seq`` and is exact for any
    times. A writer whose clock was set back by more than ``clock_skew`` while it wrote
    looks the same as a producer ahead of it.

Times are nanoseconds since the Unix epoch (``Record.time``), given as an ``int``, an
aware ``datetime``, or a string: ISO 8601 with a zone (``2026-11-30T10:00:00Z``,
``...+01:00``, fractional seconds to the nanosecond) or an integer of nanoseconds.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from itertools import dropwhile
from operator import itemgetter

from .errors import FormatError
from .holes import load_holes
from .index import reconcile
from .record import Record, check_seq
from .segment import CURRENT, read_header

__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "check_skew",
    "frames_starting_at",
    "parse_time",
    "start_after",
    "starting_at",
    "to_ns",
]

#: Seconds a producer's clock may run ahead of the writer's with ``since`` still exact.
DEFAULT_CLOCK_SKEW = 1.0

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ISO = re.compile(r"(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2})?)(?:[.,](\d{1,9}))?\s*(Z|z|[+-]\d{2}(?::?\d{2})?)")


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch from ``2026-11-30T10:00:00Z`` (ISO 8601 with a zone,
    fractional seconds to the nanosecond) or from an integer of nanoseconds. ValueError
    says what was wrong (a time without a zone is refused: it would depend on the machine)."""
    s = text.strip()
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    m = _ISO.fullmatch(s)
    if m is None:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2})?([.,]\d+)?", s):
            raise ValueError(f"time {text!r} has no zone: add Z for UTC or an offset such as +01:00")
        raise ValueError(
            f"time {text!r} is neither ISO 8601 with a zone (2026-11-30T10:00:00Z, fractions to the "
            "nanosecond) nor an integer of nanoseconds since the epoch"
        )
    base, frac, zone = m.groups()
    if zone in ("Z", "z"):
        zone = "+00:00"
    elif len(zone) == 3:
        zone += ":00"
    elif ":" not in zone:
        zone = zone[:3] + ":" + zone[3:]
    try:
        dt = datetime.fromisoformat(base.replace(" ", "T") + zone)
    except ValueError as exc:
        raise ValueError(f"time {text!r}: {exc}") from None
    return _dt_ns(dt) + (int(frac.ljust(9, "0")) if frac else 0)


def _dt_ns(dt: datetime) -> int:
    d = dt - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1_000


def to_ns(since: int | datetime | str) -> int:
    """``since`` as nanoseconds since the epoch (module docstring). ValueError for a naive
    datetime, a bool, or a string ``parse_time`` refuses."""
    if isinstance(since, bool):
        raise ValueError(f"since must be ns since the epoch, an aware datetime or an ISO 8601 string, got {since!r}")
    if isinstance(since, int):
        return since
    if isinstance(since, datetime):
        if since.tzinfo is None or since.tzinfo.utcoffset(since) is None:
            raise ValueError(f"since={since!r} is a naive datetime: give it a tzinfo (e.g. timezone.utc)")
        return _dt_ns(since)
    if isinstance(since, str):
        return parse_time(since)
    raise ValueError(
        f"since must be ns since the epoch, an aware datetime or an ISO 8601 string, got {type(since).__name__}"
    )


def check_skew(clock_skew: float) -> int:
    """``clock_skew`` seconds as ns (``math.inf``: never skip); ValueError when negative or not a number."""
    if isinstance(clock_skew, bool) or not isinstance(clock_skew, (int, float)) or not clock_skew >= 0:
        raise ValueError(
            f"clock_skew must be a number of seconds >= 0 (math.inf: read every segment), got {clock_skew!r}"
        )
    return -1 if math.isinf(clock_skew) else int(clock_skew * 1e9)


def start_after(directory: str, since_ns: int, after_seq: int = 0, *, clock_skew: float = DEFAULT_CLOCK_SKEW) -> int:
    """The seq to read after for ``since=since_ns``: the last seq of the last completed
    segment that is skipped (module docstring), or ``after_seq`` when that is later. Reads
    the index and the segment headers only. The caller reads on from there, dropping the
    records with ``time < since_ns`` before the first that is not (:func:`starting_at`)."""
    check_seq(after_seq, "after_seq")
    skew = check_skew(clock_skew)
    if skew < 0:
        return after_seq
    bar = since_ns - skew
    directory = os.path.abspath(directory)
    entries, _ = reconcile(directory, full=False, holes=load_holes(directory))
    cur_created: int | None = None
    cur_first: int | None = None
    try:
        header = read_header(os.path.join(directory, CURRENT))
        cur_created, cur_first = header.created_ns, header.first_seq
    except (FileNotFoundError, FormatError):
        pass  # mid-rotation, or a header the reader will report
    start = after_seq
    for i, e in enumerate(entries):
        nxt = entries[i + 1] if i + 1 < len(entries) else None
        # Every record of e was written before it was closed, and before the next segment
        # was created (rotation seals, renames, then creates the next one).
        bound = e.closed_ns if e.closed_ns > 0 else (nxt.created_ns if nxt is not None else cur_created)
        last = e.last_seq if e.last_seq >= e.first_seq else (nxt.first_seq if nxt is not None else cur_first)
        if bound is None or bound >= bar or last is None:
            break
        if e.last_seq < e.first_seq:
            last -= 1  # the first seq of what follows, minus one
        start = max(start, last)
    return start


def starting_at(records: Iterator[Record], since_ns: int) -> Iterator[Record]:
    """``records`` from the first one with ``time >= since_ns`` on (all of them, in order)."""
    return dropwhile(lambda r: r.time < since_ns, records)


def frames_starting_at(frames: Iterator[Iterable[Record]], since_ns: int) -> Iterator[Iterable[Record]]:
    """:func:`starting_at` over replay's frames (one iterable of records per frame): a frame
    whose latest time is below ``since_ns`` is passed over with one ``max`` in C, so only the
    frame holding the start is looked at record by record."""
    for recs in frames:
        batch = recs if isinstance(recs, list) else list(recs)
        if not batch or max(map(_TIME, batch)) < since_ns:
            continue
        i = next(i for i, r in enumerate(batch) if r[1] >= since_ns)
        yield batch[i:]
        yield from frames
        return


_TIME = itemgetter(1)  # Record.time
