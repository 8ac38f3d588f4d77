"""In-process storage-core benchmarks (issue: the on-disk log). Prints JSON lines.

Scenarios, each run --runs times and reported as the median (with min and max):

* append_os_buffered: ``WAL.append`` of prebuilt records, then one ``flush()`` (no fsync)
* append_many_os_buffered: the same records through ``append_many`` in chunks of 1,000
* append_sync_1000: ``append``, with ``sync()`` (fdatasync) every 1,000 records
* replay: ``ringwal.replay`` of ``--replay-records`` records (4,000,000 by default, as in
  issue 13) from a log written with the default ``Config`` (2 MiB segments: about 220 of
  them), delivered as Record objects, checksums verified;
* bare_loop: the floor replay is compared with, over the same segment files: read each
  file, and for every record unpack its length, CRC32C its bytes and count it;
* replay_peak_bytes / bare_loop_peak_bytes: the most memory (tracemalloc: every bytes
  object read or made) each held at once, in a separate pass that is not timed.

Replay and the bare loop run interleaved, back to back, ``--runs`` times; the ratio
bare-loop time / replay time is computed per run (wall clock and CPU time of this process),
then the median of those ratios is reported. ``--replay-only`` skips the append scenarios.

    python bench/bench_log.py --records 1000000 --size 100 --runs 5
    python bench/bench_log.py --replay-only --replay-records 4000000 --runs 9
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import struct
import sys
import tempfile
import time
import tracemalloc

from crc32c import crc32c

from ringwal import WAL, Config, Record, replay
from ringwal.format import FRAME_HEADER, FRAME_HEADER_SIZE, SEGMENT_HEADER_SIZE, align8
from ringwal.segment import CURRENT, list_segments


def make_records(n: int, size: int) -> list[Record]:
    base = time.time_ns()
    data = [os.urandom(size) for _ in range(64)]
    return [Record(1 + i % 3, base + i, data[i % 64]) for i in range(n)]


def bench_append(directory: str, records: list[Record], mode: str) -> float:
    shutil.rmtree(directory, ignore_errors=True)
    cfg = Config(dir=directory, segment_size=64 << 20)
    with WAL(cfg) as w:
        append = w.append
        t0 = time.perf_counter()
        if mode == "append_many":
            for k in range(0, len(records), 1000):
                w.append_many(records[k : k + 1000])
            w.flush()
        elif mode == "sync_1000":
            for i, r in enumerate(records, 1):
                append(r)
                if i % 1000 == 0:
                    w.sync()
            w.sync()
        else:
            for r in records:
                append(r)
            w.flush()
        return time.perf_counter() - t0


def bench_replay(directory: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for _ in replay(directory):
        n += 1
    return time.perf_counter() - t0, n


def write_default_log(directory: str, n: int, size: int) -> None:
    """A log of ``n`` records written with the default Config (but ``dir``), Records built per
    append_many chunk as a user builds them."""
    shutil.rmtree(directory, ignore_errors=True)
    data = os.urandom(size)
    with WAL(Config(dir=directory)) as w:
        for k in range(0, n, 10_000):
            now = time.time_ns()
            w.append_many([Record(1 + i % 3, now + i, data) for i in range(min(10_000, n - k))])


def timed(fn) -> tuple[float, float, int]:
    """(wall s, CPU s of this process, what ``fn`` counted)."""
    w0, c0 = time.perf_counter(), time.process_time()
    n = fn()
    return time.perf_counter() - w0, time.process_time() - c0, n


def peak_bytes(fn) -> int:
    """The most traced memory ``fn`` held at once."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def replay_stage(directory: str, n: int, runs: int, meta: dict) -> list[dict]:
    """Replay vs the bare loop over the same default-config log, interleaved; then memory."""

    def replay_count() -> int:
        k = 0
        for _ in replay(directory):
            k += 1
        return k

    def bare_count() -> int:
        return bare_loop(directory)[1]

    replay_count(), bare_count()  # page cache warm for both, imports done
    rates: dict[str, list[float]] = {k: [] for k in ("replay", "bare_loop", "replay_cpu", "bare_loop_cpu")}
    ratios, cpu_ratios = [], []
    for _ in range(runs):
        rw, rc, nr = timed(replay_count)
        bw, bc, nb = timed(bare_count)
        assert nr == nb == n, (nr, nb, n)
        rates["replay"].append(n / rw)
        rates["bare_loop"].append(n / bw)
        rates["replay_cpu"].append(n / rc)
        rates["bare_loop_cpu"].append(n / bc)
        ratios.append(bw / rw)
        cpu_ratios.append(bc / rc)
    segs = len(list_segments(directory)) + 1
    extra = {**meta, "records": n, "segments": segs, "segment_size": Config().segment_size}
    out = [summary(name, vals, "records/s", **extra) for name, vals in rates.items()]
    out.append(summary("replay_vs_bare_loop", ratios, "ratio", **extra))
    out.append(summary("replay_vs_bare_loop_cpu", cpu_ratios, "ratio", **extra))
    out.append(summary("replay_peak_bytes", [peak_bytes(replay_count)], "bytes", **extra))
    out.append(summary("bare_loop_peak_bytes", [peak_bytes(bare_count)], "bytes", **extra))
    return out


