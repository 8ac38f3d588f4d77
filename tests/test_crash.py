"""Real processes killed with SIGKILL at named crash points; the log must open and replay.

A child appends and syncs record by record through a ``SegmentLog`` with 2 KiB segments
and SIGKILLs itself at the N-th passage of one of rotation's named crash points (the ``at``
seam; ``seglog.py``, "Rotation", names what is on disk after each):

* ``sealed``   current.wal truncated and fsynced, not renamed  -> continued; the spare removed
* ``header``   the new header in next.wal.tmp, fdatasynced     -> the same
* ``renamed``  current.wal -> NNNNNN.wal, directory fsynced    -> no current.wal; one is made
* ``current``  next.wal.tmp -> current.wal                     -> the new, empty current.wal
* ``named``    (background) the directory fsynced after it     -> a complete rotation
* ``spare``    (background) the next next.wal.tmp preallocated -> a spare, removed at open
* ``indexed``  (background) wal_index.json replaced            -> a complete rotation

A process kill keeps the page cache, so these are the states of the namespace at each
instant; the "either name after a power cut" cases are the states of the points before
(``renamed`` is what a power cut shows when the last rename was not yet durable).
The background points fire on the log's own thread while the child may be further on.
"""

from __future__ import annotations

import os
import signal

import pytest

from ringwal import WAL, Config, replay, verify
from ringwal.segment import CURRENT, SPARE, read_header

from .conftest import rec, spawn_child

CHILD = """
import os, signal, sys, threading
import ringwal
from ringwal.seglog import SegmentLog
from ringwal.serializers import BinarySerializer
directory, point, nth, records = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
lock = threading.Lock()
seen = {"n": 0}

def at(name):
    if name == point:
        with lock:
            seen["n"] += 1
            if seen["n"] == nth:
                os.kill(os.getpid(), signal.SIGKILL)

log = SegmentLog(ringwal.Config(dir=directory, segment_size=2048), "binary", at=at)
frame = BinarySerializer().frame
for i in range(log.last_seq, log.last_seq + records):
    log.write_records([frame(ringwal.Record(1 + i % 3, i, b"crash-%06d" % i + bytes(80)))])
    print(log.sync(), flush=True)
print("done", flush=True)
"""

POINTS = ["sealed", "header", "renamed", "current", "named", "spare", "indexed"]


def run_until_killed(directory: str, point: str, nth: int = 2, records: int = 200) -> list[int]:
    p = spawn_child(CHILD, directory, point, str(nth), str(records))
    acked = [int(line) for line in p.stdout if line.strip().isdigit()]
    p.wait(60)
    assert p.returncode == -signal.SIGKILL, p.stderr.read()
    return acked


def assert_log_sound(directory: str, acked: list[int]) -> None:
    got = [r.seq for r in replay(directory)]  # with no writer running
    assert got == list(range(1, len(got) + 1)), "seqs must be gap-free from 1"
    assert set(acked) <= set(got), "a record acknowledged by sync() was lost"
    with WAL(Config(dir=directory, segment_size=2048)) as w:
        assert w.last_seq == got[-1]
        assert w.append(rec(0)) == got[-1] + 1
    assert not os.path.exists(os.path.join(directory, SPARE)), "a closed log leaves no spare"
    assert verify(directory).ok
    assert [r.seq for r in replay(directory)] == list(range(1, got[-1] + 2))


@pytest.mark.parametrize("point", POINTS)
def test_crash_at_each_rotation_step(tmp_path, point):
    d = str(tmp_path / "wal")
    acked = run_until_killed(d, point)
    assert acked, "the child died before acknowledging anything"
    names = set(os.listdir(d))
    if point in ("sealed", "header"):
        assert {"000001.wal", CURRENT} <= names and "000002.wal" not in names, names
    if point == "header":  # a valid header in a file no reader opens
        assert read_header(os.path.join(d, SPARE)).first_seq == acked[-1] + 1
    if point == "renamed":
        assert {"000002.wal", SPARE} <= names and CURRENT not in names, names
    if point == "current":
        assert CURRENT in names and SPARE not in names, names
        assert read_header(os.path.join(d, CURRENT)).first_seq == acked[-1] + 1
    # Readers with no writer: the spare is never taken for a segment, whatever it holds.
    assert_log_sound(d, acked)


def test_crash_in_second_rotation_after_restart(tmp_path):
    d = str(tmp_path / "wal")
    acked = run_until_killed(d, "renamed")
    acked += run_until_killed(d, "header")
    acked += run_until_killed(d, "current", nth=1)
    assert_log_sound(d, acked)


@pytest.mark.parametrize("after", [1, 37, 150])
def test_sigkill_mid_append_loses_no_acknowledged_record(tmp_path, after):
    """The parent kills the child after reading ``after`` acknowledgements (no sleeps)."""
    d = str(tmp_path / "wal")
    p = spawn_child(CHILD, d, "never", "0", "100000")
    acked = []
    for line in p.stdout:
        acked.append(int(line))
        if len(acked) == after:
            p.send_signal(signal.SIGKILL)
            break
    acked += [int(x) for x in p.stdout if x.strip().isdigit()]
    p.wait(60)
    assert p.returncode == -signal.SIGKILL
    assert_log_sound(d, acked)
