"""Clean end, torn tail and corruption are three different answers.

A small log is written once; each test damages a copy of it (truncation at every byte of the
last frame, bit flips everywhere, garbage between frames) and checks what replay, reopen and
verify say.
"""

from __future__ import annotations

import logging
import os
import shutil

import pytest

from ringwal import Config, CorruptRecordError, CorruptSegmentError, FormatError, WAL, replay, verify
from ringwal.format import FRAME_HEADER_SIZE, SEGMENT_HEADER_SIZE, align8, frame_checksum
from ringwal.segment import CURRENT, list_segments

from .conftest import rec

FRAMES = 6  # frames in current.wal, 3 records each


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A log of two completed segments plus a current.wal of FRAMES frames.

    The last FRAMES frames are each synced before the next is written, so each claims the
    end of the one before it as durable (their ``synced`` field): damage anywhere before the
    last frame lies below a claimed durable end, which makes it corruption, not a torn tail
    (tests/test_power_loss.py covers damage past every claim)."""
    d = str(tmp_path_factory.mktemp("pristine") / "wal")
    cfg = Config(dir=d, segment_size=1024)
    with WAL(cfg) as w:
        for i in range(30):  # 30 frames of 88 B: two full 1 KiB segments and the start of a third
            w.append(rec(i, 50))
            w.flush()
    assert len(list_segments(d)) == 2
    with WAL(Config(dir=d, segment_size=1 << 20)) as w:
        for f in range(FRAMES):
            w.append_many(rec(100 + 3 * f + k, 20) for k in range(3))
            w.sync()
    return d


@pytest.fixture
def log(pristine, tmp_path):
    d = str(tmp_path / "copy")
    shutil.copytree(pristine, d)
    return d


def frame_offsets(path):
    """Offsets of the frames of a segment, plus the data end."""
    data = open(path, "rb").read()
    offs, pos = [], SEGMENT_HEADER_SIZE
    while pos + 4 <= len(data) and int.from_bytes(data[pos : pos + 4], "little"):
        offs.append(pos)
        pos += FRAME_HEADER_SIZE + align8(int.from_bytes(data[pos : pos + 4], "little"))
    return offs, pos


def all_seqs(d):
    return [r.seq for r in replay(d)]


def test_pristine_log_is_clean(log):
    n = len(all_seqs(log))
    assert all_seqs(log) == list(range(1, n + 1))
    assert verify(log).ok


def test_truncation_at_every_byte_of_the_last_frame_is_a_clean_torn_tail(log, tmp_path, caplog):
    cur = os.path.join(log, CURRENT)
    offs, end = frame_offsets(cur)
    total = len(all_seqs(log))
    last_start = offs[-1]
    original = open(cur, "rb").read()
    for cut in range(last_start + 1, end):
        with open(cur, "wb") as f:
            f.write(original[:cut])
        assert all_seqs(log) == list(range(1, total - 2)), f"cut at {cut}"
        report = verify(log)
        assert report.ok and any("torn tail" in n for n in report.notes), cut
    # the writer truncates the tail and continues after the last valid record
    with caplog.at_level(logging.WARNING, "ringwal"), WAL(Config(dir=log)) as w:
        assert w.last_seq == total - 3
        assert w.append(rec(999)) == total - 2
    assert "dropped a torn tail" in caplog.text
    assert all_seqs(log) == list(range(1, total - 1))
    assert verify(log).ok


def test_torn_tail_inside_preallocated_space(log):
    """A crash mid-write in a preallocated file: a half-written frame followed by zeros."""
    cur = os.path.join(log, CURRENT)
    offs, end = frame_offsets(cur)
    total = len(all_seqs(log))
    with open(cur, "r+b") as f:
        f.seek(offs[-1] + 30)
        f.write(bytes(end - offs[-1] - 30))  # the tail of the last frame never reached the disk
        f.write(bytes(4096))
    assert all_seqs(log) == list(range(1, total - 2))
    with WAL(Config(dir=log)) as w:
        assert w.last_seq == total - 3
    assert verify(log).ok


def flip(path, byte, bit=0):
    with open(path, "r+b") as f:
        f.seek(byte)
        b = f.read(1)[0]
        f.seek(byte)
        f.write(bytes([b ^ (1 << bit)]))


def test_bit_flip_anywhere_in_a_completed_segment_is_reported(log):
    path = os.path.join(log, list_segments(log)[0][1])
    size = os.path.getsize(path)
    original = open(path, "rb").read()
    for byte in range(0, size, 3):
        flip(path, byte, byte % 8)
        with pytest.raises(FormatError) as info:
            all_seqs(log)
        assert info.value.path.endswith(path.rsplit("/", 1)[1]), byte
        report = verify(log)
        assert not report.ok and any(p.path == path for p in report.problems), byte
        with open(path, "wb") as f:
            f.write(original)


def test_bit_flip_before_the_last_frame_of_current_wal_is_corruption(log):
    cur = os.path.join(log, CURRENT)
    offs, end = frame_offsets(cur)
    original = open(cur, "rb").read()
    for byte in range(offs[0], offs[-1]):
        flip(cur, byte, 3)
        with pytest.raises(CorruptRecordError) as info:
            all_seqs(log)
        err = info.value
        assert err.path == cur and err.offset in offs and err.offset <= byte, byte
        assert f"offset {err.offset}" in str(err) and "a valid frame follows" in str(err)
        with pytest.raises((CorruptRecordError, CorruptSegmentError), match="refusing to open"):
            WAL(Config(dir=log))
        problems = verify(log).problems
        assert problems and problems[0].offset == err.offset
        with open(cur, "wb") as f:
            f.write(original)
    assert verify(log).ok


def test_checksum_error_carries_expected_and_computed(log):
    cur = os.path.join(log, CURRENT)
    offs, _ = frame_offsets(cur)
    flip(cur, offs[1] + FRAME_HEADER_SIZE + 5)
    with pytest.raises(CorruptRecordError, match="checksum mismatch: stored 0x") as info:
        all_seqs(log)
    assert info.value.offset == offs[1]
    assert info.value.expected is not None and info.value.computed is not None
    assert info.value.expected != info.value.computed


def test_bit_flip_in_the_last_frame_of_current_wal_is_a_torn_tail(log):
    cur = os.path.join(log, CURRENT)
    offs, end = frame_offsets(cur)
    total = len(all_seqs(log))
    flip(cur, end - 8)
    assert all_seqs(log) == list(range(1, total - 2))
    with WAL(Config(dir=log)) as w:
        assert w.last_seq == total - 3


def test_zero_gap_below_a_claimed_durable_end_with_a_valid_frame_beyond_it_is_corruption(log):
    """A zero gap and then a valid frame whose claim says an fdatasync had covered the gap:
    records are missing in the middle of durable data, not a tail."""
    cur = os.path.join(log, CURRENT)
    offs, end = frame_offsets(cur)
    data = bytearray(open(cur, "rb").read())
    data[offs[-2] : offs[-1]] = bytes(offs[-1] - offs[-2])  # wipe the frame before the last
    open(cur, "wb").write(bytes(data))
    with pytest.raises(CorruptRecordError, match=f"corrupt frame at offset {offs[-2]}: zero-filled gap") as info:
        all_seqs(log)
    assert f"an fdatasync had completed up to offset {offs[-1]}" in str(info.value)
    with pytest.raises(CorruptRecordError, match="refusing to open"):
        WAL(Config(dir=log))


def test_missing_middle_segment_is_a_gap(log):
    os.unlink(os.path.join(log, list_segments(log)[0][1]))
    os.unlink(os.path.join(log, "wal_index.json"))
    # replay starts at the first segment still there (earlier records were removed) ...
    assert all_seqs(log)[0] > 1
    os.rename(os.path.join(log, list_segments(log)[0][1]), os.path.join(log, "000001.wal"))
    shutil.copy(os.path.join(log, CURRENT), os.path.join(log, "000002.wal"))  # duplicate range
    with pytest.raises(CorruptSegmentError):
        WAL(Config(dir=log))
    assert not verify(log).ok


def test_unknown_format_version_is_a_clear_error(log):
    from ringwal import UnsupportedVersionError
    from ringwal.format import SegmentHeader

    cur = os.path.join(log, CURRENT)
    with open(cur, "r+b") as f:
        h = SegmentHeader.decode(f.read(SEGMENT_HEADER_SIZE), cur)
        h.version = 7
        f.seek(0)
        f.write(h.encode())
    with pytest.raises(UnsupportedVersionError, match="version 7 is not supported"):
        all_seqs(log)
    with pytest.raises(UnsupportedVersionError):
        WAL(Config(dir=log))


def test_a_frame_whose_body_is_not_its_records_fails_verify_though_its_checksum_passes(log):
    """A writer that framed garbage (before the ring checked spans) wrote frames with valid
    checksums that replay cannot split into records: verify must not call that log OK."""
    path = os.path.join(log, CURRENT)
    offs, _ = frame_offsets(path)
    off = offs[-2]  # a frame of 3 records, not the last one (damage there reads as a torn tail)
    data = bytearray(open(path, "rb").read())
    length = int.from_bytes(data[off : off + 4], "little")
    body = off + FRAME_HEADER_SIZE
    first_len = int.from_bytes(data[body : body + 4], "little")
    data[body : body + 4] = (first_len + 1).to_bytes(4, "little")  # the lengths no longer tile
    end = body + align8(length)
    crc = frame_checksum(bytes(data[off : off + 20]), bytes(data[body : body + length]), bytes(data[body + length : end]))
    data[off + 20 : off + 24] = crc.to_bytes(4, "little")
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(CorruptRecordError):
        all_seqs(log)
    report = verify(log)
    assert not report.ok
    [problem] = report.problems
    assert (problem.path, problem.offset) == (path, off)
    assert "passes its checksum but its body does not split into the 3 records:" in problem.message, problem.message
