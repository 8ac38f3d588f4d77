"""The handle API against a real writer process: receipts, sync, flush, bad input, lifecycle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest

import ringwal
from ringwal import (
    Config,
    ConfigError,
    InvalidRecordError,
    JSONSerializer,
    Record,
    RingFullError,
    SerializerMismatchError,
    SlotsExhaustedError,
    WaitTimeoutError,
    replay,
)

from .conftest import ROOT, rec
from .ringhelp import read_line, ring_objects, start_serve, wait_until, writer_pid


def test_open_starts_a_writer_and_receipts_give_seqs(wdir):
    with ringwal.open(Config(dir=wdir, writer_linger=0)) as h:
        r1 = h.append(rec(1))
        r2 = h.append(rec(2))
        assert h.sync() == 2
        assert (r1.seq, r2.seq) == (1, 2)
        batch = h.append_many([rec(i) for i in range(3, 8)])
        assert batch.seqs == [3, 4, 5, 6, 7]
        assert batch.last_seq == 7
        h.flush()
        seen = []
        assert h.replay_from(2, seen.append) == 5
        assert [r.seq for r in seen] == [3, 4, 5, 6, 7]
        assert seen[0].data == rec(3).data
    assert [r.data for r in replay(wdir, 0)] == [rec(i).data for i in range(1, 8)]


def test_sync_before_any_append_returns_zero_and_close_is_idempotent(wdir):
    h = ringwal.open(Config(dir=wdir, writer_linger=0))
    assert h.sync() == 0
    h.close()
    h.close()
    with pytest.raises(ringwal.ClosedError):
        h.append(rec(1))
    with pytest.raises(ringwal.ClosedError):
        h.sync()


def test_clean_close_leaves_no_shared_memory_or_semaphores(wdir):
    h = ringwal.open(Config(dir=wdir, writer_linger=0))
    pid = writer_pid(wdir)
    assert ring_objects(wdir), "the ring and its semaphores exist while attached"
    h.append(rec(1))
    h.close()
    psutil.Process(pid).wait(15)  # the idle writer drains, unlinks and exits
    assert ring_objects(wdir) == []
    assert [r.seq for r in replay(wdir, 0)] == [1]


def test_many_handles_in_one_process_get_their_own_lanes(wdir):
    cfg = Config(dir=wdir, writer_linger=0)
    with ringwal.open(cfg) as a, ringwal.open(cfg) as b:
        assert a.lane != b.lane
        ra = a.append(rec(1))
        rb = b.append(rec(2))
        a.sync()
        b.sync()
        assert sorted([ra.seq, rb.seq]) == [1, 2]


def test_record_too_large_is_rejected_and_the_handle_stays_usable(wdir):
    cfg = Config(dir=wdir, writer_linger=0, max_record_size=1000, ring_size=64 * 1024)
    with ringwal.open(cfg) as h:
        with pytest.raises(InvalidRecordError, match="max_record_size=1000"):
            h.append(Record(1, 0, bytes(1000)))
        with pytest.raises(InvalidRecordError, match="max_record_size"):
            h.append_many([rec(1), Record(1, 0, bytes(5000))])
        with pytest.raises(InvalidRecordError):
            h.append(Record(1, 0, "not bytes"))  # type: ignore[arg-type]
        with pytest.raises(InvalidRecordError):
            h.append("nope")  # type: ignore[arg-type]
        with pytest.raises(InvalidRecordError, match="seq"):
            h.append(Record(1, 0, b"x", seq=5))
        r = h.append(rec(9))
        assert h.sync() == 1 and r.seq == 1
    assert [r.data for r in replay(wdir, 0)] == [rec(9).data]


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("ring_size", 1000, "power of two"),
        ("ring_size", 1 << 12, "ring_size"),
        ("producer_slots", 0, "producer_slots"),
        ("max_record_size", 3 << 20, "does not fit a ring lane"),
        ("append_timeout", -1, "append_timeout"),
        ("sync_timeout", float("nan"), "sync_timeout"),
        ("writer_linger", -1, "writer_linger"),
        ("start_writer", "yes", "start_writer"),
    ],
)
def test_ring_settings_that_cannot_work_raise_config_error(wdir, field, value, match):
    cfg = Config(dir=wdir)
    setattr(cfg, field, value)
    with pytest.raises(ConfigError, match=match):
        ringwal.open(cfg)
    assert ring_objects(wdir) == []


def test_serializer_differing_from_the_writer_is_refused_at_open(wdir):
    with ringwal.open(Config(dir=wdir, writer_linger=0)) as h:
        h.append(rec(1))
        with pytest.raises(SerializerMismatchError, match="'binary'.*'json'"):
            ringwal.open(Config(dir=wdir, serializer=JSONSerializer()))


def test_serializer_differing_from_the_log_is_refused_when_starting_a_writer(wdir):
    with ringwal.open(Config(dir=wdir, writer_linger=0)) as h:
        h.append(rec(1))
    wait_until(lambda: not ring_objects(wdir), what="the first writer to exit")
    with pytest.raises(SerializerMismatchError, match="json"):
        ringwal.open(Config(dir=wdir, serializer=JSONSerializer(), writer_wait=5))


def test_json_serializer_goes_through_the_ring(wdir):
    cfg = Config(dir=wdir, serializer=JSONSerializer(), writer_linger=0)
    with ringwal.open(cfg) as h:
        h.append(Record(2, 3, b"\x00\xffbytes"))
        h.sync()
    assert list(replay(wdir, 0, JSONSerializer())) == [Record(2, 3, b"\x00\xffbytes", 1)]


def test_a_full_lane_times_out_with_ring_full_error_and_writes_nothing_more(wdir):
    p = start_serve(wdir)
    try:
        cfg = Config(dir=wdir, append_timeout=0.3, sync_timeout=0.3, ring_size=64 * 1024, max_record_size=1024)
        with ringwal.open(cfg) as h:
            h.append(rec(0))
            h.sync()
            os.kill(p.pid, signal.SIGSTOP)  # alive but not draining
            try:
                n = 0
                while h.try_append(rec(1, 1000)) is not None:
                    n += 1
                assert n >= 50  # ~64 KiB of 1 KiB records fit
                with pytest.raises(RingFullError, match="append_timeout"):
                    h.append(rec(2, 1000))
                with pytest.raises(WaitTimeoutError, match="sync_timeout"):
                    h.sync()
            finally:
                os.kill(p.pid, signal.SIGCONT)
            assert h.sync() == n + 1
        assert len(list(replay(wdir, 0))) == n + 1
    finally:
        p.terminate()
        p.wait(20)


def test_slots_exhausted_then_reclaimed_from_a_dead_producer(wdir):
    p = start_serve(wdir, "--producer-slots", "2")
    try:
        cfg = Config(dir=wdir)
        a = ringwal.open(cfg)
        child = subprocess.Popen(
            [sys.executable, "-c", "import ringwal,sys,time; h=ringwal.open(ringwal.Config(dir=sys.argv[1])); "
             "h.append(ringwal.Record(1, 7, b'from-the-dead')); print('in', flush=True); time.sleep(600)", wdir],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        assert read_line(child) == "in"
        with pytest.raises(SlotsExhaustedError, match="producer_slots"):
            ringwal.open(cfg)
        child.kill()
        child.wait(10)
        b = ringwal.open(cfg)  # claims the dead producer's lane
        b.append(rec(5))
        b.sync()
        a.close()
        b.close()
        datas = [r.data for r in replay(wdir, 0)]
        assert b"from-the-dead" in datas and rec(5).data in datas
    finally:
        p.terminate()
        assert p.wait(20) == 0


def test_serve_sigterm_drains_syncs_exits_zero_and_cleans_up(wdir):
    p = start_serve(wdir)
    with ringwal.open(Config(dir=wdir)) as h:
        for i in range(100):
            h.append(rec(i))
        h.sync()
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 0
    assert ring_objects(wdir) == []
    assert len(list(replay(wdir, 0))) == 100


def test_second_serve_exits_nonzero_naming_the_holder(wdir):
    p = start_serve(wdir)
    try:
        q = subprocess.run([sys.executable, "-m", "ringwal", "serve", "--dir", wdir], capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert q.returncode != 0
        assert f"pid {p.pid}" in q.stderr
        assert "Traceback" not in q.stderr
    finally:
        p.terminate()
        assert p.wait(20) == 0


def test_serve_with_attached_producer_leaves_ring_for_the_next_writer(wdir):
    p = start_serve(wdir)
    h = ringwal.open(Config(dir=wdir, start_writer=False, writer_wait=0.5))
    h.append(rec(1))
    h.sync()
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 0
    assert ring_objects(wdir), "the ring stays while a producer is attached"
    h.append(rec(2))  # lands in the ring; no writer now
    with pytest.raises(ringwal.WriterGoneError, match="gone"):
        h.sync()
    q = start_serve(wdir)  # a supervisor restarts the writer
    try:
        assert h.sync() == 2
        h.close()
    finally:
        q.terminate()
        assert q.wait(20) == 0
    assert ring_objects(wdir) == []
    assert [r.data for r in replay(wdir, 0)] == [rec(1).data, rec(2).data]
