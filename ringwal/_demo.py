"""``scripts/demo``: several producer processes, one writer, two SIGKILLs, then a replay check.

1. start a writer (``ringwal serve``) on a fresh ``./demo_data``;
2. start 4 producer processes; each appends 100-byte records tagged with its name and
   index and calls ``sync()`` every 50 records, reporting what was acknowledged;
3. SIGKILL one producer mid-run, then SIGKILL the writer; the surviving producers notice the
   writer is gone and start a new one themselves, and carry on;
4. replay the log and check that every acknowledged record is there exactly once, in each
   producer's order, with gap-free seqs; print throughput and sync latency.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import ringwal
from ringwal import Config, Record, replay, verify
from ringwal.ring import ring_names

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

    # (producer tag, index of its last acknowledged record, its sync latencies once it is done)
    Acks = Queue[tuple[str, int, list[float] | None]]

PRODUCERS = 4
SECONDS = 4.0
SYNC_EVERY = 50


def producer(directory: str, tag: str, acks: Acks, stop_at: float) -> None:
    h = ringwal.open(Config(dir=directory, writer_linger=1.0))
    i = 0
    lat: list[float] = []
    pad = bytes(90)
    while time.time() < stop_at:
        for _ in range(SYNC_EVERY):
            h.append(Record(1, i, b"%s:%d|" % (tag.encode(), i) + pad))
            i += 1
        t = time.perf_counter()
        h.sync()
        lat.append(time.perf_counter() - t)
        acks.put((tag, i - 1, None))
    h.close()
    acks.put((tag, i - 1, lat))


def main() -> int:
    directory = os.path.abspath("demo_data")
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    serve = [sys.executable, "-m", "ringwal", "serve", "--dir", directory]
    writer = subprocess.Popen(serve, stderr=subprocess.PIPE, text=True)
    assert writer.stderr is not None  # stderr=PIPE
    print(writer.stderr.readline().strip())
    ctx = mp.get_context("fork")
    acks: Acks = ctx.Queue()
    t0 = time.time()
    stop_at = t0 + SECONDS
    procs = {f"p{k}": ctx.Process(target=producer, args=(directory, f"p{k}", acks, stop_at)) for k in range(PRODUCERS)}
    for p in procs.values():
        p.start()
    acked: dict[str, int] = {}
    lat: list[float] = []
    finished: set[str] = set()
    killed_producer = killed_writer = False
    while len(finished) + killed_producer < PRODUCERS:
        tag, top, lats = acks.get(timeout=60)
        acked[tag] = max(acked.get(tag, -1), top)
        if lats is not None:
            finished.add(tag)
            lat.extend(lats)
        now = time.time() - t0
        if not killed_producer and now > 1.0:
            procs["p0"].kill()
            killed_producer = True
            n = acked.get("p0", -1) + 1
            print(f"t={now:.2f}s  SIGKILL producer p0 (pid {procs['p0'].pid}) after {n} acked records")
        if killed_producer and not killed_writer and now > 2.0:
            writer.kill()
            writer.wait()
            killed_writer = True
            print(f"t={now:.2f}s  SIGKILL the writer (pid {writer.pid}); producers start a new one")
    for p in procs.values():
        p.join(30)
    elapsed = time.time() - t0
    per: dict[str, list[int]] = {}
    seq = 0
    for r in replay(directory, 0):
        seq += 1
        if r.seq != seq:
            print(f"FAIL: seq {r.seq} where {seq} was expected")
            return 1
        name, _, rest = r.data.partition(b":")
        per.setdefault(name.decode(), []).append(int(rest.split(b"|", 1)[0]))
    ok = True
    for tag in procs:
        got = per.get(tag, [])
        if got != list(range(len(got))):
            print(f"FAIL: {tag}'s records are out of order, duplicated or missing")
            ok = False
        if len(got) <= acked.get(tag, -1):
            print(f"FAIL: {tag} had record {acked[tag]} acknowledged but the log has only {len(got)}")
            ok = False
    report = verify(directory)
    lat.sort()
    total = sum(len(v) for v in per.values())
    verdict = "OK" if report.ok else report.problems
    print(f"records in the log: {total} (seqs 1-{seq}), from {len(per)} producers; verify: {verdict}")
    for tag in procs:
        killed = "  (killed)" if tag == "p0" else ""
        print(f"  {tag}: {len(per.get(tag, []))} records, last acknowledged index {acked.get(tag, -1)}{killed}")
    rate = total / elapsed
    print(f"throughput: {rate:,.0f} records/s over {elapsed:.1f}s including both crashes and the writer restart")
    if lat:
        p50, p99 = lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3
        print(f"sync() every {SYNC_EVERY} records: p50 {p50:.2f} ms, p99 {p99:.2f} ms over {len(lat)} syncs")
    if lat:
        print(f"longest sync(), the one that spanned the writer's death and restart: {lat[-1] * 1e3:.0f} ms")
    # The restarted writer lingers a second after the last producer leaves, drains, fsyncs,
    # removes the ring and its semaphore, and exits.
    base = ring_names(directory)[0].lstrip("/")
    deadline = time.time() + 15
    left = None
    while time.time() < deadline:
        left = [n for n in os.listdir("/dev/shm") if n == base or n.startswith("sem." + base)]
        if not left:
            break
        time.sleep(0.1)
    print("shared memory after the writer's clean exit: " + ("none left" if not left else f"LEFT BEHIND {left}"))
    ok = ok and report.ok and not left
    print("every acknowledged record is there exactly once" if ok else "DEMO FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
