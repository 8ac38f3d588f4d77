"""WAL behaviour: seqs, rotation, reopen, the lock, bad input, failure latching."""

from __future__ import annotations

import errno
import json
import logging
import os
import threading

import pytest

from ringwal import (
    ClosedError,
    Config,
    ConfigError,
    InvalidRecordError,
    JSONSerializer,
    LockedError,
    LogFailedError,
    Record,
    SerializerMismatchError,
    WAL,
    replay,
    verify,
)
from ringwal.segment import list_segments

from .conftest import rec, run_child


def seqs(directory, after=0):
    return [r.seq for r in replay(directory, after)]


def test_seq_starts_at_one_and_continues_across_reopen(cfg):
    with WAL(cfg) as w:
        assert w.last_seq == 0 and w.sync() == 0
        assert [w.append(rec(i)) for i in range(3)] == [1, 2, 3]
    with WAL(cfg) as w:
        assert w.append(rec(3)) == 4
        assert w.append_many([rec(4), rec(5)]) == range(5, 7)
    assert seqs(cfg.dir) == [1, 2, 3, 4, 5, 6]
    assert [r.data for r in replay(cfg.dir)] == [rec(i).data for i in range(6)]


def test_rotation_by_size_keeps_seqs_gap_free(cfg):
    cfg.segment_size = 4096
    with WAL(cfg) as w:
        for i in range(500):
            w.append(rec(i))
            if i % 7 == 0:
                w.flush()
    files = list_segments(cfg.dir)
    assert len(files) >= 10
    assert [n for n, _ in files] == list(range(1, len(files) + 1))
    for _, name in files:
        assert os.path.getsize(os.path.join(cfg.dir, name)) <= 4096
    assert seqs(cfg.dir) == list(range(1, 501))
    index = json.load(open(os.path.join(cfg.dir, "wal_index.json")))
    ranges = [(e["first_seq"], e["last_seq"]) for e in index["segments"]]
    assert ranges[0][0] == 1 and all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:]))
    assert verify(cfg.dir).ok


def test_rotation_by_duration(cfg, clock):
    cfg.segment_duration = 2.0
    with WAL(cfg, clock=clock, monotonic=clock.monotonic) as w:
        w.append(rec(0))
        w.sync()
        clock.advance(1.0)
        w.append(rec(1))
        w.sync()
        assert list_segments(cfg.dir) == []
        clock.advance(1.5)
        w.append(rec(2))
        w.sync()
        assert [name for _, name in list_segments(cfg.dir)] == ["000001.wal"]
        clock.advance(10)
        w.sync()  # idle but non-empty and old: rotates on the next write or sync
        assert len(list_segments(cfg.dir)) == 2
        clock.advance(10)
        w.sync()  # an empty current.wal is never rotated
        assert len(list_segments(cfg.dir)) == 2
    assert seqs(cfg.dir) == [1, 2, 3]


def test_record_larger_than_segment_gets_its_own_segment(cfg):
    cfg.segment_size = 1024
    big = Record(1, 0, os.urandom(5000))
    with WAL(cfg) as w:
        w.append(rec(0, 10))
        w.append(big)
        w.append(rec(2, 10))
    got = list(replay(cfg.dir))
    assert [r.seq for r in got] == [1, 2, 3] and got[1].data == big.data
    sizes = [os.path.getsize(os.path.join(cfg.dir, n)) for _, n in list_segments(cfg.dir)]
    assert len(sizes) == 2 and sizes[1] > 5000


def test_close_does_not_rotate_and_is_idempotent(cfg):
    w = WAL(cfg)
    w.append(rec(0))
    w.close()
    w.close()
    assert list_segments(cfg.dir) == []
    with pytest.raises(ClosedError):
        w.append(rec(1))
    with pytest.raises(ClosedError):
        w.sync()


def test_replay_from_counts_records_after_seq(cfg):
    with WAL(cfg) as w:
        w.append_many(rec(i) for i in range(100))
        got = []
        assert w.replay_from(90, got.append) == 10  # sees buffered records: it flushes first
        assert [r.seq for r in got] == list(range(91, 101))
        assert w.replay_from(100, got.append) == 0


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("segment_size", 0, "segment_size must be a positive int"),
        ("segment_size", -5, "segment_size"),
        ("segment_duration", 0, "segment_duration must be a positive number"),
        ("segment_duration", float("nan"), "segment_duration"),
        ("flush_interval", 0, "flush_interval"),
        ("write_buffer_size", 0, "write_buffer_size"),
        ("max_record_size", 1 << 33, "max_record_size"),
        ("serializer", object(), "is not a Serializer"),
    ],
)
def test_bad_config_values_name_the_setting(cfg, field, value, match):
    setattr(cfg, field, value)
    with pytest.raises(ConfigError, match=match):
        WAL(cfg)
    assert not os.path.exists(cfg.dir), "a rejected config must not create anything"


def test_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        WAL(Config(dir=str(f)))
    with pytest.raises(ConfigError, match="cannot be created"):
        WAL(Config(dir=str(f / "sub")))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to any directory")
