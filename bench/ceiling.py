"""The ceiling of ringwal's design on this machine: a bare group-commit skeleton (issue 13).

N producer processes each put their records (``--size`` bytes each, ``--every`` of them per
sync) in their own slot of one shared mapping, publish a counter, wake the writer, and sleep
on a futex until the writer says those records are durable. The writer copies every
published slot into one ``pwrite`` into a preallocated file (``posix_fallocate``, as ringwal
preallocates its segments), does one ``fdatasync``, publishes the durable counters and wakes
every sleeper with one futex call. Nothing else: no framing, no checksum, no seqs, no
liveness checks, no commit delay. What ringwal adds on top of this costs the difference.

The futex calls are ringwal's own (``ringwal/_futex.py``), with its protocol: a waiter loads
the futex word, then checks its condition, then sleeps only if the word is unchanged; the
side that makes progress stores it, then changes the word, then wakes.

Layout of the mapping (MAP_SHARED | MAP_ANONYMOUS, made before the fork; 8-byte words)::

    word 0   WAKE    producers' futex word; only the writer stores it (+1 after each fsync)
    word 1   POST    the writer's futex word; a producer stores (slot << 20 | count mod 2**20)
                     after publishing, a value no other store can have left there
    word 2   STOP    the harness sets it to end the writer
    word 3   SYNCS   fdatasyncs done (the writer): records per fsync is the group-commit figure
    word 8 + 8p      published[p]  records producer p has put in its slot, ever (producer p)
    word 8 + 8p + 1  durable[p]    records of p the writer has made durable, ever (writer)
    word 8 + 8p + 2  bytes[p]      bytes of p's batch in its slot (producer p, stored before published)
    byte 4096 + p * slot_bytes     p's slot: the records since its last sync, back to back

A producer writes its slot only while ``published == durable`` (it waits for that before its
next batch), so the writer never reads a slot that is being written.

Run alone it prints one JSON line per run (records/s, p50/p99/p99.9 of the durable wait, CPU
seconds per million records of producers plus writer) and a summary of medians;
``bench/compare.py`` runs the same skeleton as its ``ceiling`` system, interleaved with
ringwal in one run, and reports ringwal's durable figures as fractions of it.

    python bench/ceiling.py                                   # 1, 4, 16 producers, sync every record
    python bench/ceiling.py --producers 16 --every 100 --runs 5 --seconds 2
"""

from __future__ import annotations

import argparse
import json
import mmap
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import psutil

from ringwal import _futex

M32 = 0xFFFFFFFF
WAKE, POST, STOP, SYNCS = 0, 1, 2, 3
CTL = 8  # first producer's control words
CTL_STRIDE = 8  # words per producer (one cache line: no false sharing between producers)
DATA = 4096
#: Bytes the log file is preallocated by, each time it fills (ringwal's compare runs use 64 MiB segments).
PREALLOC = 64 << 20
#: Longest a producer waits for durability before the run is declared broken (seconds).
WAIT_LIMIT = 60.0
LAT_KEEP = 50_000


