"""The writer's drain: how many records per second it moves from the ring into frames.

Two scenarios, both printing one JSON line per run (run it from a tree's root: that tree's
``ringwal`` is the one measured, so the same script compares two revisions):

* ``inproc``: one process holds a ``WriterSide`` and ``--producers`` ``ProducerSide`` lanes;
  the lanes are filled (untimed), then ``drain`` is timed moving them into frames that are
  discarded (no disk): the writer's CPU cost per record, nothing else;
* ``drains``: the same, but each of the lanes holds only ``--per-lane`` records when one
  drain takes them all: the cost of a drain's fixed work per lane (what dominates when the
  writer keeps up and spans are short); reported as the 10th percentile of per-drain time,
  which a busy machine disturbs least;
* ``e2e``: a ``ringwal serve`` writer and ``--producers`` processes appending as fast as they
  can for ``--seconds``, then one ``sync`` each: records/s end to end, and the writer
  process's CPU seconds per million records (on a 2-core machine the producers, not the
  writer, usually set the rate, so the writer's CPU is the figure that shows its cost).

``--vary`` gives records lengths that differ (``--size`` plus 0..7 bytes), which takes the
record walk off its fast path for same-length records.

    python bench/drain.py --scenario inproc --producers 4 --size 100 --runs 5
    python bench/drain.py --scenario drains --producers 4 --per-lane 50 --runs 3
    python bench/drain.py --scenario e2e --producers 4 --size 100 --seconds 3 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

ROOT = os.getcwd()
sys.path.insert(0, ROOT)

from ringwal import WAL, BinarySerializer, Config, Record  # noqa: E402
from ringwal.ring import ProducerSide, Ring, WriterSide, unlink_names  # noqa: E402

SER = BinarySerializer()


def records(size: int, vary: bool, n: int = 64) -> list[bytes]:
    return [SER.frame(Record(1, i, bytes(size - 10 + (i % 8 if vary else 0)))) for i in range(n)]


class _InProcRing:
    """A writer side and ``producers`` producer sides over one fresh ring, and a ``write``
    that assigns seqs and discards the frame (no disk). Context manager: removes it all."""

    def __init__(self, producers: int, ring_size: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="ringwal-drain-")
        WAL(Config(dir=self.dir)).close()  # the log whose id names the ring (frames are discarded)
        self.writer = WriterSide.open(self.dir, producers, ring_size, 1 << 20, SER.name, lambda name: None)
        self.writer.recover(0, 1)
        self.writer.publish_ready()
        self.sides: list[ProducerSide] = []
        for _ in range(producers):
            side = ProducerSide.claim(Ring.attach(self.dir), 0)
            assert side is not None
            self.sides.append(side)
        self.next_seq = 1

    def write(self, body: bytes, count: int) -> int:
        first = self.next_seq
        self.next_seq += count
        return first

    def __enter__(self) -> _InProcRing:
        return self

    def __exit__(self, *exc: object) -> None:
        for side in self.sides:
            side.release()
        self.writer.close()
        unlink_names(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)


def inproc(args: argparse.Namespace) -> dict:
    ring_size = 1 << 21
    recs = records(args.size, args.vary)
    drained = 0
    elapsed = 0.0
    with _InProcRing(args.producers, ring_size) as r:
        while drained < args.records:
            for side in r.sides:  # fill each lane to about three quarters (untimed)
                for i in range(ring_size * 3 // 4 // (args.size + 8)):
                    if side.publish(recs[i & 63], 1) < 0:
                        break
            t0 = time.perf_counter()
            while True:
                got = r.writer.drain(r.next_seq, args.budget, r.write)
                if not got:
                    break
                drained += got
            elapsed += time.perf_counter() - t0
    return {
        "scenario": "inproc",
        "producers": args.producers,
        "size": args.size,
        "vary": args.vary,
        "budget": args.budget,
        "records": drained,
        "records_per_s": drained / elapsed,
        "ns_per_record": elapsed / drained * 1e9,
    }


def drains(args: argparse.Namespace) -> dict:
    recs = records(args.size, args.vary)
    per = args.per_lane
    times = []
    with _InProcRing(args.producers, 1 << 21) as r:
        for _ in range(max(args.records // (per * args.producers), 100)):
            for side in r.sides:
                for i in range(per):
                    side.publish(recs[i & 63], 1)
            t0 = time.perf_counter()
            got = r.writer.drain(r.next_seq, 1 << 30, r.write)
            times.append(time.perf_counter() - t0)
            assert got == per * args.producers, got
    times.sort()
    q = times[len(times) // 10]
    return {
        "scenario": "drains",
        "producers": args.producers,
        "per_lane": per,
        "size": args.size,
        "vary": args.vary,
        "us_per_drain_p10": q * 1e6,
        "ns_per_record": q / (per * args.producers) * 1e9,
        "records_per_s": per * args.producers / q,
    }


PRODUCER = """
import sys, time, ringwal
d, size, seconds, vary = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
h = ringwal.open(ringwal.Config(dir=d, start_writer=False, sync_timeout=120))
recs = [ringwal.Record(1, i, bytes(size - 10 + (i % 8 if vary else 0))) for i in range(64)]
print("ready", flush=True)
sys.stdin.readline()
n = 0
append = h.append
end = time.monotonic() + seconds
while time.monotonic() < end:
    for r in recs:
        append(r)
    n += 64
