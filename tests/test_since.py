"""Reading by time: ``replay``/``follow``/``ringwal dump|tail --since`` (``ringwal/since.py``).

The rule under test: ``since=T`` yields the log, in seq order, from the first record whose
``time >= T`` on (``dropwhile``), skipping unread the completed segments the writer closed
before ``T - clock_skew``. Checked against a brute-force ``dropwhile`` over the whole log,
with times that are not monotonic in seq order, with two real producer processes whose
clocks differ (one behind, one ahead of the writer), and for what the rule says happens to
a producer further ahead than ``clock_skew``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from itertools import dropwhile

import pytest

import ringwal
import ringwal.aio
from ringwal import WAL, Config, Record, replay
from ringwal.index import INDEX_NAME, load_index
from ringwal.since import parse_time, start_after, to_ns

from .conftest import ROOT, FakeClock, spawn_child
from .ringhelp import start_serve

S = 1_000_000_000
BASE = 1_800_000_000 * S


def brute(d: str, since: int, after: int = 0) -> list[int]:
    return [r.seq for r in dropwhile(lambda r: r.time < since, replay(d, after))]


def seqs(records) -> list[int]:
    return [r.seq for r in records]


def test_parse_time_iso_with_zone_fractions_and_ns():
    assert parse_time("2026-11-30T10:00:00Z") == to_ns(datetime(2026, 11, 30, 10, tzinfo=UTC))
    assert parse_time("2026-11-30T11:00:00+01:00") == parse_time("2026-11-30T10:00:00Z")
    assert parse_time("2026-11-30T10:00:00.123456789Z") == parse_time("2026-11-30T10:00:00Z") + 123_456_789
    assert parse_time("2026-11-30T10:00:00.5-0130") == parse_time("2026-11-30T11:30:00.5Z")
    assert parse_time("1764496800000000000") == 1_764_496_800 * S
    assert parse_time("1970-01-01T00:00:00Z") == 0
    with pytest.raises(ValueError, match="no zone"):
        parse_time("2026-11-30T10:00:00")
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("yesterday")
    with pytest.raises(ValueError, match="naive"):
        to_ns(datetime(2026, 11, 30))
    aware = datetime(2026, 11, 30, 10, tzinfo=timezone(timedelta(hours=2)))
    assert to_ns(aware) == parse_time("2026-11-30T08:00:00Z")


def build(d: str, n: int = 400, *, ahead: float = 0.5, behind: float = 3.0, seed: int = 7) -> list[Record]:
    """A log of ``n`` records written one second apart by a fake writer clock, each stamped
    with that time plus a jitter in [-behind, +ahead] seconds (clocks that disagree); a
    segment holds about 15 records."""
    rng = random.Random(seed)
    clock = FakeClock(start_ns=BASE)
    out = []
    with WAL(Config(dir=d, segment_size=1024), clock=clock) as w:
        for i in range(n):
            clock.advance(1.0)
            t = clock.now + int(rng.uniform(-behind, ahead) * S)
            r = Record(1, t, b"r%04d" % i + bytes(20))
            w.append(r)
            w.flush()
            out.append(r)
    return out


def test_since_starts_at_the_first_record_at_or_after_the_time_in_seq_order(tmp_path):
    d = str(tmp_path / "wal")
    recs = build(d)
    times = [r.time for r in recs]
    assert times != sorted(times)  # not monotonic in seq order
    segments = len(load_index(d)[0] or [])
    assert segments > 20
    below = 0
    for k in range(0, 400, 11):
        for since in (times[k] - 1, times[k], times[k] + 1):
            got = list(replay(d, since=since))
            assert seqs(got) == brute(d, since), since
            assert got[0].time >= since
            # every record after the start is yielded, whatever its time
            below += any(r.time < since for r in got[1:])
    assert below > 10
    mid = BASE + 200 * S
    # Segments closed before since - clock_skew were skipped without being read.
    skipped = start_after(d, mid)
    assert skipped > 150, skipped
    assert all(r.time < mid for r in replay(d) if r.seq <= skipped)
    # Before every record: all of them; after every record: none.
    assert seqs(replay(d, since=0)) == list(range(1, 401))
    assert seqs(replay(d, since=BASE + 10_000 * S)) == []
    # after_seq and since together: records after after_seq, from the first with time >= since.
    assert seqs(replay(d, 250, since=mid)) == brute(d, mid, 250)
    assert seqs(replay(d, since=mid, clock_skew=math.inf)) == brute(d, mid)
    assert seqs(replay(d, since=datetime.fromtimestamp(200 + BASE // S, tz=UTC))) == brute(d, mid)
    assert seqs(replay(d, since="1970-01-01T00:00:00Z")) == list(range(1, 401))
    for bad in ({"since": True}, {"since": 1.5}, {"since": mid, "clock_skew": -1}):
        with pytest.raises(ValueError):
            replay(d, **bad)


def test_since_without_closed_times_in_the_index_uses_the_next_segments_created_time(tmp_path):
    d = str(tmp_path / "wal")
    build(d)
    os.unlink(os.path.join(d, INDEX_NAME))  # readers rebuild entries from headers: no closed_ns
    mid = BASE + 200 * S
    assert start_after(d, mid) > 150
    assert seqs(replay(d, since=mid)) == brute(d, mid)


def test_a_producer_further_ahead_than_clock_skew_can_be_passed_over_as_the_start(tmp_path):
    """The documented limit: a record stamped 30 s ahead of the writer sits in a segment
    closed long before ``since``; with clock_skew=1 s that segment is skipped, so the start
    is the first record with time >= since after it. A clock_skew covering 30 s finds it."""
    d = str(tmp_path / "wal")
    clock = FakeClock(start_ns=BASE)
    with WAL(Config(dir=d, segment_size=1024), clock=clock) as w:
        for i in range(300):
            clock.advance(1.0)
            t = clock.now + (30 * S if i == 20 else 0)  # one record from a clock 30 s ahead
            w.append(Record(1, t, b"r%04d" % i + bytes(20)))
            w.flush()
    since = BASE + 40 * S  # record 20 (seq 21) says BASE + 51 s; records 39.. say >= since
    assert brute(d, since)[0] == 21
    got = seqs(replay(d, since=since))
    assert got[0] == 40  # the rule: seq 21's segment was closed before since - 1 s
    assert got == brute(d, since, start_after(d, since))
    assert seqs(replay(d, since=since, clock_skew=31)) == brute(d, since)


#: A producer that stamps each record with its own clock: time.time_ns() + OFFSET seconds.
SKEWED = """
import sys, time, ringwal
d, tag, offset, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
h = ringwal.open(ringwal.Config(dir=d, start_writer=False, writer_wait=10))
for i in range(n):
    h.append(ringwal.Record(1, time.time_ns() + int(offset * 1e9), b"%s:%d|" % (tag.encode(), i) + bytes(30)))
    if i % 10 == 9:
        h.sync()
        time.sleep(0.04)  # paced: the run spans about 3 s of writer time
