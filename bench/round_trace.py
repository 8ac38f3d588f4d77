"""One durable round trip at one producer, step by step, for ringwal and the ceiling (issue 13).

A producer that syncs every record waits for a whole round each time: it publishes, wakes the
writer, sleeps; the writer wakes, drains, writes, fdatasyncs, publishes durable progress and
wakes it. This tool times every step of that round in both processes on one clock
(``time.perf_counter_ns``, CLOCK_MONOTONIC, so the two processes' stamps compare), for
ringwal (default ``Config``, a ``ringwal serve`` writer) and for ``bench/ceiling.py``'s
skeleton, run alternately in one process tree. The steps are bounded by the system calls that
begin and end them (the writer's semaphore or futex wait, ``pwritev``/``pwrite``,
``fdatasync``, the futex wake; the producer's post and futex wait), each wrapped in Python to
take a stamp before and after (a fraction of a microsecond each, the same for both systems).

What it is for: ringwal's figures short of the ceiling's are the sum of these steps, and this
shows which steps (Python in the writer, Python in the producer, the wake-ups the kernel and
the hypervisor do) make the difference. Prints JSON lines: per run and system, the median of
each step in microseconds; then a summary of medians over the runs.

    python bench/round_trace.py --runs 3 --records 3000
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_pc = time.perf_counter_ns
_T: list[tuple[str, int]] = []  # (stamp name, ns): this process's stamps

# The steps reported, as (name, from stamp, to stamp) within one process and one round.
WRITER_STEPS = [
    ("writer_running_until_write", "s1", "w0"),
    ("writer_write_call", "w0", "w1"),
    ("writer_write_until_fsync", "w1", "f0"),
    ("writer_fsync", "f0", "f1"),
    ("writer_fsync_until_wake", "f1", "k0"),
    ("writer_wake_call", "k0", "k1"),
    ("writer_wake_until_sleep", "k1", "s0"),
]
PRODUCER_STEPS = [
    ("producer_record_and_append", "a0", "a1"),
    ("producer_sync_until_post", "a1", "p0"),
    ("producer_post_call", "p0", "p1"),
    ("producer_post_until_sleep", "p1", "u0"),
    ("producer_woken_until_return", "u1", "r1"),
]


def _stamped(fn, before: str, after: str):  # type: ignore[no-untyped-def]
    def call(*args, **kwargs):  # type: ignore[no-untyped-def]
        _T.append((before, _pc()))
        try:
            return fn(*args, **kwargs)
        finally:
            _T.append((after, _pc()))

    return call


# ---------------------------------------------------------------------- ringwal


def ringwal_writer(directory: str, out: str) -> None:
    """Serve ``directory`` with stamps at the round's system calls; dump them to ``out`` at exit."""
    from ringwal import Config, _fileutil, _futex
    from ringwal import ring as ring_mod
    from ringwal import writer as writer_mod

    os.pwritev = _stamped(os.pwritev, "w0", "w1")
    _futex.wake = _stamped(_futex.wake, "k0", "k1")
    ring_mod.WriterSide.wait_posted = _stamped(ring_mod.WriterSide.wait_posted, "s0", "s1")
    fdatasync = _stamped(_fileutil.fdatasync, "f0", "f1")

    class Stamped(writer_mod.Writer):
        def __init__(self, config: Config, **kw: object) -> None:
            super().__init__(config, fdatasync=fdatasync, **kw)  # type: ignore[arg-type]

    try:
        writer_mod.serve(Config(dir=directory), writer_class=Stamped, notify=False)
    finally:
        with open(out, "w") as f:
            json.dump(_T, f)


class _StampedSem:
    def __init__(self, sem) -> None:  # type: ignore[no-untyped-def]
        self._sem = sem
        self.release = _stamped(sem.release, "p0", "p1")

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._sem, name)


