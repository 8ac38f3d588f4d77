"""SIGKILL of producers and writers at named points; the log keeps every acked record once.

Writer crash points (``Writer._at`` names, in drain order; see ring.py's protocol):

* ``pending``       pending drain published, frame not yet written -> the next writer
                    finds the log ends before ``pending_first`` and drains the lanes again;
* ``written``       frame in current.wal, no tail advanced -> the next writer finds the
                    frame on disk and only advances the tails (no duplicate);
* ``lane_finished`` some lanes' tails advanced, maybe not all -> the same, per lane;
* ``fdatasync``     inside the group-commit fsync, before it runs -> nothing acked yet;
                    the next writer's recovery fsyncs the frames;
* ``synced``        fsync done, durable progress not published -> producers still wait,
                    and the next writer publishes it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

import ringwal
from ringwal import Config, Record, replay
from ringwal.ring import Ring

from .conftest import ROOT, rec
from .ringhelp import (
    KILLABLE_WRITER,
    PRODUCER,
    check_log,
    collect,
    read_line,
    ring_objects,
    spawn,
    start_serve,
    wait_until,
)


def lane_owner(directory: str, lane: int) -> int:
    ring = Ring.attach(directory)
    try:
        return ring.owner(lane)[0]
    finally:
        ring.close()


MID_COPY = """
import os, signal, sys, ringwal
d = sys.argv[1]
h = ringwal.open(ringwal.Config(dir=d, start_writer=False))
for i in range(50):
    h.append(ringwal.Record(1, i, b"dead:%d|" % i + bytes(40)))
h.sync()
for i in range(50, 60):  # published, never acked: must still be written
    h.append(ringwal.Record(1, i, b"dead:%d|" % i + bytes(40)))
print(h.lane, flush=True)

class HalfCopy:
    def __init__(self, real):
        self.real = real
    def __setitem__(self, key, value):
        half = len(value) // 2
        self.real[key.start : key.start + half] = value[:half]
        os.kill(os.getpid(), signal.SIGKILL)
    def __getattr__(self, name):
        return getattr(self.real, name)

if sys.argv[2] == "packed":  # append's fast path: header packed into the mapping, then the data copy
    side, real, pack = h._side, h._side._mm, h._pack_into
    h._pack_into = lambda buf, off, *fields: pack(real, off, *fields)
    side._mm = HalfCopy(real)
else:  # the framed path (any other serializer): one copy of the framed bytes
    h._pack_into = None
    h._side._mm = HalfCopy(h._side._mm)
