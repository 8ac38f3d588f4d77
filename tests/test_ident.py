"""A log's identity (issue 12 item 2): a random id chosen once, in every segment header."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

import ringwal
from ringwal import WAL, Config, CorruptSegmentError, ForeignRingError, NoLogError
from ringwal.format import SEGMENT_HEADER_SIZE, SegmentHeader
from ringwal.index import reconcile, write_index
from ringwal.ring import unlink_names
from ringwal.segment import CURRENT, list_segments

from .conftest import ROOT, rec, run_child, write_log
from .ringhelp import to_version_1


def seg_paths(d: str) -> list[str]:
    return [os.path.join(d, n) for _, n in list_segments(d)] + [os.path.join(d, CURRENT)]


def test_log_id_is_32_hex_chosen_once_and_kept_by_rotation_and_reopen(tmp_path):
    d = str(tmp_path / "wal")
    write_log(d, 60)  # several rotations
    lid = ringwal.log_id(d)
    assert re.fullmatch(r"[0-9a-f]{32}", lid)
    assert len(seg_paths(d)) > 3
    for p in seg_paths(d):
        assert SegmentHeader.decode(open(p, "rb").read(SEGMENT_HEADER_SIZE), p).log_id == bytes.fromhex(lid)
    with WAL(Config(dir=d, segment_size=2048)) as w:
        w.append(rec(99))
    assert ringwal.log_id(d) == lid
    other = str(tmp_path / "other")
    write_log(other, 1)
    assert ringwal.log_id(other) != lid  # a new log, a new id


def test_log_id_without_a_log_is_no_log_error(tmp_path):
    for d in (tmp_path / "missing", tmp_path):
        with pytest.raises(NoLogError) as info:
            ringwal.log_id(str(d))
        assert info.value.path == str(d)


def test_log_id_while_current_wal_is_missing_mid_rotation(tmp_path):
    d = str(tmp_path / "wal")
    write_log(d, 20)
    lid = ringwal.log_id(d)
    os.unlink(os.path.join(d, CURRENT))  # a crash between rotation steps 2 and 3
    assert ringwal.log_id(d) == lid


def test_version_1_log_reads_and_its_next_writer_gives_it_an_id(tmp_path):
    d = str(tmp_path / "wal")
    write_log(d, 40)
    for p in seg_paths(d):
        to_version_1(p)
    entries, _ = reconcile(d)  # the index's sizes were those of the version 2 files
    write_index(d, "binary", entries, os.fsync)
    before = [(r.seq, r.data) for r in ringwal.replay(d)]
    assert len(before) == 40
    report = ringwal.verify(d)
    assert report.ok, report.problems
    with pytest.raises(NoLogError, match="before log ids"):
        ringwal.log_id(d)
    n_segments = len(list_segments(d))
    with WAL(Config(dir=d, segment_size=2048)) as w:  # current.wal holds records: it is rotated
        w.append(rec(20))
    lid = ringwal.log_id(d)
    assert len(list_segments(d)) == n_segments + 1
    cur = os.path.join(d, CURRENT)
    assert SegmentHeader.decode(open(cur, "rb").read(SEGMENT_HEADER_SIZE), cur).log_id == bytes.fromhex(lid)
    assert [(r.seq, r.data) for r in ringwal.replay(d)] == [*before, (41, rec(20).data)]
    report = ringwal.verify(d)
    assert report.ok, report.problems
    assert report.log_id == lid


def test_empty_version_1_current_wal_is_replaced_by_one_with_an_id(tmp_path):
    d = str(tmp_path / "wal")
    with WAL(Config(dir=d)):
        pass
    to_version_1(os.path.join(d, CURRENT))
    with WAL(Config(dir=d)) as w:
        assert w.append(rec(0)) == 1
    assert not list_segments(d)
    assert len(ringwal.log_id(d)) == 32
    assert [r.seq for r in ringwal.replay(d)] == [1]


def test_segments_of_two_logs_in_one_directory_are_refused(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_log(a, 60)
    write_log(b, 60)  # the same records, seqs and file names: only the ids tell them apart
    name = list_segments(a)[1][1]
    shutil.copyfile(os.path.join(b, name), os.path.join(a, name))
    with pytest.raises(CorruptSegmentError, match="two logs") as info:
        WAL(Config(dir=a, segment_size=2048))
    assert info.value.path == os.path.join(a, name)
    report = ringwal.verify(a)
    assert not report.ok
    assert any(p.path.endswith(name) and "belongs to log" in p.message for p in report.problems)


def test_stats_shows_the_log_id(tmp_path):
    d = str(tmp_path / "wal")
    write_log(d, 3)
    lid = ringwal.log_id(d)
    run = [sys.executable, "-m", "ringwal", "stats", "--dir", d]
    out = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert f"log id {lid}" in out
    js = subprocess.run([*run, "--json"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert json.loads(js)["log_id"] == lid


# ---------------------------------------------------------------- a ring belongs to one log


def ringwal_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ringwal", *args], input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def rings_of(log: str) -> list[dict]:
    return [r for r in json.loads(ringwal_cli("rings", "--json").stdout) if r["log_id"] == log]


def leave_a_record_in_the_ring(d: str) -> None:
    """A writer serves ``d``; a producer appends one record that the writer never drains
    (the writer is stopped, then both are killed): the ring holds it for the next writer."""
    from .ringhelp import start_serve, writer_pid

    w = start_serve(d)
    pid = writer_pid(d)
    os.kill(pid, signal.SIGSTOP)
    try:
        run_child(
            """
            import os, sys, ringwal
            h = ringwal.open(ringwal.Config(dir=sys.argv[1], start_writer=False))
            h.append(ringwal.Record(1, 1, b"OLD"))
            os._exit(0)  # no close: the record stays in the lane
            """,
            d,
        )
    finally:
        os.kill(pid, signal.SIGKILL)
        w.wait(30)


def test_a_new_log_in_a_reused_inode_never_sees_the_old_logs_ring(tmp_path):
    """The issue's input: delete a log whose ring still holds a record, make a new directory
    that gets the same inode, append NEW: the new log holds NEW alone, at seq 1."""
    old = str(tmp_path / "old")
    leave_a_record_in_the_ring(old)
    old_id, ino = ringwal.log_id(old), os.stat(old).st_ino
    assert [r["unwritten"] for r in rings_of(old_id)] == [1]
    shutil.rmtree(old)
    new = None
    for i in range(20):  # ext4 and tmpfs hand a freed inode to the next directory made
        cand = str(tmp_path / f"new{i}")
        os.mkdir(cand, 0o700)
        if os.stat(cand).st_ino == ino:
            new = cand
            break
    if new is None:
        pytest.skip("this file system did not reuse the deleted directory's inode")
    try:
        r = ringwal_cli("append", "--dir", new, stdin="NEW\n")
        assert r.returncode == 0, r.stderr
        out = ringwal_cli("dump", "--dir", new, "--format", "text").stdout.splitlines()
        assert [line.split("\t")[0::3] for line in out] == [["1", "NEW"]]
        assert ringwal.log_id(new) != old_id
        # The old log's ring is an orphan now: listed, kept by --clean (it holds a record the
        # log would want if its directory had only moved), removed by --clean --force.
        (info,) = rings_of(old_id)
        assert info["verdict"] == "orphan" and info["unwritten"] == 1 and info["directory"] == old
        ringwal_cli("rings", "--clean")
        assert len(rings_of(old_id)) == 1
        r = ringwal_cli("rings", "--clean", "--force")
        assert "1 unwritten record(s) lost" in r.stderr
        assert rings_of(old_id) == []
    finally:
        for info in rings_of(old_id):
            ringwal_cli("rings", "--remove", info["name"])


def test_a_writer_removes_only_the_ring_it_opened(tmp_path):
    """While a writer serves, its ring's name comes to name another object (someone removed
    the ring and another writer made a new one): on shutdown the writer leaves that alone."""
    import posix_ipc

    from ringwal.ring import ring_names

    from .ringhelp import start_serve

    d = str(tmp_path / "wal")
    w = start_serve(d)
    name, _sem = ring_names(d)
    try:
        posix_ipc.unlink_shared_memory(name)
        other = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=4096)
        other.close_fd()
        w.terminate()
        assert w.wait(30) == 0
        assert os.path.exists("/dev/shm" + name), "the writer removed a ring it had not opened"
    finally:
        w.kill()
        w.wait(30)
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_shared_memory(name)
        unlink_names(d)


@pytest.mark.parametrize("word", ["log id", "inode"])
def test_a_ring_recording_another_log_is_refused_by_producers_and_writers(tmp_path, word):
    from ringwal.format import RH_DIR_INO, RH_LOG_ID
    from ringwal.ring import WriterSide

    d = str(tmp_path / "wal")
    WAL(Config(dir=d)).close()
    side = WriterSide.open(d, 2, 1 << 16, 1000, "binary", lambda point: None)
    ring = side.ring
    if word == "log id":
        ring.buf[RH_LOG_ID * 8] ^= 0xFF
    else:
        ring.words[RH_DIR_INO] += 1
    side.publish_ready()  # a writer byte held: producers would attach if they trusted it
    try:
        with pytest.raises(ForeignRingError, match="not of log") as info:
            ringwal.open(Config(dir=d, start_writer=False, writer_wait=1))
        assert info.value.path == "/dev/shm" + ring.name
        r = ringwal_cli("serve", "--dir", d)
        assert r.returncode == 1 and "Traceback" not in r.stderr and "not of log" in r.stderr
        assert f"ringwal rings --remove {ring.name.lstrip('/')}" in r.stderr
        assert os.path.exists("/dev/shm" + ring.name)  # refused, not removed: whatever it holds stays
    finally:
        ring.unlink()
        side.close()
        unlink_names(d)


def test_rings_of_logs_that_are_gone_are_listed_and_the_next_writer_removes_them(tmp_path):
    from .ringhelp import kill_writers, start_serve, writer_pid

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    start_serve(a)
    os.kill(writer_pid(a), signal.SIGKILL)  # leaves its ring, empty
    lid = ringwal.log_id(a)
    (info,) = rings_of(lid)
    assert info["verdict"] == "idle" and info["directory"] == a and info["unwritten"] == 0
    shutil.rmtree(a)
    (info,) = rings_of(lid)
    assert info["verdict"] == "orphan" and "is gone" in info["why"]
    wb = start_serve(b)  # any writer, of any log, removes orphans that hold nothing
    try:
        assert rings_of(lid) == []
        (mine,) = rings_of(ringwal.log_id(b))
        assert mine["verdict"] == "live"
    finally:
        wb.terminate()
        wb.wait(30)
        kill_writers(b)


# ---------------------------------------------------------------- the directory goes away


@pytest.mark.parametrize("how", ["removed", "moved"])
def test_a_writer_whose_directory_goes_stops_and_fails_pending_syncs(tmp_path, how):
    """rm -r or mv of the log directory while a writer serves it and a producer waits in
    sync: the writer acknowledges nothing more, fails the wait with LogGoneError, removes its
    ring and exits non-zero saying what happened."""
    import threading

    from ringwal.ring import ring_names

    from .ringhelp import start_serve, writer_pid

    d = str(tmp_path / "wal")
    w = start_serve(d)
    name, sem = ring_names(d)
    pid = writer_pid(d)
    h = ringwal.open(Config(dir=d, start_writer=False, writer_wait=2))
    try:
        h.append(rec(0))
        assert h.sync() == 1
        os.kill(pid, signal.SIGSTOP)  # so that the sync below is pending when the directory goes
        h.append(rec(1))
        got: dict[str, BaseException | int] = {}

        def sync() -> None:
            try:
                got["result"] = h.sync()
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                got["result"] = exc

        t = threading.Thread(target=sync)
        t.start()
        if how == "removed":
            shutil.rmtree(d)
        else:
            os.rename(d, d + "-moved")
        os.kill(pid, signal.SIGCONT)
        assert w.wait(60) != 0
        err = w.stderr.read()
        assert f"{d}: the log directory was {'removed' if how == 'removed' else 'moved or replaced'}" in err, err
        t.join(60)
        assert isinstance(got["result"], ringwal.LogGoneError), got
        assert not os.path.exists("/dev/shm" + name) and not os.path.exists("/dev/shm/sem." + sem.lstrip("/"))
        with pytest.raises(ringwal.LogGoneError):
            h.sync()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        w.kill()
        w.wait(30)
        with contextlib.suppress(ringwal.WALError):
            h.close()
    if how == "moved":  # what the writer had written is in the files where they are now
        assert [r.seq for r in ringwal.replay(d + "-moved")][:1] == [1]


def test_a_producer_finds_the_directory_gone_when_its_writer_died_too(tmp_path):
    from .ringhelp import start_serve, writer_pid

    d = str(tmp_path / "wal")
    w = start_serve(d)
    h = ringwal.open(Config(dir=d, writer_wait=5))  # start_writer=True: it would start a new one
    try:
        h.append(rec(0))
        os.kill(writer_pid(d), signal.SIGKILL)
        w.wait(30)
        lid = ringwal.log_id(d)
        shutil.rmtree(d)
        with pytest.raises(ringwal.LogGoneError, match="removed or moved"):
            h.sync()
        assert not os.path.exists(d)  # no writer was started to make a new log there
    finally:
        with contextlib.suppress(ringwal.WALError):
            h.close()
        for info in rings_of(lid):
            ringwal_cli("rings", "--remove", info["name"])


def test_producers_opening_a_fresh_directory_at_once_make_one_log_with_one_id(tmp_path):
    from .ringhelp import PRODUCER, check_log, collect, kill_writers, spawn

    d = str(tmp_path / "fresh")  # does not exist yet: every producer races to create it
    procs = [spawn(PRODUCER, d, f"p{i}", "50", "10") for i in range(4)]
    try:
        results = [collect(p) for p in procs]
        assert all(p.returncode == 0 for p in procs), results
        check_log(d, {f"p{i}": 49 for i in range(4)}, {f"p{i}": 50 for i in range(4)})
        ids = {SegmentHeader.decode(open(p, "rb").read(SEGMENT_HEADER_SIZE), p).log_id for p in seg_paths(d)}
        assert ids == {bytes.fromhex(ringwal.log_id(d))}
    finally:
        kill_writers(d)
