"""asyncio services: ``ringwal.aio`` against the workaround users write today. JSON lines.

Each scenario: COROUTINES coroutines in one process, each appending RECORDS records and
awaiting durability after each one, against a fresh log served by ``ringwal serve`` (a
separate writer process), while a ticker coroutine sleeps 1 ms at a time and records how
late each tick is (the event loop's lag: how long something held the loop).

* ``aio``: ``await log.append(r)`` then ``await log.sync()`` (``ringwal.aio``);
* ``aio-uvloop``: the same on uvloop (when it is installed);
* ``to_thread``: a ``ringwal.Handle``, ``h.append(r)`` called in the coroutine, then
  ``await asyncio.to_thread(h.sync)`` (the default executor's threads);

Reported per scenario: records/s (all records durable / wall time), ``sync_p50_ms`` and
``sync_p99_ms`` (each sync as its coroutine sees it), ``loop_lag_max_ms`` and
``loop_lag_p99_ms`` (how much later than 1 ms each tick came), ``loop_busy_max_ms`` /
``loop_busy_p99_ms`` (CPU time the loop's thread used between two ticks: the loop's own
work in one stretch, which is what a blocking call would show, without the time the OS ran
other processes), ``gc_pause_max_ms`` (the longest garbage collection in the loop's thread,
CPU time: Python's own pause, not ringwal's), fsyncs. ``floor`` is the ticker alone: the lag the machine adds with
nothing to do. ``--runs`` repeats the scenarios interleaved (a, b, c, a, b, c, ...) and the
summary line gives medians.

    python bench/bench_aio.py --coroutines 1000 --records 100 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import ringwal  # noqa: E402
import ringwal.aio  # noqa: E402
from ringwal import Config, Record  # noqa: E402
from ringwal.ring import RingView  # noqa: E402

TICK = 0.001


def serve(directory: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-m", "ringwal", "serve", "--dir", directory],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert p.stderr is not None
    while "serving" not in (line := p.stderr.readline()):
        if not line:
            raise RuntimeError(f"ringwal serve exited: {p.wait()}")
    return p


def fsyncs(directory: str) -> int:
    view = RingView.attach(directory)
    if view is None:
        return -1
    with view:
        st = view.writer_stats()
        return int(st["fsyncs"]) if st else -1


class Ticker:
    """Sleeps TICK at a time; each lateness beyond TICK is one lag sample (wall clock), and
    the CPU time the loop's thread used between two ticks one busy sample: the work the loop
    did in one stretch, without the time the OS gave the CPU to other processes."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.busy: list[float] = []

    async def run(self) -> None:
        last = time.perf_counter()
        cpu = time.thread_time()
        while True:
            await asyncio.sleep(TICK)
            now = time.perf_counter()
            now_cpu = time.thread_time()
            self.lags.append(max(0.0, now - last - TICK))
            self.busy.append(now_cpu - cpu)
            last, cpu = now, now_cpu


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


Result = tuple[float, list[float], Ticker]


async def drive(coroutines: int, records: int, size: int, one: Callable[[Record], Awaitable[None]]) -> Result:
    """Run the scenario's coroutines; (seconds, sync latencies, the ticker)."""
    ticker = Ticker()
    tick = asyncio.ensure_future(ticker.run())
    lat: list[float] = []
    payload = os.urandom(size)

    async def worker(w: int) -> None:
        for _ in range(records):
            t0 = time.perf_counter()
            await one(Record(1, time.time_ns(), payload))
            lat.append(time.perf_counter() - t0)

    await asyncio.sleep(0.05)  # the ticker settles
    gc_pauses.clear()
    t0 = time.perf_counter()
    tasks = []
    for w in range(coroutines):
        # Started a few at a time, as requests arrive at a server: 1,000 tasks created in
        # one go would all run their first step in one loop iteration (the bench's own stall).
        tasks.append(asyncio.ensure_future(worker(w)))
        if w % 16 == 15:
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    tick.cancel()
    return elapsed, lat, ticker


#: CPU seconds of each garbage collection in the loop's thread during a scenario: Python's
#: own pauses, reported apart (a collection of generation 2 walks every tracked object).
gc_pauses: list[float] = []
_gc_start = [0.0]


def _gc_watch(phase: str, info: dict[str, int]) -> None:
    if threading.current_thread() is threading.main_thread():
        if phase == "start":
            _gc_start[0] = time.thread_time()
        else:
            gc_pauses.append(time.thread_time() - _gc_start[0])


