"""The soak: about 30 s of producers appending while processes are killed, stopped and restarted.

Marked ``soak`` and left out of ``scripts/test``; run it with ``scripts/test -m soak`` (add
``-s`` to see its summary). ``RINGWAL_SOAK_SECONDS`` sets the length (30) and
``RINGWAL_SOAK_SEED`` replays a schedule: every failure names the seed it ran with. The
seed fixes the schedule of actions, not the machine's timing, so a replay is likely, not
certain, to meet the same interleaving.

What runs, in real processes over a real ring and real files:

* ``PRODUCERS`` producer processes at a time, each an incarnation with its own tag that
  appends a random number of records (some through ``append_many``), some calling
  ``sync()`` every few records and printing what it acknowledged, some never syncing;
  a finished or killed one is replaced by a new incarnation;
* the writer is the one the producers start (``ringwal.open``) and restart when it dies;
* a follower (``follow`` from seq 0, in this process) reading along;
* chaos, at random: SIGKILL of a producer or of the writer, SIGSTOP/SIGCONT of a producer or
  of the writer for a bounded time (at most ``MAX_STOP`` seconds), SIGTERM of the writer
  (a clean restart).

At the end (every stopped process continued, the producers still running SIGKILLed, the
last writer gone, one ``ringwal serve`` run and stopped as a supervisor would, to write
what the ring still holds): every acknowledged record (its ``sync()`` returned) is in the
log at exactly the seq ``sync()`` returned; no record is there twice; each incarnation's
records are a prefix of what it appended, in append order, with nothing missing between;
each ``append_many`` batch is there whole, at consecutive seqs, or not at all; the
follower saw a gap-free run of seqs from 1, each record where the log has it; a producer
that finished has all its records there; seqs run 1..N without a gap (no hole is
recorded); ``verify`` passes; no writer wrote a traceback; no process of this log is left,
and nothing of its ring is left in ``/dev/shm``.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field

import psutil
import pytest

from ringwal import follow, replay, verify
from ringwal.holes import HOLES_NAME

from .conftest import ROOT
from .ringhelp import kill_writers, ring_objects, start_serve, wait_until

pytestmark = pytest.mark.soak

PRODUCERS = 4
MAX_STOP = 1.0  # longest SIGSTOP, seconds; far below every timeout a producer has

#: One producer incarnation: ``d tag n every seed``. Data ``tag:i|b,k|`` + padding: record i,
#: in the batch that starts at b and holds k records (a single append: b = i, k = 1).
SOAK_PRODUCER = """
import random, sys, time, ringwal
d, tag, n, every, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = random.Random(seed)
cfg = ringwal.Config(dir=d, segment_size=65536, writer_linger=0.0, writer_wait=30.0,
                     append_timeout=60.0, sync_timeout=60.0)
t = tag.encode()

def rec(i, b, k):
    return ringwal.Record(1, i, b"%s:%d|%d,%d|" % (t, i, b, k) + bytes(rng.randrange(0, 300)))

try:
    t0 = time.monotonic()
    h = ringwal.open(cfg)
    print("attached", round(time.monotonic() - t0, 3), flush=True)
    i, next_sync = 0, every
    while i < n:
        if rng.random() < 0.1:
            k = min(rng.randint(2, 50), n - i)
            h.append_many([rec(j, i, k) for j in range(i, i + k)])
            i += k
        else:
            h.append(rec(i, i, 1))
            i += 1
        if every and i >= next_sync:
            t0 = time.monotonic()
            s = h.sync()
            print("acked", i - 1, s, round(time.monotonic() - t0, 3), flush=True)
            next_sync = i + every
    h.close()
except ringwal.WALError as exc:
    print("error", type(exc).__name__, str(exc).replace("\\n", " "), flush=True)
    sys.exit(3)
