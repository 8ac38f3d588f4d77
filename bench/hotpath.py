"""The producer's hot path, piece by piece, as a user writes it (issue 13). Prints JSON lines.

Every piece runs in a separate producer process (forked, then a start barrier so that process
start-up is not counted) against a real ``ringwal serve`` writer started by ``ringwal.open``
with the default ``Config`` (only ``dir`` set). Each piece is run ``--runs`` times; the JSON
gives the median and the spread in nanoseconds per operation, or records per second.

Pieces:

* ``namedtuple``      a plain ``collections.namedtuple`` of the same four fields (the floor)
* ``record_pos``      ``Record(1, t, data)``
* ``record_kw``       ``Record(type=1, time=t, data=data)``
* ``time_ns``         ``time.time_ns()``
* ``shm_copy``        copying the 100-byte record into a shared-memory mapping from Python
                      (one slice assignment): the ceiling of any Python producer
* ``append``          ``log.append(prebuilt_record)``: encode, publish, receipt
* ``loop``            ``log.append(Record(1, time.time_ns(), data))``, the loop a user writes:
                      records/s of one producer, ended by ``flush()`` (counted)
* ``loop_4``          the same loop in 4 producer processes at once: records/s in total
* ``append_many``     ``log.append_many`` of 1,000 prebuilt records per call, ns per record

    python bench/hotpath.py --runs 5 --records 500000
"""

from __future__ import annotations

import argparse
import json
import mmap
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import namedtuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import ringwal  # noqa: E402
from ringwal import Config, Record  # noqa: E402

_NT = namedtuple("_NT", ["type", "time", "data", "seq"], defaults=(0,))


def _piece(name: str, n: int, size: int, directory: str) -> float:
    """Run piece ``name`` ``n`` times in this process; return the elapsed seconds."""
    data = os.urandom(size)
    tn = time.time_ns
    perf = time.perf_counter
    if name == "namedtuple":
        nt = _NT
        t0 = perf()
        for _ in range(n):
            nt(1, 5, data)
        return perf() - t0
    if name == "record_pos":
        R = Record
        t0 = perf()
        for _ in range(n):
            R(1, 5, data)
        return perf() - t0
    if name == "record_kw":
        R = Record
        t0 = perf()
        for _ in range(n):
            R(type=1, time=5, data=data)
        return perf() - t0
    if name == "time_ns":
        t0 = perf()
        for _ in range(n):
            tn()
        return perf() - t0
    if name == "shm_copy":
        m = mmap.mmap(-1, 1 << 21)
        mv = memoryview(m)
        blob = bytes(14) + data
        k = len(blob)
        mask = (1 << 21) - 1
        pos = 0
        t0 = perf()
        for _ in range(n):
            off = pos & mask
            if off + k > 1 << 21:
                off = 0
            mv[off : off + k] = blob
            pos += k
        dt = perf() - t0
        mv.release()
        m.close()
        return dt
    with ringwal.open(Config(dir=directory)) as log:
        log.sync()  # attached, writer up: not counted
        if name == "append":
            rec = Record(1, tn(), data)
            append = log.append
            t0 = perf()
            for _ in range(n):
                append(rec)
            log.flush()
            return perf() - t0
        if name in ("loop", "loop_4"):
            append = log.append
            R = Record
            t0 = perf()
            for _ in range(n):
                append(R(1, tn(), data))
            log.flush()
            return perf() - t0
        if name == "append_many":
            batch = [Record(1, tn(), data) for _ in range(1000)]
            many = log.append_many
            t0 = perf()
            for _ in range(n // 1000):
                many(batch)
            log.flush()
            return perf() - t0
    raise ValueError(name)


def _child(name: str, n: int, size: int, directory: str, barrier: mp.synchronize.Barrier, out: mp.queues.Queue) -> None:
    # Attach first (the writer starts in the first child); then wait for every producer.
    if name in ("append", "loop", "loop_4", "append_many"):
        with ringwal.open(Config(dir=directory)) as log:
            log.sync()
    barrier.wait()
    out.put(_piece(name, n, size, directory))


def run_piece(name: str, n: int, size: int, base: str, procs: int = 1) -> dict[str, float]:
    directory = tempfile.mkdtemp(prefix=f"hot-{name}-", dir=base)
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    children = [ctx.Process(target=_child, args=(name, n, size, directory, barrier, out)) for _ in range(procs)]
    for c in children:
        c.start()
    times = [out.get(timeout=600) for _ in children]
    for c in children:
        c.join(60)
    if name in ("append", "loop", "loop_4", "append_many"):
        # Stop the writer this piece started so the next piece starts from nothing.
        with ringwal.open(Config(dir=directory, writer_linger=0.0)):
            pass
    shutil.rmtree(directory, ignore_errors=True)
    wall = max(times)
    return {"ns_per_op": wall / n * 1e9 if procs == 1 else wall / (n * procs) * 1e9, "records_per_s": n * procs / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--records", type=int, default=500_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--pieces", default="namedtuple,record_pos,record_kw,time_ns,shm_copy,append,loop,loop_4,append_many")
    ap.add_argument("--dir", default=None, help="where the logs go (default: a temp dir)")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="ringwal-hot-", dir=args.dir)
    pieces = args.pieces.split(",")
    results: dict[str, list[dict[str, float]]] = {p: [] for p in pieces}
    try:
        for _ in range(args.runs):  # pieces interleaved run by run: drift hits all alike
            for p in pieces:
                results[p].append(run_piece(p, args.records, args.size, base, 4 if p == "loop_4" else 1))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for p in pieces:
        ns = [r["ns_per_op"] for r in results[p]]
        rps = [r["records_per_s"] for r in results[p]]
        row = {
            "bench": "hotpath",
            "piece": p,
            "size": args.size,
            "records": args.records,
            "runs": args.runs,
            "ns_per_op_median": round(statistics.median(ns), 1),
            "ns_per_op_min": round(min(ns), 1),
            "ns_per_op_max": round(max(ns), 1),
            "records_per_s_median": round(statistics.median(rps)),
            "python": platform.python_version(),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