h.sync()
print(n, time.monotonic(), flush=True)
h.close()
"""


def e2e(args: argparse.Namespace) -> dict:
    d = tempfile.mkdtemp(prefix="ringwal-e2e-")
    writer = subprocess.Popen(
        [sys.executable, "-m", "ringwal", "serve", "--dir", d, "--segment-size", str(64 << 20)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stderr is not None
        while "serving" not in writer.stderr.readline():
            pass
        ps = [
            subprocess.Popen(
                [sys.executable, "-c", PRODUCER, d, str(args.size), str(args.seconds), "1" if args.vary else "0"],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(args.producers)
        ]
        for p in ps:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        wp = psutil.Process(writer.pid)
        c0 = sum(wp.cpu_times()[:2])
        t0 = time.monotonic()
        for p in ps:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        total = 0
        t_end = t0
        for p in ps:
            out, _ = p.communicate(timeout=args.seconds + 120)
            n, t = out.split()
            total += int(n)
            t_end = max(t_end, float(t))
        cpu = sum(wp.cpu_times()[:2]) - c0
        return {
            "scenario": "e2e",
            "producers": args.producers,
            "size": args.size,
            "vary": args.vary,
            "records": total,
            "records_per_s": total / (t_end - t0),
            "writer_cpu_s_per_million": cpu / total * 1e6,
        }
    finally:
        writer.terminate()
        writer.wait(30)
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=("inproc", "drains", "e2e"), default="inproc")
    ap.add_argument("--producers", type=int, default=4)
    ap.add_argument("--size", type=int, default=100, help="record payload bytes (binary serializer)")
    ap.add_argument("--vary", action="store_true", help="record lengths differ by 0..7 bytes")
    ap.add_argument("--records", type=int, default=2_000_000, help="inproc, drains: records drained per run")
    ap.add_argument("--per-lane", type=int, default=50, help="drains: records in each lane per drain")
    ap.add_argument("--budget", type=int, default=1 << 20, help="inproc: the drain's byte budget (frame size)")
    ap.add_argument("--seconds", type=float, default=3.0, help="e2e: seconds of appending per run")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for _ in range(args.runs):
        row = {"inproc": inproc, "drains": drains, "e2e": e2e}[args.scenario](args)
        rows.append(row)
        print(json.dumps(row), flush=True)
    key = "records_per_s"
    print(json.dumps({"summary": args.scenario, "median_records_per_s": statistics.median(r[key] for r in rows)}))


if __name__ == "__main__":
    main()
