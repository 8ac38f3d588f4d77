"""Real processes killed with SIGKILL at named crash points; the log must open and replay.

Rotation calls ``fsync`` (the seam) at six points, in this order; the child kills itself
inside the N-th call, before it syncs, which lands exactly in each named crash window:

1. sealing current.wal             -> a complete current.wal, not yet renamed
2. directory fsync after rename    -> NNNNNN.wal and no current.wal
3. fsync of current.wal.tmp        -> a stray .tmp, no current.wal
4. directory fsync after create    -> the new current.wal, the index not yet updated
5. fsync of wal_index.json.tmp     -> a stale index and a stray index .tmp
6. directory fsync after the index -> everything done but the last directory fsync

A process kill keeps the page cache, so these are the states of the namespace at each
instant; the "either name after a power cut" cases are both covered because 1 and 2 are.
"""

from __future__ import annotations

import os
import signal

import pytest

from ringwal import WAL, Config, replay, verify

from .conftest import rec, spawn_child

CHILD = """
import os, signal, sys
import ringwal
directory, kill_at, records = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

class Killer:
    armed = False
    calls = 0
    def __call__(self, fd):
        if self.armed:
            self.calls += 1
            if self.calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        os.fsync(fd)

killer = Killer()
w = ringwal.WAL(ringwal.Config(dir=directory, segment_size=2048), fsync=killer)
killer.armed = kill_at > 0
for i in range(w.last_seq, w.last_seq + records):
    w.append(ringwal.Record(1 + i % 3, i, b"crash-%06d" % i + bytes(80)))
    print(w.sync(), flush=True)
print("done", flush=True)
"""


def run_until_killed(directory: str, kill_at: int, records: int) -> list[int]:
    p = spawn_child(CHILD, directory, str(kill_at), str(records))
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
    assert verify(directory).ok
    assert [r.seq for r in replay(directory)] == list(range(1, got[-1] + 2))


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4, 5, 6], ids=[
    "sealed", "renamed", "tmp-created", "created", "index-tmp", "index-renamed"])
def test_crash_at_each_rotation_step(tmp_path, kill_at):
    d = str(tmp_path / "wal")
    acked = run_until_killed(d, kill_at, 200)
    assert acked, "the child died before acknowledging anything"
    names = set(os.listdir(d))
    expect = {1: "current.wal", 2: "000001.wal", 3: "current.wal.tmp", 5: "wal_index.json.tmp"}
    if kill_at in expect:
        assert expect[kill_at] in names, names
    if kill_at in (2, 3):
        assert "current.wal" not in names
    assert_log_sound(d, acked)


def test_crash_in_second_rotation_after_restart(tmp_path):
    d = str(tmp_path / "wal")
    acked = run_until_killed(d, 2, 200)
    acked += run_until_killed(d, 3, 200)
    assert_log_sound(d, acked)


@pytest.mark.parametrize("after", [1, 37, 150])
def test_sigkill_mid_append_loses_no_acknowledged_record(tmp_path, after):
    """The parent kills the child after reading ``after`` acknowledgements (no sleeps)."""
    d = str(tmp_path / "wal")
    p = spawn_child(CHILD, d, "0", "100000")
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
