"""Readers racing retention: segments removed (by ``retention_max_bytes``, ``truncate_before``
or ``ringwal truncate``) while replay, follow, stats, verify, dump or tail read the log.

The rule under test: a reader never skips a seq silently. ``after_seq=0`` starts at the first
record still in the log; a position whose next seq is gone, before or while reading, raises
RecordsRemovedError (first seq gone, first seq available, the directory, the remedy) after
every seq before it was yielded; a segment already open is read to its end (an unlinked
file stays readable through its descriptor); a file that vanishes between a listing and its
opening never escapes as a raw FileNotFoundError.

Readers are paused by holding their iterator, never by sleeping; the removals are real (a
real ``ringwal serve`` with retention, the writer's ``truncate_before``, the CLI).
"""

from __future__ import annotations

import importlib
import os
import signal

import pytest

import ringwal
from ringwal import WAL, Config, Record, RecordsRemovedError, follow, replay, verify
from ringwal.index import INDEX_NAME
from ringwal.segment import list_segments, read_header
from ringwal.stats import log_stats

from .conftest import write_log
from .ringhelp import start_serve, wait_until
from .test_cli import ringwal_cli


def names(d: str) -> list[str]:
    return [n for _, n in list_segments(d)]


def firsts(d: str) -> list[int]:
    """The first seq of each completed segment, oldest first."""
    return [read_header(os.path.join(d, n)).first_seq for n in names(d)]


def append_some(h: ringwal.Handle, n: int, start: int = 0) -> int:
    """Append ``n`` records, syncing every 10 (small frames, so segments fill); the last seq."""
    last = 0
    for i in range(start, start + n):
        h.append(Record(1, i, b"r%d|" % i + bytes(100)))
        if i % 10 == 9:
            last = h.sync()
    return h.sync() if n % 10 else last


def drain_checked(it, got: list[int], last: int | None = None) -> None:
    """Take records from ``it`` into ``got``, failing at once on any seq that does not follow;
    stop after seq ``last`` (a follower never ends by itself)."""
    for r in it:
        assert not got or r.seq == got[-1] + 1, f"skipped from seq {got[-1]} to {r.seq} without an error"
        got.append(r.seq)
        if r.seq == last:
            return


# ---------------------------------------------------------------- paused readers, a real writer


@pytest.fixture
def retaining_writer(wdir):
    """A real ``ringwal serve`` with 4 KiB segments that keeps at most 16 KiB of them."""
    p = start_serve(wdir, "--segment-size", "4096", "--retention-max-bytes", "16384")
    try:
        with ringwal.open(Config(dir=wdir, start_writer=False)) as h:
            yield wdir, h
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0


def write_until_removed(d: str, h: ringwal.Handle, name: str, start: int) -> int:
    """Append until the writer's retention has removed segment ``name``; the last seq written."""
    state = {"i": start, "last": 0}

    def gone() -> bool:
        if name not in names(d):
            return True
        state["last"] = append_some(h, 50, state["i"])
        state["i"] += 50
        return False

    wait_until(gone, timeout=60, what=f"retention to remove {name}")
    return state["last"]


def test_replay_paused_past_retention_raises_at_the_first_removed_seq(retaining_writer):
    d, h = retaining_writer
    last = append_some(h, 90)  # about 11 KiB: under the retention limit, nothing is removed yet
    assert len(names(d)) >= 2
    second = firsts(d)[1]
    it = replay(d, 0)
    got = [next(it).seq]  # the reader is in the first segment and stops there for a while
    last = max(last, write_until_removed(d, h, names(d)[1], 90))
    with pytest.raises(RecordsRemovedError) as ei:
        drain_checked(it, got)
    e = ei.value
    assert got == list(range(1, second)), "every seq of the open segment, then the error"
    assert (e.first_gone, e.directory) == (second, d)
    assert e.first_available > second
    assert f"starts at seq {e.first_available}" in str(e) and f"after seq {e.first_available - 1}" in str(e)
    assert "retention_max_bytes" in str(e)
    # The remedy works: read again from where the log starts now.
    wait_until(lambda: log_stats(d)["bytes"] <= 16384, what="retention to settle")
    start = next(replay(d, 0)).seq
    assert start >= e.first_available
    assert [r.seq for r in replay(d, start - 1)] == list(range(start, last + 1))


def test_follow_behind_retention_raises_at_the_first_removed_seq(retaining_writer):
    d, h = retaining_writer
    append_some(h, 90)
    assert len(names(d)) >= 2
    second = firsts(d)[1]
    it = follow(d, 0, poll_interval=0.05)
    got = [next(it).seq]
    last = write_until_removed(d, h, names(d)[1], 90)
    with pytest.raises(RecordsRemovedError) as ei:
        drain_checked(it, got, last)
    it.close()
    assert got == list(range(1, second))
    assert ei.value.first_gone == second and ei.value.first_available > second


