"""Faults of the ring's environment, with real processes and real files (issue 12, items 3, 4, 7).

* **Separate PID namespaces** (the sidecar shape: writer and producers in separate containers
  sharing the volume and ``/dev/shm``): a writer under ``unshare --pid`` serves producers
  outside it, and a producer under ``unshare --pid`` is served by a writer outside; a producer
  killed in another namespace has its lane freed. Liveness is the ring's locks, not pids.
* **A stopped process delays no one**: a producer stopped (SIGSTOP) while it owns a lane, and
  another stopped while it holds the claim lock, do not delay ``open``, ``append``, ``sync``
  or the writer; the one call that needs the claim lock (``truncate_before``) gives up after
  its deadline with LockTimeoutError naming the lock file; a producer killed meanwhile has its
  lane freed by the writer.
* **A /dev/shm too small for the ring** (Docker's default is 64 MiB): ``open`` and ``serve``
  fail at once with ShmTooSmallError naming the bytes needed and free and the settings that
  change them, leaving nothing in ``/dev/shm``; a ring that fits works there.

Tests that need ``unshare`` (a PID or mount namespace) skip, saying why, where it is not
permitted. Errors are checked by their type's name as the child prints it, so this file also
runs (and fails) against builds without these errors.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from ringwal import Config
from ringwal.format import ring_layout
from ringwal.ring import Ring

from .conftest import ROOT
from .ringhelp import (
    PRODUCER,
    check_log,
    collect,
    read_line,
    ring_objects,
    spawn,
    start_serve,
    stop_process,
    wait_until,
)

#: A producer that attaches, syncs a few records, says so, then waits for a line on stdin
#: (the test stops, resumes or kills it meanwhile) before it appends and syncs more.
HOLDER = """
import sys, ringwal
d, tag = sys.argv[1], sys.argv[2]
h = ringwal.open(ringwal.Config(dir=d, start_writer=False, writer_wait=10, sync_timeout=30))
for i in range(10):
    h.append(ringwal.Record(1, i, b"%s:%d|" % (tag.encode(), i)))
print("attached", h.lane, h.sync(), flush=True)
sys.stdin.readline()
for i in range(10, 20):
    h.append(ringwal.Record(1, i, b"%s:%d|" % (tag.encode(), i)))
