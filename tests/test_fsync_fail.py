"""A failed fsync is never acknowledged, by the writer whose fsync failed or by the next one.

The writers run under Debian's libfiu (``fiu-run -x``): its preload makes the real
``fdatasync``/``fsync`` calls of the real writer process fail with EIO, from the start
(``-c 'enable ...'``) or from a moment the test picks (``fiu-ctrl``). Nothing is mocked in
those tests: real processes, a real ring, real files. Linux reports a writeback error once
per open file description (``errseq_t``), so the next writer's fdatasync on a fresh
descriptor succeeds; before the fix it then acknowledged every record the failed writer had
written. The directory-fsync and start-up cases use the ``fsync``/``fdatasync`` seams of
``SegmentLog`` (a real EIO raised on the call that libfiu cannot single out).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import pytest

from ringwal import Config, LogFailedError, RecordsLostError, replay, verify
from ringwal.format import FSYNC_OPEN, L_LOST, LANE_WORDS, RH_FAILED_FIRST
from ringwal.holes import load_holes
from ringwal.ring import Ring
from ringwal.seglog import Prior, SegmentLog
from ringwal.serializers import BinarySerializer

from .conftest import ROOT, rec, run_child
from .ringhelp import read_line, spawn, start_serve

FIU = shutil.which("fiu-run") and shutil.which("fiu-ctrl")
needs_fiu = pytest.mark.skipif(
    not FIU, reason="needs Debian's fiu-utils (fiu-run, fiu-ctrl); scripts/test installs it when it can (root, apt-get)"
)
EIO = 5

#: A producer driven line by line on stdin; answers "ok ..." or "error TYPE FIRST LAST MESSAGE".
DRIVEN = """
import sys, ringwal
d = sys.argv[1]
cfg = ringwal.Config(dir=d, start_writer=False, writer_wait=60, sync_timeout=60)
h = ringwal.open(cfg)
print("attached", h.lane, flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    try:
        if cmd == "append":
            tag, start, n, size = args[0], int(args[1]), int(args[2]), int(args[3])
            for i in range(start, start + n):
                h.append(ringwal.Record(1, i, b"%s:%d|" % (tag.encode(), i) + bytes(size)))
            print("ok", flush=True)
        elif cmd == "flush":
            h.flush()
            print("ok", flush=True)
        elif cmd == "sync":
            print("ok", h.sync(), flush=True)
        elif cmd == "close":
            h.close()
            print("ok", flush=True)
            break
    except ringwal.WALError as e:
        print("error", type(e).__name__, getattr(e, "first_seq", None), getattr(e, "last_seq", None),
              str(e).replace("\\n", " "), flush=True)
"""


class Producer:
    """A producer process of DRIVEN: ``prod("append", ...)`` sends a command, returns the answer's words."""

    def __init__(self, d: str) -> None:
        self.p = spawn(DRIVEN, d, stdin=subprocess.PIPE)
        self.stdin = self.p.stdin
        line = read_line(self.p)
        assert line.startswith("attached"), line
        self.lane = int(line.split()[1])

    def send(self, *cmd: object) -> None:
        self.stdin.write(" ".join(map(str, cmd)) + "\n")
        self.stdin.flush()

    def __call__(self, *cmd: object, timeout: float = 90.0) -> list[str]:
        self.send(*cmd)
        return read_line(self.p, timeout).split(" ", 4)

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(30)


producer = Producer


def serve_under_fiu(d: str, ctrl: str, *enable: str, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """``ringwal serve`` under fiu-run with the given failure points enabled from the start;
    ``fiu-ctrl -f ctrl`` reaches it later. Returns once it serves."""
    cmd = ["fiu-run", "-x", "-f", ctrl]
    for e in enable:
        cmd += ["-c", f"enable name={e},failinfo={EIO}"]
    cmd += [sys.executable, "-m", "ringwal", "serve", "--dir", d, *extra]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    while True:
        line = read_line(p, stream="stderr")
        if "serving" in line:
            return p
        assert "WARNING" in line, line


def fiu_enable(p: subprocess.Popen, ctrl: str, name: str) -> None:
    cmd = ["fiu-ctrl", "-f", ctrl, "-c", f"enable name={name},failinfo={EIO}", str(p.pid)]
    subprocess.run(cmd, check=True, timeout=30)


def stop(p: subprocess.Popen) -> str:
    """Wait for a writer that is exiting on its own (its fsync failed); its stderr."""
    _, err = p.communicate(timeout=60)
    return err


def records(d: str) -> list[tuple[int, str, int]]:
    out = []
    for r in replay(d, skip_holes=True):
        tag, _, rest = r.data.partition(b":")
        out.append((r.seq, tag.decode(), int(rest.split(b"|", 1)[0])))
    return out


def holes_of(d: str) -> list[tuple[int, int, str]]:
    return [(h.first_seq, h.last_seq, h.reason) for h in load_holes(d)]


@pytest.fixture
def ctrl(tmp_path):
    return str(tmp_path / "fiu")


@needs_fiu
def test_failed_fdatasync_is_reported_as_lost_and_never_acknowledged(wdir, ctrl):
    w = serve_under_fiu(wdir, ctrl, "posix/io/sync/fdatasync")
    a = producer(wdir)
    try:
        assert a("append", "a", 0, 5, 40) == ["ok"]
        assert a("flush") == ["ok"]  # written to the OS: seqs 1-5
        err = a("sync")
        assert err[:4] == ["error", "LogFailedError", "1", "5"], err
        assert "were lost" in err[4] and "seqs 1-5" in err[4] and "wal_holes.json" in err[4]
        assert a("append", "a", 5, 1, 40)[:2] == ["error", "LogFailedError"]  # the handle refuses more work
        werr = stop(w)
        assert w.returncode != 0 and "seqs 1-5 were written but never made durable" in werr, werr
        # The failing writer recorded the hole, kept the page cache's bytes and cut current.wal.
        [(first, last, reason)] = holes_of(wdir)
        assert (first, last) == (1, 5) and "fdatasync of current.wal failed" in reason
        assert os.path.getsize(os.path.join(wdir, "current.wal.failed-1-5")) > 0
        assert records(wdir) == []
        # The next writer, started normally, goes on after the hole; new records are durable.
        w = start_serve(wdir)
        assert any("continuing at seq 6" in line for line in w.startup_lines), w.startup_lines
        b = producer(wdir)
        assert b("append", "b", 0, 3, 40) == ["ok"]
        assert b("sync") == ["ok", "8"]
        assert b("close") == ["ok"]
        with pytest.raises(RecordsLostError) as info:
            list(replay(wdir))
        assert (info.value.first_seq, info.value.last_seq) == (1, 5)
        assert records(wdir) == [(6, "b", 0), (7, "b", 1), (8, "b", 2)]
        report = verify(wdir)
        assert report.ok, report.problems
    finally:
        a.close()
        w.kill()
        w.wait(30)


@needs_fiu
def test_the_next_writer_does_not_acknowledge_records_whose_fsync_failed(wdir, ctrl):
    """The failing writer dies after recording the hole but before telling the ring (emulated
    by clearing the ring's failure words it stored, the crash window between the two): a
    producer that appended before the failure and calls sync() only after the next writer
    started must get LogFailedError, not success."""
    w = serve_under_fiu(wdir, ctrl, "posix/io/sync/fdatasync")
    a, b = producer(wdir), producer(wdir)
    try:
        assert a("append", "a", 0, 4, 40) == ["ok"] and a("flush") == ["ok"]
        assert b("append", "b", 0, 3, 40) == ["ok"] and b("flush") == ["ok"]
        assert b("sync")[:2] == ["error", "LogFailedError"]  # the fdatasync fails
        stop(w)
        ring = Ring.attach(wdir)
        try:
            base = ring.lane_base(a.lane)
            assert ring.words[base + L_LOST] >> 32, "the failing writer told a's lane"
            ring.words[base + L_LOST] = 0
            ring.words[RH_FAILED_FIRST] = 0
        finally:
            ring.close()
        a.send("sync")  # waits: no writer serves now (start_writer=False)
        w = start_serve(wdir)
        err = read_line(a.p, 90).split(" ", 4)
        assert err[:2] == ["error", "LogFailedError"], err
        assert {int(err[2]), int(err[3])} == {1, 7}, err
        c = producer(wdir)
        assert c("append", "c", 0, 2, 10) == ["ok"] and c("sync") == ["ok", "9"] and c("close") == ["ok"]
        assert records(wdir) == [(8, "c", 0), (9, "c", 1)]
    finally:
        a.close()
        b.close()
        w.kill()
        w.wait(30)


@needs_fiu
def test_failed_seal_at_rotation_with_every_fsync_failing_travels_in_the_ring(wdir, ctrl):
    """From a moment on every fsync fails (fdatasync still works): the seal of current.wal at
    rotation fails, and so does the write of wal_holes.json. The range reaches the next
    writer through the ring's failure words; it records the hole and goes on after it."""
    w = serve_under_fiu(wdir, ctrl, extra=("--segment-size", "16384"))
    a = producer(wdir)
    try:
        assert a("append", "a", 0, 20, 40) == ["ok"]
        assert a("sync") == ["ok", "20"]
        fiu_enable(w, ctrl, "posix/io/sync/fsync")
        assert a("append", "a", 20, 300, 100) == ["ok"]  # about 35 KiB: current.wal fills and rotates
        err = a("sync")
        assert err[:3] == ["error", "LogFailedError", "21"], err
        last = int(err[3])
        assert last > 21 and "sealing" in err[4], err
        werr = stop(w)
        assert "could not record seqs 21-" in werr, werr
        assert holes_of(wdir) == []  # the disk refused it: only the ring knows
        w = start_serve(wdir)
        [(first, hlast, reason)] = holes_of(wdir)
        assert (first, hlast) == (21, last) and "sealing" in reason and "earlier writer" in reason
        b = producer(wdir)
        assert b("append", "b", 0, 1, 10) == ["ok"] and b("sync")[0] == "ok" and b("close") == ["ok"]
        got = records(wdir)
        seqs = [s for s, _, _ in got]
        assert seqs == list(range(1, 21)) + list(range(last + 1, seqs[-1] + 1))
        idx = [i for _, t, i in got if t == "a"]
        lost = last - 20
        # every record a appended is in the log once, in order, except the ones lost
        assert idx[:20] == list(range(20)) and idx[20:] == list(range(20 + lost, 320))
        assert verify(wdir).ok
    finally:
        a.close()
        w.kill()
        w.wait(30)


# ------------------------------------------------------------- seams: what libfiu cannot single out


def _is_dir(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


def test_failed_directory_fsync_at_rotation_loses_nothing_and_the_next_open_fsyncs_the_directory(tmp_path):
    cfg = Config(dir=str(tmp_path / "wal"), segment_size=2048)
    calls = {"dirs": 0, "fail": False}

    def fsync(fd: int) -> None:
        if _is_dir(fd):
            calls["dirs"] += 1
            if calls["fail"]:
                raise OSError(EIO, "injected directory EIO")
        os.fsync(fd)

    sl = SegmentLog(cfg, "binary", fsync=fsync)
    calls["fail"] = True
    ser = BinarySerializer()
    with pytest.raises(LogFailedError, match=r"rotating|writing"):
        for i in range(100):
            sl.write_body(ser.frame(rec(i)), 1)
    assert sl.lost is None, "the segment was fsynced before its rename: nothing is lost"
    written = sl.last_seq
    sl.close()
    calls.update(fail=False, dirs=0)
    with SegmentLog(cfg, "binary", fsync=fsync) as again:
        assert calls["dirs"] >= 1, "an open fsyncs the directory before it acknowledges anything"
        assert again.last_seq == written
    assert [r.seq for r in replay(cfg.dir)] == list(range(1, written + 1))
    assert not load_holes(cfg.dir)


def test_a_failed_seal_fsync_keeps_the_oserror_as_the_cause_of_the_log_failed_error(tmp_path):
    """The seal's fsync fails inside rotation: the LogFailedError latched by _fsync_failed
    must reach the caller with the OSError still chained, not chained to itself."""
    cfg = Config(dir=str(tmp_path / "wal"), segment_size=2048)
    fail = {"on": False}

    def fsync(fd: int) -> None:
        # current.wal only: the seal (the spare, next.wal.tmp, is fsynced on a background thread)
        if fail["on"] and os.readlink(f"/proc/self/fd/{fd}").endswith("/current.wal"):
            raise OSError(EIO, "injected seal EIO")
        os.fsync(fd)

    sl = SegmentLog(cfg, "binary", fsync=fsync)
    fail["on"] = True
    ser = BinarySerializer()
    with pytest.raises(LogFailedError) as info:
        for i in range(100):
            sl.write_body(ser.frame(rec(i)), 1)
    sl.close()
    causes, e = [], info.value.__cause__
    while e is not None and e not in causes:
        causes.append(e)
        e = e.__cause__
    assert any(isinstance(c, OSError) and c.errno == EIO for c in causes), (info.value, causes)


CRASHED_WRITER = """
import os, sys
from ringwal import WAL, Config, Record
w = WAL(Config(dir=sys.argv[1]))
for i in range(3):
    w.append(Record(1, i, b"synced-%d" % i))
    w.sync()
for i in range(3, 6):
    w.append(Record(1, i, b"unsynced-%d" % i))
    w.flush()
os._exit(0)  # dies with frames 4-6 only in the page cache
"""


def test_failed_fdatasync_at_start_up_cuts_only_above_what_was_acknowledged(tmp_path):
    d = str(tmp_path / "wal")
    run_child(CRASHED_WRITER, d)
    cfg = Config(dir=d)

    def failing(fd: int) -> None:
        raise OSError(EIO, "injected EIO")

    with pytest.raises(LogFailedError) as info:
        SegmentLog(cfg, "binary", fdatasync=failing, prior=lambda: Prior(acked_seq=3, failed=None))
    assert (info.value.first_seq, info.value.last_seq) == (4, 6)
    [hole] = load_holes(d)
    assert (hole.first_seq, hole.last_seq) == (4, 6) and "start-up" in hole.reason
    with SegmentLog(cfg, "binary") as sl:
        assert sl.last_seq == 6 and sl.recovered_loss is not None
        assert sl.recovered_loss.first_seq == 4 and sl.recovered_loss.what in (0, FSYNC_OPEN)
    assert [r.seq for r in replay(d, skip_holes=True)] == [1, 2, 3]


def test_ring_failure_words_are_versioned_in_the_layout():
    from ringwal.format import L_LOST_FIRST, L_LOST_LAST, L_LOST_WHAT, RH_FAILED_LAST, RH_FAILED_WHAT, RING_VERSION

    assert RING_VERSION == 8
    assert (RH_FAILED_FIRST, RH_FAILED_LAST, RH_FAILED_WHAT) == (48, 49, 50)
    assert (L_LOST, L_LOST_FIRST, L_LOST_LAST, L_LOST_WHAT) == (20, 21, 22, 23) and LANE_WORDS == 32
