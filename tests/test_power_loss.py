"""Power loss reorders unsynced writes: a torn tail, not corruption; damage below a completed
fdatasync stays corruption.

How the files are built: a real writer (``ringwal serve``) and a real producer write a log
whose first frames were each synced (every frame claims the durable end it saw, format
version 2) and whose last frames were only written to the page cache. The writer is then
SIGKILLed and its ring removed, as a power loss would leave things. What a disk that
persisted those unsynced writes out of order leaves (LazyFS shows it, real disks do it: a
later frame kept, an earlier one lost as zeros or garbage) is then made by editing the file
at the exact offsets: that edit *is* the physical result of reordered persistence, so these
tests emulate LazyFS rather than run it.
"""

from __future__ import annotations

import logging
import os
import signal

import pytest

from ringwal import WAL, Config, CorruptRecordError, replay, verify
from ringwal.format import (
    FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    SEGMENT_HEADER_V1_SIZE,
    SegmentHeader,
    align8,
    encode_frame,
)
from ringwal.holes import load_holes
from ringwal.repair import repair
from ringwal.ring import unlink_names
from ringwal.segment import CURRENT, TORN, SegmentScan, read_file
from ringwal.serializers import BinarySerializer

from .conftest import rec, run_child
from .ringhelp import start_serve

SYNCED, UNSYNCED = 4, 4

BUILD = """
import os, sys, ringwal
d, synced, unsynced = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
h = ringwal.open(ringwal.Config(dir=d, start_writer=False, writer_wait=30, sync_timeout=60))
for i in range(synced):
    h.append(ringwal.Record(1, i, b"s:%d|" % i + bytes(60)))
    h.sync()
for i in range(unsynced):
    h.append(ringwal.Record(1, i, b"u:%d|" % i + bytes(60)))
    h.flush()
os._exit(0)  # no close: close would sync
"""


def frames(path: str) -> tuple[list[int], int, list[int]]:
    """(frame offsets, data end, the durable end each frame claims) of a segment file."""
    data = read_file(path)
    offs, claims, pos = [], [], SEGMENT_HEADER_SIZE
    while pos + 4 <= len(data) and int.from_bytes(data[pos : pos + 4], "little"):
        offs.append(pos)
        claims.append(8 * int.from_bytes(data[pos + 16 : pos + 20], "little"))
        pos += FRAME_HEADER_SIZE + align8(int.from_bytes(data[pos : pos + 4], "little"))
    return offs, pos, claims


@pytest.fixture
def powered_off(wdir):
    """A log of SYNCED synced frames then UNSYNCED unsynced ones, its writer killed and its
    ring gone (a power loss, before the disk is looked at)."""
    w = start_serve(wdir)
    try:
        run_child(BUILD, wdir, str(SYNCED), str(UNSYNCED))
    finally:
        w.send_signal(signal.SIGKILL)
        w.wait(30)
    unlink_names(wdir)  # /dev/shm does not survive a power loss
    cur = os.path.join(wdir, CURRENT)
    offs, end, claims = frames(cur)
    assert len(offs) == SYNCED + UNSYNCED
    durable_end = offs[SYNCED]  # where the first unsynced frame starts
    assert claims[SYNCED:] == [durable_end] * UNSYNCED, "each unsynced frame claims the last fdatasync's end"
    assert max(claims) == durable_end
    return wdir, cur, offs, end


