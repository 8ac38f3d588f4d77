"""SegmentLog on real files: frames in, rotation, recovery at open, the failure latch, the name check.

The segment log never encodes a record; these tests build frame bodies with a serializer's own
framing (``frame_many``: the on-disk record layout, length prefix included), as producers do
before their bytes reach the writer through the ring, and read them back with ``replay``.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os

import pytest

from ringwal import (
    BinarySerializer,
    ClosedError,
    ConfigError,
    JSONSerializer,
    LockedError,
    LogFailedError,
    SerializerMismatchError,
    replay,
    verify,
)
from ringwal.format import encode_frame
from ringwal.holes import load_holes
from ringwal.index import INDEX_NAME, reconcile
from ringwal.seglog import SegmentLog
from ringwal.segment import CURRENT, SegmentScan, list_segments, read_file, read_header

from .conftest import rec

BINARY = BinarySerializer()


def body_of(records, ser=BINARY):
    """One frame body of ``records``, encoded the way a producer puts them in the ring."""
    return b"".join(ser.frame_many(records))


def seqs(directory):
    return [r.seq for r in replay(directory)]


def index_ranges(directory):
    doc = json.load(open(os.path.join(directory, INDEX_NAME)))
    return [(e["first_seq"], e["last_seq"]) for e in doc["segments"]]


class FlakySync:
    """An fsync/fdatasync seam: fails with EIO while armed; counts every call. With ``only``,
    fails only for that file (by name): the log's background thread fsyncs other files
    (the next segment, the index) at moments of its own."""

    def __init__(self, real=os.fdatasync, only=None):
        self.real = real
        self.only = only
        self.armed = False
        self.calls = 0

    def __call__(self, fd):
        self.calls += 1
        if self.armed and (self.only is None or os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == self.only):
            raise OSError(errno.EIO, "injected I/O error")
        self.real(fd)


@pytest.mark.parametrize("ser", [BinarySerializer(), JSONSerializer()], ids=lambda s: s.name)
def test_write_body_of_serializer_framed_records_replays_them(cfg, ser):
    batches = [[rec(10 * b + i, 40) for i in range(10)] for b in range(3)]
    with SegmentLog(cfg, ser.name) as sl:
        assert (sl.first_seq, sl.last_seq, sl.durable_seq) == (1, 0, 0)
        firsts = [sl.write_body(body_of(batch, ser), len(batch)) for batch in batches]
        assert firsts == [1, 11, 21]
        assert sl.last_seq == 30 and sl.durable_seq == 0
        assert sl.sync() == 30 and sl.durable_seq == 30
    assert read_header(os.path.join(cfg.dir, CURRENT)).serializer == ser.name
    got = list(replay(cfg.dir))  # the serializer named in the segment header decodes them
    assert [r.seq for r in got] == list(range(1, 31))
    assert [r.data for r in got] == [r.data for batch in batches for r in batch]


def test_write_body_rotates_by_size_and_keeps_seqs_gap_free(cfg):
    cfg.segment_size = 2048
    with SegmentLog(cfg, "binary") as sl:
        for b in range(60):
            assert sl.write_body(body_of([rec(3 * b + i, 60) for i in range(3)]), 3) == 3 * b + 1
    files = list_segments(cfg.dir)
    assert len(files) >= 5
    assert [n for n, _ in files] == list(range(1, len(files) + 1))
    assert all(os.path.getsize(os.path.join(cfg.dir, name)) <= 2048 for _, name in files)
    ranges = index_ranges(cfg.dir)
    assert len(ranges) == len(files) and ranges[0][0] == 1
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))
    assert seqs(cfg.dir) == list(range(1, 181))
    assert verify(cfg.dir).ok


def test_write_records_splits_frames_at_segment_size(cfg):
    cfg.segment_size = 2048
    records = BINARY.frame_many(rec(i, 100) for i in range(100))
    big = BINARY.frame_many([rec(100, 5000)])
    with SegmentLog(cfg, "binary") as sl:
        assert sl.write_records(records) == 1
        assert sl.write_records(big) == 101  # larger than a segment: a segment of its own
        assert sl.write_records([]) == 102 and sl.last_seq == 101
        assert sl.write_records(records[:1]) == 102  # closes the big one's segment
    sizes = [os.path.getsize(os.path.join(cfg.dir, n)) for _, n in list_segments(cfg.dir)]
    assert len(sizes) >= 5 and all(s <= 2048 for s in sizes[:-1]) and sizes[-1] > 5000
    assert seqs(cfg.dir) == list(range(1, 103))
    assert verify(cfg.dir).ok


def test_flush_rotates_a_segment_older_than_segment_duration(cfg, clock):
    cfg.segment_duration = 2.0
    with SegmentLog(cfg, "binary", clock=clock, monotonic=clock.monotonic) as sl:
        sl.write_body(body_of([rec(0)]), 1)
        clock.advance(1.0)
        sl.flush()
        assert list_segments(cfg.dir) == []
        clock.advance(1.5)
        sl.flush()
        assert [name for _, name in list_segments(cfg.dir)] == ["000001.wal"]
        clock.advance(10)
        sl.flush()  # an empty current.wal is never rotated
        assert len(list_segments(cfg.dir)) == 1
        assert sl.write_body(body_of([rec(1)]), 1) == 2
    assert seqs(cfg.dir) == [1, 2]


def test_reopen_cuts_a_torn_tail_and_continues_after_the_last_frame(cfg, caplog):
    with SegmentLog(cfg, "binary") as sl:
        for b in range(4):
            sl.write_body(body_of([rec(2 * b), rec(2 * b + 1)]), 2)
    cur = os.path.join(cfg.dir, CURRENT)
    scan = SegmentScan(read_file(cur), cur, sealed=False, next_seq=1)
    for _ in scan.frames():
        pass
    end = scan.end
    # A writer that died mid-write: half of the frame for seqs 9-10 reached the file.
    frame = b"".join(encode_frame(body_of([rec(8), rec(9)]), 2, 9))
    torn = frame[: len(frame) // 2]
    with open(cur, "r+b") as f:
        f.seek(end)
        f.write(torn)
    with caplog.at_level(logging.WARNING, "ringwal"), SegmentLog(cfg, "binary") as sl:
        assert "dropped a torn tail" in caplog.text
        assert sl.last_seq == sl.durable_seq == 8
        with open(cur, "rb") as f:
            f.seek(end)
            assert f.read(len(torn)) == bytes(len(torn)), "the torn bytes must be zeroed"
        assert sl.write_body(body_of([rec(8), rec(9)]), 2) == 9
    assert seqs(cfg.dir) == list(range(1, 11))
    assert verify(cfg.dir).ok


def test_open_fdatasyncs_frames_a_dead_writer_left_unsynced(cfg):
    never = FlakySync(real=lambda fd: None)  # a writer whose frames stayed in the page cache
    sl = SegmentLog(cfg, "binary", fdatasync=never)
    sl.write_body(body_of([rec(0), rec(1)]), 2)
    sl.close()
    opened = FlakySync()
    with SegmentLog(cfg, "binary", fdatasync=opened) as sl:
        assert opened.calls == 1, "recovery must fdatasync what it found before calling it durable"
        assert sl.durable_seq == sl.last_seq == 2
        assert sl.sync() == 2 and opened.calls == 1  # nothing new: no second fdatasync


def test_failed_fdatasync_latches_and_is_never_retried(cfg, caplog):
    bad = FlakySync()
    sl = SegmentLog(cfg, "binary", fdatasync=bad)
    sl.write_body(body_of([rec(0)]), 1)
    assert sl.sync() == 1
    sl.write_body(body_of([rec(1)]), 1)
    bad.armed = True
    with caplog.at_level(logging.ERROR, "ringwal"), pytest.raises(LogFailedError, match=r"fdatasync of current\.wal"):
        sl.sync()
    assert "refuses further writes" in caplog.text
    assert isinstance(sl.failed, OSError) and "failed" in repr(sl)
    calls = bad.calls
    bad.armed = False  # even if the disk "recovers", the log must not carry on
    for op in (
        lambda: sl.write_body(body_of([rec(2)]), 1),
        lambda: sl.write_records(BINARY.frame_many([rec(2)])),
        sl.sync,
        sl.flush,
        lambda: sl.truncate_before(1),
        lambda: sl.apply_retention(1, None),
    ):
        with pytest.raises(LogFailedError, match="close and reopen"):
            op()
    sl.close()  # no sync of a failed log
    assert bad.calls == calls, "an fsync must never be retried after it failed"
    with SegmentLog(cfg, "binary") as sl2:  # reopen: recovery finds what reached the disk
        assert sl2.last_seq >= 1
    assert seqs(cfg.dir)[0] == 1


def test_failed_seal_during_rotation_latches(cfg):
    cfg.segment_size = 2048
    bad = FlakySync(real=os.fsync, only=CURRENT)
    sl = SegmentLog(cfg, "binary", fsync=bad)
    bad.armed = True
    with pytest.raises(LogFailedError, match=r"fsync of current\.wal while sealing it") as info:
        for b in range(60):
            sl.write_body(body_of([rec(3 * b + i, 60) for i in range(3)]), 3)
    # Nothing was ever synced: every record written is declared lost, never acknowledged.
    assert (info.value.first_seq, info.value.last_seq) == (1, sl.lost.last_seq) and sl.lost.last_seq > 3
    with pytest.raises(LogFailedError):
        sl.write_body(body_of([rec(0)]), 1)
    lost = sl.lost.last_seq
    sl.close()
    with SegmentLog(cfg, "binary") as sl2:
        assert sl2.last_seq == lost  # seqs go on after the recorded loss, never given twice
    assert [(h.first_seq, h.last_seq) for h in load_holes(cfg.dir)] == [(1, lost)]
    assert seqs(cfg.dir) == []


def test_a_frame_that_cannot_be_one_is_misuse_not_a_failure(cfg):
    with SegmentLog(cfg, "binary") as sl:
        for body, count in ((b"", 1), (body_of([rec(0)]), 0)):
            with pytest.raises(ValueError, match="a frame holds"):
                sl.write_body(body, count)
        assert sl.failed is None and sl.write_body(body_of([rec(0)]), 1) == 1


@pytest.mark.parametrize("where", ["current", "completed"])
def test_serializer_name_mismatch_is_refused(cfg, where):
    cfg.segment_size = 1024
    with SegmentLog(cfg, "binary") as sl:
        for i in range(20 if where == "completed" else 1):
            sl.write_body(body_of([rec(i, 60)]), 1)
    with pytest.raises(SerializerMismatchError, match=r"written with serializer 'binary'.*is 'json'") as info:
        SegmentLog(cfg, "json")
    expect = "000001.wal" if where == "completed" else CURRENT
    assert os.path.basename(info.value.path) == expect and info.value.offset == 16
    with SegmentLog(cfg, "binary") as sl:  # the refused open released the lock
        assert sl.last_seq == (20 if where == "completed" else 1)


@pytest.mark.parametrize("name", ["", "x" * 17, "caf\u00e9", 5])
def test_bad_serializer_name_is_a_config_error_that_creates_nothing(cfg, name):
    with pytest.raises(ConfigError, match="serializer name must be 1-16 ASCII"):
        SegmentLog(cfg, name)
    assert not os.path.exists(cfg.dir)


def test_one_writer_per_directory_and_loud_after_close(cfg):
    sl = SegmentLog(cfg, "binary")
    with pytest.raises(LockedError, match=f"by pid {os.getpid()}"):
        SegmentLog(cfg, "binary")
    sl.close()
    sl.close()
    assert sl.closed and "closed" in repr(sl)
    for op in (lambda: sl.write_body(body_of([rec(0)]), 1), sl.sync, sl.flush):
        with pytest.raises(ClosedError, match="is closed"):
            op()
    with SegmentLog(cfg, "binary"):  # released on close
        pass


def test_truncate_before_removes_whole_completed_segments_only(cfg):
    cfg.segment_size = 1024
    with SegmentLog(cfg, "binary") as sl:
        for i in range(40):
            sl.write_body(body_of([rec(i, 60)]), 1)
        # From the segment files: the index of the last rotation may still be being written
        # (the background thread), but truncate_before returns with the index replaced.
        ranges = [(e.first_seq, e.last_seq) for e in reconcile(cfg.dir)[0]]
        cut = ranges[2][0] + 1  # inside the third segment: it stays
        removed, first = sl.truncate_before(cut)
        assert [(e.first_seq, e.last_seq) for e in removed] == ranges[:2]
        assert first == sl.first_seq == ranges[2][0]
        assert index_ranges(cfg.dir) == ranges[2:]
        removed, first = sl.truncate_before(10**9)  # never current.wal
        assert first == sl.first_seq and os.path.exists(os.path.join(cfg.dir, CURRENT))
        assert sl.write_body(body_of([rec(40)]), 1) == 41
    assert seqs(cfg.dir) == list(range(first, 42))
    assert verify(cfg.dir).ok
