"""Seeking by time (``replay(dir, since=T)``) in a large log, against a scan. JSON lines.

Builds a log of ``--records`` records (10M by default) with ``WAL`` in-process, as if
written over hours: the writer's clock (a seam of ``WAL``) reads 1 ms per record appended,
and each record's time is that plus a jitter of ``-50 .. +5`` ms (producers' clocks that
disagree a little). Then, for ``--seeks`` times spread over the log, it measures:

* ``seek_ms``: ``next(replay(dir, since=T))``, the first record (index check, segments
  skipped by their closed times, then a read of about one segment);
* ``start_after_ms``: the segment skipping alone (index and headers only);
* ``scan_ms`` (once, T in the middle): the same first record found by reading every record
  from the start (``dropwhile`` over ``replay(dir)``), what a reader without ``since`` does.

    python bench/bench_seek.py --records 10000000 --seeks 20
    python bench/bench_seek.py --keep /tmp/seeklog     # build once, measure again later
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from itertools import dropwhile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ringwal import WAL, Config, Record, replay  # noqa: E402
from ringwal.index import load_index  # noqa: E402
from ringwal.since import start_after  # noqa: E402

BASE = 1_800_000_000 * 1_000_000_000
MS = 1_000_000


def build(d: str, n: int, size: int, segment_size: int) -> None:
    appended = [0]

    def clock() -> int:  # the writer's wall clock: 1 ms per record appended so far
        return BASE + appended[0] * MS

    rng = random.Random(1)
    jitter = [rng.randrange(-50 * MS, 5 * MS) for _ in range(4096)]
    payload = os.urandom(size)
    chunk = 10_000
    with WAL(Config(dir=d, segment_size=segment_size, write_buffer_size=1 << 20), clock=clock) as w:
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            w.append_many([Record(1, BASE + i * MS + jitter[i & 4095], payload) for i in range(lo, hi)])
            appended[0] = hi
        w.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--size", type=int, default=16, help="data bytes per record")
    ap.add_argument("--segment-size", type=int, default=2 << 20)
    ap.add_argument("--seeks", type=int, default=20)
    ap.add_argument("--dir", default=None, help="where the temporary log goes")
    ap.add_argument("--keep", default=None, help="build the log here (once) and keep it")
    args = ap.parse_args()
    tmp = None
    if args.keep:
        d = args.keep
    else:
        tmp = tempfile.mkdtemp(prefix="bench-seek-", dir=args.dir)
        d = os.path.join(tmp, "wal")
    try:
        if not os.path.exists(os.path.join(d, "current.wal")):
            t0 = time.perf_counter()
            build(d, args.records, args.size, args.segment_size)
            print(json.dumps({"built": args.records, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
        entries = load_index(d)[0] or []
        n = args.records
        rng = random.Random(2)
        times = [BASE + int(n * MS * k / args.seeks) + rng.randrange(MS) for k in range(args.seeks)]
        seek, skip = [], []
        for t in times:
            t0 = time.perf_counter()
            first = next(iter(replay(d, since=t)), None)
            seek.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            start_after(d, t)
            skip.append(time.perf_counter() - t0)
            assert first is None or first.time >= t
        mid = BASE + n * MS // 2
        t0 = time.perf_counter()
        scanned = next(dropwhile(lambda r: r.time < mid, replay(d)))
        scan = time.perf_counter() - t0
        assert scanned.seq == next(iter(replay(d, since=mid))).seq
        print(
            json.dumps(
                {
                    "records": n,
                    "segments": len(entries) + 1,
                    "seeks": len(times),
                    "seek_ms_median": round(statistics.median(seek) * 1e3, 2),
                    "seek_ms_max": round(max(seek) * 1e3, 2),
                    "start_after_ms_median": round(statistics.median(skip) * 1e3, 2),
                    "scan_ms": round(scan * 1e3, 1),
                    "scan_over_seek": round(scan / statistics.median(seek), 1),
                }
            ),
            flush=True,
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