print("done", n, flush=True)
"""


@dataclass
class Incarnation:
    tag: str
    n: int
    every: int
    proc: subprocess.Popen
    out: str
    killed: bool = False

    def lines(self) -> list[str]:
        """What it printed, whole lines only (a SIGKILL can cut the last one)."""
        with open(self.out) as f:
            text = f.read()
        return text.split("\n")[:-1]


@dataclass
class Soak:
    directory: str
    outdir: str
    rng: random.Random
    slots: dict[int, Incarnation] = field(default_factory=dict)
    gone: list[Incarnation] = field(default_factory=list)
    stopped: dict[int, float] = field(default_factory=dict)  # pid -> monotonic time to SIGCONT it
    writers: set[int] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)
    born: int = 0
    followed: list[tuple[int, bytes]] = field(default_factory=list)
    follow_error: BaseException | None = None
    follow_stop: threading.Event = field(default_factory=threading.Event)
    follower: threading.Thread | None = None

    def _follow(self) -> None:
        try:
            # follow refuses a directory that holds no log yet (NoLogError): wait for the
            # first writer a producer starts to create current.wal.
            wait_until(lambda: os.path.exists(os.path.join(self.directory, "current.wal")), timeout=60, what="a log")
            for r in follow(self.directory, 0, poll_interval=0.05, stop=self.follow_stop):
                self.followed.append((r.seq, r.data))
        except BaseException as exc:  # noqa: BLE001 - reported by check()
            self.follow_error = exc

    # ------------------------------------------------------------ processes

    def spawn(self, slot: int) -> None:
        self.born += 1
        tag = f"p{slot}i{self.born}"
        n = self.rng.choice([self.rng.randint(1, 300), self.rng.randint(300, 20000)])
        every = self.rng.choice([0, 1, 7, 50, 500])
        if every == 1:
            n = min(n, 2000)  # a sync per record: keep it to seconds
        out = os.path.join(self.outdir, tag + ".out")
        with open(out, "w") as stdout:
            proc = subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(SOAK_PRODUCER), self.directory, tag, str(n), str(every),
                 str(self.rng.randrange(1 << 32))],
                stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
            )  # fmt: skip
        self.slots[slot] = Incarnation(tag, n, every, proc, out)

    def writer(self) -> int | None:
        """The pid of the live writer of the directory (from wal.lock, checked), or None."""
        try:
            with open(os.path.join(self.directory, "wal.lock")) as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            return None
        if not pid:
            return None
        try:
            p = psutil.Process(pid)
            if p.status() == psutil.STATUS_ZOMBIE or not _serves(p, self.directory):
                return None
        except psutil.Error:
            return None
        self.writers.add(pid)
        return pid

    def signal(self, pid: int, sig: int, what: str) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            self.counts[what] = self.counts.get(what, 0) + 1

    def stop(self, pid: int, what: str) -> None:
        if pid in self.stopped:
            return
        self.signal(pid, signal.SIGSTOP, what)
        self.stopped[pid] = time.monotonic() + self.rng.uniform(0.05, MAX_STOP)

    def resume_due(self, everything: bool = False) -> None:
        now = time.monotonic()
        for pid, at in list(self.stopped.items()):
            if everything or now >= at:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                del self.stopped[pid]

    def replace_finished(self) -> None:
        for slot in range(PRODUCERS):
            inc = self.slots.get(slot)
            if inc is not None and inc.proc.poll() is None:
                continue
            if inc is not None:
                self.gone.append(inc)
            self.spawn(slot)

    # ------------------------------------------------------------ the run

    def run(self, seconds: float) -> None:
        rng = self.rng
        end = time.monotonic() + seconds
        self.follower = threading.Thread(target=self._follow, daemon=True)
        self.follower.start()
        while time.monotonic() < end:
            self.resume_due()
            self.replace_finished()
            live = [inc for inc in self.slots.values() if inc.proc.poll() is None]
            x = rng.random()
            if x < 0.2 and live:
                inc = rng.choice(live)
                inc.killed = True
                self.signal(inc.proc.pid, signal.SIGKILL, "producer SIGKILL")
            elif x < 0.4 and live:
                self.stop(rng.choice(live).proc.pid, "producer SIGSTOP")
            elif x < 0.65:
                pid = self.writer()
                if pid is not None:
                    if x < 0.5:
                        self.signal(pid, signal.SIGKILL, "writer SIGKILL")
                    elif x < 0.6:
                        self.stop(pid, "writer SIGSTOP")
                    else:
                        self.signal(pid, signal.SIGTERM, "writer SIGTERM")
            time.sleep(rng.uniform(0.1, 0.5))  # the pace of the chaos, not a wait for anything

    def finish(self) -> None:
        """Continue everything, SIGKILL the producers still running, let the last writer go,
        then run one writer as a supervisor would, to write what the ring still holds."""
        self.resume_due(everything=True)
        for inc in self.slots.values():
            if inc.proc.poll() is None:
                inc.killed = True
                inc.proc.kill()
            inc.proc.wait(30)
            self.gone.append(inc)
        self.slots.clear()
        self.stop_following()
        # Writers started with writer_linger=0 leave once they have reclaimed the dead lanes.
        # One may still be starting, launched by a producer killed just now (and a process
        # between fork and exec has no command line to find it by): a supervisor's writer
        # that finds the directory locked waits for that one to leave and tries again.
        deadline = time.monotonic() + 60
        while True:
            wait_until(lambda: not _processes_of(self.directory), timeout=60, what="the last writer to leave")
            try:
                w = start_serve(self.directory)
            except AssertionError as exc:  # it printed an error (or nothing) instead of "serving"
                assert "already open for writing" in str(exc) and time.monotonic() < deadline, exc
                continue
            w.send_signal(signal.SIGTERM)
            assert w.wait(30) == 0, w.stderr.read()
            return

    # ------------------------------------------------------------ the checks

    def check(self) -> dict[str, int]:
        d = self.directory
        assert not os.path.exists(os.path.join(d, HOLES_NAME)), "a hole was recorded; nothing ran repair"
        seq_of: dict[tuple[str, int], int] = {}
        batches: dict[tuple[str, int], tuple[int, list[int]]] = {}
        per: dict[str, list[int]] = {}
        expect = 1
        for r in replay(d, 0):
            assert r.seq == expect, f"seq {r.seq} follows {expect - 1}"
            expect += 1
            tag_b, _, rest = r.data.partition(b":")
            i_b, b_b, k_b = rest.replace(b",", b"|").split(b"|", 3)[:3]
            tag, i, b, k = tag_b.decode(), int(i_b), int(b_b), int(k_b)
            assert r.time == i, (tag, i, r.time)
            assert (tag, i) not in seq_of, f"{tag} record {i} twice: seqs {seq_of[(tag, i)]} and {r.seq}"
            seq_of[(tag, i)] = r.seq
            per.setdefault(tag, []).append(i)
            batches.setdefault((tag, b), (k, []))[1].append(r.seq)
        total = expect - 1
        assert self.follow_error is None, f"follow raised {self.follow_error!r}"
        assert [s for s, _ in self.followed] == list(range(1, len(self.followed) + 1)), "follow skipped or repeated"
        for s, data in self.followed:
            tag_b, _, rest = data.partition(b":")
            i = int(rest.split(b"|", 1)[0])
            assert seq_of.get((tag_b.decode(), i)) == s, (
                f"follow saw {data[:30]!r} at seq {s}; the log has it elsewhere"
            )
        for tag, idx in per.items():
            assert idx == list(range(len(idx))), f"{tag}: not a prefix in append order: {_short(idx)}"
        for (tag, b), (k, seqs) in batches.items():
            assert seqs == list(range(seqs[0], seqs[0] + k)), f"{tag} batch at {b} of {k}: seqs {_short(seqs)}"
        acked = 0
        slowest = {"open": 0.0, "sync": 0.0}  # seconds, reported (never asserted: a busy machine)
        for inc in self.gone:
            lines = inc.lines()
            if not inc.killed:
                assert inc.proc.returncode == 0 and lines and lines[-1] == f"done {inc.n}", (inc.tag, lines[-5:])
                assert len(per.get(inc.tag, [])) == inc.n, (
                    f"{inc.tag} finished {inc.n} records, log has {_short(per.get(inc.tag, []))}"
                )
            else:
                assert inc.proc.returncode in (0, -signal.SIGKILL), (inc.tag, inc.proc.returncode, lines[-5:])
            for line in lines:
                assert not line.startswith("error"), (inc.tag, line)
                if line.startswith("attached"):
                    slowest["open"] = max(slowest["open"], float(line.split()[1]))
                if line.startswith("acked"):
                    _, i, s, took = line.split()
                    slowest["sync"] = max(slowest["sync"], float(took))
                    if int(s):  # 0: nothing of this handle was outstanding
                        acked += 1
                        got = seq_of.get((inc.tag, int(i)))
                        assert got == int(s), f"{inc.tag}: record {i} acked at seq {s}, in the log at {got}"
        report = verify(d)
        assert report.ok, [str(p) for p in report.problems]
        with open(os.path.join(d, "writer.log")) as f:
            wlog = f.read()
        assert "Traceback" not in wlog, wlog[-3000:]
        left = [p.pid for p in _processes_of(d)]
        assert not left, f"processes of the log left running: {left}"
        assert ring_objects(d) == [], ring_objects(d)
        return {
            "records": total,
            "acked syncs": acked,
            "incarnations": len(self.gone),
            "writers": len(self.writers),
            "followed": len(self.followed),
            "slowest open s": slowest["open"],
            "slowest sync s": slowest["sync"],
        }

    def stop_following(self) -> None:
        self.follow_stop.set()
        if self.follower is not None:
            self.follower.join(30)
            assert not self.follower.is_alive(), "follow did not stop within 30 s of its stop event"

    def cleanup(self) -> None:
        self.resume_due(everything=True)
        self.follow_stop.set()
        for inc in list(self.slots.values()) + self.gone:
            if inc.proc.poll() is None:
                inc.proc.kill()
                inc.proc.wait(30)
        for p in _processes_of(self.directory):
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGCONT)
                p.kill()
        kill_writers(self.directory)


def _serves(p: psutil.Process, directory: str) -> bool:
    cmd = p.cmdline()
    return "serve" in cmd and directory in cmd


def _processes_of(directory: str) -> list[psutil.Process]:
    """Live (not zombie) processes whose command line names the directory."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if p.info["status"] != psutil.STATUS_ZOMBIE and directory in (p.info["cmdline"] or []):
                out.append(p)
    return out


def _short(xs: list[int]) -> str:
    return str(xs) if len(xs) <= 20 else f"{xs[:10]} ... {xs[-10:]} ({len(xs)})"


def test_soak_kills_stops_and_restarts_lose_and_double_nothing(wdir, tmp_path):
    seconds = float(os.environ.get("RINGWAL_SOAK_SECONDS", "30"))
    seed = int(os.environ.get("RINGWAL_SOAK_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"soak: RINGWAL_SOAK_SEED={seed} RINGWAL_SOAK_SECONDS={seconds:g}", flush=True)
    out = str(tmp_path / "out")
    os.makedirs(out)
    soak = Soak(wdir, out, random.Random(seed))
    try:
        soak.run(seconds)
        soak.finish()
        summary = soak.check()
    except BaseException as exc:
        raise AssertionError(
            f"soak failed; replay the schedule with RINGWAL_SOAK_SEED={seed} RINGWAL_SOAK_SECONDS={seconds:g} "
            f"(actions {soak.counts}): {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        soak.cleanup()
    print(f"soak: seed {seed}: {summary}, actions {soak.counts}", flush=True)
