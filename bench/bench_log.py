"""In-process storage-core benchmarks (issue: the on-disk log). Prints JSON lines.

Scenarios, each run --runs times and reported as the median (with min and max):

* append_os_buffered: ``WAL.append`` of prebuilt records, then one ``flush()`` (no fsync)
* append_many_os_buffered: the same records through ``append_many`` in chunks of 1,000
* append_sync_1000: ``append``, with ``sync()`` (fdatasync) every 1,000 records
* replay: ``ringwal.replay`` of N records delivered as Record objects, checksums verified
* bare_loop: the floor replay is compared with, over the same segment files: read each
  file, and for every record unpack its length, CRC32C its bytes and count it

The ratio replay / bare_loop is computed per run (both measured back to back), then the
median of those ratios is reported.

    python bench/bench_log.py --records 1000000 --size 100 --runs 5
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
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir on the same disk as /tmp)")
    args = ap.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="ringwal-bench-")
    directory = os.path.join(root, "wal")
    records = make_records(args.records, args.size)
    meta = {"records": args.records, "size": args.size, "python": platform.python_version(), "cpus": os.cpu_count()}
    results = []
    try:
        for mode, name in (("append", "append_os_buffered"), ("append_many", "append_many_os_buffered"), ("sync_1000", "append_sync_1000")):
            rates = [args.records / bench_append(directory, records, mode) for _ in range(args.runs)]
            results.append(summary(name, rates, "records/s", **meta))
            print(json.dumps(results[-1]), flush=True)
        # The replay stage reads the log the last append run left behind. The prebuilt records
        # are dropped first: a million live objects would make the collector's full passes
        # (triggered by replay's allocations) part of the measurement.
        del records
        gc.collect()
        replay_rates, bare_rates, ratios = [], [], []
        for _ in range(args.runs):
            t_r, n_r = bench_replay(directory)
            t_b, n_b = bare_loop(directory)
            assert n_r == n_b == args.records, (n_r, n_b)
            replay_rates.append(n_r / t_r)
            bare_rates.append(n_b / t_b)
            ratios.append(t_b / t_r)
        for name, vals, unit in (("replay", replay_rates, "records/s"), ("bare_loop", bare_rates, "records/s"), ("replay_vs_bare_loop", ratios, "ratio")):
            results.append(summary(name, vals, unit, **meta))
            print(json.dumps(results[-1]), flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"summary": {r["scenario"]: round(r["median"], 3 if r["unit"] == "ratio" else 0) for r in results}}))


if __name__ == "__main__":
    sys.exit(main())
