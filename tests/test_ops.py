"""Operating a log: stats, dump, tail (-f), append, truncate, retention, follow.

Driven as a user would: the ``ringwal`` command in a subprocess, a real writer (``ringwal
serve`` or the one ``ringwal.open`` starts), real files, exit codes checked.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading

import pytest

import ringwal
from ringwal import Config, Record, replay, verify
from ringwal.segment import list_segments

from .conftest import ROOT, rec, write_log
from .ringhelp import ctrl_c_able, start_serve, wait_exit, wait_until
from .test_cli import ringwal_cli

COMMANDS = ["stats", "dump", "replay", "tail", "verify", "repair", "append", "truncate", "serve"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_a_one_line_error_for_a_missing_dir(command, tmp_path):
    r = ringwal_cli(command, "--help")
    assert r.returncode == 0 and "--dir" in r.stdout
    if command in ("serve", "append"):
        return  # these create the directory
    extra = ["--before", "5"] if command == "truncate" else []
    r = ringwal_cli(command, "--dir", str(tmp_path / "nope"), *extra)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr, r.stderr


def test_stats_of_a_log_without_a_writer(tmp_path):
    d = write_log(str(tmp_path / "wal"), 100).dir
    r = ringwal_cli("stats", "--dir", d, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert (st["first_seq"], st["last_seq"], st["records"]) == (1, 100, 100)
    assert st["segments"] == len(list_segments(d)) + 1
    assert st["bytes"] == sum(s["bytes"] for s in st["segment_files"])
    assert st["writer"] is None and st["serializer"] == "binary"
    r = ringwal_cli("stats", "--dir", d)
    assert "100 record(s), seqs 1-100" in r.stdout and "writer: none running" in r.stdout


def test_stats_with_a_running_writer(wdir):
    p = start_serve(wdir)
    try:
        with ringwal.open(Config(dir=wdir, start_writer=False)) as h:
            for i in range(50):
                h.append(rec(i))
            assert h.sync() == 50
            r = ringwal_cli("stats", "--dir", wdir, "--json")
            assert r.returncode == 0, r.stderr
            w = json.loads(r.stdout)["writer"]
            assert w["pid"] == p.pid and w["durable_seq"] == 50 and w["next_seq"] == 51
            assert [x["pid"] for x in w["producers"]] == [os.getpid()]
            assert w["fsyncs"] >= 1 and 0 < w["fsync_p50_le_us"] <= w["fsync_p99_le_us"] <= w["fsync_p999_le_us"]
            assert 0 <= w["ring_fill"] < 1 and w["uptime_s"] >= 0 and w["records_written"] == 50
            text = ringwal_cli("stats", "--dir", wdir).stdout
            assert f"writer: pid {p.pid}" in text and "1 producer(s) attached" in text and "fsync:" in text
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0


def test_dump_formats_text_and_binary_data(tmp_path):
    d = str(tmp_path / "wal")
    with ringwal.WAL(Config(dir=d)) as w:
        w.append(Record(7, 1_700_000_000_123_456_789, "héllo".encode()))
        w.append(Record(8, 1_700_000_000_000_000_000, b"\xff\x00\x01"))
    rows = [json.loads(x) for x in ringwal_cli("dump", "--dir", d).stdout.splitlines()]
    assert rows[0] == {
        "seq": 1, "type": 7, "time": 1_700_000_000_123_456_789, "text": "héllo", "base64": base64.b64encode("héllo".encode()).decode()
    }  # fmt: skip
    assert rows[1].keys() == rows[0].keys(), "every row has the same keys (jq filters never miss one)"
    assert base64.b64decode(rows[1]["base64"]) == b"\xff\x00\x01" and rows[1]["text"] is None
    text = ringwal_cli("dump", "--dir", d, "--format", "text", "--after", "0", "--limit", "1").stdout
    assert text == "1\t7\t2023-11-14T22:13:20.123456789Z\théllo\n"


def test_append_lines_from_stdin_through_the_writer(wdir):
    data = "".join(f"line {i}\n" for i in range(1000)) + "last line without newline"
    r = subprocess.run(
        [sys.executable, "-m", "ringwal", "append", "--dir", wdir, "--type", "42"],
        input=data, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "appended 1001 record(s): seqs 1-1001" in r.stderr
    got = list(replay(wdir))
    assert [x.data.decode() for x in got] == [f"line {i}" for i in range(1000)] + ["last line without newline"]
    assert {x.type for x in got} == {42}
    r = subprocess.run([sys.executable, "-m", "ringwal", "append", "--dir", wdir, "--type", "0"], input="x\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--type" in r.stderr
    assert len(list(replay(wdir))) == 1001  # nothing half-written


def test_tail_prints_the_last_records(tmp_path):
    d = write_log(str(tmp_path / "wal"), 30).dir
    rows = [json.loads(x)["seq"] for x in ringwal_cli("tail", "--dir", d, "-n", "3").stdout.splitlines()]
    assert rows == [28, 29, 30]
    rows = [json.loads(x)["seq"] for x in ringwal_cli("tail", "--dir", d, "--after", "25").stdout.splitlines()]
    assert rows == [26, 27, 28, 29, 30]


class LineReader:
    """Lines a child prints, collected by a thread; ``take(n)`` waits (bounded) for n more."""

    def __init__(self, stream) -> None:
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.q.put(line)
        self.q.put(None)

    def take(self, n: int, timeout: float = 30.0) -> list[str]:
        out = []
        for _ in range(n):
            line = self.q.get(timeout=timeout)
            assert line is not None, f"the child exited after {out}"
            out.append(line)
        return out


def test_tail_follow_across_rotations_and_a_writer_restart(wdir):
    p = start_serve(wdir, "--segment-size", "4096")
    tail = subprocess.Popen(
        ctrl_c_able("tail", "-f", "--dir", wdir, "--after", "0"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        lines = LineReader(tail.stdout)
        with ringwal.open(Config(dir=wdir, start_writer=False)) as h:
            for i in range(200):  # about 7 segments of 4 KiB
                h.append(rec(i))
                if i % 10 == 9:
                    h.sync()
        got = [json.loads(x)["seq"] for x in lines.take(200)]
        assert got == list(range(1, 201))
        assert len(list_segments(wdir)) >= 5
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        p = start_serve(wdir, "--segment-size", "4096")
        with ringwal.open(Config(dir=wdir, start_writer=False)) as h:
            for i in range(200, 260):
                h.append(rec(i))
            h.sync()
        got = [json.loads(x)["seq"] for x in lines.take(60)]
        assert got == list(range(201, 261))
        tail.send_signal(signal.SIGINT)
        assert wait_exit(tail, 30) == 130  # Ctrl-C, as Unix tools report it
        assert lines.q.get(timeout=30) is None  # nothing printed twice after the last record
    finally:
        if tail.poll() is None:
            tail.kill()
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)


def test_follow_yields_only_durable_records_while_a_writer_runs(wdir):
    p = start_serve(wdir)
    try:
        stop = threading.Event()
        got: queue.Queue = queue.Queue()

        def run():
            for r in ringwal.follow(wdir, 0, stop=stop, poll_interval=0.05):
                got.put(r.seq)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        with ringwal.open(Config(dir=wdir, start_writer=False)) as h:
            for i in range(10):
                h.append(rec(i))
            h.flush()  # written to current.wal, not yet fsynced
            stats_writer = lambda: json.loads(ringwal_cli("stats", "--dir", wdir, "--json").stdout)["writer"]  # noqa: E731
            wait_until(lambda: stats_writer()["followers"] >= 1, what="follower registered")
            assert stats_writer()["durable_seq"] == 0
            assert got.empty()
            assert h.sync() == 10
            assert [got.get(timeout=30) for _ in range(10)] == list(range(1, 11))
        stop.set()
        t.join(timeout=30)
        assert not t.is_alive()
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0


def test_follow_without_a_writer_reads_the_files(tmp_path):
    d = write_log(str(tmp_path / "wal"), 50).dir
    assert [r.seq for r in itertools.islice(ringwal.follow(d, 20), 30)] == list(range(21, 51))


def test_truncate_command_removes_whole_completed_segments_only(tmp_path):
    d = write_log(str(tmp_path / "wal"), 100).dir
    entries = json.load(open(os.path.join(d, "wal_index.json")))["segments"]
    cut = entries[2]["last_seq"] + 2  # inside the 4th segment
    r = ringwal_cli("truncate", "--dir", d, "--before", str(cut))
    assert r.returncode == 0, r.stderr
    assert [ln.split()[1] for ln in r.stdout.splitlines()] == [e["file"] for e in entries[:3]]
    assert f"now starts at seq {entries[3]['first_seq']}" in r.stderr
    assert [n for _, n in list_segments(d)] == [e["file"] for e in entries[3:]]
    assert [x.seq for x in replay(d, cut - 1)] == list(range(cut, 101))
    assert [x.seq for x in replay(d)][0] == entries[3]["first_seq"]
    assert verify(d).ok
    r = ringwal_cli("truncate", "--dir", d, "--before", "1000000")  # never the active segment
    assert r.returncode == 0 and os.path.exists(os.path.join(d, "current.wal"))
    assert [x.seq for x in replay(d)][-1] == 100


def test_handle_truncate_before_goes_through_the_writer(wdir):
    p = start_serve(wdir, "--segment-size", "4096")
    try:
        with ringwal.open(Config(dir=wdir, start_writer=False)) as h:
            for i in range(300):
                h.append(rec(i))
                if i % 10 == 9:
                    h.sync()  # small frames, so that segments fill and rotate
            before = list_segments(wdir)
            assert len(before) >= 5
            first = h.truncate_before(150)
            assert 1 < first <= 150
            assert [x.seq for x in replay(wdir, 149)] == list(range(150, 301))
            assert [x.seq for x in replay(wdir)][0] == first
            r = ringwal_cli("truncate", "--dir", wdir, "--before", "250")  # the CLI asks the running writer
            assert r.returncode == 0, r.stderr
            assert [x.seq for x in replay(wdir, 249)] == list(range(250, 301))
            h.append(rec(999))
            assert h.sync() == 301
        assert verify(wdir).ok
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0


def test_retention_by_bytes_is_applied_by_the_writer(wdir):
    cfg = Config(dir=wdir, segment_size=4096, retention_max_bytes=16384, writer_linger=0.0)
    with ringwal.open(cfg) as h:
        for i in range(400):
            h.append(rec(i))
            if i % 50 == 49:
                h.sync()

        def total():
            size = 0
            for _, n in list_segments(wdir):
                try:
                    size += os.path.getsize(os.path.join(wdir, n))
                except FileNotFoundError:
                    pass  # removed by retention since the listing
            return size

        wait_until(lambda: total() <= 16384, what="retention to remove old segments")
    got = [x.seq for x in replay(wdir)]
    assert got[-1] == 400 and got == list(range(got[0], 401)) and got[0] > 1
    assert verify(wdir).ok


def test_verify_draws_a_progress_bar_only_on_a_terminal(tmp_path, monkeypatch):
    from ringwal import cli

    d = write_log(str(tmp_path / "wal"), 100).dir
    master, slave = os.openpty()
    try:
        with open(slave, "w", closefd=False) as tty:
            monkeypatch.setattr(sys, "stderr", tty)
            monkeypatch.setattr(cli._Progress, "MIN_BYTES", 0)
            bar = cli._Progress()
            assert verify(d, progress=bar).ok
            bar.done()
            tty.flush()
        # A pty hands over what it holds in chunks: read until the full bar arrives (bounded).
        drawn = ""
        while "########################################]" not in drawn and select.select([master], [], [], 5)[0]:
            drawn += os.read(master, 1 << 16).decode()
    finally:
        os.close(master)
        os.close(slave)
    assert "verifying [" in drawn and "########################################]" in drawn
    # not a terminal (a pipe, as in CI): nothing is drawn
    r = ringwal_cli("verify", "--dir", d)
    assert r.returncode == 0 and "verifying [" not in r.stderr


def test_retention_by_age_removes_completed_segments_closed_too_long_ago(tmp_path, clock):
    d = str(tmp_path / "wal")
    with ringwal.WAL(Config(dir=d, segment_size=2048), clock=clock, monotonic=clock.monotonic) as w:
        for i in range(40):
            w.append(rec(i))
            w.flush()
        old = [n for _, n in list_segments(d)]
        clock.advance(100)
        for i in range(40, 80):
            w.append(rec(i))
            w.flush()
        assert w.apply_retention(None, 150.0)[0] == []  # nothing is that old yet
        clock.advance(60)
        removed, first = w.apply_retention(None, 150.0)
        assert [e.file for e in removed] == old
        assert first == removed[-1].last_seq + 1
        assert [n for _, n in list_segments(d)] and not set(old) & {n for _, n in list_segments(d)}
    assert [x.seq for x in replay(d)] == list(range(first, 81))
    assert verify(d).ok


def test_verify_is_clean_while_the_writer_rotates_and_removes_segments(wdir):
    """The index is replaced a few fsyncs after each rotation and each retention removal;
    verify running meanwhile must not call that window corruption."""
    from .conftest import spawn_child
    from .ringhelp import PRODUCER, collect

    p = start_serve(wdir, "--segment-size", "4096", "--retention-max-bytes", "20000")
    try:
        child = spawn_child(PRODUCER, wdir, "v", "6000", "5", "0")
        checked = 0
        while child.poll() is None or checked < 3:
            report = verify(wdir)
            assert report.ok, [str(x) for x in report.problems]
            checked += 1
        top, lines = collect(child)
        assert top == 5999, lines
        assert checked >= 3
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