def test_follow_reads_its_open_current_wal_to_the_end_after_rotation_and_removal(wdir):
    """follow reads current.wal 64 KiB at a time through one descriptor: when that file is
    rotated and then removed, the rest still comes through the descriptor, and the follower
    goes on into the next segment without a gap and without an error."""
    p = start_serve(wdir, "--segment-size", str(1 << 20))
    try:
        with ringwal.open(Config(dir=wdir, start_writer=False)) as h:
            for i in range(2000):  # about 250 KiB in current.wal: several chunks
                h.append(Record(1, i, b"r%d|" % i + bytes(100)))
            first_batch = h.sync()
            d = wdir
            it = follow(d, 0, poll_interval=0.05)
            got = [next(it).seq]
            assert names(d) == []  # the follower reads current.wal through its descriptor
            for i in range(2000, 20000):  # rotates the file the follower has open
                h.append(Record(1, i, b"r%d|" % i + bytes(100)))
            last = h.sync()
            wait_until(lambda: len(names(d)) >= 2, what="two rotations")
            h.truncate_before(firsts(d)[1])  # removes the file the follower reads
            assert "000001.wal" not in names(d) and firsts(d)[0] > first_batch
            drain_checked(it, got, last)
            it.close()
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
    assert got == list(range(1, last + 1))


# ---------------------------------------------------------------- ringwal truncate under a reader


@pytest.mark.parametrize("with_writer", [False, True], ids=["no-writer", "through-the-writer"])
def test_replay_racing_ringwal_truncate(wdir, with_writer):
    d = wdir
    write_log(d, 100)
    seg_firsts = firsts(d)
    p = start_serve(d) if with_writer else None
    try:
        it = replay(d, 0)
        got = [next(it).seq]
        # Removing only the open segment changes nothing for the reader ...
        r = ringwal_cli("truncate", "--dir", d, "--before", str(seg_firsts[1]))
        assert r.returncode == 0, r.stderr
        drain_checked(it, got)
        assert got == list(range(1, 101))
        # ... removing the next one before the reader opens it is an error at that seq.
        it = replay(d, seg_firsts[1] - 1)
        got = [next(it).seq]
        r = ringwal_cli("truncate", "--dir", d, "--before", str(seg_firsts[3]))
        assert r.returncode == 0, r.stderr
        with pytest.raises(RecordsRemovedError) as ei:
            drain_checked(it, got)
        assert got == list(range(seg_firsts[1], seg_firsts[2]))
        assert (ei.value.first_gone, ei.value.first_available) == (seg_firsts[2], seg_firsts[3])
    finally:
        if p is not None:
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=30) == 0
    assert verify(d).ok


# ---------------------------------------------------------------- where a reader starts


@pytest.fixture
def truncated(tmp_path):
    """A log of 100 records whose first three segments were removed; (dir, its first seq)."""
    d = write_log(str(tmp_path / "wal"), 100).dir
    cut = firsts(d)[3]
    r = ringwal_cli("truncate", "--dir", d, "--before", str(cut))
    assert r.returncode == 0, r.stderr
    return d, cut


def test_from_the_start_is_the_first_record_still_in_the_log(truncated):
    d, first = truncated
    assert [r.seq for r in replay(d, 0)] == list(range(first, 101))
    assert [r.seq for r in replay(d, first - 1)] == list(range(first, 101))
    with WAL(Config(dir=d, segment_size=2048)) as w:
        seen: list[int] = []
        assert w.replay_from(0, lambda r: seen.append(r.seq)) == 101 - first
    it = follow(d, 0, poll_interval=0.05)
    assert next(it).seq == first
    it.close()


@pytest.mark.parametrize("reader", ["replay", "follow", "WAL.replay_from"])
def test_a_position_below_the_first_seq_raises_instead_of_starting_later(truncated, reader):
    d, first = truncated
    with pytest.raises(RecordsRemovedError) as ei:
        if reader == "replay":
            next(replay(d, 5))
        elif reader == "follow":
            next(follow(d, 5, poll_interval=0.05))
        else:
            with WAL(Config(dir=d, segment_size=2048)) as w:
                w.replay_from(5, lambda r: None)
    e = ei.value
    assert (e.first_gone, e.first_available, e.directory) == (6, first, d)
    assert f"seqs 6-{first - 1} were removed" in str(e)