h.close()
print("done", flush=True)
"""


@pytest.mark.parametrize("offset", [-20.0, 20.0])
def test_two_producers_whose_clocks_differ(wdir, offset):
    """Producer A uses the machine's clock; producer B's runs ``offset`` seconds off. Both
    append through the real writer at once, so their records interleave in seq order."""
    p = start_serve(wdir, "--segment-size", "4096")
    try:
        kids = [spawn_child(SKEWED, wdir, "A", "0", "800"), spawn_child(SKEWED, wdir, "B", str(offset), "800")]
        for k in kids:
            out, err = k.communicate(timeout=120)
            assert "done" in out, err
        recs = list(replay(wdir))
        a = [r for r in recs if r.data.startswith(b"A:")]
        b = [r for r in recs if r.data.startswith(b"B:")]
        assert len(a) == len(b) == 800
        # Interleaved: B's records sit between A's.
        assert b[0].seq < a[-1].seq and a[0].seq < b[-1].seq
        since = a[3 * len(a) // 4].time  # 3/4 through A's run, by the machine's clock
        got = seqs(replay(wdir, since=since))
        skipped = start_after(wdir, since)
        assert skipped > 0  # segments before since - 1 s were not read
        if offset < 0:
            # B is behind: no record is ahead of the writer, so skipping is exact, and B's
            # records after the start (stamped 20 s earlier) are yielded too.
            assert got == brute(wdir, since)
            after = [r for r in recs if r.seq >= got[0]]
            assert any(r.data.startswith(b"B:") and r.time < since for r in after)
        else:
            # B is 20 s ahead: its first record already says >= since, so the exact start is
            # B's first record; that segment was closed before since - 1 s and is skipped:
            # the start is the first record with time >= since after the skipped segments.
            assert brute(wdir, since)[0] == b[0].seq
            assert got == brute(wdir, since, skipped)
            assert got[0] > b[0].seq
            assert seqs(replay(wdir, since=since, clock_skew=60)) == brute(wdir, since)
    finally:
        p.terminate()
        p.communicate(timeout=30)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ringwal", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def test_cli_dump_and_tail_since(tmp_path):
    d = str(tmp_path / "wal")
    build(d, 120)
    mid = BASE + 60 * S
    iso = datetime.fromtimestamp(mid // S, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    want = brute(d, mid)
    out = run_cli("dump", "--dir", d, "--since", iso)
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["seq"] for line in out.stdout.splitlines()] == want
    out = run_cli("dump", "--dir", d, "--since", str(mid), "--limit", "3")
    assert [json.loads(line)["seq"] for line in out.stdout.splitlines()] == want[:3]
    out = run_cli("tail", "--dir", d, "--since", iso, "--format", "text")
    assert [int(line.split("\t")[0]) for line in out.stdout.splitlines()] == want
    out = run_cli("dump", "--dir", d, "--since", "2026-11-30T10:00:00")
    assert out.returncode == 2 and "no zone" in out.stderr


def test_follow_since_a_future_time_waits_for_the_first_record_at_or_after_it(wdir):
    """No record has time >= since yet: follow yields nothing; then a record at since comes,
    and it and every record after it (an earlier-stamped one too) are yielded."""
    cfg = Config(dir=wdir, writer_linger=0.5)

    async def main() -> list[bytes]:
        async with ringwal.aio.open(cfg) as log:
            for i in range(20):
                await log.append(Record(1, BASE + i, b"old%d" % i))
            await log.sync()
            got: list[bytes] = []

            async def consume() -> None:
                async for rec in ringwal.aio.follow(wdir, since=BASE + 100, poll_interval=0.05):
                    got.append(rec.data)

            task = asyncio.ensure_future(consume())
            await asyncio.sleep(0.5)
            assert got == []
            await log.append(Record(1, BASE + 5, b"late"))  # below since: not a start
            await log.append(Record(1, BASE + 100, b"start"))
            await log.append(Record(1, BASE + 50, b"after"))  # below since, after the start
            await log.sync()
            deadline = asyncio.get_running_loop().time() + 30
            while len(got) < 2:
                assert asyncio.get_running_loop().time() < deadline, got
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            replayed = [r.data async for r in ringwal.aio.replay(wdir, since=BASE + 100)]
            assert replayed == [b"start", b"after"]
            return got

    assert asyncio.run(main()) == [b"start", b"after"]
    assert [r.data for r in ringwal.follow(wdir, since=BASE + 10**12, stop=_set_event())] == []


def _set_event():
    import threading

    e = threading.Event()
    e.set()
    return e
