"""Rotation off the writer's path: the next segment is prepared by a background thread.

What the writer's thread waits for at a rotation (the seal, the new header's fdatasync, one
directory fsync between the two renames), what ``sync()`` waits for (the new name durable),
what a failure of the background thread does (latches, loses nothing), and a real writer
SIGKILLed at each named rotation point while producers sync (``seglog.py``, "Rotation").
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import threading

import pytest

from ringwal import Config, LogFailedError, replay, verify
from ringwal.seglog import SegmentLog
from ringwal.segment import CURRENT, SPARE, list_segments
from ringwal.serializers import BinarySerializer

from .conftest import rec
from .ringhelp import KILLABLE_WRITER, PRODUCER, check_log, collect, read_line, spawn

frame = BinarySerializer().frame


def fd_name(fd: int) -> str:
    """What a descriptor names: a file's base name, or "<dir>" for a directory."""
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        return "<dir>"
    return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))


class Recorder:
    """fsync/fdatasync seams that record (thread, kind, file) of every call, then sync for real."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, str]] = []
        self.lock = threading.Lock()

    def seam(self, kind: str, real):
        def call(fd: int) -> None:
            with self.lock:
                self.calls.append((threading.get_ident(), kind, fd_name(fd)))
            real(fd)

        return call

    def on_thread(self, ident: int) -> list[tuple[str, str]]:
        with self.lock:
            return [(k, n) for t, k, n in self.calls if t == ident]


def fill_until_rotation(sl: SegmentLog, start: int) -> int:
    """Write one record per frame until a frame starts a new segment; the next record number."""
    segments = len(list_segments(sl.dir))
    i = start
    while len(list_segments(sl.dir)) == segments:
        sl.write_body(frame(rec(i, 60)), 1)
        i += 1
    return i


def test_rotation_waits_only_for_the_seal_and_one_directory_fsync_on_its_thread(tmp_path):
    """No preallocation, file creation, header fdatasync or index write on the writer's
    thread: before the spare existed a rotation made six fsync calls there."""
    cfg = Config(dir=str(tmp_path / "wal"), segment_size=2048)
    r = Recorder()
    with SegmentLog(cfg, "binary", fsync=r.seam("fsync", os.fsync), fdatasync=r.seam("fdatasync", os.fdatasync)) as sl:
        i = fill_until_rotation(sl, 0)
        me = threading.get_ident()
        r.calls.clear()
        i = fill_until_rotation(sl, i)  # the second rotation: its spare was made in the background
        assert r.on_thread(me) == [("fsync", CURRENT), ("fsync", "<dir>")]
        sl.sync()
    others = [(k, n) for t, k, n in r.calls if t != me]
    # the new header's fdatasync ran there while this thread sealed
    assert ("fdatasync", SPARE) in others and ("fsync", SPARE) in others, others
    assert ("fsync", "wal_index.json.tmp") in others, others
    assert [x.seq for x in replay(cfg.dir)] == list(range(1, i + 1))


def test_the_directory_fsync_after_renaming_current_wal_comes_before_the_spare_takes_its_name(tmp_path):
    """Otherwise a power cut could keep the second rename and not the first: current.wal
    would name the new file and the sealed segment would be gone."""
    cfg = Config(dir=str(tmp_path / "wal"), segment_size=2048)
    seen = []

    def fsync(fd: int) -> None:
        if threading.current_thread() is threading.main_thread() and fd_name(fd) == "<dir>":
            names = set(os.listdir(cfg.dir))
            seen.append((CURRENT in names, SPARE in names))
        os.fsync(fd)

    with SegmentLog(cfg, "binary", fsync=fsync) as sl:
        seen.clear()  # the open's own directory fsync
        fill_until_rotation(sl, fill_until_rotation(sl, 0))
    assert seen and all(s == (False, True) for s in seen), seen


def test_sync_waits_until_the_new_current_wal_name_is_durable(tmp_path):
    cfg = Config(dir=str(tmp_path / "wal"), segment_size=2048)
    release = threading.Event()
    held = threading.Event()

    def fsync(fd: int) -> None:
        if threading.current_thread() is not threading.main_thread() and fd_name(fd) == "<dir>":
            held.set()
            assert release.wait(60)
        os.fsync(fd)

    sl = SegmentLog(cfg, "binary", fsync=fsync)
    try:
        last = fill_until_rotation(sl, 0)  # records 1..last in the log; the last one in the new segment
        assert held.wait(60), "the background thread never fsynced the directory"
        done: list[int] = []
        t = threading.Thread(target=lambda: done.append(sl.sync()))
        t.start()
        t.join(0.5)
        assert t.is_alive() and not done, "sync() acknowledged a record before its file's name was durable"
        release.set()
        t.join(60)
        assert done == [last]
    finally:
        release.set()
        sl.close()


def test_a_failed_background_job_latches_the_log_and_loses_nothing(tmp_path):
    cfg = Config(dir=str(tmp_path / "wal"), segment_size=2048)
    spares = []

    def fsync(fd: int) -> None:
        if fd_name(fd) == SPARE:
            spares.append(fd)
            if len(spares) == 2:  # the first spare (made at open) is fine, the second fails
                raise OSError(errno.EIO, "injected EIO on the spare")
        os.fsync(fd)

    sl = SegmentLog(cfg, "binary", fsync=fsync)
    i = fill_until_rotation(sl, 0)
    with pytest.raises(LogFailedError, match="preparing next.wal.tmp"):
        for i in range(i, i + 100):
            sl.write_body(frame(rec(i, 60)), 1)
            sl.sync()
    assert sl.lost is None, "a spare that could not be made holds no record"
    written = sl.last_seq
    with pytest.raises(LogFailedError):
        sl.write_body(frame(rec(0)), 1)
    sl.close()
    with SegmentLog(cfg, "binary") as again:
        assert again.last_seq == written
    assert [x.seq for x in replay(cfg.dir)] == list(range(1, written + 1))
    assert verify(cfg.dir).ok


def test_close_removes_the_spare_and_the_next_open_removes_a_stray_one(tmp_path):
    cfg = Config(dir=str(tmp_path / "wal"), segment_size=2048)
    with SegmentLog(cfg, "binary") as sl:
        fill_until_rotation(sl, 0)
    assert SPARE not in os.listdir(cfg.dir)
    with open(os.path.join(cfg.dir, SPARE), "wb") as f:
        f.write(b"RINGWAL\0" + bytes(4096))  # not a segment: never read, never continued
    assert verify(cfg.dir).ok and any(SPARE in n for n in verify(cfg.dir).notes)
    with SegmentLog(cfg, "binary") as sl:
        first = sl.last_seq
        sl.write_body(frame(rec(1)), 1)
    assert SPARE not in os.listdir(cfg.dir)
    assert [x.seq for x in replay(cfg.dir)] == list(range(1, first + 2))


def test_a_clean_close_gives_back_the_preallocated_space_and_the_next_open_takes_it_again(tmp_path):
    cfg = Config(dir=str(tmp_path / "wal"), segment_size=1 << 20)
    cur = os.path.join(cfg.dir, CURRENT)
    with SegmentLog(cfg, "binary") as sl:
        sl.write_body(frame(rec(1)), 1)
        end = sl._seg.write_pos
        assert os.path.getsize(cur) == 1 << 20  # preallocated while open
    assert os.path.getsize(cur) == end and SPARE not in os.listdir(cfg.dir)
    with SegmentLog(cfg, "binary") as sl:
        assert os.path.getsize(cur) == 1 << 20
        assert sl.write_body(frame(rec(2)), 1) == 2
    assert [x.seq for x in replay(cfg.dir)] == [1, 2]


def test_start_writeback_starts_writing_and_reports_a_call_that_fails(tmp_path):
    from ringwal._fileutil import start_writeback

    fd = os.open(str(tmp_path / "f"), os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"x" * (3 << 20))
        start_writeback(fd, 0, 3 << 20)  # the kernel starts writing; nothing to wait for
    finally:
        os.close(fd)
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as info:
            start_writeback(w, 0, 4096)
        assert info.value.errno == errno.ESPIPE
    finally:
        os.close(r)
        os.close(w)


# ----------------------------------------------------------------- a real writer, SIGKILLed

ROTATION_POINTS = ["sealed", "header", "renamed", "current", "named", "spare", "indexed"]


@pytest.mark.parametrize("point", ROTATION_POINTS)
def test_writer_killed_at_a_rotation_point_producers_restart_it_and_nothing_is_lost_or_doubled(wdir, point):
    """KILLABLE_WRITER runs with 16 KiB segments: three producers of 2,000 records rotate it
    about twenty times; it SIGKILLs itself at the third passage of ``point``. The producers
    start another writer, which recovers; every record is in the log exactly once."""
    w = spawn(KILLABLE_WRITER, wdir, point, "3")
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
    assert len(list_segments(wdir)) >= 2  # two rotations completed before the third was cut short
    assert os.path.exists(os.path.join(wdir, CURRENT))
    report = verify(wdir)
    assert report.ok, report.problems