def test_cli_dump_below_the_first_seq_fails_and_tail_starts_at_the_first(truncated):
    d, first = truncated
    r = ringwal_cli("dump", "--dir", d, "--after", "5")
    assert r.returncode == 1 and r.stdout == ""  # a runtime failure (cli.py: 1), not a usage error
    assert "removed by retention" in r.stderr and f"after seq {first - 1}" in r.stderr
    r = ringwal_cli("dump", "--dir", d, "--format", "text")
    assert r.returncode == 0 and r.stdout.split("\t", 1)[0] == str(first)
    r = ringwal_cli("tail", "--dir", d, "-n", "1000", "--format", "text")
    assert r.returncode == 0, r.stderr
    assert [int(x.split("\t", 1)[0]) for x in r.stdout.splitlines()] == list(range(first, 101))


# ---------------------------------------------------------------- removed between listing and opening
#
# The removal must land at one exact point inside a reader: the tests wrap the name a reader
# module calls there and run the real removal (the writer's truncate_before on the real
# files) right after it, as test_replay_live does for a rotation.


@pytest.fixture
def live_log(tmp_path):
    """A log of 100 records held open by an in-process writer (which can remove segments)."""
    cfg = Config(dir=str(tmp_path / "wal"), segment_size=2048)
    write_log(cfg.dir, 100)
    with WAL(cfg) as w:
        yield cfg.dir, w


def after_first_call(monkeypatch, module: str, name: str, action) -> list[bool]:
    mod = importlib.import_module(module)
    real = getattr(mod, name)
    done: list[bool] = []

    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        if not done:
            done.append(True)
            action()
        return out

    monkeypatch.setattr(mod, name, wrapped)
    return done


def test_stats_while_retention_removes_segments_it_has_listed(live_log, monkeypatch):
    """The index is missing (so every segment is scanned) and the two oldest segments go
    right after stats read the first one's header: no FileNotFoundError, and the figures
    describe the log without them."""
    d, w = live_log
    os.unlink(os.path.join(d, INDEX_NAME))
    cut = firsts(d)[2]
    done = after_first_call(monkeypatch, "ringwal.index", "read_header", lambda: w.truncate_before(cut))
    st = log_stats(d)
    assert done
    assert (st["first_seq"], st["last_seq"], st["records"]) == (cut, 100, 101 - cut)
    assert [s["file"] for s in st["segment_files"][:-1]] == names(d)


@pytest.mark.parametrize("after", [0, 20])
def test_replay_planned_before_a_removal(live_log, monkeypatch, after):
    """Segments removed right after replay planned: from the start it begins at the new first
    seq; from a position inside a removed segment it raises, having yielded nothing."""
    d, w = live_log
    cut = firsts(d)[3]
    assert after < cut
    done = after_first_call(monkeypatch, "ringwal.replay", "reconcile", lambda: w.truncate_before(cut))
    if after == 0:
        assert [r.seq for r in replay(d, after)] == list(range(cut, 101))
    else:
        with pytest.raises(RecordsRemovedError) as ei:
            list(replay(d, after))
        assert (ei.value.first_gone, ei.value.first_available) == (after + 1, cut)
    assert done


@pytest.mark.parametrize("how", ["retention", "not-retention"])
def test_verify_tells_retention_from_a_segment_going_missing(live_log, monkeypatch, how):
    """A segment gone between verify's listing and its opening is retention only if every
    older one went too (retention removes the oldest first); otherwise records are missing."""
    d, w = live_log
    segs, seg_firsts = names(d), firsts(d)
    if how == "retention":
        action = lambda: w.truncate_before(seg_firsts[2])  # noqa: E731
    else:
        action = lambda: os.unlink(os.path.join(d, segs[2]))  # noqa: E731
    # verify lists twice only when the writer rotates; the removal follows its first listing
    done = after_first_call(monkeypatch, "ringwal.verify", "list_segments", action)
    report = verify(d)
    assert done
    problems = [str(p) for p in report.problems if "disappeared while verify ran" in p.message]
    if how == "retention":
        assert problems == [] and any("removed while verify ran (retention)" in n for n in report.notes)
    else:
        assert len(problems) == 1 and segs[2] in problems[0] and segs[1] in problems[0]


def test_cli_tail_starts_at_the_first_seq_when_retention_moves_it_after_stats(live_log, monkeypatch, capsys):
    """``tail -n N`` picks its start from stats; segments removed before it reads them move
    the start to where the log now starts (what "the last N" asks for), not an error."""
    from ringwal import cli

    d, w = live_log
    cut = firsts(d)[3]
    done = after_first_call(monkeypatch, "ringwal.stats", "log_stats", lambda: w.truncate_before(cut))
    assert cli.main(["tail", "--dir", d, "-n", "95", "--format", "text"]) == 0  # from seq 6
    assert done
    assert [int(x.split("\t", 1)[0]) for x in capsys.readouterr().out.splitlines()] == list(range(cut, 101))