def bare_loop(directory: str) -> tuple[float, int]:
    """Read, unpack each record's length, check a CRC over it, count."""
    names = [n for _, n in list_segments(directory)] + [CURRENT]
    unpack_len = struct.Struct("<I").unpack_from
    unpack_frame = FRAME_HEADER.unpack_from
    t0 = time.perf_counter()
    n = 0
    for name in names:
        with open(os.path.join(directory, name), "rb", buffering=0) as f:
            buf = f.read()
        pos = SEGMENT_HEADER_SIZE
        while pos + FRAME_HEADER_SIZE <= len(buf):
            length = unpack_frame(buf, pos)[0]
            if length == 0:
                break
            rp = pos + FRAME_HEADER_SIZE
            end = rp + length
            while rp < end:
                (ln,) = unpack_len(buf, rp)
                crc32c(buf[rp + 4 : rp + 4 + ln])
                rp += 4 + ln
                n += 1
            pos += FRAME_HEADER_SIZE + align8(length)
    return time.perf_counter() - t0, n


def summary(name: str, values: list[float], unit: str, **extra) -> dict:
    return {
        "scenario": name,
        "unit": unit,
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
        **extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=100, help="data bytes per record")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--replay-records", type=int, default=4_000_000, help="records in the default-config replay log")
    ap.add_argument("--replay-only", action="store_true", help="only the replay stage")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir on the same disk as /tmp)")
    args = ap.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="ringwal-bench-")
    directory = os.path.join(root, "wal")
    records = make_records(0 if args.replay_only else args.records, args.size)
    meta = {"records": args.records, "size": args.size, "python": platform.python_version(), "cpus": os.cpu_count()}
    results = []
    try:
        if not args.replay_only:
            for mode, name in (("append", "append_os_buffered"), ("append_many", "append_many_os_buffered"), ("sync_1000", "append_sync_1000")):
                rates = [args.records / bench_append(directory, records, mode) for _ in range(args.runs)]
                results.append(summary(name, rates, "records/s", **meta))
                print(json.dumps(results[-1]), flush=True)
        # The prebuilt records are dropped first: a million live objects would make the
        # collector's full passes (triggered by replay's allocations) part of the measurement.
        del records
        gc.collect()
        write_default_log(directory, args.replay_records, args.size)
        for r in replay_stage(directory, args.replay_records, args.runs, meta):
            results.append(r)
            print(json.dumps(r), flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"summary": {r["scenario"]: round(r["median"], 3 if r["unit"] == "ratio" else 0) for r in results}}))


if __name__ == "__main__":
    sys.exit(main())