def punch(path: str, start: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(data)


def tags(d: str) -> list[str]:
    return [r.data.split(b"|", 1)[0].decode() for r in replay(d)]


EXPECTED_SYNCED = [f"s:{i}" for i in range(SYNCED)]


@pytest.mark.parametrize("fill", ["zeros", "garbage"])
def test_an_unsynced_frame_lost_before_a_later_one_kept_is_a_torn_tail(powered_off, fill, caplog):
    d, cur, offs, end = powered_off
    hit = offs[SYNCED + 1]  # the second unsynced frame lost; the ones after it kept
    size = offs[SYNCED + 2] - hit
    punch(cur, hit, bytes(size) if fill == "zeros" else bytes((i * 131 + 7) & 0xFF or 1 for i in range(size)))
    dropped = read_file(cur)[hit:end]
    # readers stop at the damage without an error
    assert tags(d) == [*EXPECTED_SYNCED, "u:0"]
    report = verify(d)
    assert report.ok and any("torn tail" in n and "power loss" in n for n in report.notes), report.notes
    # a writer opens the log: cuts the tail, keeps the dropped bytes beside the file, warns
    with caplog.at_level(logging.WARNING, "ringwal"), WAL(Config(dir=d)) as w:
        assert w.last_seq == SYNCED + 1
        assert w.append(rec(1)) == SYNCED + 2
        w.sync()
    assert "dropped a torn tail" in caplog.text and "out of order" in caplog.text
    kept = os.path.join(d, f"{CURRENT}.torn-{SYNCED + 2}")
    assert read_file(kept) == dropped
    assert f"kept in {CURRENT}.torn-{SYNCED + 2}" in caplog.text
    assert [r.seq for r in replay(d)] == list(range(1, SYNCED + 3))
    assert verify(d).ok and not load_holes(d)


def test_a_kept_torn_tail_is_private_whatever_the_umask(powered_off):
    """The kept bytes are records: mode 0600 like every log file (README "Trust model"),
    not the 0644 a umask of 022 leaves on a plain create."""
    d, cur, offs, _ = powered_off
    hit = offs[SYNCED + 1]
    punch(cur, hit, bytes(offs[SYNCED + 2] - hit))
    old = os.umask(0o022)
    try:
        with WAL(Config(dir=d)) as w:
            assert w.last_seq == SYNCED + 1
    finally:
        os.umask(old)
    kept = os.path.join(d, f"{CURRENT}.torn-{SYNCED + 2}")
    assert oct(os.stat(kept).st_mode & 0o7777) == oct(0o600)


def test_repair_cuts_reordered_unsynced_writes_as_a_torn_tail_recording_no_hole(powered_off):
    d, cur, offs, _end = powered_off
    punch(cur, offs[SYNCED], bytes(offs[SYNCED + 1] - offs[SYNCED]))  # the first unsynced frame lost
    report = repair(d)
    assert any("cut a torn tail" in a for a in report.actions), report.actions
    assert not report.holes and not load_holes(d), "never-acknowledged seqs are not a hole"
    assert tags(d) == EXPECTED_SYNCED


def test_a_served_writer_opens_a_reordered_log(powered_off):
    d, cur, offs, _end = powered_off
    punch(cur, offs[SYNCED], bytes(16))  # the header of the first unsynced frame never reached the disk
    w = start_serve(d)
    try:
        assert any("dropped a torn tail" in line for line in w.startup_lines), w.startup_lines
    finally:
        w.send_signal(signal.SIGTERM)
        w.wait(30)
    assert tags(d) == EXPECTED_SYNCED


@pytest.mark.parametrize("fill", ["zeros", "garbage"])
def test_damage_below_a_claimed_durable_end_is_corruption(powered_off, fill):
    d, cur, offs, _end = powered_off
    hit = offs[1]  # a synced frame: the unsynced frames after it claim its bytes were durable
    size = offs[2] - hit
    punch(cur, hit, bytes(size) if fill == "zeros" else b"\xa5" * size)
    with pytest.raises(CorruptRecordError) as info:
        list(replay(d))
    assert (info.value.path, info.value.offset) == (cur, hit)
    assert f"an fdatasync had completed up to offset {offs[SYNCED]}" in str(info.value)
    with pytest.raises(CorruptRecordError, match="refusing to open") as info:
        WAL(Config(dir=d))
    assert (info.value.path, info.value.offset) == (cur, hit)
    assert not verify(d).ok


def test_damage_in_a_sealed_segment_is_corruption_whatever_the_claims(tmp_path):
    d = str(tmp_path / "wal")
    with WAL(Config(dir=d, segment_size=1024)) as w:
        for i in range(20):
            w.append(rec(i, 50))
            w.flush()  # never synced: every frame claims only the header
    seg = os.path.join(d, "000001.wal")
    offs, _end, claims = frames(seg)
    assert set(claims) == {SEGMENT_HEADER_SIZE}
    punch(seg, offs[1], bytes(offs[2] - offs[1]))
    with pytest.raises(CorruptRecordError) as info:
        list(replay(d))
    assert (info.value.path, info.value.offset) == (seg, offs[1])


def test_a_version_1_current_wal_keeps_the_old_rule(tmp_path):
    """Version 1 frames claim nothing: damage followed by a valid frame stays corruption."""
    d = str(tmp_path / "wal")
    os.makedirs(d)
    ser = BinarySerializer()
    parts = [SegmentHeader("binary", 1, 0, version=1).encode()]
    for i in range(3):
        parts.append(b"".join(encode_frame(ser.frame(rec(i)), 1, i + 1)))
    data = bytearray(b"".join(parts) + bytes(1024))
    second = SEGMENT_HEADER_V1_SIZE + len(b"".join(encode_frame(ser.frame(rec(0)), 1, 1)))
    path = os.path.join(d, CURRENT)
    with open(path, "wb") as f:
        f.write(bytes(data))
    assert [r.seq for r in replay(d)] == [1, 2, 3]  # version 1 stays readable
    data[second : second + 24] = bytes(24)
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(CorruptRecordError, match="a valid frame follows"):
        list(replay(d))
    # the same damage in a version 2 file with no claim past it is a torn tail
    head = SegmentHeader("binary", 1, 0, b"\x01" * 16).encode()
    frames = [b"".join(encode_frame(ser.frame(rec(i)), 1, i + 1, SEGMENT_HEADER_SIZE)) for i in range(3)]
    v2 = bytearray(head + b"".join(frames))
    second = SEGMENT_HEADER_SIZE + len(frames[0])
    v2[second : second + 24] = bytes(24)
    scan = SegmentScan(bytes(v2) + bytes(1024), path, sealed=False, next_seq=1)
    assert [s for _, s, _, _ in scan.frames()] == [1] and scan.outcome == TORN