def run_ringwal(base: str, records: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    import ringwal
    from ringwal import Config, Record, _futex
    from ringwal import ring as ring_mod

    d = tempfile.mkdtemp(prefix="ringwal-round-", dir=base)
    out = os.path.join(base, "writer-stamps.json")
    w = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child-writer", d, out])
    saved_wait = ring_mod._futex.wait
    try:
        log = ringwal.open(Config(dir=d, start_writer=False, writer_wait=30))
        data = os.urandom(100)
        for _ in range(200):  # warm up
            log.append(Record(1, time.time_ns(), data))
            log.sync()
        side = log._side
        assert side is not None
        side._wsem = _StampedSem(side._wsem)  # type: ignore[assignment]
        ring_mod._futex.wait = _stamped(_futex.wait, "u0", "u1")  # type: ignore[attr-defined]
        _T.clear()
        tn = time.time_ns
        for _ in range(records):
            _T.append(("a0", _pc()))
            log.append(Record(1, tn(), data))
            _T.append(("a1", _pc()))
            log.sync()
            _T.append(("r1", _pc()))
        mine = list(_T)
        ring_mod._futex.wait = saved_wait  # type: ignore[attr-defined]
        log.close()
    finally:
        ring_mod._futex.wait = saved_wait  # type: ignore[attr-defined]
        w.send_signal(signal.SIGTERM)
        w.wait(60)
        shutil.rmtree(d, ignore_errors=True)
    with open(out) as f:
        theirs = [(n, t) for n, t in json.load(f)]
    os.unlink(out)
    return mine, theirs


# ---------------------------------------------------------------------- the ceiling


def run_ceiling(base: str, records: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    import ceiling

    from ringwal import _futex

    d = tempfile.mkdtemp(prefix="ringwal-ceiling-", dir=base)
    out = os.path.join(base, "ceiling-stamps.json")
    parent = os.getpid()
    saved = (_futex.wait, _futex.wake, os.pwrite, os.fdatasync, ceiling.Ceiling._writer)
    wait, wake = _futex.wait, _futex.wake

    def role_wait(*a):  # type: ignore[no-untyped-def]
        names = ("u0", "u1") if os.getpid() == parent else ("s0", "s1")
        return _stamped(wait, *names)(*a)

    def role_wake(*a):  # type: ignore[no-untyped-def]
        names = ("p0", "p1") if os.getpid() == parent else ("k0", "k1")
        return _stamped(wake, *names)(*a)

    def writer(self, ready):  # type: ignore[no-untyped-def]
        _T.clear()
        try:
            saved[4](self, ready)
        finally:
            with open(out, "w") as f:
                json.dump(_T, f)

    _futex.wait, _futex.wake = role_wait, role_wake
    os.pwrite = _stamped(os.pwrite, "w0", "w1")
    os.fdatasync = _stamped(os.fdatasync, "f0", "f1")
    ceiling.Ceiling._writer = writer  # type: ignore[method-assign]
    try:
        c = ceiling.Ceiling(d, 1, 1 << 16)
        cl = ceiling.CeilingClient(c, 0)
        data = os.urandom(100)
        for _ in range(200):
            cl.append(data)
            cl.sync()
        _T.clear()
        for _ in range(records):
            _T.append(("a0", _pc()))
            cl.append(data)
            _T.append(("a1", _pc()))
            cl.sync()
            _T.append(("r1", _pc()))
        mine = list(_T)
        del cl
        c.stop()
    finally:
        _futex.wait, _futex.wake, os.pwrite, os.fdatasync, ceiling.Ceiling._writer = saved  # type: ignore[method-assign]
        shutil.rmtree(d, ignore_errors=True)
    with open(out) as f:
        theirs = [(n, t) for n, t in json.load(f)]
    os.unlink(out)
    return mine, theirs


# ---------------------------------------------------------------------- analysis


def _rounds(stamps: list[tuple[str, int]], first: str) -> list[dict[str, int]]:
    """Split a process's stamps into rounds, each starting at stamp ``first``; within a round
    the first occurrence of each name counts (a wait that returned early and slept again keeps
    its first start and its first end)."""
    rounds: list[dict[str, int]] = []
    cur: dict[str, int] | None = None
    for name, t in stamps:
        if name == first:
            cur = {}
            rounds.append(cur)
        if cur is not None and name not in cur:
            cur[name] = t
    return rounds


def _next_after(times: list[int], t: int) -> int | None:
    i = bisect.bisect_left(times, t)
    return times[i] if i < len(times) else None


def analyse(producer: list[tuple[str, int]], writer: list[tuple[str, int]]) -> dict[str, float]:
    """Median microseconds of each step, the two wake-up latencies and the round period."""
    out: dict[str, float] = {}
    prod = _rounds(producer, "a0")
    wr = _rounds(writer, "s1")
    for steps, rounds in ((PRODUCER_STEPS, prod), (WRITER_STEPS, wr)):
        for name, a, b in steps:
            vals = [r[b] - r[a] for r in rounds if a in r and b in r and r[b] >= r[a]]
            if vals:
                out[name] = round(statistics.median(vals) / 1000, 1)
    # Across the processes: from the producer's post to the writer running, and from the
    # writer's wake call to the producer running (the kernel's, and the hypervisor's, share).
    s1 = sorted(t for n, t in writer if n == "s1")
    u1 = sorted(t for n, t in producer if n == "u1")
    posts = [t for n, t in producer if n == "p0"]
    wakes = [t for n, t in writer if n == "k0"]
    lat = [x - p for p in posts if (x := _next_after(s1, p)) is not None]
    if lat:
        out["post_until_writer_running"] = round(statistics.median(lat) / 1000, 1)
    lat = [x - k for k in wakes if (x := _next_after(u1, k)) is not None]
    if lat:
        out["wake_until_producer_running"] = round(statistics.median(lat) / 1000, 1)
    starts = [t for n, t in producer if n == "a0"]
    periods = [b - a for a, b in itertools.pairwise(starts)]
    out["round_us"] = round(statistics.median(periods) / 1000, 1)
    writer_python = ("writer_running_until_write", "writer_write_until_fsync", "writer_fsync_until_wake")
    producer_python = (
        "producer_record_and_append",
        "producer_sync_until_post",
        "producer_post_until_sleep",
        "producer_woken_until_return",
    )
    out["writer_python_us"] = round(sum(out.get(k, 0.0) for k in writer_python), 1)
    out["producer_python_us"] = round(sum(out.get(k, 0.0) for k in producer_python), 1)
    return out


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child-writer":
        ringwal_writer(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--records", type=int, default=3000)
    ap.add_argument("--dir", help="where the logs go (default: a temp dir on the project's disk)")
    args = ap.parse_args()
    project = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    base = tempfile.mkdtemp(prefix="round-trace-", dir=args.dir or project)
    results: dict[str, list[dict[str, float]]] = {"ringwal": [], "ceiling": []}
    try:
        for run in range(args.runs):
            for system, fn in (("ringwal", run_ringwal), ("ceiling", run_ceiling)):
                producer, writer = fn(base, args.records)
                r = analyse(producer, writer)
                results[system].append(r)
                print(json.dumps({"bench": "round_trace", "system": system, "run": run, **r}), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for system, runs in results.items():
        keys = runs[0].keys()
        summary = {k: round(statistics.median(r[k] for r in runs if k in r), 1) for k in keys}
        print(json.dumps({"bench": "round_trace_summary", "system": system, "runs": len(runs), **summary}), flush=True)


if __name__ == "__main__":
    main()
