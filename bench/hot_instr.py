"""Instructions per operation on the producer's hot path, counted by valgrind (issue 13).

Wall-clock figures on a shared 2-core machine drift with whatever else runs; instruction
counts from ``valgrind --tool=callgrind`` do not, so this is how two revisions of the hot path
are compared (run it from each tree's root, or through ``bench/ab.py``). Each piece runs
``N`` and ``2N`` times in a child under callgrind; the difference divided by ``N`` is the
cost of one operation, start-up excluded. Prints one JSON line per piece.

Pieces (one process, no writer process: an in-process ``WriterSide`` owns a 16 MiB lane that
holds every record of a run, so nothing is drained while counting: the producer's cost alone,
which is what limits a producer process when the writer runs on another core):

* ``record``   ``Record(1, time.time_ns(), data)``
* ``append``   ``log.append(prebuilt_record)``
* ``loop``     ``log.append(Record(1, time.time_ns(), data))``

    python bench/hot_instr.py --n 50000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time


def _in_process_ring(lanes: int, ring_size: int):  # type: ignore[no-untyped-def]
    """A log directory, an in-process ``WriterSide`` serving a ring of ``lanes`` lanes, a
    ``write`` for its drains that hands out seqs (no file), the next seq it hands out (a
    one-item list), and ``lanes`` handles on the ring."""
    import ringwal
    from ringwal import Config
    from ringwal.ring import WriterSide

    d = tempfile.mkdtemp(prefix="ringwal-instr-")
    ringwal.WAL(Config(dir=d)).close()  # a log (its first segment names the log id the ring carries)
    w = WriterSide.open(d, lanes, ring_size, 1 << 20, "binary", lambda name: None)
    w.recover(0, 1)
    w.publish_ready()
    nxt = [1]

    def write(body: bytes, count: int) -> int:
        first = nxt[0]
        nxt[0] += count
        return first

    cfg = Config(dir=d, start_writer=False, ring_size=ring_size, producer_slots=lanes)
    return d, w, write, nxt, [ringwal.open(cfg) for _ in range(lanes)]


def _close_in_process_ring(d: str, w, logs) -> None:  # type: ignore[no-untyped-def]
    """Give the handles' lanes back without waiting for a writer, close the ring, remove it all."""
    from ringwal.ring import unlink_names

    for log in logs:
        log._side.release()
        log._side = None
    w.close()
    unlink_names(d)
    shutil.rmtree(d)


def child(piece: str, n: int) -> None:
    from ringwal import Record

    d, w, _write, _nxt, logs = _in_process_ring(1, 1 << 24)
    log = logs[0]
    data = os.urandom(100)
    tn = time.time_ns
    R = Record
    rec = R(1, tn(), data)
    append = log.append
    k = 0
    while k < n:
        m = min(8192, n - k)
        if piece == "append":
            for _ in range(m):
                append(rec)
        elif piece == "loop":
            for _ in range(m):
                append(R(1, tn(), data))
        elif piece == "record":
            for _ in range(m):
                R(1, tn(), data)
        k += m
    _close_in_process_ring(d, w, logs)


def child_round(piece: str, n: int) -> None:
    """``appends_K``: n times, one ``append`` on each of K handles (lanes). ``round_K``: the
    same, then the writer's part of one group commit over those K spans (drain into one frame,
    the written and durable progress, the wants, the wake), with no file and no fsync."""
    from ringwal import Record
    from ringwal.ring import _WANT, L_WANT_DURABLE, M32

    kind, k = piece.split("_")
    lanes = int(k)
    d, w, write, nxt, logs = _in_process_ring(lanes, 1 << 21)
    sides = [log._side for log in logs]
    rec = Record(1, time.time_ns(), os.urandom(100))
    appends = [log.append for log in logs]
    writer = kind == "round"
    for _ in range(n):
        for append in appends:
            append(rec)
        if writer:
            for side in sides:
                side._ctl[L_WANT_DURABLE] = _WANT | (side.count & M32)  # each producer waits in sync()
            w.drain(nxt[0], 1 << 20, write)
            w.notify(durable=False)
            w.sync_wanted()
            w.mark_durable(nxt[0] - 1)
            w.notify(durable=True)
            w.count_fsync(100_000)
    _close_in_process_ring(d, w, logs)


def count(piece: str, n: int) -> int:
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            piece,
            str(n),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    m = re.search(r"Collected : (\d+)", out.stderr)
    if not m:
        raise RuntimeError(out.stderr[-2000:])
    return int(m.group(1))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        piece = sys.argv[2]
        (child_round if "_" in piece else child)(piece, int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000, help="at most 70,000: 2N records must fit the lane")
    ap.add_argument("--pieces", default="record,append,loop")
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("valgrind is needed (Debian: apt-get install valgrind)")
    per_op: dict[str, int] = {}
    for piece in args.pieces.split(","):
        a, b = count(piece, args.n), count(piece, 2 * args.n)
        per_op[piece] = round((b - a) / args.n)
        print(json.dumps({"bench": "hot_instr", "piece": piece, "instructions_per_op": per_op[piece]}), flush=True)
        if piece.startswith("round_") and "appends_" + piece[6:] in per_op:
            lanes = int(piece[6:])
            writer = per_op[piece] - per_op["appends_" + piece[6:]]
            line = {
                "bench": "hot_instr",
                "piece": "writer_round_" + piece[6:],
                "lanes": lanes,
                "instructions_per_round": writer,
                "instructions_per_record": round(writer / lanes),
            }
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
