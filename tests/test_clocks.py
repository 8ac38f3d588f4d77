"""Clock steps: ages within a writer's life are monotonic; wall times read from disk are bounded.

The in-process tests drive SegmentLog's two clock seams (``clock``: wall, ``monotonic``) with a
FakeClock whose ``step`` moves only the wall clock, as settimeofday or NTP does, and whose
``advance`` is time passing. The faketime tests run a real ``ringwal serve`` under libfaketime
(Debian's ``faketime``) with CLOCK_MONOTONIC left alone, and set its wall clock back an hour or
forward a day while a producer process appends.

How faketime is used: ``faketime -f --exclude-monotonic +0 env -u FAKETIME python -m ringwal
serve`` with ``FAKETIME_TIMESTAMP_FILE`` and ``FAKETIME_NO_CACHE=1``, so the offset is read from
a file at every clock call and the test steps it by replacing the file; the wrapper's FAKETIME
variable would override the file, hence ``env -u``. ``NO_FAKE_STAT=1``: a real step does not
move existing files' times. One caveat: with monotonic time not faked, libfaketime 0.9.10's
``clock_nanosleep`` mis-converts absolute CLOCK_MONOTONIC deadlines, so ``time.sleep`` raises
EINVAL in such a process. The writer's loop sleeps on its semaphore and futexes, not
``time.sleep``; should that change, these tests fail loudly (the writer exits), never pass.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ringwal import replay, verify
from ringwal.seglog import SegmentLog
from ringwal.segment import list_segments, read_header

from .conftest import ROOT, rec, spawn_child
from .ringhelp import read_line, wait_until
from .test_seglog import body_of

HOUR, DAY = 3600, 86400


def names(directory):
    return [name for _, name in list_segments(directory)]


def opened(cfg, clock):
    return SegmentLog(cfg, "binary", clock=clock, monotonic=clock.monotonic)


# ---------------------------------------------------------------------- in-process, fake clocks


def test_rotation_by_age_keeps_time_after_the_wall_clock_steps_back(cfg, clock):
    cfg.segment_duration = 2.0
    with opened(cfg, clock) as sl:
        sl.write_body(body_of([rec(0)]), 1)
        clock.step(-HOUR)
        clock.advance(1.0)
        sl.flush()
        assert names(cfg.dir) == []
        clock.advance(1.5)
        sl.flush()
        assert names(cfg.dir) == ["000001.wal"], "a step back must not stop rotation by age"
        sl.write_body(body_of([rec(1)]), 1)
        clock.advance(2.5)
        sl.write_body(body_of([rec(2)]), 1)  # the segment is too old: rotates before writing
        assert names(cfg.dir) == ["000001.wal", "000002.wal"]
    assert [r.seq for r in replay(cfg.dir)] == [1, 2, 3]


def test_rotation_by_age_ignores_a_forward_step(cfg, clock):
    cfg.segment_duration = 2.0
    with opened(cfg, clock) as sl:
        sl.write_body(body_of([rec(0)]), 1)
        clock.step(DAY)
        sl.flush()
        sl.write_body(body_of([rec(1)]), 1)
        assert names(cfg.dir) == [], "a segment written a moment ago is not a day old"
        clock.advance(2.0)
        sl.flush()
        assert names(cfg.dir) == ["000001.wal"]


def test_retention_by_age_ignores_wall_clock_steps_while_open(cfg, clock):
    cfg.segment_size = 1024
    with opened(cfg, clock) as sl:
        for i in range(20):
            sl.write_body(body_of([rec(i, 60)]), 1)
        first_batch = names(cfg.dir)
        assert len(first_batch) >= 2
        clock.step(DAY)
        assert sl.apply_retention(None, 30.0)[0] == [], "segments closed seconds ago are not a day old"
        clock.advance(29)
        assert sl.apply_retention(None, 30.0)[0] == []
        clock.step(-DAY - HOUR)  # back to an hour before they were written
        clock.advance(2)
        removed, first = sl.apply_retention(None, 30.0)
        assert [e.file for e in removed] == first_batch, "31 s after closing they are 31 s old, whatever the wall says"
        for i in range(20, 40):
            sl.write_body(body_of([rec(i, 60)]), 1)
        assert sl.apply_retention(None, 30.0)[0] == []
        clock.advance(31)
        removed, first = sl.apply_retention(None, 30.0)
        assert removed and first == sl.first_seq
    assert [r.seq for r in replay(cfg.dir)] == list(range(first, 41))


def test_recovered_current_wal_created_in_the_future_ages_from_the_open(cfg, clock):
    """The clock was stepped back while no writer ran: the header's created time is in the
    future. It counts as age 0 at the open, then ages monotonically."""
    cfg.segment_duration = 2.0
    with opened(cfg, clock) as sl:
        sl.write_body(body_of([rec(0)]), 1)
    clock.step(-HOUR)
    with opened(cfg, clock) as sl:
        sl.flush()
        clock.advance(1.5)
        sl.flush()
        assert names(cfg.dir) == []
        clock.advance(0.5)
        sl.flush()
        assert names(cfg.dir) == ["000001.wal"], "an hour-early wall clock must not hold rotation back"


def test_recovered_current_wal_older_than_segment_duration_rotates_at_once(cfg, clock):
    """The bound the other way: a header a day old (downtime, or a forward step while no
    writer ran; the two look the same) rotates at the first chance."""
    cfg.segment_duration = 2.0
    with opened(cfg, clock) as sl:
        sl.write_body(body_of([rec(0)]), 1)
    clock.step(DAY)
    with opened(cfg, clock) as sl:
        sl.flush()
        assert names(cfg.dir) == ["000001.wal"]


def test_retention_of_segments_from_an_earlier_writer_starts_from_their_wall_age(cfg, clock):
    cfg.segment_size = 1024
    with opened(cfg, clock) as sl:
        for i in range(20):
            sl.write_body(body_of([rec(i, 60)]), 1)
    old = names(cfg.dir)
    assert len(old) >= 2
    # Down for 10 s, then the clock is stepped back an hour before the next writer opens:
    # their closed_ns is in the future, which counts as age 0 at the open.
    clock.advance(10)
    clock.step(-HOUR)
    with opened(cfg, clock) as sl:
        assert sl.apply_retention(None, 30.0)[0] == []
        clock.advance(29)
        assert sl.apply_retention(None, 30.0)[0] == []
        clock.advance(2)
        assert [e.file for e in sl.apply_retention(None, 30.0)[0]] == old
    # Without a step: their age at the open is the wall age, then it grows monotonically.
    with opened(cfg, clock) as sl:
        for i in range(20, 40):
            sl.write_body(body_of([rec(i, 60)]), 1)
    old = names(cfg.dir)
    clock.advance(20)
    with opened(cfg, clock) as sl:
        assert sl.apply_retention(None, 30.0)[0] == []
        clock.advance(11)
        assert [e.file for e in sl.apply_retention(None, 30.0)[0]] == old


# ---------------------------------------------------------------------- a real writer under faketime

FAKETIME = shutil.which("faketime")

#: Appends until its stdin closes, syncing every 5 records; paced by a 10 ms wait on stdin.
APPENDER = """
import select, sys, ringwal
cfg = ringwal.Config(dir=sys.argv[1], start_writer=False, writer_wait=20, sync_timeout=30)
n = 0
with ringwal.open(cfg) as h:
    print("attached", flush=True)
    while not select.select([sys.stdin], [], [], 0.01)[0]:
        h.append(ringwal.Record(1, n, b"r%d" % n))
        n += 1
        if n % 5 == 0:
            h.sync()
    h.sync()
