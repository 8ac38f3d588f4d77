"""Many producer processes, one durable log: ringwal against the usual alternatives, same run.

For each producer count and durability mode, every system runs the same workload (each
producer appends 100-byte records for ``--seconds``; ``sync`` after every record, every 100,
or never: OS-buffered, with one final flush counted in the time). Systems:

* ``ringwal``   ringwal.open handles, a ``ringwal serve`` writer (group commit);
* ``mpqueue``   a multiprocessing.Queue into one writer process that batches what is queued,
                writes it, fdatasyncs once, and acks each waiting producer on its own pipe;
* ``flock``     every producer appends to one file under ``fcntl.flock``, fdatasyncing itself.

Also measured: raw fdatasync latency of a 100-byte append on the same disk.

One JSON line per (system, producers, mode, run), then a summary line per (producers, mode)
with medians and ringwal's ratio to each alternative. Nothing here asserts a speed.

    python bench/bench_ring.py --producers 1 4 16 --modes buffered 100 1 --runs 3 --seconds 2
"""

from __future__ import annotations

import argparse
import fcntl
import json
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import ringwal  # noqa: E402
from ringwal import Record  # noqa: E402

DATA = b"x" * 100


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# ---------------------------------------------------------------------------- producers


def ringwal_producer(d, every, seconds, start, out):
    h = ringwal.open(ringwal.Config(dir=d, start_writer=False))
    rec = Record(1, 0, DATA)
    lat = []
    n = 0
    start.wait()
    t0 = time.perf_counter()
    end = t0 + seconds
    append, sync, clock = h.append, h.sync, time.perf_counter
    if every:
        while clock() < end:
            for _ in range(every):
                append(rec)
            n += every
            t = clock()
            sync()
            lat.append(clock() - t)
    else:
        while clock() < end:
            for _ in range(1000):
                append(rec)
            n += 1000
        h.flush()
    elapsed = clock() - t0
    h.close()
    out.put((n, elapsed, lat[:: max(1, len(lat) // 20000)]))


def mpqueue_writer(path, q, acks, ready):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    ready.set()
    pending_acks: dict[int, int] = {}
    stopped = 0
    producers = len(acks)
    while stopped < producers:
        item = q.get()
        batch = [item]
        while True:
            try:
                batch.append(q.get_nowait())
            except Exception:
                break
        chunks = []
        for pid, count, data, want in batch:
            if data is None:
                if count < 0:
                    stopped += 1
                    continue
            else:
                chunks.append(data)
            if want:
                pending_acks[pid] = count
        if chunks:
            os.write(fd, b"".join(chunks))
        if pending_acks:
            os.fdatasync(fd)
            for pid, count in pending_acks.items():
                acks[pid].send(count)
            pending_acks.clear()
    os.close(fd)


def mpqueue_producer(pid, q, ack, every, seconds, start, out):
    lat = []
    n = 0
    start.wait()
    t0 = time.perf_counter()
    end = t0 + seconds
    clock = time.perf_counter
    framed = len(DATA).to_bytes(4, "little") + DATA
    while clock() < end:
        k = every or 1000
        for i in range(k):
            n += 1
            last = every and i == k - 1
            q.put((pid, n, framed, bool(last)))
        if every:
            t = clock()
            while ack.recv() < n:
                pass
            lat.append(clock() - t)
    if not every:
        q.put((pid, n, None, True))  # flush marker: wait until written
        while ack.recv() < n:
            pass
    elapsed = clock() - t0
    q.put((pid, -1, None, False))
    out.put((n, elapsed, lat[:: max(1, len(lat) // 20000)]))


def flock_producer(path, every, seconds, start, out):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    framed = len(DATA).to_bytes(4, "little") + DATA
    lat = []
    n = 0
    start.wait()
    t0 = time.perf_counter()
    end = t0 + seconds
    clock = time.perf_counter
    while clock() < end:
        k = every or 1000
        t = clock()
        for _ in range(k):
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, framed)
            fcntl.flock(fd, fcntl.LOCK_UN)
        n += k
        if every:
            os.fdatasync(fd)  # covers this producer's records (and others')
            lat.append(clock() - t)
    elapsed = clock() - t0
    os.close(fd)
    out.put((n, elapsed, lat[:: max(1, len(lat) // 20000)]))


# ---------------------------------------------------------------------------- runs


def run_system(system, producers, every, seconds, base):
    ctx = mp.get_context("fork")
    d = tempfile.mkdtemp(dir=base)
    start = ctx.Event()
    out = ctx.Queue()
    procs = []
    extra = []
    try:
        if system == "ringwal":
            writer = subprocess.Popen(
                [sys.executable, "-m", "ringwal", "serve", "--dir", d, "--segment-size", str(64 << 20)],
                stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            writer.stderr.readline()
            extra.append(writer)
            for _ in range(producers):
                procs.append(ctx.Process(target=ringwal_producer, args=(d, every, seconds, start, out)))
        elif system == "mpqueue":
            q = ctx.Queue()
            pipes = [ctx.Pipe(duplex=False) for _ in range(producers)]
            ready = ctx.Event()
            w = ctx.Process(target=mpqueue_writer, args=(os.path.join(d, "log"), q, [p[1] for p in pipes], ready))
            w.start()
            ready.wait()
            extra.append(w)
            for i in range(producers):
                procs.append(ctx.Process(target=mpqueue_producer, args=(i, q, pipes[i][0], every, seconds, start, out)))
        elif system == "flock":
            for _ in range(producers):
                procs.append(ctx.Process(target=flock_producer, args=(os.path.join(d, "log"), every, seconds, start, out)))
        for p in procs:
            p.start()
        time.sleep(0.5 if system != "ringwal" else 0.8)  # let every producer attach before the gun
        start.set()
        results = [out.get(timeout=seconds * 20 + 60) for _ in procs]
        for p in procs:
            p.join(30)
        cpu = None
        for e in extra:
            if isinstance(e, subprocess.Popen):
                e.send_signal(signal.SIGTERM)
                e.wait(30)
            else:
                e.join(30)
    finally:
        for p in procs + [e for e in extra if not isinstance(e, subprocess.Popen)]:
            if p.is_alive():
                p.kill()
        shutil.rmtree(d, ignore_errors=True)
    counts = [r[0] for r in results]
    rates = [r[0] / r[1] for r in results]
    lats = [x for r in results for x in r[2]]
    return {
        "system": system,
        "producers": producers,
        "mode": "buffered" if not every else f"sync_every_{every}",
        "records_per_s": sum(counts) / max(r[1] for r in results),
        "fairness_min_over_max": min(rates) / max(rates),
        "sync_p50_us": pct(lats, 0.50) and pct(lats, 0.50) * 1e6,
        "sync_p99_us": pct(lats, 0.99) and pct(lats, 0.99) * 1e6,
        "records": sum(counts),
        "cpu": cpu,
    }


def raw_fdatasync(base, n=2000):
    fd, path = tempfile.mkstemp(dir=base)
    lat = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 104)
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    return {"p50_us": pct(lat, 0.5) * 1e6, "p99_us": pct(lat, 0.99) * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--producers", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--modes", nargs="+", default=["buffered", "100", "1"], help="buffered, or sync every N records")
    ap.add_argument("--systems", nargs="+", default=["ringwal", "mpqueue", "flock"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--dir", default=None, help="where the logs go (default: a temp dir on the project's disk)")
    args = ap.parse_args()
    base = args.dir or tempfile.mkdtemp(prefix="ringwal-bench-", dir=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    os.makedirs(base, exist_ok=True)
    try:
        raws = [raw_fdatasync(base) for _ in range(args.runs)]
        raw = {"bench": "raw_fdatasync", "p50_us": statistics.median(r["p50_us"] for r in raws), "p99_us": statistics.median(r["p99_us"] for r in raws)}
        print(json.dumps(raw), flush=True)
        for producers in args.producers:
            for mode in args.modes:
                every = 0 if mode == "buffered" else int(mode)
                per: dict[str, list[dict]] = {s: [] for s in args.systems}
                for run in range(args.runs):
                    for system in args.systems:  # interleaved, so drift hits every system alike
                        r = run_system(system, producers, every, args.seconds, base)
                        r["run"] = run
                        print(json.dumps(r), flush=True)
                        per[system].append(r)
                summary = {"bench": "summary", "producers": producers, "mode": per[args.systems[0]][0]["mode"]}
                for system, rs in per.items():
                    summary[f"{system}_records_per_s"] = statistics.median(r["records_per_s"] for r in rs)
                    if every:
                        summary[f"{system}_sync_p50_us"] = statistics.median(r["sync_p50_us"] for r in rs)
                        summary[f"{system}_sync_p99_us"] = statistics.median(r["sync_p99_us"] for r in rs)
                    summary[f"{system}_fairness"] = statistics.median(r["fairness_min_over_max"] for r in rs)
                if "ringwal" in per:
                    for system in per:
                        if system != "ringwal":
                            summary[f"ratio_ringwal_over_{system}"] = summary["ringwal_records_per_s"] / summary[f"{system}_records_per_s"]
                    if every:
                        summary["ringwal_sync_p99_over_raw_fdatasync_p99"] = summary["ringwal_sync_p99_us"] / raw["p99_us"]
                print(json.dumps(summary), flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