h.append(ringwal.Record(1, 60, b"dead:60|" + bytes(4000)))
"""


@pytest.mark.parametrize("path", ["packed", "framed"])
def test_producer_killed_mid_copy_loses_only_its_unpublished_record(wdir, path):
    w = start_serve(wdir)
    try:
        other = ringwal.open(Config(dir=wdir, start_writer=False))
        p = spawn(MID_COPY, wdir, path)
        lane = int(read_line(p))
        p.wait(20)
        assert p.returncode == -signal.SIGKILL
        # the writer notices the death (pid + create time) and frees the lane
        wait_until(lambda: lane_owner(wdir, lane) == 0, what="the dead producer's lane to be reclaimed")
        for i in range(20):
            other.append(Record(1, i, b"live:%d|" % i))
        other.sync()
        again = ringwal.open(Config(dir=wdir, start_writer=False))
        assert again.lane == lane  # the freed lane is reused
        again.append(Record(1, 0, b"next:0|"))
        again.close()
        other.close()
    finally:
        w.terminate()
        assert w.wait(20) == 0
    per = check_log(wdir, {}, {"dead": 60, "live": 20, "next": 1})
    assert 60 not in per["dead"]


@pytest.mark.parametrize("kill_after", [1, 7, 40])
def test_producer_killed_at_random_points_others_carry_on(wdir, kill_after):
    w = start_serve(wdir)
    try:
        victims = spawn(PRODUCER, wdir, "victim", "100000", "3", "0")
        survivors = [spawn(PRODUCER, wdir, f"s{i}", "3000", "50", "0") for i in range(2)]
        assert read_line(victims).startswith("attached")
        top = -1
        for _ in range(kill_after):
            line = read_line(victims)
            if line.startswith("acked"):
                top = int(line.split()[1])
        victims.kill()
        victims.wait(10)
        results = [collect(s) for s in survivors]
        for s, (_, lines) in zip(survivors, results):
            assert s.returncode == 0, lines
    finally:
        w.terminate()
        assert w.wait(20) == 0
    per = check_log(wdir, {"victim": top}, {"s0": 3000, "s1": 3000})
    assert len(per["victim"]) > top


POINTS = [("pending", 5), ("written", 5), ("lane_finished", 9), ("fdatasync", 4), ("synced", 4)]


@pytest.mark.parametrize("point, nth", POINTS)
def test_writer_killed_producers_restart_it_and_nothing_is_lost_or_doubled(wdir, point, nth):
    w = spawn(KILLABLE_WRITER, wdir, point, str(nth))
    assert read_line(w).startswith("serving")
    producers = {f"p{i}": spawn(PRODUCER, wdir, f"p{i}", "2000", str(every), "1") for i, every in enumerate((1, 10, 100))}
    w.wait(60)
    assert w.returncode == -signal.SIGKILL, w.stderr.read()
    acked = {}
    for tag, p in producers.items():
        top, lines = collect(p, timeout=120)
        assert p.returncode == 0, (tag, lines)
        acked[tag] = top
    check_log(wdir, acked, {tag: 2000 for tag in producers})
    with open(os.path.join(wdir, "writer.log")) as f:
        log = f.read()
    expected = {"pending": "never reached disk", "written": "finishing a drain", "lane_finished": "finishing a drain"}
    if point in expected:  # the restarted writer really went through that recovery branch
        assert expected[point] in log, log


@pytest.mark.parametrize("point, nth", [("written", 3), ("synced", 3)])
def test_writer_killed_without_restart_producers_raise_writer_gone_quickly(wdir, point, nth):
    w = spawn(KILLABLE_WRITER, wdir, point, str(nth))
    assert read_line(w).startswith("serving")
    producers = {f"p{i}": spawn(PRODUCER, wdir, f"p{i}", "5000", "1", "0", env={"WW": "1"}) for i in range(2)}
    w.wait(60)
    died = time.monotonic()
    acked = {}
    for tag, p in producers.items():
        top, lines = collect(p, timeout=60)
        assert p.returncode == 3, lines
        assert any("WriterGoneError" in line for line in lines), lines
        acked[tag] = top
    assert time.monotonic() - died < 10
    # A supervisor starts a new writer: it writes what the ring still holds, exactly once.
    q = start_serve(wdir)
    q.send_signal(signal.SIGTERM)
    assert q.wait(20) == 0
    per = check_log(wdir, acked)
    for tag in producers:
        assert len(per.get(tag, [])) <= 5000
    assert ring_objects(wdir) == []


def test_blocked_sync_completes_when_a_supervisor_restarts_the_writer(wdir):
    w = start_serve(wdir)
    h = ringwal.open(Config(dir=wdir, start_writer=False, writer_wait=15))
    h.append(rec(1))
    h.sync()
    os.kill(w.pid, signal.SIGKILL)
    w.wait(10)
    h.append(rec(2))
    restarter = subprocess.Popen(
        [sys.executable, "-c", "import subprocess,sys,time; time.sleep(0.5); "
         "subprocess.Popen([sys.executable, '-m', 'ringwal', 'serve', '--dir', sys.argv[1]], start_new_session=True)", wdir],
        cwd=ROOT,
    )  # fmt: skip
    try:
        assert h.sync() == 2  # blocks until the new writer takes over
        h.close()
    finally:
        restarter.wait(10)
    assert [r.seq for r in replay(wdir, 0)] == [1, 2]


FORK_CHILD_CHECK = """
import multiprocessing as mp, os, sys, ringwal
d = sys.argv[1]
h = ringwal.open(ringwal.Config(dir=d, writer_linger=0))
r = h.append(ringwal.Record(1, 0, b"parent:0|"))
h.sync()

def child(q):
    try:
        r.seq
        q.put("parent receipt resolved in child")
        return
    except ringwal.WALError:
        pass
    c = h.append(ringwal.Record(1, 0, b"child:0|"))
    h.sync()
    q.put((h.lane, c.seq))
    h.close()