gc.callbacks.append(_gc_watch)


async def scenario_floor(seconds: float) -> Result:
    """The ticker alone: the lag this machine adds with nothing to do (other processes)."""
    ticker = Ticker()
    tick = asyncio.ensure_future(ticker.run())
    await asyncio.sleep(seconds)
    tick.cancel()
    return seconds, [], ticker


async def scenario_aio(d: str, args: argparse.Namespace) -> Result:
    async with ringwal.aio.open(Config(dir=d, start_writer=False)) as log:

        async def one(r: Record) -> None:
            await log.append(r)
            await log.sync()

        return await drive(args.coroutines, args.records, args.size, one)


async def scenario_to_thread(d: str, args: argparse.Namespace) -> Result:
    h = ringwal.open(Config(dir=d, start_writer=False))
    try:

        async def one(r: Record) -> None:
            h.append(r)
            await asyncio.to_thread(h.sync)

        return await drive(args.coroutines, args.records, args.size, one)
    finally:
        h.close()


def run_one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    if name == "floor":
        _, _, ticker = asyncio.run(scenario_floor(2.0))
        return {
            "scenario": name,
            "loop_lag_max_ms": round(max(ticker.lags) * 1e3, 3),
            "loop_lag_p99_ms": round(pct(ticker.lags, 0.99) * 1e3, 3),
            "loop_busy_max_ms": round(max(ticker.busy) * 1e3, 3),
        }
    base = tempfile.mkdtemp(prefix="bench-aio-", dir=args.dir)
    d = os.path.join(base, "wal")
    os.makedirs(d)
    writer = serve(d)
    try:
        f0 = fsyncs(d)
        if name == "aio":
            res = asyncio.run(scenario_aio(d, args))
        elif name == "aio-uvloop":
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                res = runner.run(scenario_aio(d, args))
        else:
            res = asyncio.run(scenario_to_thread(d, args))
        used = fsyncs(d) - f0
    finally:
        writer.send_signal(signal.SIGTERM)
        writer.communicate(timeout=60)
        shutil.rmtree(base, ignore_errors=True)
    elapsed, lat, ticker = res
    lags = ticker.lags
    n = args.coroutines * args.records
    return {
        "scenario": name,
        "coroutines": args.coroutines,
        "records_each": args.records,
        "size": args.size,
        "records_per_s": round(n / elapsed),
        "sync_p50_ms": round(pct(lat, 0.5) * 1e3, 3),
        "sync_p99_ms": round(pct(lat, 0.99) * 1e3, 3),
        "loop_lag_max_ms": round(max(lags) * 1e3, 3),
        "loop_lag_p99_ms": round(pct(lags, 0.99) * 1e3, 3),
        "loop_busy_max_ms": round(max(ticker.busy) * 1e3, 3),
        "loop_busy_p99_ms": round(pct(ticker.busy, 0.99) * 1e3, 3),
        "gc_pause_max_ms": round(max(gc_pauses, default=0.0) * 1e3, 3),
        "fsyncs": used,
        "records_per_fsync": round(n / used, 1) if used > 0 else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coroutines", type=int, default=1000)
    ap.add_argument("--records", type=int, default=100, help="records each coroutine appends and syncs")
    ap.add_argument("--size", type=int, default=100, help="data bytes per record")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scenarios", default="floor,aio,aio-uvloop,to_thread")
    ap.add_argument("--dir", default=None, help="where the logs go (a temporary directory under it)")
    ap.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() once everything is imported, as a latency-minded service would: a collection "
        "of the oldest generation then skips the objects of the modules",
    )
    args = ap.parse_args()
    names = [s for s in args.scenarios.split(",") if s]
    if "aio-uvloop" in names:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            names.remove("aio-uvloop")
            print(json.dumps({"note": "uvloop is not installed: aio-uvloop skipped"}), flush=True)
    if args.gc_freeze:
        gc.collect()
        gc.freeze()
    rows: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for run in range(args.runs):
        for name in names:
            row = run_one(name, args)
            row["run"] = run
            rows[name].append(row)
            print(json.dumps(row), flush=True)
    for name, rs in rows.items():
        summary: dict[str, Any] = {"summary": name, "runs": len(rs), "python": platform.python_version()}
        for k in rs[0]:
            if k not in ("scenario", "run", "coroutines", "records_each", "size", "records_per_fsync"):
                summary[k + "_median"] = statistics.median(r[k] for r in rs)
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
