"""The byte layouts are pinned: sizes, a golden frame, a golden segment header."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ringwal
from ringwal.errors import CorruptSegmentError, UnsupportedVersionError
from ringwal.format import (
    FORMAT_VERSION,
    FRAME_BAD,
    FRAME_END,
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    FRAME_INCOMPLETE,
    FRAME_OK,
    FRAME_SYNCED_OFFSET,
    MAX_SYNCED,
    READ_VERSIONS,
    LOG_ID_SIZE,
    SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE,
    SEGMENT_HEADER_V1,
    SEGMENT_HEADER_V1_SIZE,
    WALK_COUNT,
    WALK_OK,
    WALK_OVERRUN,
    WALK_TOO_LARGE,
    WALK_ZERO_LENGTH,
    SegmentHeader,
    align8,
    describe_walk,
    encode_frame,
    frame_durable_end,
    parse_frame,
    walk_records,
)
from ringwal.record import Record
from ringwal.serializers import BinarySerializer

GOLDEN_RECORDS = [
    (1, 1_700_000_000_000_000_000, b"order-1"),
    (2, 1_700_000_000_000_000_001, b"cancel-1"),
    (3, 1_700_000_000_000_000_002, b"match"),
]
# The three records above as one version 1 frame with first_seq 1 (bytes 16-19 were flags, 0).
GOLDEN_FRAME_V1 = bytes.fromhex(
    # frame header: length=62, count=3, first_seq=1, flags=0, crc
    "3e000000"
    "03000000"
    "0100000000000000"
    "00000000"
    "378bd2d4"
    # record: payload length 17, type 1, time, b"order-1"
    "11000000"
    "0100"
    "00002a36fe9c9717"
    "6f726465722d31"
    # record: payload length 18, type 2, time + 1, b"cancel-1"
    "12000000"
    "0200"
    "01002a36fe9c9717"
    "63616e63656c2d31"
    # record: payload length 15, type 3, time + 2, b"match"
    "0f000000"
    "0300"
    "02002a36fe9c9717"
    "6d61746368"
    # padding to a multiple of 8
    "0000"
)
# The same records as a version 2 frame with synced = 8 (a durable end of 64, in 8-byte units);
# only bytes 16-23 differ. A segment of this build never holds synced 8 (its header is 80 bytes,
# so the lowest is 10: GOLDEN_FIRST_FRAME_HEADER); the pin keeps synced and crc apart.
GOLDEN_FRAME = bytes.fromhex("3e000000" "03000000" "0100000000000000" "08000000" "efaa1b34") + GOLDEN_FRAME_V1[24:]
#: The header of GOLDEN_FRAME as the first frame of a fresh version 2 segment (docs/FORMAT.md).
GOLDEN_FIRST_FRAME_HEADER = bytes.fromhex("3e000000" "03000000" "0100000000000000" "0a000000" "99e2290c")
#: The log id of the examples in docs/FORMAT.md (a real log's is random).
EXAMPLE_LOG_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
# Version 2 (written): binary, first seq 1, created 1_700_000_000_000_000_000, EXAMPLE_LOG_ID.
GOLDEN_HEADER = bytes.fromhex(
    "52494e4757414c00"
    "0200"
    "5000"
    "00000000"
    "62696e61727900000000000000000000"
    "0100000000000000"
    "00002a36fe9c9717"
    "00112233445566778899aabbccddeeff" + "00" * 12 + "35915208"
)
# Version 1 (still read): the same fields without the log id.
GOLDEN_HEADER_V1 = bytes.fromhex(
    "52494e4757414c00"
    "0100"
    "4000"
    "00000000"
    "62696e61727900000000000000000000"
    "0100000000000000"
    "00002a36fe9c9717" + "00" * 12 + "eae8b922"
)


def golden_body() -> bytes:
    ser = BinarySerializer()
    return b"".join(ser.frame(Record(*r)) for r in GOLDEN_RECORDS)


def test_documented_sizes():
    assert SEGMENT_HEADER_SIZE == SEGMENT_HEADER.size == 80
    assert SEGMENT_HEADER_V1_SIZE == SEGMENT_HEADER_V1.size == 64
    assert LOG_ID_SIZE == 16
    assert FRAME_HEADER_SIZE == FRAME_HEADER.size == 24
    assert FORMAT_VERSION == 2 and READ_VERSIONS == (1, 2)
    assert ringwal.FORMAT_VERSION == FORMAT_VERSION
    assert FRAME_SYNCED_OFFSET == 16 and MAX_SYNCED == 0xFFFF_FFFF


def test_golden_frame_bytes():
    header, body, pad = encode_frame(golden_body(), 3, 1, durable_end=64)
    assert header + body + pad == GOLDEN_FRAME
    assert len(GOLDEN_FRAME) % 8 == 0
    assert len(GOLDEN_FRAME) == FRAME_HEADER_SIZE + align8(len(body))
    assert encode_frame(golden_body(), 3, 1, durable_end=80)[0] == GOLDEN_FIRST_FRAME_HEADER
    header, body, pad = encode_frame(golden_body(), 3, 1)  # a frame continuing a version 1 segment
    assert header + body + pad == GOLDEN_FRAME_V1


def test_golden_frame_parses_back():
    outcome, length, count, first_seq, stored, computed, nxt = parse_frame(GOLDEN_FRAME, 0, len(GOLDEN_FRAME))
    assert (outcome, length, count, first_seq, nxt) == (FRAME_OK, 62, 3, 1, len(GOLDEN_FRAME))
    assert stored == computed == 0x341BAAEF
    assert frame_durable_end(GOLDEN_FRAME, 0) == 64
    recs = list(BinarySerializer().decode_batch(GOLDEN_FRAME[24 : 24 + length], count, first_seq))
    assert [(r.type, r.time, r.data, r.seq) for r in recs] == [(*g, i + 1) for i, g in enumerate(GOLDEN_RECORDS)]
    v1 = parse_frame(GOLDEN_FRAME_V1, 0, len(GOLDEN_FRAME_V1), version=1)
    assert (v1[0], v1[4]) == (FRAME_OK, 0xD4D28B37)


def test_version_1_frames_must_have_zero_flags():
    """Bytes 16-19 are a durable end only in version 2; a version 1 reader keeps its old rule."""
    assert parse_frame(GOLDEN_FRAME, 0, len(GOLDEN_FRAME), version=1)[0] == FRAME_BAD
    assert parse_frame(GOLDEN_FRAME, 0, len(GOLDEN_FRAME), version=2)[0] == FRAME_OK


def test_durable_end_is_stored_in_8_byte_units_and_saturates():
    body = golden_body()
    for end in (64, 4096, 8 * MAX_SYNCED, 8 * MAX_SYNCED + 8 * 1000):
        header = encode_frame(body, 3, 1, durable_end=end)[0]
        assert frame_durable_end(header, 0) == min(end, 8 * MAX_SYNCED)
    with pytest.raises(ValueError, match="multiple of 8"):
        encode_frame(body, 3, 1, durable_end=65)


def test_golden_segment_header_bytes():
    h = SegmentHeader("binary", 1, 1_700_000_000_000_000_000, EXAMPLE_LOG_ID)
    assert h.encode() == GOLDEN_HEADER
    back = SegmentHeader.decode(GOLDEN_HEADER, "x.wal")
    assert (back.serializer, back.first_seq, back.created_ns, back.log_id, back.version, back.size) == (
        "binary", 1, 1_700_000_000_000_000_000, EXAMPLE_LOG_ID, 2, 80
    )  # fmt: skip


def test_version_1_header_still_reads_and_has_no_log_id():
    assert SegmentHeader("binary", 1, 1_700_000_000_000_000_000, version=1).encode() == GOLDEN_HEADER_V1
    for buf in (GOLDEN_HEADER_V1, GOLDEN_HEADER_V1 + bytes(16)):  # an empty sealed v1 segment, or frames after
        back = SegmentHeader.decode(buf, "x.wal")
        assert (back.version, back.size, back.log_id, back.first_seq) == (1, 64, None, 1)


def test_version_2_header_cut_short_is_corrupt():
    with pytest.raises(CorruptSegmentError, match="80 bytes, only 64"):
        SegmentHeader.decode(GOLDEN_HEADER[:64], "/d/current.wal")


def test_zero_header_is_end_and_zero_length_never_valid():
    zeros = bytes(64)
    assert parse_frame(zeros, 0, 64)[0] == FRAME_END
    assert parse_frame(b"", 0, 0)[0] == FRAME_END
    bad = bytearray(GOLDEN_FRAME)
    bad[0:4] = b"\0\0\0\0"  # length 0 with other fields set
    assert parse_frame(bytes(bad), 0, len(bad))[0] == FRAME_BAD


def test_frame_cut_short_is_incomplete():
    for cut in (5, 24, 30, len(GOLDEN_FRAME) - 1):
        assert parse_frame(GOLDEN_FRAME[:cut], 0, cut)[0] == FRAME_INCOMPLETE, cut


def test_every_single_bit_flip_of_the_golden_frame_is_caught():
    for i in range(len(GOLDEN_FRAME) * 8):
        b = bytearray(GOLDEN_FRAME)
        b[i // 8] ^= 1 << (i % 8)
        outcome = parse_frame(bytes(b), 0, len(b))[0]
        assert outcome != FRAME_OK, f"flip of bit {i} went unnoticed"


def test_huge_claimed_length_does_not_allocate():
    b = bytearray(GOLDEN_FRAME)
    b[0:4] = (0xFFFF_FFF0).to_bytes(4, "little")
    assert parse_frame(bytes(b), 0, len(b))[0] in (FRAME_INCOMPLETE, FRAME_BAD)


def test_unknown_version_is_a_clear_error():
    h = SegmentHeader("binary", 1, 0, version=3).encode()
    with pytest.raises(UnsupportedVersionError, match=r"version 3 is not supported.*reads versions 1, 2"):
        SegmentHeader.decode(h, "/d/current.wal")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b.__setitem__(slice(0, 8), b"NOTAWAL!"), "not a ringwal segment"),
        (lambda b: b.__setitem__(40, b[40] ^ 1), "checksum mismatch at offset 76"),
        (lambda b: b.__setitem__(50, b[50] ^ 1), "checksum mismatch at offset 76"),  # the log id is covered
    ],
)
def test_bad_segment_header_names_the_file(mutate, match):
    b = bytearray(GOLDEN_HEADER)
    mutate(b)
    with pytest.raises(CorruptSegmentError, match=match) as info:
        SegmentHeader.decode(bytes(b), "/d/000001.wal")
    assert info.value.path == "/d/000001.wal"


def test_golden_segments_of_the_format_doc_example(tmp_path):
    """The worked example of docs/FORMAT.md, byte for byte: three records and a rotation.

    The example shows the log id EXAMPLE_LOG_ID; a real log's is random, so the files are
    compared with that id put in its place (and the header checksum recomputed)."""
    from ringwal import WAL, Config

    from .conftest import FakeClock

    d = str(tmp_path / "wal")
    with WAL(Config(dir=d, segment_size=192), clock=FakeClock()) as w:
        for r in GOLDEN_RECORDS:
            w.append(Record(*r))
            w.sync()
        cur = open(f"{d}/current.wal", "rb").read()  # preallocated while the log is open

    def as_example(data: bytes) -> bytes:
        head = SegmentHeader.decode(data, "x")
        assert head.log_id is not None and len(head.log_id) == LOG_ID_SIZE
        example = SegmentHeader(head.serializer, head.first_seq, head.created_ns, EXAMPLE_LOG_ID).encode()
        return example + data[SEGMENT_HEADER_SIZE:]

    seg1 = open(f"{d}/000001.wal", "rb").read()
    assert open(f"{d}/current.wal", "rb").read() == cur[:128]  # a clean close cuts it to its frames
    assert seg1[48:64] == cur[48:64] == bytes.fromhex(ringwal.log_id(d))  # one log, one id
    # synced: 0a (durable end 80, the header) in the first frame of each segment; 10 (128) in
    # the second, written after the first frame's fdatasync.
    assert as_example(seg1) == GOLDEN_HEADER + bytes.fromhex(
        "15000000010000000100000000000000" "0a00000013675e2411000000010000002a36fe9c97176f726465722d31000000"
        "16000000010000000200000000000000" "10000000ccccaabe12000000020001002a36fe9c971763616e63656c2d310000"
    )
    cur = as_example(cur)
    assert len(cur) == 192 and cur[:32] == GOLDEN_HEADER[:32]
    assert cur[32:80] == bytes.fromhex(
        "030000000000000000002a36fe9c971700112233445566778899aabbccddeeff" + "00" * 12 + "4bd9f0c8"
    )
    assert cur[80:128] == bytes.fromhex(
        "13000000010000000300000000000000" "0a000000b39fe9310f000000030002002a36fe9c97176d61746368" + "00" * 5
    )
    assert cur[128:] == bytes(64)


# ---------------------------------------------------------------- walking records


def reference_walk(buf: bytes, count: int, max_record: int, span: int | None = None):
    """The rule walk_records implements, written plainly: (ok, records, bytes)."""
    total = len(buf) if span is None else span
    pos = k = 0
    while k < count and pos < total:
        if pos + 4 > total:
            return False, k, pos
        if pos + 4 > len(buf):
            return True, k, pos  # the next length lies past the prefix
        n = int.from_bytes(buf[pos : pos + 4], "little")
        if not 1 <= n <= max_record or pos + 4 + n > total:
            return False, k, pos
        if pos + 4 + n > len(buf):
            return True, k, pos
        pos += 4 + n
        k += 1
    return (k == count and pos == total), k, pos  # all claimed records, ending at the span's end


def body_of(lengths: list[int]) -> bytes:
    return b"".join(n.to_bytes(4, "little") + bytes([n % 251]) * n for n in lengths)


@given(
    lengths=st.lists(st.integers(1, 40), max_size=30),
    same=st.booleans(),
    count_delta=st.integers(-2, 2),
    flip=st.one_of(st.none(), st.tuples(st.integers(0, 10_000), st.integers(0, 255))),
)
@settings(max_examples=400, deadline=None)
def test_walk_records_agrees_with_the_plain_rule(lengths, same, count_delta, flip):
    if same and lengths:
        lengths = [lengths[0]] * len(lengths)  # the strided fast path
    body = bytearray(body_of(lengths))
    if flip is not None and body:
        body[flip[0] % len(body)] = flip[1]
    body = bytes(body)
    count = max(len(lengths) + count_delta, 0)
    outcome, k, pos, _value = walk_records(body, count, 32)
    ok, rk, rpos = reference_walk(body, count, 32)
    assert (outcome == WALK_OK) == ok
    if ok:
        assert (k, pos) == (rk, rpos)
    for cut in range(0, len(body) + 1, 7):  # a prefix of the span: the whole records in it
        outcome, k, pos, _value = walk_records(body[:cut], count, 32, len(body))
        ok, rk, rpos = reference_walk(body[:cut], count, 32, len(body))
        assert (outcome == WALK_OK) == ok, (cut, outcome, ok)
        if ok:
            assert (k, pos) == (rk, rpos) and pos <= cut


@pytest.mark.parametrize(
    "body, count, outcome, words",
    [
        (body_of([5, 5, 5]), 3, WALK_OK, "nothing is wrong"),
        (body_of([5, 7]) + bytes(4), 3, WALK_ZERO_LENGTH, "record 2 at byte 20 has length 0"),
        (body_of([5]) + b"\xff\xff\xff\x7f", 2, WALK_TOO_LARGE, "record 1 at byte 9 claims 2147483647 bytes"),
        (body_of([5, 9])[:-1], 2, WALK_OVERRUN, "record 1 at byte 9 (length 9) runs past the end of the 21 bytes"),
        (body_of([5, 5]), 3, WALK_COUNT, "after 2 records; 3 records in 18 bytes were claimed"),
        (body_of([5, 5, 5]), 2, WALK_COUNT, "after 2 records; 2 records in 27 bytes were claimed"),
    ],
)
def test_walk_records_names_what_is_wrong(body, count, outcome, words):
    res = walk_records(body, count, 1000)
    assert res[0] == outcome
    assert words in describe_walk(res, count, len(body), 1000)


@pytest.mark.parametrize("n", [65536 + 4, 65536 + 2, 65536 + 1])  # strides of u32, u16 and byte compares
def test_walk_records_fast_path_compares_every_byte_of_each_length(n):
    body = body_of([n] * 3)
    assert walk_records(body, 3, 1 << 20)[0] == WALK_OK
    bad = bytearray(body)
    bad[2 * (n + 4) + 2] ^= 1  # the third length's high half: 65536 + n becomes n
    assert walk_records(bytes(bad), 3, 1 << 20)[:3] == (WALK_COUNT, 3, len(body) - 65536)


def test_ring_layout_pins_the_histogram_and_the_follower_bytes():
    from ringwal.config import MAX_PRODUCER_SLOTS
    from ringwal.format import (
        FOLLOWER_LOCKS,
        FSYNC_BUCKETS,
        LOCK_FOLLOWER0,
        LOCK_LANE0,
        RH_FSYNC_HIST,
        RING_HEADER_SIZE,
        RING_VERSION,
        fsync_bucket,
        fsync_bucket_upper,
    )

    assert RING_VERSION == 8
    assert (RH_FSYNC_HIST, FSYNC_BUCKETS) == (64, 96)  # words 64-159 (docs/FORMAT.md)
    assert (RH_FSYNC_HIST + FSYNC_BUCKETS) * 8 <= RING_HEADER_SIZE
    assert [fsync_bucket(us) for us in (0, 3, 4, 5, 7, 8, 65535, 131071, 10_000_000, 1 << 24, 1 << 40)] == [
        0, 3, 4, 5, 7, 8, 59, 63, 88, 92, 95
    ]  # fmt: skip
    assert fsync_bucket_upper(63) == 131071 and fsync_bucket_upper(95) == (1 << 25) - 1
    for us in (100, 140, 9_999, 115_000, 1_000_000, 10_000_000, (1 << 24) - 1):  # up to 16.8 s: within 19%
        assert us <= fsync_bucket_upper(fsync_bucket(us)) <= us * 1.19 + 1, us
    assert LOCK_FOLLOWER0 >= LOCK_LANE0 + MAX_PRODUCER_SLOTS and (LOCK_FOLLOWER0, FOLLOWER_LOCKS) == (2048, 1024)
# ---------------------------------------------------------------- the ring's identity words


def test_ring_layout_pins_the_identity_words():
    from ringwal import format as f

    assert f.RING_VERSION == 8
    assert (f.RH_LOG_ID, f.RH_DIR_DEV, f.RH_DIR_INO, f.RH_DIR_PATH_LEN) == (52, 54, 55, 56)
    assert (f.RH_DIR_PATH_OFFSET, f.RH_DIR_PATH_MAX) == (1280, 2816)
    assert f.RH_DIR_PATH_OFFSET == (f.RH_FSYNC_HIST + f.FSYNC_BUCKETS) * 8  # right after the histogram
    assert f.RH_DIR_PATH_OFFSET + f.RH_DIR_PATH_MAX == f.RING_HEADER_SIZE
    assert (f.RING_INIT, f.RING_READY, f.RING_STOPPED, f.RING_CLOSED, f.RING_GONE) == (0, 1, 2, 3, 4)


def test_a_new_ring_records_its_log_byte_for_byte(tmp_path):
    import os

    from ringwal import WAL, Config
    from ringwal.ring import WriterSide, ring_names

    d = str(tmp_path / "wal")
    WAL(Config(dir=d)).close()
    lid = bytes.fromhex(ringwal.log_id(d))
    st = os.stat(d)
    side = WriterSide.open(d, 2, 1 << 16, 1000, "binary", lambda point: None)
    try:
        buf = bytes(side.ring.buf[:4096])
        assert side.ring.name == ring_names(d)[0] == f"/ringwal.{lid.hex()}.{side.ring.name[-12:]}"
        assert buf[0:8] == b"RWRING\0\0" and int.from_bytes(buf[8:16], "little") == 8
        assert buf[416:432] == lid
        assert int.from_bytes(buf[432:440], "little") == st.st_dev
        assert int.from_bytes(buf[440:448], "little") == st.st_ino
        n = int.from_bytes(buf[448:456], "little")
        assert n == len(os.fsencode(d)) and buf[1280 : 1280 + n] == os.fsencode(d) and not any(buf[1280 + n :])
    finally:
        side.ring.unlink()
        side.close()