ctx = mp.get_context("fork")
q = ctx.Queue()
p = ctx.Process(target=child, args=(q,))
p.start()
got = q.get(timeout=30)
p.join(30)
assert p.exitcode == 0, p.exitcode
assert isinstance(got, tuple), got
lane, seq = got
assert lane != h.lane, (lane, h.lane)
h.append(ringwal.Record(1, 1, b"parent:1|"))
assert r.seq == 1
h.sync()
h.close()
print("ok", seq)
"""


def test_forked_child_gets_its_own_lane_and_never_writes_the_parents(wdir):
    out = subprocess.run([sys.executable, "-c", FORK_CHILD_CHECK, wdir], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
    check_log(wdir, {}, {"parent": 2, "child": 1})


def test_stale_ring_of_unknown_version_is_refused_with_a_clear_error(wdir):
    import posix_ipc

    from ringwal import WAL, Config
    from ringwal.ring import ring_names

    WAL(Config(dir=wdir)).close()  # the log, so that its ring has a name
    name = ring_names(wdir)[0]
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=1 << 20)
    import mmap

    m = mmap.mmap(shm.fd, shm.size)
    m[0:8] = b"RWRING\x00\x00"
    m[8:16] = (99).to_bytes(8, "little")
    m.close()
    shm.close_fd()
    q = subprocess.run([sys.executable, "-m", "ringwal", "serve", "--dir", wdir], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert q.returncode == 1
    assert "version 99" in q.stderr and "rm /dev/shm" in q.stderr
    posix_ipc.unlink_shared_memory(name)


def test_crashed_writer_leaves_ring_that_the_next_writer_reuses_then_removes(wdir):
    w = start_serve(wdir)
    h = ringwal.open(Config(dir=wdir, start_writer=False))
    h.append(rec(1))
    h.sync()
    h.close()
    os.kill(w.pid, signal.SIGKILL)
    w.wait(10)
    assert ring_objects(wdir), "a crash leaves the ring behind"
    q = start_serve(wdir)
    assert psutil.pid_exists(q.pid)
    q.send_signal(signal.SIGTERM)
    assert q.wait(20) == 0
    assert ring_objects(wdir) == []


def test_producer_killed_then_writer_stopped_at_once_leaves_nothing_in_dev_shm(wdir):
    """SIGKILL a producer and SIGTERM the writer right after: the writer's shutdown reclaims
    the dead producer's lane before deciding the ring is unused, so it removes it."""
    acked: dict[str, int] = {}
    for attempt in range(5):
        w = start_serve(wdir)
        tag = f"p{attempt}"
        p = spawn(PRODUCER, wdir, tag, "1000000", "10", "0")
        assert read_line(p).startswith("attached")
        acked[tag] = int(read_line(p).split()[1])
        p.kill()
        w.terminate()  # right away: the producer may not even have started exiting yet
        assert w.wait(20) == 0
        p.wait(10)
        assert ring_objects(wdir) == [], f"attempt {attempt}: the ring was left behind"
    check_log(wdir, acked)


FORK_RETRY = """
import os, sys, ringwal
d = sys.argv[1]
h = ringwal.open(ringwal.Config(dir=d, start_writer=False, writer_wait=1.0))
print("attached", flush=True)
sys.stdin.readline()
pid = os.fork()
if pid == 0:
    try:
        h.append(ringwal.Record(1, 0, b"child:0|"))
        print("claimed without a writer", flush=True)
        os._exit(1)
    except ringwal.WriterGoneError:
        print("gone", flush=True)
    sys.stdin.readline()
    h.append(ringwal.Record(1, 0, b"child:0|"))  # the claim is tried again, now with a writer
    print("ok", h.sync(), flush=True)
    h.close()
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status), flush=True)
h.close()
"""


def test_a_forked_child_whose_first_claim_failed_claims_again_on_its_next_call(wdir):
    w = start_serve(wdir)
    p = spawn(FORK_RETRY, wdir, stdin=subprocess.PIPE)
    try:
        assert read_line(p) == "attached"
        w.terminate()
        assert w.wait(20) == 0
        p.stdin.write("go\n")
        p.stdin.flush()
        assert read_line(p) == "gone"
        w = start_serve(wdir)
        p.stdin.write("go\n")
        p.stdin.flush()
        assert read_line(p) == "ok 1"
        assert read_line(p) == "child exit 0"
        assert p.wait(20) == 0
    finally:
        p.kill()
        w.terminate()
        w.wait(20)
    check_log(wdir, {}, {"child": 1})


KILLED_WHILE_STARTING = """
import os, stat, sys, ringwal
d, mark = sys.argv[1], sys.argv[2]
# The writer ringwal.open starts is `sys.executable -m ringwal serve ...`: through this
# wrapper, the first one SIGKILLs itself before it has said anything, as a writer killed
# while starting does (the OOM killer, an operator); the next ones run.
wrapper = os.path.join(os.path.dirname(mark), "python-killed-once")
with open(wrapper, "w") as f:
    f.write(f'#!/bin/sh\\nif [ ! -e "{mark}" ]; then : > "{mark}"; kill -KILL $$; fi\\nexec "{sys.executable}" "$@"\\n')
os.chmod(wrapper, stat.S_IRWXU)
sys.executable = wrapper
h = ringwal.open(ringwal.Config(dir=d, writer_linger=0.0, writer_wait=20))
h.append(ringwal.Record(1, 0, b"k:0|"))
print("synced", h.sync(), os.path.exists(mark), flush=True)
h.close()
"""


def test_a_writer_killed_while_starting_is_started_again_within_writer_wait(wdir, tmp_path):
    """The soak found it: a writer SIGKILLed before it reported ready made ringwal.open raise
    WriterGoneError ('it exited without a word') at once, with most of writer_wait left."""
    r = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_STARTING, wdir, str(tmp_path / "killed-once")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["synced", "1", "True"]
    check_log(wdir, {}, {"k": 1})