print("appended", n, flush=True)
"""


def _faketime_env(rc: str) -> dict[str, str]:
    # FAKETIME (set by the wrapper) would win over the file: the child drops it with env -u.
    return dict(os.environ, FAKETIME_TIMESTAMP_FILE=rc, FAKETIME_NO_CACHE="1", NO_FAKE_STAT="1")


def _faketime_cmd(*argv: str) -> list[str]:
    assert FAKETIME is not None
    return [FAKETIME, "-f", "--exclude-monotonic", "+0", "env", "-u", "FAKETIME", *argv]


@pytest.fixture
def stepped_clock(tmp_path):
    """The file libfaketime reads the offset from at every clock call: write "-3600" and the
    processes started under it see the wall clock an hour earlier from that moment on.
    Skips (saying why) when faketime is missing or does not step a Python process's clock
    while leaving CLOCK_MONOTONIC alone."""
    if FAKETIME is None:
        pytest.skip(
            "Debian's faketime is not installed (scripts/test installs it with apt-get when run as root); "
            "it is what steps a real writer's wall clock"
        )
    rc = str(tmp_path / "faketime.rc")
    with open(rc, "w") as f:
        f.write("-3600\n")
    probe = "import time; print(time.time_ns(), time.monotonic_ns())"
    before = time.time_ns(), time.monotonic_ns()
    out = subprocess.run(
        _faketime_cmd(sys.executable, "-c", probe), env=_faketime_env(rc), capture_output=True, text=True, timeout=60
    )
    after = time.time_ns(), time.monotonic_ns()
    try:
        wall, mono = map(int, out.stdout.split())
    except ValueError:
        pytest.skip(f"faketime did not run a Python process: {out.returncode} {out.stderr.strip()[:300]}")
    if not (before[0] - 3601e9 < wall < after[0] - 3599e9 and before[1] <= mono <= after[1]):
        pytest.skip("libfaketime here does not step the wall clock alone (CLOCK_MONOTONIC must stay real)")
    with open(rc, "w") as f:
        f.write("+0\n")

    def step(offset: str) -> None:
        tmp = rc + ".tmp"
        with open(tmp, "w") as f:
            f.write(offset + "\n")
        os.replace(tmp, rc)  # never a half-written offset

    return step, rc


def _serve_under_faketime(directory: str, rc: str, *extra: str) -> tuple[subprocess.Popen, int]:
    p = subprocess.Popen(
        _faketime_cmd(sys.executable, "-m", "ringwal", "serve", "--dir", directory, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_faketime_env(rc),
    )
    while True:
        line = read_line(p, stream="stderr")
        if "serving" in line:
            return p, int(line.split("pid ")[1].split()[0])
        assert "WARNING" in line, line


def _stop(p: subprocess.Popen, pid: int) -> None:
    # The faketime wrapper does not forward signals: stop the writer itself; the wrapper
    # then exits and removes libfaketime's shared memory.
    os.kill(pid, signal.SIGTERM)
    assert p.wait(timeout=30) == 0, p.stderr.read() if p.stderr else ""


def _created_s(directory: str, name: str) -> float:
    return read_header(os.path.join(directory, name)).created_ns / 1e9


def _appear(directory: str, count: int, timeout: float, what: str) -> list[tuple[str, float]]:
    """Wait until ``count`` new completed segments appear; return each with a time (monotonic)
    before which it was not there yet: a lower bound of when the writer closed it."""
    absent_at = time.monotonic()
    seen = set(names(directory))
    got: list[tuple[str, float]] = []

    def more() -> bool:
        nonlocal absent_at
        t = time.monotonic()
        for n in names(directory):
            if n not in seen:
                seen.add(n)
                got.append((n, absent_at))
        absent_at = t
        return len(got) >= count

    wait_until(more, timeout=timeout, what=what)
    return got


def _finish(directory: str, appender: subprocess.Popen) -> int:
    out, err = appender.communicate(input="", timeout=60)
    assert appender.returncode == 0, (out, err)
    return int(out.split("appended ")[1].split()[0])


def test_serve_rotates_on_time_after_the_wall_clock_steps_back_an_hour(wdir, stepped_clock):
    step, rc = stepped_clock
    p, pid = _serve_under_faketime(wdir, rc, "--segment-duration", "2", "--retention-max-age", "30")
    appender = spawn_child(APPENDER, wdir, stdin=subprocess.PIPE)
    try:
        assert read_line(appender) == "attached"
        _appear(wdir, 1, 30, "the first rotation by age")
        step("-3600")
        stepped = time.time()
        got = _appear(wdir, 2, 30, "rotation by age after the wall clock stepped back an hour")
        # About on time: two rotations of a 2 s segment take about 4 s (slack for a busy machine).
        assert got[-1][1] - got[0][1] < 12, got
        # The writer's wall clock did step: the second new segment was created after the step.
        created = _created_s(wdir, got[1][0])
        assert stepped - HOUR - 30 < created < time.time() - HOUR + 30, (created, stepped)
        n = _finish(wdir, appender)
    finally:
        if appender.poll() is None:
            appender.kill()
        _stop(p, pid)
    assert [r.seq for r in replay(wdir)] == list(range(1, n + 1))
    assert verify(wdir).ok


def test_serve_keeps_segments_written_seconds_ago_after_the_wall_clock_steps_forward_a_day(wdir, stepped_clock):
    step, rc = stepped_clock
    p, pid = _serve_under_faketime(wdir, rc, "--segment-duration", "2", "--retention-max-age", "30")
    appender = spawn_child(APPENDER, wdir, stdin=subprocess.PIPE)
    began = time.monotonic()
    try:
        assert read_line(appender) == "attached"
        before = _appear(wdir, 2, 30, "two rotations by age")
        step("+86400")
        stepped = time.time()
        # Two more rotations: the writer's loop ran for about 4 s after the step, and with it
        # its retention pass (once a second).
        after = _appear(wdir, 2, 30, "rotation by age after the wall clock stepped forward a day")
        still = names(wdir)
        listed = time.monotonic()
        # Closed less than 28 s before the listing: no retention pass may have found them 30 s old.
        young = [n for n, closed_after in before if listed - closed_after < 28]
        if not young:
            pytest.skip(f"this machine took {listed - began:.0f}s: the segments may really be 30 s old now")
        assert set(young) <= set(still), f"segments written seconds ago were removed: {young} -> {still}"
        created = _created_s(wdir, after[1][0])
        assert stepped + DAY - 30 < created < time.time() + DAY + 30, (created, stepped)
        n = _finish(wdir, appender)
    finally:
        if appender.poll() is None:
            appender.kill()
        _stop(p, pid)
    assert [r.seq for r in replay(wdir)] == list(range(1, n + 1))
    assert verify(wdir).ok
