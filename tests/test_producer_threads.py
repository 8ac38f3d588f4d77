"""Threads of one process sharing one handle: the lane's token (``producer.py``, "The lane's
token") against a real writer process, real shared memory and real files.

* many threads appending to one handle while others sync, flush and read receipts' seqs:
  every record is in the log once, each thread's records in its own order, every receipt
  names its record's seq, and no thread is left waiting;
* ``close`` from another thread while appends run: the appends after it raise ClosedError,
  nothing is half-written, the lane is given back;
* a thread waiting for the token is woken when its holder gives it back (the holder waits
  for room in a full lane while the writer is stopped with SIGSTOP), and a holder that
  raises gives it back;
* a child forked while another thread holds the token gets a token of its own.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import pytest

import ringwal
from ringwal import ClosedError, Config, Record, RingFullError, replay
from ringwal.ring import Ring

from .conftest import spawn_child
from .ringhelp import check_log, read_line, stop_process, wait_until, writer_pid

JOIN = 120.0  # seconds: a generous bound for a busy machine; a wedged thread fails the test


def cfg(d: str, **kw) -> Config:
    """A small lane (the writer that ``open`` starts makes the ring from this), so that
    appends also wait for room; the writer exits once the last handle is closed."""
    kw.setdefault("writer_linger", 0)
    return Config(dir=d, ring_size=64 * 1024, max_record_size=16 * 1024, **kw)


def record(tag: str, i: int, pad: int = 0) -> Record:
    return Record(1, i, b"%s:%d|" % (tag.encode(), i) + bytes(pad))


def run(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()


def joined(threads: list[threading.Thread], timeout: float = JOIN) -> None:
    for t in threads:
        t.join(timeout)
    wedged = [t.name for t in threads if t.is_alive()]
    assert not wedged, f"threads still running after {timeout}s: {wedged}"


def lane_owner(directory: str, lane: int) -> int:
    ring = Ring.attach(directory)
    try:
        return ring.owner(lane)[0]
    finally:
        ring.close()


def test_threads_sharing_a_handle_append_each_record_once_in_their_order_beside_syncs_and_receipts(wdir):
    per_thread = 1500
    h = ringwal.open(cfg(wdir))
    receipts: dict[str, list] = {}
    errors: list[BaseException] = []
    appending = threading.Event()
    done = threading.Event()

    def guarded(fn):
        def body(*args):
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        return body

    @guarded
    def appender(tag: str) -> None:
        rs = receipts[tag] = []
        appending.set()
        for i in range(per_thread):
            rs.append(h.append(record(tag, i, i % 61)))

    @guarded
    def batcher(tag: str) -> None:
        rs = receipts[tag] = []
        for i in range(0, per_thread, 10):
            batch = h.append_many([record(tag, j) for j in range(i, i + 10)])
            rs.extend((batch, k) for k in range(10))

    @guarded
    def trier(tag: str) -> None:
        rs = receipts[tag] = []
        i = 0
        while i < per_thread:
            r = h.try_append(record(tag, i, 7))
            if r is None:
                h.flush()  # the lane was full: wait until the writer took what is there
                continue
            rs.append(r)
            i += 1

    @guarded
    def syncer() -> None:
        appending.wait(JOIN)
        last = 0
        while not done.is_set():
            seq = h.sync()
            assert seq >= last
            last = seq

    @guarded
    def flusher() -> None:
        appending.wait(JOIN)
        while not done.is_set():
            h.flush()

    @guarded
    def seq_reader() -> None:
        appending.wait(JOIN)
        while not done.is_set():
            for rs in list(receipts.values()):
                if rs and not isinstance(rs[-1], tuple):
                    r = rs[len(rs) // 2]
                    assert r.seq > 0

    writers = [threading.Thread(target=appender, args=(f"a{k}",), name=f"a{k}") for k in range(6)]
    writers.append(threading.Thread(target=batcher, args=("m",), name="m"))
    writers.append(threading.Thread(target=trier, args=("t",), name="t"))
    others = [threading.Thread(target=fn, name=fn.__name__) for fn in (syncer, flusher, seq_reader)]
    # Switch threads as often as the interpreter can (at every check between bytecodes), so
    # that appends interleave inside one another unless something keeps them apart.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        run(writers + others)
        joined(writers)
        done.set()
        joined(others)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    last = h.sync()
    per = check_log(wdir, {}, {tag: per_thread for tag in receipts})
    assert last == sum(len(v) for v in per.values())
    seq_of = {r.data.split(b"|")[0]: r.seq for r in replay(wdir, 0)}
    for tag, rs in receipts.items():
        for i, r in enumerate(rs):
            got = r[0].seqs[r[1]] if isinstance(r, tuple) else r.seq
            assert got == seq_of[b"%s:%d" % (tag.encode(), i)], (tag, i)
    h.close()


def test_close_from_another_thread_ends_the_appends_with_closed_error_and_gives_the_lane_back(wdir):
    h = ringwal.open(cfg(wdir, writer_linger=60))  # the writer and its ring outlive the close (killed at teardown)
    lane = h.lane
    tags = [f"c{k}" for k in range(4)]
    going = {tag: threading.Event() for tag in tags}
    outcome: dict[str, object] = {}

    def appender(tag: str) -> None:
        i = 0
        try:
            while True:
                h.append(record(tag, i, i % 37))
                i += 1
                if i == 300:
                    going[tag].set()
        except ClosedError:
            outcome[tag] = i  # records 0..i-1 were appended; record i was not
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            outcome[tag] = exc
            going[tag].set()

    threads = [threading.Thread(target=appender, args=(tag,), name=tag) for tag in tags]
    run(threads)
    for tag in tags:
        assert going[tag].wait(JOIN), f"{tag} never appended 300 records"
    h.close()  # syncs what was appended before it took the token; every later append raises
    joined(threads)
    assert all(isinstance(n, int) for n in outcome.values()), outcome
    assert lane_owner(wdir, lane) == 0  # the lane was given back
    with ringwal.open(cfg(wdir)) as again:  # and can be claimed again
        again.append(record("after", 0))
    check_log(wdir, {}, {**{tag: n for tag, n in outcome.items() if isinstance(n, int)}, "after": 1})


def test_a_thread_waiting_for_the_lane_is_woken_when_the_holder_gives_it_back(wdir):
    h = ringwal.open(cfg(wdir, append_timeout=120))
    writer = writer_pid(wdir)
    stop_process(writer)
    n = 0
    while h.try_append(record("a", n, 1000)) is not None:  # fill the lane: the writer drains nothing now
        n += 1
    results: dict[str, object] = {}

    def append(tag: str, i: int) -> None:
        try:
            results[tag] = h.append(record(tag, i, 1000))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            results[tag] = exc

    holder = threading.Thread(target=append, args=("a", n), name="holder")
    holder.start()
    # The holder took the token and waits for room (the writer is stopped: none comes).
    wait_until(lambda: not h._tok, what="the holder to take the token")
    waiter = threading.Thread(target=append, args=("b", 0), name="waiter")
    waiter.start()
    wait_until(lambda: h._tok_waiters == 1, what="the second thread to wait for the token")
    assert holder.is_alive() and waiter.is_alive() and not results
    os.kill(writer, signal.SIGCONT)  # room comes back: the holder appends, gives the token back, wakes the waiter
    joined([holder, waiter])
    assert all(isinstance(r, ringwal.Receipt) for r in results.values()), results
    assert results["b"].seq == n + 2  # type: ignore[union-attr]
    h.close()
    check_log(wdir, {}, {"a": n + 1, "b": 1})


def test_a_holder_that_raises_gives_the_lane_back(wdir):
    h = ringwal.open(cfg(wdir, append_timeout=0.2))
    writer = writer_pid(wdir)
    stop_process(writer)
    n = 0
    while h.try_append(record("a", n, 1000)) is not None:
        n += 1
    with pytest.raises(RingFullError):
        h.append(record("a", n, 1000))  # took the token, waited for room, raised
    os.kill(writer, signal.SIGCONT)
    results: list[object] = []
    t = threading.Thread(target=lambda: results.append(h.append(record("a", n, 1000))), name="next")
    t.start()
    joined([t])
    assert results and isinstance(results[0], ringwal.Receipt)
    h.close()
    check_log(wdir, {}, {"a": n + 1})


# Holds the token in a thread, forks, and appends in the child (its own token and lane) and,
# once the thread gives the token back, in the parent.
FORK_WHILE_HELD = """
import os, signal, sys, threading, ringwal
d = sys.argv[1]
h = ringwal.open(ringwal.Config(dir=d, start_writer=False))
h.append(ringwal.Record(1, 0, b"parent:0|"))
taken, give = threading.Event(), threading.Event()