def test_dir_not_writable(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    with pytest.raises(ConfigError, match="not writable"):
        WAL(Config(dir=str(d)))


def test_second_writer_is_refused_with_holder_pid(cfg):
    with WAL(cfg):
        with pytest.raises(LockedError, match=f"by pid {os.getpid()}") as info:
            WAL(cfg)
        assert info.value.pid == os.getpid()
        child = run_child(
            """
            import sys, ringwal
            try:
                ringwal.WAL(ringwal.Config(dir=sys.argv[1]))
            except ringwal.LockedError as e:
                print("locked", e.pid)
            """,
            cfg.dir,
        )
        assert child.stdout.split() == ["locked", str(os.getpid())]
    with WAL(cfg):  # released on close
        pass


def test_lock_is_released_when_the_holder_is_killed(cfg):
    import signal
    import subprocess

    from .conftest import spawn_child

    p = spawn_child(
        """
        import sys, ringwal
        w = ringwal.WAL(ringwal.Config(dir=sys.argv[1]))
        print("ready", flush=True)
        sys.stdin.read()
        """,
        cfg.dir,
        stdin=subprocess.PIPE,
    )
    try:
        assert p.stdout.readline().strip() == "ready"
        with pytest.raises(LockedError):
            WAL(cfg)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with WAL(cfg) as w:
        assert w.last_seq == 0


def test_serializer_mismatch_at_open_and_replay(cfg):
    with WAL(cfg) as w:
        w.append(rec(0))
    other = Config(dir=cfg.dir, serializer=JSONSerializer())
    with pytest.raises(SerializerMismatchError, match="written with serializer 'binary'.*Config.serializer is 'json'"):
        WAL(other)
    with pytest.raises(SerializerMismatchError):
        list(replay(cfg.dir, serializer=JSONSerializer()))
    assert len(list(replay(cfg.dir))) == 1  # None: the serializer named in the log


def test_each_serializer_writes_and_replays(tmp_path):
    from ringwal import ProtoSerializer

    for ser in (JSONSerializer(), ProtoSerializer()):
        c = Config(dir=str(tmp_path / ser.name), serializer=ser, segment_size=2048)
        with WAL(c) as w:
            w.append_many(rec(i, 50) for i in range(100))
        assert [r.data for r in replay(c.dir)] == [rec(i, 50).data for i in range(100)]


def test_rejected_records_write_nothing_and_leave_the_log_usable(cfg):
    cfg.max_record_size = 1000
    with WAL(cfg) as w:
        w.append(rec(0))
        with pytest.raises(InvalidRecordError, match="max_record_size=1000"):
            w.append(Record(1, 0, bytes(2000)))
        with pytest.raises(InvalidRecordError, match="takes ringwal.Record"):
            w.append((1, 2, b"x", 0))
        with pytest.raises(InvalidRecordError, match="seq is assigned by the log"):
            w.append(Record(1, 0, b"x", seq=9))
        with pytest.raises(InvalidRecordError):
            w.append_many([rec(1), Record(1, 0, bytes(2000))])  # all or none
        assert w.append(rec(1)) == 2
    assert seqs(cfg.dir) == [1, 2]


class FailingSync:
    """An fsync seam that fails with EIO once armed, and counts calls. With ``only``, fails
    only for that file (by name): the log's background thread fsyncs other files (the next
    segment, the index) at moments of its own."""

    def __init__(self, only=None):
        self.only = only
        self.armed = False
        self.calls = 0

    def __call__(self, fd):
        self.calls += 1
        if self.armed and (self.only is None or os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == self.only):
            raise OSError(errno.EIO, "injected I/O error")
        os.fdatasync(fd)


def test_failed_fsync_latches_the_log(cfg, caplog):
    bad = FailingSync()
    w = WAL(cfg, fdatasync=bad)
    w.append(rec(0))
    assert w.sync() == 1
    w.append(rec(1))
    bad.armed = True
    with caplog.at_level(logging.ERROR, "ringwal"), pytest.raises(LogFailedError, match="fdatasync"):
        w.sync()
    calls = bad.calls
    bad.armed = False  # even if the disk "recovers", the log must not carry on
    for op in (lambda: w.append(rec(2)), w.sync, w.flush):
        with pytest.raises(LogFailedError, match="close and reopen"):
            op()
    assert bad.calls == calls, "an fsync must never be retried after it failed"
    assert "refuses further writes" in caplog.text
    w.close()
    with WAL(cfg) as w2:  # reopen: recovery finds what reached the disk
        assert w2.last_seq >= 1


def test_failed_write_during_rotation_latches(cfg):
    cfg.segment_size = 2048
    bad = FailingSync(only="current.wal")
    w = WAL(cfg, fsync=bad)
    bad.armed = True
    with pytest.raises(LogFailedError, match="fsync of current.wal while sealing it") as info:
        w.append_many(rec(i) for i in range(200))
        w.flush()
    with pytest.raises(LogFailedError):
        w.append(rec(0))
    w.close()
    assert info.value.first_seq == 1  # nothing was synced: everything written is declared lost
    with WAL(cfg) as w2:
        assert w2.last_seq == info.value.last_seq  # seqs go on after the recorded loss
    assert seqs(cfg.dir) == []


def test_flush_interval_syncs_in_the_background(cfg):
    synced = threading.Event()

    def datasync(fd):
        os.fdatasync(fd)
        synced.set()

    cfg.flush_interval = 0.02
    with WAL(cfg, fdatasync=datasync) as w:
        w.append(rec(0))
        assert synced.wait(10), "background flusher never synced"
        assert w.durable_seq == 1
        assert seqs(cfg.dir) == [1]  # visible to readers without an explicit flush
