"""``Config.wait_strategy``: how a producer passes the time in ``sync``/``flush``.

Every strategy gets the same answers (seqs, durability); they differ in what the waiting
process does meanwhile: ``blocking`` sleeps on the ring's futex word, ``yielding`` and
``busy-spin`` keep polling. That difference is checked where it shows: the CPU a producer
uses while its ``sync()`` waits on a writer that is stopped (SIGSTOP), so nothing can end
the wait early.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil
import pytest

import ringwal
from ringwal import Config, ConfigError, replay

from .conftest import rec, spawn_child
from .ringhelp import read_line, start_serve, stop_process

STRATEGIES = ["blocking", "yielding", "busy-spin"]

# Opens a handle with the strategy in argv[2], appends one record, says so, then syncs.
WAITER = """
import sys
import ringwal
from ringwal import Config, Record
h = ringwal.open(Config(dir=sys.argv[1], start_writer=False, wait_strategy=sys.argv[2]))
h.append(Record(1, 0, sys.argv[2].encode()))
print("waiting", flush=True)
print("synced", h.sync(), flush=True)
h.close()
"""


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_wait_strategy_syncs_flushes_and_gets_seqs(wdir, strategy):
    with ringwal.open(Config(dir=wdir, writer_linger=0, wait_strategy=strategy)) as h:
        receipts = [h.append(rec(i)) for i in range(5)]
        assert h.sync() == 5
        h.append(rec(5))
        h.flush()
        assert [r.seq for r in receipts] == [1, 2, 3, 4, 5]
        assert h.sync() == 6
    assert [r.data for r in replay(wdir, 0)] == [rec(i).data for i in range(6)]


def test_an_unknown_wait_strategy_names_the_choices(wdir):
    with pytest.raises(ConfigError, match="wait_strategy must be one of 'blocking', 'yielding', 'busy-spin'"):
        ringwal.open(Config(dir=wdir, wait_strategy="spin"))


def test_a_blocking_waiter_sleeps_and_a_yielding_one_polls_while_the_writer_is_stopped(wdir):
    writer = start_serve(wdir)
    waiters: list = []
    try:
        stop_process(writer.pid)
        waiters = [spawn_child(WAITER, wdir, s) for s in ("blocking", "yielding")]
        for w in waiters:
            assert read_line(w) == "waiting"
        procs = [psutil.Process(w.pid) for w in waiters]
        before = [sum(p.cpu_times()[:2]) for p in procs]
        time.sleep(1.0)  # a window to measure CPU over, not a synchronisation: nothing can end these waits
        blocking, yielding = (sum(p.cpu_times()[:2]) - b for p, b in zip(procs, before, strict=True))
        # Asleep on the futex, a blocking waiter wakes only for its liveness check (every 0.1 s);
        # a yielding one is runnable throughout and gets its share of a CPU however busy the machine.
        assert blocking < 0.1, f"a blocking waiter used {blocking:.3f} s of CPU in 1 s"
        assert yielding > max(5 * blocking, 0.02), f"a yielding waiter used {yielding:.3f} s (blocking: {blocking:.3f} s)"
        os.kill(writer.pid, signal.SIGCONT)
        seqs = sorted(int(read_line(w).split()[1]) for w in waiters)
        assert seqs == [1, 2]
        for w in waiters:
            assert w.wait(30) == 0
    finally:
        for p in (writer, *waiters):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
        for w in waiters:
            if w.poll() is None:
                w.kill()
                w.wait(30)
        writer.terminate()
        writer.wait(30)