def hold():
    h._take()
    taken.set()
    give.wait(120)
    h._give()

t = threading.Thread(target=hold)
t.start()
taken.wait(120)
pid = os.fork()
if pid == 0:
    signal.alarm(60)  # a child stuck waiting for the parent's token dies instead of hanging the test
    try:
        h.append(ringwal.Record(1, 0, b"child:0|"))
        h.close()
    except BaseException as exc:
        print("child error", repr(exc), flush=True)
        os._exit(3)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status), flush=True)
give.set()
t.join(120)
h.append(ringwal.Record(1, 1, b"parent:1|"))
h.close()
print("parent done", flush=True)
"""


def test_a_child_forked_while_a_thread_holds_the_token_gets_its_own(wdir, served):
    served()
    p = spawn_child(FORK_WHILE_HELD, wdir)
    try:
        assert read_line(p, timeout=JOIN) == "child 0"
        assert read_line(p, timeout=JOIN) == "parent done"
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
    check_log(wdir, {}, {"parent": 2, "child": 1})


class _Gate:
    """Stands in for a handle's ``_wait_lock`` (the lock a ``sync`` or ``flush`` takes after it
    has given the lane's token back and before it waits): the caller stops inside it until
    the test opens it, which fixes the interleaving with another thread's ``close``."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self.entered.set()
        assert self.opened.wait(JOIN), "the test never opened the gate"
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


@pytest.mark.parametrize("call", ["sync", "flush"])
def test_a_wait_that_another_thread_closes_the_handle_under_raises_closed_error(wdir, call):
    log = ringwal.open(cfg(wdir))
    log.append(record("w", 1))
    gate = _Gate()
    log._wait_lock = gate
    raised: list[BaseException] = []

    def waiter() -> None:
        try:
            getattr(log, call)()
        except BaseException as exc:
            raised.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    assert gate.entered.wait(JOIN), f"{call} never reached its wait"
    log.close()  # syncs the record and gives the lane back while the waiter holds its side
    gate.opened.set()
    t.join(JOIN)
    assert not t.is_alive(), f"{call} is still waiting after close"
    assert len(raised) == 1 and isinstance(raised[0], ClosedError), raised
    assert "closed by another thread" in str(raised[0])


def test_a_receipt_read_after_close_raises_closed_error(wdir):
    log = ringwal.open(cfg(wdir))
    first = log.append(record("r", 1))
    assert first.seq == 1
    second = log.append(record("r", 2))
    log.close()
    with pytest.raises(ClosedError, match="is closed"):
        second.seq  # noqa: B018 - the property raises
    assert [(r.seq, r.data) for r in replay(wdir, 0)] == [(1, b"r:1|"), (2, b"r:2|")]  # both were written
