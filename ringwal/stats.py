"""``log_stats(dir)``: what ``ringwal stats`` shows, as a plain dict (its ``--json`` output).

The files part reads only what is cheap: the index (checked against the directory and the
segment headers by ``reconcile``, scanning only segments it does not describe correctly), the
headers and ``current.wal``.
The writer part comes from ``ring.RingView`` (which stores nothing), from the words the
writer publishes: pid and start time, next and durable seq, records/s
over the last second, the fsync histogram, and each lane's owner and fill; ``followers``
counts the followers alive now (their bytes of ``wal.ring.lock``).

``bytes`` is defined once, by ``SegmentScan.log_bytes``: completed segments' file sizes plus
``current.wal`` up to its last complete frame (its preallocated size is ``allocated_bytes``);
``ringwal verify`` reports the same number. The fsync percentiles are histogram bucket
bounds, hence ``fsync_p99_le_us``: the 99th percentile is at most that many microseconds.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .errors import NoLogError
from .format import fsync_bucket_upper
from .holes import load_holes
from .index import reconcile
from .ring import RingView
from .segment import CURRENT, LiveWriter, SegmentScan, read_log_id, require_log
from .shipped import shipping_lag

__all__ = ["format_stats", "log_stats"]

_STATES = {0: "starting", 1: "ready", 2: "stopped", 3: "closed", 4: "gone"}  # format.RING_*


def log_stats(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``ringwal stats --json`` prints. Raises NoLogError when ``directory`` holds no log."""
    directory = require_log(directory)
    holes = load_holes(directory)
    entries, _reason = reconcile(directory, full=True, holes=holes)
    segs = [{"file": e.file, "first_seq": e.first_seq, "last_seq": e.last_seq, "bytes": e.size} for e in entries]
    first = entries[0].first_seq if entries else None
    last = entries[-1].last_seq if entries else None
    total = sum(e.size for e in entries)
    serializer = None
    try:
        lid: str | None = read_log_id(directory).hex()
    except NoLogError:
        lid = None  # no log yet, or one written before log ids (format 1)
    cur_path = os.path.join(directory, CURRENT)
    current = None
    try:
        scan = SegmentScan.open(cur_path, sealed=False, holes=holes, written=LiveWriter(directory))
    except FileNotFoundError:
        scan = None
    if scan is not None:
        with scan:
            for _ in scan.frames():
                pass
        header = scan.header
        serializer = header.serializer
        current = {
            "file": CURRENT,
            "first_seq": header.first_seq,
            "last_seq": scan.next_seq - 1,
            "bytes": scan.log_bytes,
            "allocated_bytes": scan.size,
        }
        segs.append(current)
        total += scan.log_bytes
        if first is None:
            first = header.first_seq
        if scan.records:
            last = scan.next_seq - 1
    writer = writer_stats(directory)
    if first is not None and last is not None and last >= first:
        lost = sum(min(h.last_seq, last) - max(h.first_seq, first) + 1 for h in holes.overlapping(first, last))
        records = last - first + 1 - lost
    else:
        records, first, last = 0, None, None
    return {
        "dir": directory,
        "log_id": lid,
        "serializer": serializer,
        "segments": len(segs),
        "first_seq": first,
        "last_seq": last,
        "records": records,
        "bytes": total,
        "holes": [{"first_seq": h.first_seq, "last_seq": h.last_seq, "reason": h.reason} for h in holes],
        "segment_files": segs,
        "writer": writer,
        "shipping": shipping_lag(directory, durable_seq=writer["durable_seq"] if writer else (last or 0)),
    }


def writer_stats(directory: str) -> dict[str, Any] | None:
    """The running writer's figures from the ring, or None when no writer is alive."""
    view = RingView.attach(directory)
    if view is None:
        return None
    with view:
        st = view.writer_stats()
    if st is None:
        return None
    hist = st.pop("fsync_histogram")
    del st["lane_bytes_used"], st["lane_size"]  # per lane: for the metrics endpoint
    fsync_ns = st.pop("fsync_ns")
    started = st.pop("started_ns")
    n = st["fsyncs"]
    used, total = st["ring_bytes_used"], st["ring_bytes"]
    st.update(
        state=_STATES.get(st["state"], str(st["state"])),
        uptime_s=round(max(0.0, (time.time_ns() - started) / 1e9), 3) if started else None,
        ring_fill=round(used / total, 6),
        fsync_mean_us=round(fsync_ns / n / 1000, 1) if n else None,
        # Upper bounds of histogram buckets (at most ~19% above the true quantile), so the
        # keys say "le" (<=), as Prometheus names a bucket's bound.
        fsync_p50_le_us=_percentile(hist, n, 0.50),
        fsync_p99_le_us=_percentile(hist, n, 0.99),
        fsync_p999_le_us=_percentile(hist, n, 0.999),
    )
    return st


def _percentile(hist: list[int], n: int, q: float) -> int | None:
    """Upper bound of the histogram bucket holding the q-quantile (at most ~19% high)."""
    if not n:
        return None
    rank = max(1, int(q * n + 0.999999))
    seen = 0
    for b, c in enumerate(hist):
        seen += c
        if seen >= rank:
            return fsync_bucket_upper(b)
    return fsync_bucket_upper(len(hist) - 1)


def format_stats(st: dict[str, Any]) -> str:
    lines = [f"log {st['dir']} (serializer {st['serializer'] or 'unknown'})"]
    lines.append(f"  log id {st['log_id'] or 'none (written before log ids; a writer gives it one)'}")
    span = f"seqs {st['first_seq']}-{st['last_seq']}" if st["records"] else "no records"
    lines.append(f"  {st['records']} record(s), {span}, {st['segments']} segment(s), {st['bytes']} bytes")
    for h in st["holes"]:
        lines.append(f"  hole: seqs {h['first_seq']}-{h['last_seq']} lost ({h['reason']})")
    sh = st.get("shipping")
    if sh is not None:
        behind = "" if sh["seconds"] is None else f", {sh['seconds']:.1f}s"
        running = "running" if sh["shipper_running"] else "not running"
        lines.append(
            f"  shipping: {sh['records']} record(s){behind} behind durable seq {sh['durable_seq']} "
            f"(shipped up to seq {sh['shipped_seq']} to stream {sh['stream']}; shipper {running})"
        )
    w = st["writer"]
    if w is None:
        lines.append("  writer: none running")
        return "\n".join(lines)
    lines.append(
        f"  writer: pid {w['pid']}, {w['state']}, up {w['uptime_s']:.0f}s, "
        f"{w['records_per_s']} records/s over the last second, {w['records_written']} written since it started"
    )
    lines.append(f"    durable seq {w['durable_seq']}, next seq {w['next_seq']}")
    lines.append(
        f"    ring {w['ring_fill'] * 100:.2f}% full ({w['ring_bytes_used']} of {w['ring_bytes']} bytes), "
        f"{len(w['producers'])} producer(s) attached of {w['lanes']} lanes, {w['followers']} follower(s)"
    )
    if w["fsyncs"]:
        lines.append(
            f"    fsync: {w['fsyncs']} calls, mean {w['fsync_mean_us']} us, p50 <= {w['fsync_p50_le_us']} us, "
            f"p99 <= {w['fsync_p99_le_us']} us, p99.9 <= {w['fsync_p999_le_us']} us"
        )
    else:
        lines.append("    fsync: none yet")
    return "\n".join(lines)
