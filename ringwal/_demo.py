"""The demo behind ``scripts/demo``: append, rotate, crash-free reopen, replay, verify.

In this release the log is in-process: one process appends through ``ringwal.WAL``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from . import Config, Record, RecordType, WAL, replay, verify


def main() -> None:
    ap = argparse.ArgumentParser(prog="scripts/demo", description=__doc__)
    ap.add_argument("--dir", help="log directory (default: a fresh temp directory, removed afterwards)")
    ap.add_argument("--records", type=int, default=200_000)
    args = ap.parse_args()
    tmp = None
    directory = args.dir or (tmp := tempfile.mkdtemp(prefix="ringwal-demo-"))
    try:
        cfg = Config(dir=directory, segment_size=1 << 20)
        types = [RecordType.PLACE, RecordType.CANCEL, RecordType.MATCH]
        t0 = time.perf_counter()
        with WAL(cfg) as wal:
            start = wal.last_seq
            for i in range(args.records):
                wal.append(Record(types[i % 3], time.time_ns(), b"order-%08d" % i + bytes(80)))
                if i % 10_000 == 9_999:
                    wal.sync()
            durable = wal.sync()
        t_append = time.perf_counter() - t0
        segments = sorted(n for n in os.listdir(directory) if n.endswith(".wal"))
        t0 = time.perf_counter()
        n = 0
        last = start
        for rec in replay(directory, after_seq=start):
            assert rec.seq == last + 1, (rec.seq, last)
            last = rec.seq
            n += 1
        t_replay = time.perf_counter() - t0
        report = verify(directory)
        print(f"log:        {directory}")
        print(f"appended:   {args.records} records (seqs {start + 1}-{durable}) in {t_append:.2f} s "
              f"= {args.records / t_append:,.0f} records/s, fsync every 10,000")
        print(f"segments:   {len(segments)} files ({', '.join(segments[:3])}{', ...' if len(segments) > 3 else ''})")
        print(f"replayed:   {n} records in {t_replay:.2f} s = {n / t_replay:,.0f} records/s, gap-free")
        print(f"verify:     {'OK' if report.ok else report.problems}")
        if n != args.records or not report.ok:
            raise SystemExit("demo FAILED")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
