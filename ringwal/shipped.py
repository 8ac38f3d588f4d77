"""``wal_shipped.json``: how far a shipper (``ringwal ship``) has got, for the writer's retention
and for ``ringwal stats``; and the shipping lag, computed from it.

It is a *hint* for this machine, never the shipper's memory: a shipper that starts asks the
stream where it stopped and resumes there (``ship.py``). Its readers:

* the writer's retention with ``Config(keep_unshipped=True)`` (``SegmentLog._remove_oldest``)
  removes only completed segments whose last seq is <= ``shipped_seq``; no file (nothing
  shipped yet) or an unreadable one keeps every segment;
* ``ringwal stats`` and ``shipping_lag`` (the metrics read the same function).

The shipper writes it after acknowledgements, at most every ``progress_interval`` seconds and
when it stops, with ``_fileutil.atomic_write`` (temp file, fsync, rename, directory fsync), so
a reader sees the old or the new content, never a torn one. ``shipped_seq`` only ever names a
seq the stream acknowledged, so it may lag the stream (a crash before the next write): the
safe direction for retention, which then keeps a segment or two more.

Layout (format 1; a reader meeting another format raises UnsupportedVersionError)::

    {"format": 1, "log_id": "5f0c...32 hex", "stream": "ORDERS", "subject": "ringwal.5f0c...",
     "shipped_seq": 81200, "stream_seq": 81200, "updated_ns": 1764000000000000000}

``stream_seq`` is the stream's sequence of the message holding ``shipped_seq``;
``updated_ns`` the wall time of the write (ns since the epoch).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from ._fileutil import ByteLocks, FsyncFn, atomic_write
from .errors import FormatError, UnsupportedVersionError, WALError

__all__ = ["SHIPPED_NAME", "SHIP_LOCK_NAME", "Shipped", "read_shipped", "shipped_seq", "shipping_lag", "write_shipped"]

log = logging.getLogger("ringwal")

SHIPPED_NAME = "wal_shipped.json"
SHIPPED_FORMAT = 1
#: Held (OFD byte-range lock on byte 0) by the one shipper of the log, for as long as it runs.
SHIP_LOCK_NAME = "wal.ship.lock"


@dataclass(frozen=True)
class Shipped:
    """The content of ``wal_shipped.json``."""

    log_id: str
    stream: str
    subject: str
    shipped_seq: int
    stream_seq: int
    updated_ns: int


def read_shipped(directory: str) -> Shipped | None:
    """The shipper's last published progress, or None when no shipper ever wrote one.

    Raises FormatError (path included) when the file does not parse, UnsupportedVersionError
    for another format.
    """
    path = os.path.join(directory, SHIPPED_NAME)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise FormatError(f"{path}: does not parse ({exc}); the next shipper rewrites it", path=path) from None
    if not isinstance(doc, dict) or doc.get("format") != SHIPPED_FORMAT:
        version = doc.get("format") if isinstance(doc, dict) else None
        raise UnsupportedVersionError(
            f"{path}: format {version!r}; this build reads format {SHIPPED_FORMAT}", path=path
        )
    try:
        st = Shipped(**{k: doc[k] for k in Shipped.__dataclass_fields__})
        if not (isinstance(st.shipped_seq, int) and st.shipped_seq >= 0):
            raise ValueError(f"shipped_seq {st.shipped_seq!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{path}: bad content ({exc}); the next shipper rewrites it", path=path) from None
    return st


def write_shipped(directory: str, shipped: Shipped, fsync: FsyncFn = os.fsync) -> None:
    """Replace ``wal_shipped.json`` atomically (temp file, fsync, rename, directory fsync)."""
    doc = {"format": SHIPPED_FORMAT, **asdict(shipped)}
    atomic_write(os.path.join(directory, SHIPPED_NAME), json.dumps(doc).encode() + b"\n", fsync)


def shipped_seq(directory: str) -> int:
    """The last seq a shipper published as acknowledged by its stream; 0 when none, or when
    the file cannot be read (logged: retention then keeps every segment, the safe side)."""
    try:
        st = read_shipped(directory)
    except (FormatError, OSError) as exc:
        log.warning("%s: %s; keeping every segment as unshipped", directory, exc)
        return 0
    return 0 if st is None else st.shipped_seq


def shipper_running(directory: str) -> bool:
    """Whether a process holds the shipper lock of ``directory`` right now (takes nothing)."""
    path = os.path.join(directory, SHIP_LOCK_NAME)
    if not os.path.exists(path):
        return False
    locks = ByteLocks(path)
    try:
        return locks.held_elsewhere(0)
    finally:
        locks.close()


def shipping_lag(
    directory: str, *, durable_seq: int | None = None, shipped: int | None = None, now_ns: int | None = None
) -> dict[str, Any] | None:
    """How far shipping is behind the log, or None when nothing was ever shipped from it.

    Returns ``{"stream", "subject", "shipped_seq", "durable_seq", "records", "seconds",
    "updated_ns", "shipper_running"}``:

    * ``records``: durable records not yet acknowledged by the stream (``durable_seq -
      shipped_seq``, less the seqs recorded as holes between them), >= 0;
    * ``seconds``: the age of the oldest of them, by its record time (the producer's clock,
      ns since the epoch) against ``now_ns`` (default: the wall clock); 0.0 when nothing is
      behind, None when that record cannot be read (removed, or the log is damaged).

    ``durable_seq`` defaults to the running writer's durable seq, else the last seq on disk
    (with no writer running, everything on disk is durable once a writer opens the log).
    ``shipped`` overrides the file's seq (an in-process ``Shipper`` passes its own, newer one).
    This is the function the metrics read.
    """
    try:
        st = read_shipped(directory)
    except (FormatError, OSError):
        st = None
    if st is None and shipped is None:
        return None
    done = shipped if shipped is not None else st.shipped_seq if st is not None else 0
    if durable_seq is None:
        durable_seq = _durable_seq(directory)
    records, seconds = 0, 0.0
    if durable_seq > done:
        from .holes import load_holes
        from .replay import replay

        try:
            lost = sum(
                min(h.last_seq, durable_seq) - max(h.first_seq, done + 1) + 1
                for h in load_holes(directory).overlapping(done + 1, durable_seq)
            )
        except WALError:
            lost = 0
        records = max(0, durable_seq - done - lost)
        oldest = None
        if records:
            try:
                oldest = next(iter(replay(directory, done, skip_holes=True)), None)
            except (WALError, OSError):
                oldest = None
        now = time.time_ns() if now_ns is None else now_ns
        seconds_or_none = None if oldest is None else round(max(0, now - oldest.time) / 1e9, 3)
        return _lag_doc(st, done, durable_seq, records, seconds_or_none, directory)
    return _lag_doc(st, done, durable_seq, records, seconds, directory)


def _lag_doc(
    st: Shipped | None, done: int, durable: int, records: int, seconds: float | None, directory: str
) -> dict[str, Any]:
    return {
        "stream": st.stream if st is not None else None,
        "subject": st.subject if st is not None else None,
        "shipped_seq": done,
        "durable_seq": durable,
        "records": records,
        "seconds": seconds,
        "updated_ns": st.updated_ns if st is not None else None,
        "shipper_running": shipper_running(directory),
    }


def _durable_seq(directory: str) -> int:
    from .ring import RingView

    view = RingView.attach(directory)
    if view is not None:
        with view:
            if view.writer_alive():
                return view.durable_seq()
    from .holes import load_holes
    from .index import reconcile
    from .segment import CURRENT, LiveWriter, SegmentScan

    holes = load_holes(directory)
    entries, _reason = reconcile(directory, full=True, holes=holes)
    last = entries[-1].last_seq if entries else 0
    try:
        scan = SegmentScan.open(
            os.path.join(directory, CURRENT), sealed=False, holes=holes, written=LiveWriter(directory)
        )
    except FileNotFoundError:
        return last
    with scan:
        for _ in scan.frames():
            pass
    return max(last, scan.next_seq - 1)