class Ceiling:
    """The shared mapping and the writer process of one run; ``stop()`` ends it.

    Create it before forking the producers (they inherit the mapping). ``pid`` is the
    writer's, for its CPU time.
    """

    def __init__(self, directory: str, producers: int, slot_bytes: int) -> None:
        self.producers = producers
        self.slot_bytes = slot_bytes
        length = -(-(DATA + producers * slot_bytes) // mmap.PAGESIZE) * mmap.PAGESIZE
        self.mm = mmap.mmap(-1, length)  # MAP_SHARED | MAP_ANONYMOUS
        self.words = memoryview(self.mm).cast("Q")
        self.base = _futex.base_address(self.mm)
        self.path = os.path.join(directory, "ceiling.log")
        ctx = mp.get_context("fork")
        ready = ctx.Event()
        self.proc = ctx.Process(target=self._writer, args=(ready,), daemon=True)
        self.proc.start()
        if not ready.wait(30):
            self.proc.kill()
            raise RuntimeError("the ceiling writer did not start")
        self.pid = self.proc.pid

    # ------------------------------------------------------------------ the writer

    def _writer(self, ready) -> None:  # type: ignore[no-untyped-def]
        w = self.words
        n = self.producers
        stride = self.slot_bytes
        data = memoryview(self.mm)
        pubs = w[CTL : CTL + n * CTL_STRIDE : CTL_STRIDE]
        taken = [0] * n
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        alloc = PREALLOC
        os.posix_fallocate(fd, 0, alloc)
        os.fsync(fd)
        pos = 0
        post_addr = self.base + POST * 8
        wake_addr = self.base + WAKE * 8
        ready.set()
        try:
            while True:
                post = w[POST]  # before the counters: the _futex.py order
                now = pubs.tolist()
                if now == taken:
                    if w[STOP]:
                        return
                    _futex.wait(post_addr, post, time.monotonic() + 0.1, 1)
                    continue
                parts = []
                for p in range(n):
                    k = now[p] - taken[p]
                    if k:
                        off = DATA + p * stride
                        parts.append(data[off : off + w[CTL + p * CTL_STRIDE + 2]])  # bytes of the batch
                buf = b"".join(parts)
                if pos + len(buf) > alloc:
                    os.posix_fallocate(fd, alloc, PREALLOC)
                    alloc += PREALLOC
                os.pwrite(fd, buf, pos)
                pos += len(buf)
                os.fdatasync(fd)
                w[SYNCS] += 1
                for p in range(n):
                    if now[p] != taken[p]:
                        w[CTL + p * CTL_STRIDE + 1] = now[p]  # durable
                taken = now
                w[WAKE] = (w[WAKE] + 1) & M32
                _futex.wake(wake_addr, M32)  # every sleeper, one call
        finally:
            os.close(fd)

    def syncs(self) -> int:
        """fdatasyncs the writer has done so far."""
        return self.words[SYNCS]

    def stop(self) -> None:
        self.words[STOP] = 1
        self.words[POST] = (self.words[POST] + 1) & M32
        _futex.wake(self.base + POST * 8, M32)
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.words.release()
        self.mm.close()


class CeilingClient:
    """One producer of the skeleton, with ``bench/compare.py``'s client interface:
    ``append(data)`` copies into the slot, ``sync()`` publishes and waits for durability."""

    def __init__(self, ceiling: Ceiling, idx: int) -> None:
        self.w = ceiling.words
        self.data = memoryview(ceiling.mm)
        self.slot = DATA + idx * ceiling.slot_bytes
        self.end = self.slot + ceiling.slot_bytes
        self.ctl = CTL + idx * CTL_STRIDE
        self.post_addr = ceiling.base + POST * 8
        self.wake_addr = ceiling.base + WAKE * 8
        self.bit = 1 << (idx & 31)
        self.tag = (idx & 0xFFF) << 20
        self.n = 0  # records put in the slot, ever
        self.at = self.slot  # where the next record goes

    def append(self, data: bytes) -> None:
        at = self.at
        end = at + len(data)
        if end > self.end:
            raise RuntimeError("the ceiling's slot is full: sync at least every `every` records")
        self.data[at:end] = data
        self.at = end
        self.n += 1

    def sync(self) -> None:
        n = self.n
        w, c = self.w, self.ctl
        if w[c] == n:
            return
        w[c + 2] = self.at - self.slot  # bytes of the batch (read by the writer after the counter)
        w[c] = n  # publish
        w[POST] = self.tag | (n & 0xFFFFF)
        _futex.wake(self.post_addr, 1)
        deadline = time.monotonic() + WAIT_LIMIT
        while True:
            wake = w[WAKE]  # before the condition: the _futex.py order
            if w[c + 1] == n:
                self.at = self.slot
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the ceiling writer made nothing durable for {WAIT_LIMIT:g}s")
            _futex.wait(self.wake_addr, wake, deadline, self.bit)

    finish = sync

    def close(self) -> None:
        self.data.release()


# ============================================================================ standalone harness


def _producer(ceiling: Ceiling, idx: int, size: int, every: int, seconds: float, start, out) -> None:  # type: ignore[no-untyped-def]
    try:
        client = CeilingClient(ceiling, idx)
        data = bytes([65 + idx % 26]) * size
        append, sync, clock = client.append, client.sync, time.perf_counter
        lat: list[float] = []
        n = 0
        start.wait()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = clock()
        end = t0 + seconds
        while clock() < end:
            for _ in range(every):
                append(data)
            n += every
            t = clock()
            sync()
            lat.append(clock() - t)
        elapsed = clock() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        client.close()
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        out.put((n, elapsed, lat[:: max(1, len(lat) // LAT_KEEP)], cpu, None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent instead of hanging it
        out.put((0, 0.0, [], 0.0, f"{type(exc).__name__}: {exc}"))


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run_one(producers: int, size: int, every: int, seconds: float, base: str) -> dict:
    """One run: the writer and ``producers`` processes, released together by a start barrier."""
    ctx = mp.get_context("fork")
    d = tempfile.mkdtemp(dir=base)
    ceiling = Ceiling(d, producers, size * every)
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_producer, args=(ceiling, i, size, every, seconds, start, out)) for i in range(producers)
    ]
    try:
        for p in procs:
            p.start()
        time.sleep(0.3)  # every producer forked and waiting before the gun
        w0 = psutil.Process(ceiling.pid).cpu_times()
        syncs0 = ceiling.syncs()
        start.set()
        results = [out.get(timeout=seconds * 20 + 120) for _ in procs]
        w1 = psutil.Process(ceiling.pid).cpu_times()
        syncs = ceiling.syncs() - syncs0
        for p in procs:
            p.join(30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        ceiling.stop()
        shutil.rmtree(d, ignore_errors=True)
    errors = [r[4] for r in results if r[4]]
    if errors:
        raise RuntimeError(f"ceiling: {errors[0]}")
    total = sum(r[0] for r in results)
    elapsed = max(r[1] for r in results)
    lats = [x for r in results for x in r[2]]
    writer_cpu = (w1.user + w1.system) - (w0.user + w0.system)
    return {
        "system": "ceiling",
        "producers": producers,
        "size": size,
        "mode": f"sync_every_{every}",
        "records_per_s": total / elapsed,
        "wait_p50_us": _us(pct(lats, 0.50)),
        "wait_p99_us": _us(pct(lats, 0.99)),
        "wait_p999_us": _us(pct(lats, 0.999)),
        "cpu_s_per_m_records": (sum(r[3] for r in results) + writer_cpu) / total * 1e6,
        "records_per_fsync": total / syncs if syncs else None,
        "records": total,
    }


def _us(x: float | None) -> float | None:
    return None if x is None else x * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--producers", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--size", type=int, default=100, help="bytes per record")
    ap.add_argument("--every", type=int, default=1, help="records per sync")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", help="where the file goes (default: a temp dir on the project's disk)")
    args = ap.parse_args()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    base = args.dir or tempfile.mkdtemp(prefix="ringwal-ceiling-", dir=root)
    os.makedirs(base, exist_ok=True)
    rows: dict[int, list[dict]] = {}
    try:
        for run in range(args.runs):
            for producers in args.producers:  # interleaved, so drift hits every cell alike
                r = run_one(producers, args.size, args.every, args.seconds, base)
                r["run"] = run
                print(json.dumps(r), flush=True)
                rows.setdefault(producers, []).append(r)
        for producers, rs in rows.items():
            s = {"bench": "summary", "system": "ceiling", "producers": producers, "size": args.size, "runs": len(rs)}
            s["mode"] = rs[0]["mode"]
            for key in ("records_per_s", "wait_p50_us", "wait_p99_us", "wait_p999_us", "cpu_s_per_m_records"):
                s[key] = statistics.median(r[key] for r in rs)
            print(json.dumps(s), flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
