"""Reading a log while a writer appends: the live-reading rule (docs/FORMAT.md).

One read of current.wal is not atomic with the writer's pwritev, so a snapshot can hold a
frame's old zeros next to later frames' new bytes. Readers ask how far the writer has
written *before* they read a region again, and call a bad frame corruption only where the
writer had already finished writing it. The rule is tested on real files through the
``written`` seam, and end to end with a real ``ringwal serve`` and producer processes.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time

import pytest

import ringwal
from ringwal import WAL, Config, CorruptRecordError, replay, verify
from ringwal._fileutil import writer_holds_lock
from ringwal.format import FRAME_HEADER_SIZE
from ringwal.segment import (
    CLEAN,
    CURRENT,
    NO_WRITER,
    TORN,
    UNWRITTEN,
    LiveWriter,
    SegmentScan,
    list_segments,
)

from .conftest import rec, spawn_child
from .ringhelp import read_line, start_serve
from .test_corruption import flip, frame_offsets

FRAMES = 6  # frames in current.wal of the small log, one record each: seqs 1..6


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("live") / "wal")
    with WAL(Config(dir=d, segment_size=1 << 20)) as w:
        for i in range(FRAMES):
            w.append(rec(i, 40))
            w.sync()  # each frame claims the one before it durable: damage before the last is corruption
    return d


@pytest.fixture
def log(pristine, tmp_path):
    d = str(tmp_path / "copy")
    shutil.copytree(pristine, d)
    return d


class Naps:
    """The ``sleep`` seam: counts the pauses instead of taking them."""

    def __init__(self) -> None:
        self.taken: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.taken.append(seconds)


def scan_current(d, written, *, rereads=(0.0, 0.0, 0.0), naps=None):
    """Walk current.wal with the live rule; return (scan, seqs read or the error raised)."""
    scan = SegmentScan.open(
        os.path.join(d, CURRENT), sealed=False, written=written, rereads=rereads, sleep=naps or Naps()
    )
    seqs: list[int] = []
    with scan:
        try:
            for _, first, count, _ in scan.frames():
                seqs.extend(range(first, first + count))
        except CorruptRecordError as exc:
            return scan, exc
    return scan, seqs


def zero(path, start, end):
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(bytes(end - start))


# ---------------------------------------------------------------- the rule, on real files


def test_zero_gap_before_a_valid_frame_beyond_the_written_seq_is_the_end(log):
    """The snapshot of the bug report: frame 4 still zeros, frame 5 already there."""
    cur = os.path.join(log, CURRENT)
    offs, _ = frame_offsets(cur)
    zero(cur, offs[3], offs[4])
    scan, seqs = scan_current(log, lambda: 3)
    assert seqs == [1, 2, 3] and scan.outcome == UNWRITTEN and scan.end == offs[3]
    # with no writer, the same bytes are corruption (the crash rule, unchanged)
    _, err = scan_current(log, lambda: NO_WRITER)
    assert isinstance(err, CorruptRecordError) and err.offset == offs[3]
    assert "zero-filled gap; a valid frame follows" in str(err)


def test_partial_frame_beyond_the_written_seq_is_the_end(log):
    cur = os.path.join(log, CURRENT)
    offs, end = frame_offsets(cur)
    zero(cur, offs[-1] + FRAME_HEADER_SIZE + 8, end)  # the last frame half written
    naps = Naps()
    scan, seqs = scan_current(log, lambda: FRAMES - 1, naps=naps)
    assert seqs == list(range(1, FRAMES)) and scan.outcome == UNWRITTEN and scan.end == offs[-1]
    assert naps.taken == []  # nothing to wait for: the writer is writing it


def test_bad_frame_at_or_below_the_written_seq_is_corruption_after_rereads(log):
    cur = os.path.join(log, CURRENT)
    offs, _ = frame_offsets(cur)
    flip(cur, offs[2] + FRAME_HEADER_SIZE + 3)  # seq 3
    for written in (3, FRAMES):
        naps = Naps()
        scan, err = scan_current(log, lambda w=written: w, rereads=(0.0, 0.01, 0.1), naps=naps)
        assert isinstance(err, CorruptRecordError), written
        assert err.path == cur and err.offset == offs[2]
        assert "checksum mismatch" in str(err) and f"written up to seq {written}" in str(err)
        assert naps.taken == [0.0, 0.01, 0.1]  # re-read, bounded
        assert scan.records == 2
    # below it, frame 3 is not written yet as far as the reader can know: the end
    scan, seqs = scan_current(log, lambda: 2)
    assert seqs == [1, 2] and scan.outcome == UNWRITTEN


def test_zero_gap_at_or_below_the_written_seq_is_corruption(log):
    cur = os.path.join(log, CURRENT)
    offs, end = frame_offsets(cur)
    zero(cur, offs[-1], end)  # the last frame's bytes are gone although it was written
    _, err = scan_current(log, lambda: FRAMES)
    assert isinstance(err, CorruptRecordError) and err.offset == offs[-1]
    assert "zero-filled gap" in str(err)


def test_a_frame_read_again_after_asking_the_writer_counts(log):
    """``written()`` is asked before the region is read again: a frame finished in between
    (here by the seam itself, as a writer's pwritev returning before it publishes) is read."""
    cur = os.path.join(log, CURRENT)
    offs, end = frame_offsets(cur)
    original = open(cur, "rb").read()
    zero(cur, offs[-1], end)

    def written():
        with open(cur, "r+b") as f:  # the writer finishes the frame, then publishes its seq
            f.seek(offs[-1])
            f.write(original[offs[-1] : end])
        return FRAMES

    scan, seqs = scan_current(log, written)
    assert seqs == list(range(1, FRAMES + 1)) and scan.outcome == CLEAN


def test_lock_held_without_a_written_seq_rereads_then_applies_the_crash_rule(log):
    cur = os.path.join(log, CURRENT)
    offs, end = frame_offsets(cur)
    original = open(cur, "rb").read()
    zero(cur, offs[-1] + FRAME_HEADER_SIZE + 8, end)
    naps = Naps()
    scan, seqs = scan_current(log, lambda: None, rereads=(0.0, 0.01), naps=naps)
    assert seqs == list(range(1, FRAMES)) and scan.outcome == TORN and naps.taken == [0.0, 0.01]
    open(cur, "wb").write(original)
    zero(cur, offs[2], offs[3])
    naps = Naps()
    _, err = scan_current(log, lambda: None, rereads=(0.0, 0.01), naps=naps)
    assert isinstance(err, CorruptRecordError) and err.offset == offs[2] and naps.taken == [0.0, 0.01]


def test_sealed_segment_damage_is_corruption_whatever_the_writer_says(tmp_path):
    d = str(tmp_path / "wal")
    with WAL(Config(dir=d, segment_size=1024)) as w:
        for i in range(30):
            w.append(rec(i, 50))
            w.flush()
    seg = os.path.join(d, list_segments(d)[0][1])
    offs, end = frame_offsets(seg)
    original = open(seg, "rb").read()
    damages = {
        "bit flip": lambda: flip(seg, offs[1] + 30),
        "zero-filled frame": lambda: zero(seg, offs[1], offs[2]),
        "half-zeroed last frame": lambda: zero(seg, offs[-1] + 30, end),
    }
    for what, damage in damages.items():
        damage()
        scan = SegmentScan.open(seg, sealed=True, written=lambda: 10**9)
        with scan, pytest.raises(CorruptRecordError) as info:
            for _ in scan.frames():
                pass
        assert info.value.path == seg, what
        with pytest.raises(CorruptRecordError):
            list(replay(d))
        open(seg, "wb").write(original)


def test_current_wal_renamed_while_read_is_finished_as_a_sealed_segment(log, tmp_path):
    """Zeros where a seq the writer has written is due, because the writer sealed and renamed
    this file and wrote that seq into the next one: the end of this file, not damage."""
    cur = os.path.join(log, CURRENT)
    _, end = frame_offsets(cur)
    naps = Naps()
    scan = SegmentScan.open(cur, sealed=False, written=lambda: FRAMES + 5, rereads=(0.0,), sleep=naps)
    with scan:
        it = scan.frames()
        assert next(it)[1] == 1
        os.truncate(cur, end)  # rotation: seal, rename, new current.wal
        os.rename(cur, os.path.join(log, "000001.wal"))
        shutil.copy(os.path.join(log, "000001.wal"), cur)
        assert [f[1] for f in it] == list(range(2, FRAMES + 1))
        assert scan.sealed and scan.outcome == CLEAN and scan.end == end
    assert naps.taken == []


def test_live_writer_seam_reports_lock_and_ring(wdir):
    assert LiveWriter(wdir)() == NO_WRITER
    with WAL(Config(dir=wdir)) as w:  # an in-process writer: the lock, no ring
        w.append(rec(1))
        w.flush()
        assert writer_holds_lock(wdir)
        assert LiveWriter(wdir)() is None
    assert not writer_holds_lock(wdir)
    p = start_serve(wdir)
    try:
        with ringwal.open(Config(dir=wdir, start_writer=False)) as h:
            h.append(rec(2))
            h.sync()  # durable is published after the written seq
        assert LiveWriter(wdir)() == 2
    finally:
        p.terminate()
        p.wait(timeout=30)
    assert LiveWriter(wdir)() == NO_WRITER


# ---------------------------------------------------------------- follow on real damage


def follow_until_error(d, timeout=30.0):
    """Run follow in a thread; return (seqs it yielded, the exception it raised)."""
    stop = threading.Event()
    out: queue.Queue = queue.Queue()

    def run():
        try:
            for r in ringwal.follow(d, 0, stop=stop, poll_interval=0.05):
                out.put(r.seq)
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            out.put(exc)
        out.put(None)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    seqs = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            item = out.get(timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(item, int):
                seqs.append(item)
                continue
            return seqs, item
    except queue.Empty:
        raise AssertionError(f"follow yielded {seqs} and then waited {timeout}s instead of raising") from None
    finally:
        stop.set()
        t.join(timeout=10)


def test_follow_raises_on_a_flipped_bit_without_a_writer(log):
    cur = os.path.join(log, CURRENT)
    offs, _ = frame_offsets(cur)
    flip(cur, offs[2] + FRAME_HEADER_SIZE + 3)
    with pytest.raises(CorruptRecordError):
        list(replay(log))
    seqs, err = follow_until_error(log)
    assert seqs == [1, 2]
    assert isinstance(err, CorruptRecordError) and err.path == cur and err.offset == offs[2]


def test_follow_raises_on_a_flipped_bit_with_a_writer_running(wdir):
    p = start_serve(wdir)
    try:
        with ringwal.open(Config(dir=wdir, start_writer=False)) as h:
            for i in range(5):
                h.append(rec(i))
                h.sync()  # one frame per record, all durable
        cur = os.path.join(wdir, CURRENT)
        offs, _ = frame_offsets(cur)
        assert len(offs) == 5
        flip(cur, offs[2] + FRAME_HEADER_SIZE + 3)
        started = time.monotonic()
        seqs, err = follow_until_error(wdir)
        assert seqs == [1, 2]
        assert isinstance(err, CorruptRecordError) and err.offset == offs[2] and "written up to seq" in str(err)
        assert time.monotonic() - started < 10  # about a second of re-reads, not forever
        with pytest.raises(CorruptRecordError):
            list(replay(wdir))
        assert not verify(wdir).ok
    finally:
        p.terminate()
        p.wait(timeout=30)


# ---------------------------------------------------------------- end to end

PRODUCER = """
import sys, time, ringwal
d, seconds = sys.argv[1], float(sys.argv[2])
h = ringwal.open(ringwal.Config(dir=d, start_writer=False))
print("attached", flush=True)
i = 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    h.append(ringwal.Record(1, i, b"live-%d|" % i))
    i += 1
    if i % 4 == 0:
        h.flush()
h.sync()
h.close()
print("done", i, flush=True)
"""

LIVE_SECONDS = 10.0


def replay_from(d, after):
    """Replay seqs after ``after``; assert they are after+1, after+2, ... and return the last."""
    n = after
    for r in replay(d, after):
        n += 1
        if r.seq != n:
            raise AssertionError(f"replay after {after}: seq {r.seq} where {n} was due")
    return n


def test_replay_and_verify_of_a_live_log_see_a_growing_gap_free_prefix(wdir):
    """The bug report's setup: default Config, ``ringwal serve``, a producer flushing every few
    records, and replay and verify in a loop. Replay used to raise 'zero-filled gap; a valid
    frame follows' on this healthy log within a second or two. Most passes replay only the
    last records (so current.wal is read many times a second); every fifth replays all of it
    and runs verify."""
    p = start_serve(wdir)
    prod = spawn_child(PRODUCER, wdir, str(LIVE_SECONDS + 1))
    try:
        assert read_line(prod) == "attached"
        seen = passes = 0
        sizes = []
        deadline = time.monotonic() + LIVE_SECONDS
        while time.monotonic() < deadline:
            full = passes % 5 == 0
            n = replay_from(wdir, 0 if full else max(0, seen - 200))
            assert n >= seen, f"pass {passes}: replay went backwards ({seen} -> {n})"
            seen = n
            sizes.append(n)
            if full:
                report = verify(wdir)
                assert report.ok, [str(x) for x in report.problems]
                assert report.last_seq is None or report.last_seq >= seen
            passes += 1
        line = read_line(prod, timeout=60)
        assert line.startswith("done"), line
        total = int(line.split()[1])
        assert prod.wait(timeout=30) == 0
        assert replay_from(wdir, 0) == total
        assert verify(wdir).ok
        assert passes >= 20 and 0 < seen <= total
        assert sizes[-1] > sizes[0], sizes  # the prefix grew while the writer appended
    finally:
        if prod.poll() is None:
            prod.kill()
            prod.wait(timeout=30)
        p.terminate()
        p.wait(timeout=30)