print("synced", h.sync(), flush=True)
h.close()
print("done", flush=True)
"""

#: Holds the ring's claim lock until a line arrives on stdin (the test stops it meanwhile).
CLAIM_HOLDER = """
import sys
from ringwal.ring import claim_lock
with claim_lock(sys.argv[1]):
    print("holding", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""

#: Opens, appends, syncs (timing it), then asks for a truncation; prints what happened.
OPENER = """
import sys, time, ringwal
d, tag = sys.argv[1], sys.argv[2]
t0 = time.monotonic()
h = ringwal.open(ringwal.Config(dir=d, start_writer=False, writer_wait=10, sync_timeout=20))
for i in range(50):
    h.append(ringwal.Record(1, i, b"%s:%d|" % (tag.encode(), i)))
print("synced", h.lane, h.sync(), round(time.monotonic() - t0, 3), flush=True)
t0 = time.monotonic()
try:
    print("truncated", h.truncate_before(2), flush=True)
except ringwal.WALError as exc:
    print("refused", type(exc).__name__, round(time.monotonic() - t0, 3), exc, flush=True)
h.close()
print("done", flush=True)
"""

#: Follows the log, printing each seq it yields, until it has seen N records.
FOLLOWER = """
import sys, ringwal
d, n = sys.argv[1], int(sys.argv[2])
for r in ringwal.follow(d, 0, poll_interval=0.05):
    print("seq", r.seq, flush=True)
    if r.seq == n:
        break
print("done", flush=True)
"""

#: Syncs a record, forks a child that only sleeps, reports both; the test kills the parent.
FORKER = """
import os, signal, sys, ringwal
d = sys.argv[1]
h = ringwal.open(ringwal.Config(dir=d, start_writer=False, writer_wait=10))
h.append(ringwal.Record(1, 0, b"forker:0|"))
h.sync()
r, w = os.pipe()
child = os.fork()
if child == 0:  # the at-fork hooks have run: say so, then live on
    os.write(w, b"x")
    signal.pause()
    os._exit(0)
os.read(r, 1)
print("forked", h.lane, child, flush=True)
signal.pause()
"""

#: Under a small /dev/shm: ``open`` with the default ring, then with one that fits.
SMALL_SHM_OPEN = """
import os, sys, ringwal
d = sys.argv[1]
try:
    h = ringwal.open(ringwal.Config(dir=d, writer_wait=30))
except ringwal.WALError as exc:
    print("error", type(exc).__name__, getattr(exc, "needed", None), getattr(exc, "available", None), flush=True)
    print("message", exc, flush=True)
else:
    print("opened", h.lane, flush=True)
    h.close()
print("left", sorted(os.listdir("/dev/shm")), flush=True)
small = ringwal.Config(dir=d, producer_slots=2, ring_size=1 << 20, max_record_size=1000, writer_linger=0)
with ringwal.open(small) as h:
    h.append(ringwal.Record(1, 1, b"fits:0|"))
    print("fits", h.sync(), flush=True)
"""

SMALL_SHM = 8 << 20


@functools.cache
def _unshare_refusal(*flags: str) -> str | None:
    """Why ``unshare FLAGS`` cannot run here (None when it can)."""
    if shutil.which("unshare") is None:
        return "util-linux unshare is not installed"
    try:
        r = subprocess.run(["unshare", *flags, "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare {' '.join(flags)} failed to run: {exc}"
    if r.returncode != 0:
        return f"unshare {' '.join(flags)} is not permitted here: {r.stderr.strip()}"
    return None


def need_pid_namespace() -> None:
    why = _unshare_refusal("--pid", "--fork", "--mount-proc")
    if why:
        pytest.skip(why)


def need_small_shm() -> None:
    why = _unshare_refusal("--mount")
    if why is None:
        r = subprocess.run(
            ["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if r.returncode != 0:
            why = f"cannot mount a tmpfs on /dev/shm in a mount namespace: {r.stderr.strip()}"
    if why:
        pytest.skip(why)


def in_pid_namespace(*argv: str) -> list[str]:
    return ["unshare", "--pid", "--fork", "--mount-proc", *argv]


def with_small_shm(script: str, *args: str) -> list[str]:
    """``sh -c script args`` in a mount namespace whose /dev/shm is a tmpfs of SMALL_SHM bytes."""
    mount = f"mount -t tmpfs -o size={SMALL_SHM} tmpfs /dev/shm || exit 99; "
    return ["unshare", "--mount", "sh", "-c", mount + script, *args]


def popen(argv: list[str]) -> subprocess.Popen:
    """A process in its own session (so a hung one is killed with all its children)."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )


def send(p: subprocess.Popen, sig: int) -> None:
    """Signal ``p``, and its whole session when it leads one (``popen``)."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(p.pid) == p.pid:
            os.killpg(p.pid, sig)
        else:
            os.kill(p.pid, sig)


def finish(p: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    """Wait for ``p``; on timeout kill it (and its session) and fail, saying what it printed."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        send(p, signal.SIGCONT)
        send(p, signal.SIGKILL)
        out, err = p.communicate(timeout=30)
        raise AssertionError(f"still running after {timeout}s; stdout:\n{out}\nstderr:\n{err}") from None
    return p.returncode, out, err


def session_child(p: subprocess.Popen) -> psutil.Process:
    """The process ``unshare --fork`` started (its pid as seen from here)."""
    deadline = time.monotonic() + 30
    while True:
        kids = psutil.Process(p.pid).children()
        if kids:
            return kids[0]
        assert time.monotonic() < deadline, "unshare started no child"
        time.sleep(0.01)


def lane_owner(directory: str, lane: int) -> int:
    """The owner pid stored for ``lane`` (0: free)."""
    ring = Ring.attach(directory)
    try:
        return ring.owner(lane)[0]
    finally:
        ring.close()


def cleanup(*procs: subprocess.Popen | None) -> None:
    """Resume and kill whatever is left of ``procs`` (a failed test must not leave them stopped)."""
    for p in procs:
        if p is not None and p.poll() is None:
            send(p, signal.SIGCONT)
            send(p, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)


def stop_writer(w: subprocess.Popen) -> int:
    w.terminate()
    return w.wait(30)


# --------------------------------------------------------------------------- PID namespaces


def test_a_writer_in_its_own_pid_namespace_serves_producers_outside_it(wdir):
    need_pid_namespace()
    w = popen(in_pid_namespace(sys.executable, "-m", "ringwal", "serve", "--dir", wdir))
    producers: list[subprocess.Popen] = []
    try:
        line = read_line(w, stream="stderr")
        assert "serving" in line, line
        writer = session_child(w)
        producers = [spawn(PRODUCER, wdir, f"out{i}", "400", "50", "0", env={"WW": "5"}) for i in range(2)]
        results = [collect(p) for p in producers]
        for p, (_, lines) in zip(producers, results, strict=True):
            assert p.returncode == 0 and lines[-1] == "done", lines
        writer.send_signal(signal.SIGTERM)  # unshare --fork passes its child's status on
        assert w.wait(30) == 0, w.stderr.read() if w.stderr else ""
    finally:
        cleanup(w, *producers)
    check_log(wdir, {f"out{i}": 399 for i in range(2)}, {f"out{i}": 400 for i in range(2)})
    assert ring_objects(wdir) == [], "the writer removed the ring at its clean shutdown"


def test_producers_in_their_own_pid_namespaces_are_served_and_a_killed_one_is_reclaimed(wdir):
    need_pid_namespace()
    w = start_serve(wdir)
    inside = holder = outside = None
    try:
        holder = popen(in_pid_namespace(sys.executable, "-c", HOLDER, wdir, "held"))
        kind, lane, _seq = read_line(holder).split()
        assert kind == "attached", kind
        lane_k = int(lane)
        inside = popen(in_pid_namespace(sys.executable, "-c", PRODUCER, wdir, "in", "400", "50", "0"))
        outside = spawn(PRODUCER, wdir, "out", "400", "50", "0")
        for p in (inside, outside):
            rc, out, err = finish(p, 120)
            assert rc == 0 and out.splitlines()[-1:] == ["done"], (out, err)
        assert lane_owner(wdir, lane_k) != 0, "a live producer in another namespace keeps its lane"
        session_child(holder).kill()  # SIGKILL from here: its lane must be found dead and freed
        assert holder.wait(30) != 0
        wait_until(lambda: lane_owner(wdir, lane_k) == 0, what="the killed producer's lane to be freed")
        assert stop_writer(w) == 0
    finally:
        cleanup(holder, inside, outside)
        if w.poll() is None:
            w.kill()
    check_log(wdir, {"in": 399, "out": 399, "held": 9}, {"in": 400, "out": 400, "held": 10})


# --------------------------------------------------------------------------- stopped processes


def test_a_stopped_producer_and_a_stopped_claim_lock_holder_delay_no_one(wdir):
    w = start_serve(wdir, "--producer-slots", "4")
    holder = claimer = opener = None
    try:
        holder = spawn(HOLDER, wdir, "held", stdin=subprocess.PIPE)
        assert read_line(holder).startswith("attached")
        claimer = spawn(CLAIM_HOLDER, wdir, stdin=subprocess.PIPE)
        assert read_line(claimer) == "holding"
        stop_process(holder.pid)  # it owns a lane
        stop_process(claimer.pid)  # it holds the claim lock
        opener = spawn(OPENER, wdir, "free")
        kind, _lane, seq, took = read_line(opener, timeout=60).split()[:4]
        assert kind == "synced" and int(seq) > 0 and float(took) < 15, (kind, seq, took)
        refused = read_line(opener, timeout=60).split(" ", 3)
        assert refused[:2] == ["refused", "LockTimeoutError"], refused
        assert float(refused[2]) < 20 and "wal.ring.lock" in refused[3], refused
        assert read_line(opener, timeout=60) == "done"
        assert opener.wait(30) == 0
        for p in (holder, claimer):  # resumed, each finishes its work
            os.kill(p.pid, signal.SIGCONT)
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        assert read_line(claimer) == "released"
        assert read_line(holder).startswith("synced") and read_line(holder) == "done"
        assert holder.wait(30) == 0 and claimer.wait(30) == 0
        assert stop_writer(w) == 0
    finally:
        cleanup(holder, claimer, opener)
        if w.poll() is None:
            w.kill()
    check_log(wdir, {"held": 19, "free": 49}, {"held": 20, "free": 50})


def test_a_killed_producers_lane_is_freed_while_another_holds_the_claim_lock_stopped(wdir):
    w = start_serve(wdir, "--producer-slots", "4")
    victim = claimer = holder = None
    try:
        holder = spawn(HOLDER, wdir, "held", stdin=subprocess.PIPE)
        held_lane = int(read_line(holder).split()[1])
        victim = spawn(HOLDER, wdir, "victim", stdin=subprocess.PIPE)
        victim_lane = int(read_line(victim).split()[1])
        claimer = spawn(CLAIM_HOLDER, wdir, stdin=subprocess.PIPE)
        assert read_line(claimer) == "holding"
        stop_process(claimer.pid)
        stop_process(holder.pid)
        victim.kill()
        victim.wait(30)
        wait_until(lambda: lane_owner(wdir, victim_lane) == 0, timeout=30, what="the dead producer's lane to be freed")
        assert lane_owner(wdir, held_lane) != 0, "a stopped producer is alive: its lane stays its own"
        opener = spawn(OPENER, wdir, "free")  # the writer still serves: append and sync go through
        assert read_line(opener, timeout=60).startswith("synced")
        opener.kill()
        opener.wait(30)
        for p in (holder, claimer):
            os.kill(p.pid, signal.SIGCONT)
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        assert read_line(holder).startswith("synced") and read_line(holder) == "done"
        assert holder.wait(30) == 0 and claimer.wait(30) == 0
        assert stop_writer(w) == 0
    finally:
        cleanup(holder, claimer, victim)
        if w.poll() is None:
            w.kill()
    check_log(wdir, {"held": 19, "victim": 9, "free": 49}, {"held": 20, "victim": 10, "free": 50})


def test_follow_and_stats_go_on_while_a_stopped_process_holds_the_claim_lock(wdir):
    w = start_serve(wdir)
    claimer = follower = None
    try:
        claimer = spawn(CLAIM_HOLDER, wdir, stdin=subprocess.PIPE)
        assert read_line(claimer) == "holding"
        stop_process(claimer.pid)
        follower = spawn(FOLLOWER, wdir, "20")
        opener = spawn(OPENER, wdir, "free")
        assert read_line(opener, timeout=60).startswith("synced")
        opener.kill()  # it now waits for the claim lock in truncate_before
        opener.wait(30)
        assert [read_line(follower, timeout=60) for _ in range(20)] == [f"seq {i}" for i in range(1, 21)]
        assert read_line(follower) == "done"
        argv = [sys.executable, "-m", "ringwal", "stats", "--dir", wdir]
        stats = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert stats.returncode == 0 and "writer: pid" in stats.stdout, (stats.stdout, stats.stderr)
        assert stop_writer(w) == 0
    finally:
        cleanup(claimer, follower)
        if w.poll() is None:
            w.kill()


def test_a_dead_producers_lane_is_freed_although_its_forked_child_lives(wdir):
    """A forked child shares its parent's lock descriptions; it must let go of its copy at
    once, or the lane would stay 'alive' as long as the child does."""
    w = start_serve(wdir)
    forker = None
    child = 0
    try:
        forker = spawn(FORKER, wdir)
        kind, lane_s, child_s = read_line(forker).split()
        assert kind == "forked"
        lane, child = int(lane_s), int(child_s)
        forker.kill()
        forker.wait(30)
        wait_until(lambda: lane_owner(wdir, lane) == 0, timeout=30, what="the dead parent's lane to be freed")
        assert psutil.pid_exists(child)
        assert stop_writer(w) == 0
    finally:
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        cleanup(forker)
        if w.poll() is None:
            w.kill()
    check_log(wdir, {"forker": 0}, {"forker": 1})


# --------------------------------------------------------------------------- a small /dev/shm


def _default_ring_bytes() -> int:
    cfg = Config()
    return ring_layout(cfg.producer_slots, cfg.ring_size)[2]


def test_defaults_fit_dockers_64_mib_dev_shm_with_room_to_spare():
    cfg = Config()
    cfg.validate_ring()  # max_record_size + 4 fits a lane
    assert _default_ring_bytes() <= 48 << 20


def test_open_under_a_small_dev_shm_raises_shm_too_small_and_leaves_nothing(wdir):
    need_small_shm()
    p = popen(with_small_shm('exec "$0" "$@"', sys.executable, "-c", SMALL_SHM_OPEN, wdir))
    try:
        rc, out, err = finish(p, 120)
    finally:
        cleanup(p)
    lines = out.splitlines()
    assert rc == 0, (out, err)
    needed = _default_ring_bytes()
    assert lines[0].split() == ["error", "ShmTooSmallError", str(needed), str(SMALL_SHM)], lines
    message = lines[1]
    for words in (str(needed), f"{SMALL_SHM} bytes free", "ring_size", "producer_slots", "--shm-size"):
        assert words in message, (words, message)
    assert lines[2] == "left []", "nothing is left in /dev/shm"
    assert lines[3].split()[0] == "fits", lines


def test_serve_under_a_small_dev_shm_exits_1_naming_the_size_and_leaves_nothing(wdir):
    need_small_shm()
    script = '"$0" -m ringwal serve --dir "$1"; echo "rc=$?"; ls -A /dev/shm; echo end'
    p = popen(with_small_shm(script, sys.executable, wdir))
    try:
        rc, out, err = finish(p, 120)
    finally:
        cleanup(p)
    assert rc == 0 and out.splitlines() == ["rc=1", "end"], (out, err)
    needed = _default_ring_bytes()
    assert " ERROR ringwal[" in err and "ShmTooSmallError: " in err and err.count("\n") == 1, err
    for words in (str(needed), f"{SMALL_SHM} bytes free", "ring_size", "producer_slots", "--shm-size"):
        assert words in err, (words, err)
