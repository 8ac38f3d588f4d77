"""What a rotation costs the writer's thread, and what segment_size costs throughput. JSON lines.

A ``SegmentLog`` (the writer process's segment layer, no ring) is fed frames of ``--frame``
bytes of 100-byte records, as the writer's drain makes them, for ``--mib`` MiB:

* ``rotation_wait``: the time of each ``write_body`` that rotated (seal, new segment,
  rename, directory fsync, ...), minus nothing: what the draining thread waited;
* ``buffered``: MiB/s and records/s of the whole run, no fdatasync but the rotations';
* ``sync_every_frame``: the same with ``sync()`` after every frame (group commit of one frame).

Each segment size given (``--segment-sizes``, default 2 MiB and 64 MiB) is run ``--runs``
times, interleaved, medians reported. To compare two builds, run it with each on
``PYTHONPATH`` (``PYTHONPATH=/path/to/other/checkout python bench/rotation.py``).

    python bench/rotation.py --mib 256 --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

from ringwal import Config, Record
from ringwal.seglog import SegmentLog
from ringwal.serializers import BinarySerializer


def one_run(root: str, segment_size: int, frame: int, mib: int, sync: bool) -> dict:
    d = tempfile.mkdtemp(dir=root)
    ser = BinarySerializer()
    rec = ser.frame(Record(1, time.time_ns(), b"x" * 100))
    per = max(1, frame // len(rec))
    body = rec * per
    frames = (mib << 20) // len(body)
    waits = []
    try:
        log = SegmentLog(Config(dir=d, segment_size=segment_size), ser.name)
        try:
            t0 = time.perf_counter()
            for _ in range(frames):
                before = log._next_number
                t = time.perf_counter()
                log.write_body(body, per)
                dt = time.perf_counter() - t
                if log._next_number != before:
                    waits.append(dt)
                if sync:
                    log.sync()
            log.sync()
            elapsed = time.perf_counter() - t0
        finally:
            log.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return {
        "rotations": len(waits),
        "rotation_wait_ms_p50": statistics.median(waits) * 1e3 if waits else None,
        "rotation_wait_ms_max": max(waits) * 1e3 if waits else None,
        "rotation_wait_s_total": sum(waits),
        "elapsed_s": elapsed,
        "mib_per_s": frames * len(body) / elapsed / (1 << 20),
        "records_per_s": frames * per / elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segment-sizes", type=int, nargs="+", default=[2 << 20, 64 << 20])
    ap.add_argument("--frame", type=int, default=64 << 10, help="bytes per frame body")
    ap.add_argument("--mib", type=int, default=256, help="MiB written per run")
    ap.add_argument("--sync-mib", type=int, default=32, help="MiB written per run with sync() after every frame")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir under the checkout)")
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    root = args.dir or tempfile.mkdtemp(prefix="ringwal-rotation-", dir=os.path.join(here, ".."))
    import ringwal

    meta = {"bench": "meta", "ringwal": os.path.dirname(ringwal.__file__), "python": platform.python_version(),
            "cpus": os.cpu_count(), "frame": args.frame}  # fmt: skip
    print(json.dumps(meta), flush=True)
    results: dict[tuple[str, int], list[dict]] = {}
    try:
        for _ in range(args.runs):
            for size in args.segment_sizes:  # interleaved: drift hits every size alike
                for mode, mib in (("buffered", args.mib), ("sync_every_frame", args.sync_mib)):
                    r = one_run(root, size, args.frame, mib, mode != "buffered")
                    print(json.dumps({"bench": "run", "mode": mode, "segment_size": size, **r}), flush=True)
                    results.setdefault((mode, size), []).append(r)
        for (mode, size), rs in results.items():
            summary = {"bench": "summary", "mode": mode, "segment_size": size, "runs": len(rs)}
            for k in ("rotation_wait_ms_p50", "rotation_wait_s_total", "mib_per_s", "records_per_s"):
                vals = [r[k] for r in rs if r[k] is not None]
                summary[k] = round(statistics.median(vals), 3) if vals else None
            print(json.dumps(summary), flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
