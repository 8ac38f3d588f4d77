"""Every on-disk byte layout of ringwal, the checksum and the format version. No I/O here.

``docs/FORMAT.md`` is the full specification with a worked example; this docstring is the
summary the code is checked against (``tests/test_format.py`` pins every size and a golden
frame). All integers are little-endian.

Segment file (``current.wal`` or ``NNNNNN.wal``)::

    +-------------------+--------+--------+--------+--------+-- ... --+
    | segment header    | frame  | frame  |  ...   | zeros (preallocated, = end)
    | hlen = 80 bytes   | 8-aligned frames start at offset hlen     |
    | (64 in version 1) |                                           |
    +-------------------+--------+--------+--------+--------+-- ... --+

Segment header, version 2 (written by this build), 80 bytes::

     0       8    10   12       16               32       40       48               64         76    80
    +--------+----+----+--------+----------------+--------+--------+----------------+----------+-----+
    | magic  |ver |hlen| flags  | serializer     |first   |created | log id         |reserved  |crc  |
    | 8s     |u16 |u16 | u32    | 16s, NUL-padded|seq u64 |ns i64  | 16 random bytes|12 x 0    |u32  |
    +--------+----+----+--------+----------------+--------+--------+----------------+----------+-----+
    ver = 2, hlen = 80, crc = CRC32C(bytes 0..76); frames start at offset hlen = 80

Segment header, version 1 (still read; never written), 64 bytes: bytes 0..47 as above
(ver = 1, hlen = 64), then 12 reserved zeros and the crc of bytes 0..60 at 60; no log id;
frames start at 64. In every version the header is ``hlen`` bytes and ends with the CRC32C
of the bytes before it.

Frame (one checksummed batch of one or more records)::

     0        4        8                16       20       24
    +--------+--------+----------------+--------+--------+------------------+---------+
    | length | count  | first_seq      | synced | crc    | body (length B)  | pad 0-7 |
    | u32    | u32    | u64            | u32    | u32    | count records    | zeros   |
    +--------+--------+----------------+--------+--------+------------------+---------+
    crc = CRC32C(header bytes 0..20 ++ body ++ pad); next frame at 24 + align8(length)

    synced (version 2): the segment's durable end when the frame was written, in units of
    8 bytes: an fdatasync (or fsync) of this file had completed covering every byte below
    ``synced * 8``. Always <= the frame's own offset / 8, and >= 10 (the 80-byte header
    is fsynced when the segment is created). Saturates at 2**32 - 1 (a lower bound stays true).
    In version 1 files these bytes were ``flags`` and are always 0.

Record inside a body: ``u32 payload_length`` then the serializer's payload. The record's seq
is ``first_seq + position`` in the batch; it is never inside the payload.

Zero means nothing: a frame whose 24 header bytes are all zero is the end of the data, and
``length`` 0, ``count`` 0 or a record ``payload_length`` of 0 are never valid, so preallocated
(zero-filled) space reads as the end.
"""

from __future__ import annotations

import struct
import sys
from typing import Final

from crc32c import crc32c

from .errors import CorruptSegmentError, UnsupportedVersionError

__all__ = [
    "FORMAT_VERSION",
    "FRAME_HEADER",
    "FRAME_HEADER_SIZE",
    "FRAME_SYNCED_OFFSET",
    "LOG_ID_SIZE",
    "MAGIC",
    "MAX_FRAME_BODY",
    "MAX_SYNCED",
    "READ_VERSIONS",
    "RECORD_LENGTH",
    "SEGMENT_HEADER",
    "SEGMENT_HEADER_SIZE",
    "SEGMENT_HEADER_V1",
    "SEGMENT_HEADER_V1_SIZE",
    "SERIALIZER_NAME_SIZE",
    "SegmentHeader",
    "align8",
    "checksum",
    "describe_walk",
    "encode_frame",
    "frame_checksum",
    "frame_durable_end",
    "same_length_run",
    "walk_records",
]

#: Identifies a ringwal segment; the last byte is a NUL so `file` shows "RINGWAL".
MAGIC: Final = b"RINGWAL\x00"
#: The version this build writes. It reads this one and every earlier one (READ_VERSIONS).
#: 2: the segment header grew to 80 bytes to carry the log id, and a frame's bytes 16-19 carry
#: the segment's durable end (``synced``) instead of a zero ``flags`` word (docs/FORMAT.md,
#: "Format version history"). A version 1 segment is read (and continued) with version 1 rules.
FORMAT_VERSION: Final = 2
READ_VERSIONS: Final = (1, 2)

#: The version 2 header (this build writes it): frames start at SEGMENT_HEADER_SIZE.
SEGMENT_HEADER: Final = struct.Struct("<8sHHI16sQq16s12xI")
SEGMENT_HEADER_SIZE: Final = SEGMENT_HEADER.size  # 80
#: The version 1 header (no log id), read in logs written before version 2.
SEGMENT_HEADER_V1: Final = struct.Struct("<8sHHI16sQq12xI")
SEGMENT_HEADER_V1_SIZE: Final = SEGMENT_HEADER_V1.size  # 64
SERIALIZER_NAME_SIZE: Final = 16
#: A log's identity: random bytes chosen once, when its first segment is created.
LOG_ID_SIZE: Final = 16
_HEADER_SIZES: Final = {1: SEGMENT_HEADER_V1_SIZE, 2: SEGMENT_HEADER_SIZE}

FRAME_HEADER: Final = struct.Struct("<IIQII")
FRAME_HEADER_SIZE: Final = FRAME_HEADER.size  # 24
#: Header bytes covered by the checksum: everything before the crc field.
FRAME_CRC_PREFIX: Final = FRAME_HEADER_SIZE - 4

RECORD_LENGTH: Final = struct.Struct("<I")

#: Largest body a frame may declare (u32). Readers also bound it by the bytes left in the file.
MAX_FRAME_BODY: Final = 0xFFFF_FFFF
#: Largest ``synced`` field (u32, units of 8 bytes): a larger durable end is stored as this.
MAX_SYNCED: Final = 0xFFFF_FFFF
#: The frame header's ``synced`` field (version 2): a little-endian u32 at this offset.
FRAME_SYNCED_OFFSET: Final = 16
_U32: Final = struct.Struct("<I")

_ZERO_FRAME_HEADER: Final = bytes(FRAME_HEADER_SIZE)
_PADS: Final = tuple(bytes(n) for n in range(8))

checksum = crc32c
"""CRC32C (Castagnoli), hardware-accelerated by the ``crc32c`` package. ``checksum(data, crc)``
continues a running checksum. Chosen over zlib's CRC32 by measurement (docs/FORMAT.md)."""


def align8(n: int) -> int:
    """Round ``n`` up to a multiple of 8."""
    return (n + 7) & ~7


class SegmentHeader:
    """The decoded segment header (version 1 or 2; ``size`` is its length, where frames start).

    ``log_id`` is the log's 16-byte identity (``LOG_ID_SIZE``), None in a version 1 header.
    """

    __slots__ = ("created_ns", "first_seq", "log_id", "serializer", "version")

    def __init__(
        self,
        serializer: str,
        first_seq: int,
        created_ns: int,
        log_id: bytes | None = None,
        version: int = FORMAT_VERSION,
    ):
        self.serializer = serializer
        self.first_seq = first_seq
        self.created_ns = created_ns
        self.log_id = log_id
        self.version = version

    @property
    def size(self) -> int:
        """The header's length in bytes (its ``hlen``): where the first frame starts."""
        return _HEADER_SIZES.get(self.version, SEGMENT_HEADER_SIZE)

    def __repr__(self) -> str:
        lid = self.log_id.hex() if self.log_id is not None else None
        return (
            f"SegmentHeader(serializer={self.serializer!r}, first_seq={self.first_seq}, "
            f"created_ns={self.created_ns}, log_id={lid!r}, version={self.version})"
        )

    def encode(self) -> bytes:
        """The header's bytes: version 2 (needs a ``log_id``), or version 1 (needs none; for
        tools and tests that make old logs). Other versions are ValueError."""
        name = self.serializer.encode("ascii")
        if not 0 < len(name) <= SERIALIZER_NAME_SIZE:
            raise ValueError(f"serializer name {self.serializer!r} must be 1-{SERIALIZER_NAME_SIZE} ASCII bytes")
        if self.first_seq < 1:
            raise ValueError(f"first_seq must be >= 1, got {self.first_seq}")
        if self.version == 1:
            if self.log_id is not None:
                raise ValueError("a version 1 segment header has no log id")
            body = SEGMENT_HEADER_V1.pack(MAGIC, 1, SEGMENT_HEADER_V1_SIZE, 0, name, self.first_seq, self.created_ns, 0)
        elif self.version == 2:
            if self.log_id is None or len(self.log_id) != LOG_ID_SIZE:
                raise ValueError(f"a version 2 segment header needs a log id of {LOG_ID_SIZE} bytes")
            body = SEGMENT_HEADER.pack(
                MAGIC, 2, SEGMENT_HEADER_SIZE, 0, name, self.first_seq, self.created_ns, self.log_id, 0
            )
        else:
            # Tests make headers of versions this build cannot read: the layout of 2, another number.
            body = SEGMENT_HEADER.pack(
                MAGIC, self.version, SEGMENT_HEADER_SIZE, 0, name, self.first_seq, self.created_ns,
                self.log_id or bytes(LOG_ID_SIZE), 0,
            )  # fmt: skip
        return body[:-4] + crc32c(body[:-4]).to_bytes(4, "little")

    @classmethod
    def decode(cls, buf: bytes, path: str) -> SegmentHeader:
        """Parse and check a segment header of any version this build reads (``buf`` holds at
        least its ``hlen`` bytes; more is ignored); raise a FormatError naming ``path`` when it
        is bad, UnsupportedVersionError for a version this build does not read."""
        if len(buf) < SEGMENT_HEADER_V1_SIZE:
            raise CorruptSegmentError(
                f"{path}: segment header is {len(buf)} bytes, expected at least {SEGMENT_HEADER_V1_SIZE}",
                path=path,
                offset=0,
            )
        magic, version, hlen = struct.unpack_from("<8sHH", buf, 0)
        if magic != MAGIC:
            raise CorruptSegmentError(f"{path}: not a ringwal segment (magic {magic!r})", path=path, offset=0)
        want = _HEADER_SIZES.get(version)
        # Every version ends its hlen-byte header with the CRC32C of the bytes before it, so
        # the checksum is checked first whenever hlen can be trusted that far.
        size = want if want is not None else hlen
        if SEGMENT_HEADER_V1_SIZE <= size <= len(buf):
            crc = int.from_bytes(buf[size - 4 : size], "little")
            computed = crc32c(buf[: size - 4])
            if computed != crc:
                raise CorruptSegmentError(
                    f"{path}: segment header checksum mismatch at offset {size - 4}: stored {crc:#010x}, "
                    f"computed {computed:#010x}",
                    path=path,
                    offset=size - 4,
                )
        if want is None:
            raise UnsupportedVersionError(
                f"{path}: segment format version {version} is not supported by this ringwal "
                f"(it reads versions {', '.join(map(str, READ_VERSIONS))}); upgrade ringwal to read this log",
                path=path,
                offset=8,
            )
        if len(buf) < want:
            raise CorruptSegmentError(
                f"{path}: segment header of version {version} is {want} bytes, only {len(buf)} are there",
                path=path,
                offset=0,
            )
        log_id: bytes | None = None
        if version == 1:
            _m, _v, hlen, flags, name, first_seq, created, _crc = SEGMENT_HEADER_V1.unpack_from(buf, 0)
        else:
            _m, _v, hlen, flags, name, first_seq, created, log_id, _crc = SEGMENT_HEADER.unpack_from(buf, 0)
        if hlen != want or flags != 0 or first_seq < 1:
            raise CorruptSegmentError(
                f"{path}: segment header fields invalid (header_size={hlen}, flags={flags:#x}, first_seq={first_seq})",
                path=path,
                offset=0,
            )
        try:
            serializer = name.rstrip(b"\x00").decode("ascii")
        except UnicodeDecodeError:
            serializer = ""
        if not serializer:
            raise CorruptSegmentError(f"{path}: segment header names no serializer", path=path, offset=16)
        return cls(serializer, first_seq, created, log_id, version)


def frame_checksum(header_prefix: bytes, body: bytes, pad: bytes) -> int:
    """CRC32C over the first 20 header bytes, the body and the zero padding."""
    return crc32c(pad, crc32c(body, crc32c(header_prefix)))


def encode_frame(body: bytes, count: int, first_seq: int, durable_end: int = 0) -> tuple[bytes, bytes, bytes]:
    """Frame ``body`` (``count`` length-prefixed records) as (header, body, pad) for ``os.writev``.

    ``durable_end``: for a version 2 segment, the byte offset below which an fdatasync of the
    segment had completed (a multiple of 8, stored as ``synced``); 0 for a version 1 segment.
    """
    n = len(body)
    if not 0 < n <= MAX_FRAME_BODY:
        raise ValueError(f"frame body of {n} bytes is outside 1..{MAX_FRAME_BODY}")
    if count < 1:
        raise ValueError("a frame holds at least one record")
    if durable_end & 7 or durable_end < 0:
        raise ValueError(f"durable_end must be a multiple of 8 >= 0, got {durable_end}")
    pad = _PADS[-n & 7]
    synced = min(durable_end >> 3, MAX_SYNCED)
    prefix = FRAME_HEADER.pack(n, count, first_seq, synced, 0)[:FRAME_CRC_PREFIX]
    crc = crc32c(pad, crc32c(body, crc32c(prefix)))
    return prefix + crc.to_bytes(4, "little"), body, pad


# Outcomes of parse_frame, in the order a reader checks them.
FRAME_OK: Final = 0
FRAME_END: Final = 1  # 24 zero bytes, or exactly at the end of the buffer: nothing more
FRAME_INCOMPLETE: Final = 2  # header or body runs past the end of the buffer
FRAME_BAD: Final = 3  # fields impossible or checksum mismatch

FrameInfo = tuple[int, int, int, int, int, int, int]
"""(outcome, length, count, first_seq, stored_crc, computed_crc, next_offset)"""


def parse_frame(buf: bytes | bytearray | memoryview, pos: int, limit: int, version: int = FORMAT_VERSION) -> FrameInfo:
    """Look at the frame starting at ``pos`` of ``buf[:limit]`` without trusting any field.

    A length is used only after it has been checked against the bytes left, so a corrupt
    header never causes a large allocation. On FRAME_BAD with a checksum mismatch the
    stored and computed checksums are set; for impossible fields both are -1. ``version``
    is the segment's: in version 1 bytes 16-19 must be 0; in version 2 they are ``synced``
    (read it with :func:`frame_durable_end` once the frame is FRAME_OK).
    """
    if pos == limit:
        return (FRAME_END, 0, 0, 0, -1, -1, pos)
    if pos + FRAME_HEADER_SIZE > limit:
        if not any(buf[pos:limit]):
            return (FRAME_END, 0, 0, 0, -1, -1, pos)
        return (FRAME_INCOMPLETE, 0, 0, 0, -1, -1, pos)
    length, count, first_seq, flags, crc = FRAME_HEADER.unpack_from(buf, pos)
    if length == 0:
        if buf[pos : pos + FRAME_HEADER_SIZE] == _ZERO_FRAME_HEADER:
            return (FRAME_END, 0, 0, 0, -1, -1, pos)
        return (FRAME_BAD, length, count, first_seq, -1, -1, pos)
    # Each record needs at least its 4-byte length and one payload byte.
    if count == 0 or (flags != 0 and version < 2) or count > length // 5 or first_seq == 0:
        return (FRAME_BAD, length, count, first_seq, -1, -1, pos)
    end = pos + FRAME_HEADER_SIZE + align8(length)
    if end > limit:
        return (FRAME_INCOMPLETE, length, count, first_seq, crc, -1, pos)
    start = pos + FRAME_HEADER_SIZE
    computed = crc32c(
        buf[start + length : end], crc32c(buf[start : start + length], crc32c(buf[pos : pos + FRAME_CRC_PREFIX]))
    )
    if computed != crc:
        return (FRAME_BAD, length, count, first_seq, crc, computed, pos)
    return (FRAME_OK, length, count, first_seq, crc, computed, end)


def frame_durable_end(buf: bytes | bytearray | memoryview, pos: int) -> int:
    """The durable end (bytes) a valid version 2 frame at ``pos`` claims: ``synced * 8``."""
    return int(_U32.unpack_from(buf, pos + FRAME_SYNCED_OFFSET)[0]) << 3


# Outcomes of walk_records: what is wrong with a run of records, 0 when nothing is.
WALK_OK: Final = 0
WALK_ZERO_LENGTH: Final = 1  # a record's u32 length is 0 (never valid: zero means nothing)
WALK_TOO_LARGE: Final = 2  # a length above the limit (max_record_size in the ring)
WALK_OVERRUN: Final = 3  # a record (or its length field) runs past the end of the bytes
WALK_COUNT: Final = 4  # the lengths tile the bytes, but into another number of records
WALK_SPAN: Final = 5  # a ring span larger than its lane, or bytes without records (value: ring_size)

WalkResult = tuple[int, int, int, int]
"""(outcome, records, offset, value): with WALK_OK, ``records`` whole records ending at byte
``offset``; otherwise record number ``records`` (from 0) at byte ``offset`` is where the walk
failed and ``value`` the length (or, for WALK_COUNT, the number of records) it found there."""

_unpack_len = RECORD_LENGTH.unpack_from
_pack_len = RECORD_LENGTH.pack


def walk_records(buf: bytes | memoryview, count: int, max_record: int, span: int | None = None) -> WalkResult:
    """Check that ``buf`` holds exactly ``count`` records (u32 length 1..``max_record``, then
    that many bytes), back to back, ending exactly at its end; read no length past its end.

    With ``span``, ``buf`` is only the first bytes of ``span`` bytes said to hold ``count``
    records: the walk takes the whole records that lie in ``buf`` (checking each against
    ``span``) and reports how many, so a caller can cut a run at a record boundary.

    Cost: a run of records that all have the first one's length is checked by one strided
    compare in C (``_same_length_run``); any other record costs one ``unpack_from`` and a
    compare, the least a Python loop can do (the writer runs this on every span it frames).
    Only when something is wrong does a second, careful walk find out what and where.
    """
    end = len(buf)
    total = end if span is None else span
    if count <= 0 or total <= 0:
        return (WALK_OK, 0, 0, 0) if count <= 0 and total <= 0 else (WALK_COUNT, 0, 0, 0)
    k, pos = same_length_run(buf, count, max_record) if count >= _RUN_MIN else (0, 0)
    if span is None:
        unpack = _unpack_len
        try:
            for _ in range(count - k):
                (n,) = unpack(buf, pos)
                if n > max_record or not n:
                    break
                pos += n + 4  # past end: the next unpack raises, or the end check below fails
            else:
                if pos == end:
                    return (WALK_OK, count, end, 0)
        except struct.error:
            pass
        k, pos = 0, 0  # something is wrong: walk again, carefully, to say what
    return _walk_checked(buf, count, max_record, total, k, pos)


def _walk_checked(buf: bytes | memoryview, count: int, max_record: int, total: int, start: int, pos: int) -> WalkResult:
    """walk_records from record ``start`` at byte ``pos``, checking each step (see there)."""
    end = len(buf)
    unpack = _unpack_len
    k = start
    try:
        for k in range(start, count):
            (n,) = unpack(buf, pos)
            if n > max_record or not n:
                return (WALK_ZERO_LENGTH if n == 0 else WALK_TOO_LARGE, k, pos, n)
            nxt = pos + 4 + n
            if nxt > end:
                if nxt > total:
                    return (WALK_OVERRUN, k, pos, n)
                break  # the next record lies past buf: the run is cut before it
            pos = nxt
        else:
            k = count
    except struct.error:  # a length field past the end of buf
        if pos + 4 > total:
            return (WALK_OVERRUN if pos < total else WALK_COUNT, k, pos, total - pos if pos < total else k)
    if k == count and pos != total:
        return (WALK_COUNT, k, pos, k)
    return (WALK_OK, k, pos, 0)


_LITTLE = sys.byteorder == "little"
#: Fewer records than this are cheaper to walk one by one than to set up a strided compare for.
_RUN_MIN = 16


def same_length_run(buf: bytes | memoryview, count: int, max_record: int, min_run: int = _RUN_MIN) -> tuple[int, int]:
    """(m, bytes): the records that fit in ``buf`` at the first record's stride (at most
    ``count``) all have the first one's length; (0, 0) when they do not, or when fewer than
    ``min_run`` fit (below about 16 records, walking one run costs less than the views'
    set-up; a caller that would otherwise walk several runs one by one passes a smaller one).

    One strided compare of the length fields as u32 (as u16 pairs, or bytes, when the stride
    is not a multiple of 4) with themselves shifted by one record, all in C.
    """
    end = len(buf)
    if end < 4:
        return 0, 0
    (n,) = _unpack_len(buf, 0)
    stride = n + 4
    m = min(count, end // stride)
    if not 0 < n <= max_record or m < min_run:
        return 0, 0
    run = memoryview(buf)[: stride * m]
    # Each strided view holds one field of every length (all of it, or a u16 half, or a byte);
    # all lengths equal the first iff every view equals itself shifted by one.
    if _LITTLE and not stride & 3:
        fields = [run.cast("I")[:: stride >> 2]]
    elif _LITTLE and not stride & 1:
        halves = run.cast("H")
        fields = [halves[:: stride >> 1], halves[1 :: stride >> 1]]
    else:
        fields = [run[i::stride] for i in range(4)]
    same = all(f[1:] == f[:-1] for f in fields)
    return (m, stride * m) if same else (0, 0)


def describe_walk(result: WalkResult, count: int, nbytes: int, max_record: int | None = None) -> str:
    """What ``walk_records`` found wrong, in words (``count`` records said to be in ``nbytes``)."""
    outcome, k, pos, value = result
    where = f"record {k} at byte {pos}"
    if outcome == WALK_ZERO_LENGTH:
        return f"{where} has length 0"
    if outcome == WALK_TOO_LARGE:
        limit = f"max_record_size={max_record}" if max_record is not None else "the bytes there"
        return f"{where} claims {value} bytes, more than {limit}"
    if outcome == WALK_OVERRUN:
        return f"{where} (length {value}) runs past the end of the {nbytes} bytes"
    if outcome == WALK_COUNT:
        return f"the lengths end at byte {pos} after {value} records; {count} records in {nbytes} bytes were claimed"
    if outcome == WALK_SPAN:
        return f"{count} records in {nbytes} bytes cannot be in a ring lane of {value} bytes"
    return "nothing is wrong"


# --------------------------------------------------------------------------- the ring
#
# The shared-memory ring (``/dev/shm/ringwal.<log id>.<place>``: the 32 hex digits of the log
# id, then the first 12 hex digits of SHA-256 of "<st_dev>:<st_ino>" of the log directory) is
# not stored on disk, but it outlives
# processes (a writer that dies leaves it for the next one), so its layout is versioned like
# the segments'. ``ringwal/ring.py`` holds the algorithms and the memory-ordering argument;
# the layout lives here. Every field is a little-endian 64-bit word at an 8-aligned offset,
# read and written whole (see ring.py for why a word is never seen half-written).
#
# Region::
#
#     0                  4096                     S                    D
#     +------------------+------------------------+--------------------+-------------------+
#     | ring header      | lane control blocks    | span logs          | lane data         |
#     | 512 words        | slots x 256 B          | slots x SPAN_LOG x | slots x ring_size |
#     |                  |                        | 16 B               |                   |
#     +------------------+------------------------+--------------------+-------------------+
#     S = align4096(4096 + slots*256), D = align4096(S + slots*SPAN_LOG*16)
#
# Ring header words (who writes each: W = the writer, C = whoever holds the claim lock,
# P = a producer claiming or releasing a lane)::
#
#     0 magic "RWRING\0\0"   1 version      2 slots        3 ring_size (lane bytes)
#     4 max_record_size      5 SPAN_LOG     6-7 serializer name (16 bytes, NUL-padded)
#     8 state (W)            9 writer pid, in the writer's PID namespace: for display (W)
#     10 reserved (never written)
#     11 writer generation (W)              12 attach generation: a hint, bumped without a
#        lock by claims and releases, so concurrent bumps may collapse into one (P, W)
#     13 pending (W)         14 pending first seq (W)   15 pending last seq (W)
#     16 next seq (W)        17 durable seq (W)         18 reserved (never written)
#     19 records written (W) 20 fsyncs (W)  21 writer started, ns (W)
#     22 resume lane + 1 (W): the last drain cut this lane's span; the next drain starts with
#        its rest, up to the head in 23 (0 = none)   23 resume head (W)
#     24 wake word: low 32 bits bumped after each publication of progress, the futex that
#        waiting producers sleep on (W; see _futex.py)
#     32 follow word: low 32 bits bumped after records become durable while followers are
#        registered, and after a truncation; the futex ``follow`` and ``truncate_before``
#        sleep on (W)         33 followers registered (C; a dead follower leaves it high,
#        which only costs the writer one futex wake per fsync; who is alive is told by the
#        follower bytes of ``wal.ring.lock``, never by this word)
#     40 records/s over the last second (W)  41 truncation requested: remove completed
#        segments below this seq (C: raised, never lowered)   42 truncation served up to (W)
#     43 first seq still in the log after the last truncation (W)
#     44 fsync count in the histogram (W)    45 sum of fsync ns (W)
#     46 pending resume lane + 1 (W)         47 pending resume head (W): words 22-23 as they
#        become when the pending drain finishes
#     48 failed first seq  49 failed last seq  50 what failed (FSYNC_FAILURES) (W): a writer
#        whose fsync failed records the seqs it had written but never made durable (48 last,
#        non-zero = set); the next writer clears 48 once wal_holes.json holds the range
#     52-53 log id (16 bytes, C at creation): the log this ring belongs to; producers and
#        writers refuse a ring whose id is not their directory's
#     54 st_dev, 55 st_ino of the log directory (C at creation): the place it belongs to
#     56 length in bytes of the directory's path (W: the creator, then each writer as it
#        starts, since a directory may be moved); the path itself (os.fsencode) in bytes
#        1280..4095, right after the histogram, cut at 2816 bytes. For ``ringwal rings``:
#        which log a ring is, and whether that log is gone (an orphan)
#     64-159 fsync latency histogram (W): word 64+b counts fsyncs in bucket b (fsync_bucket;
#        96 buckets, 4 per power of two of microseconds, the last from 7 * 2**22 us (about
#        29.4 s) up); every word not named here (10, 18, 25-31, 34-39, 51, 57-63) is zero
#
# Lane control block, 32 words; each group on its own 64-byte line so that producer and
# writer stores never share a cache line::
#
#     0 head = count32 << 32 | pos32 (producer)   1 want_written (producer)
#     2 want_durable (producer)                    (a want is 1 << 32 | count32, 0 = none)
#     8 tail = count32 << 32 | pos32 (W)            9 pending tail (W)
#     10 progress version, odd while changing (W)  11 written count32 (W)  12 written seq (W)
#     13 durable count32 (W)  14 durable seq (W)  15 span head: spans logged so far (W)
#     16 owner pid, in the owner's PID namespace: for display (O)  17 reserved (never written)
#     18 owner token: random, odd; nonzero = the lane is owned (O)
#     19 first seq of this lane's span in the pending drain (W)
#     20 lost: 1 << 32 | count32 of this lane's last record lost to a failed fsync (W; 0 =
#        none; stored after 21-23)   21 first seq   22 last seq of the range lost then
#     23 what failed (FSYNC_FAILURES)
#     24 poison (W): the owner token of a producer whose span the writer dropped as not
#        records; its handle refuses work from then on (0 = never)
#     25 count32 before the first record dropped   26 problem: outcome << 32 | record index
#     27 byte offset of the problem in the dropped bytes   28 value seen there (a length or count)
#     29 what was dropped: count32 << 32 | bytes   (26-29 as walk_records reports them)
#     (O = whoever holds the lane's lock in wal.ring.lock: the producer that claims, owns or
#     releases the lane, or the writer freeing the lane of a producer that died)
#
# Span log entry (16 bytes; entry i of a lane at i % SPAN_LOG): the writer drained the
# lane's records with counts start+1 .. end (mod 2**32) as seqs first_seq ..::
#
#     word 0 = start32 << 32 | end32        word 1 = first_seq
#
# Lane data holds records exactly as a frame body holds them (u32 length + payload),
# contiguous, wrapping at ring_size (a record may straddle the end).
#
# The ring's locks: byte-range OFD locks (``_fileutil.ByteLocks``) on ``<dir>/wal.ring.lock``,
# a file that stays empty. Each byte is one exclusive lock, dropped by the kernel when its
# holder dies, whatever PID namespace it runs in::
#
#     byte 0         the claim lock: follower count and truncation request (C), held for a
#                    few word stores, taken with a deadline
#     byte 1         the writer: held by the writer that serves the ring from just before it
#                    publishes READY until it has stopped; "held" = the writer is alive
#     byte 64 + k    lane k: held by its owner for as long as it owns the lane; the writer
#                    takes it to free the lane of an owner that died, and takes all lanes'
#                    bytes at once to decide that nobody uses the ring at shutdown
#     byte 2048 + j  follower j (j < 1024): held by a registered follower (``follow``,
#                    ``tail -f``) while it follows, the first free one taken without waiting;
#                    ``stats`` counts the held ones: the live followers

RING_MAGIC: Final = b"RWRING\x00\x00"
#: 2: futex wake word (24) replaced the per-lane semaphores; 3: stats, follow, truncation words;
#: 4: liveness by the locks in wal.ring.lock (pid words for display only, create-time words unused).
#: 5: resume words (22-23, 46-47) for drains cut at a record boundary, lane poison words (24-29).
#: 6: the fsync histogram grows to 96 buckets (words 64-159, up to ~33 s), follower lock bytes.
#: 7: fsync failure words (header 48-50, lane 20-23): records lost to a failed fsync.
#: 8: the ring names its log: log id (52-53), directory device and inode (54-55), path (56,
#: bytes 1280..); the shared-memory name carries the log id; state 4 (the directory is gone).
RING_VERSION: Final = 8
RING_HEADER_SIZE: Final = 4096
LANE_CTL_SIZE: Final = 256
SPAN_LOG: Final = 1024
SPAN_SIZE: Final = 16

# ring header word indices
RH_MAGIC, RH_VERSION, RH_SLOTS, RH_RING_SIZE, RH_MAX_RECORD, RH_SPAN_LOG = range(6)
RH_SERIALIZER_OFFSET: Final = 48
RH_STATE, RH_WRITER_PID = 8, 9
RH_WRITER_GEN, RH_ATTACH_GEN = 11, 12
RH_PENDING, RH_PENDING_FIRST, RH_PENDING_LAST, RH_NEXT_SEQ, RH_DURABLE_SEQ = range(13, 18)
RH_RECORDS, RH_FSYNCS, RH_STARTED_NS, RH_RESUME, RH_RESUME_HEAD = range(19, 24)
RH_WAKE: Final = 24  # on its own cache line: producers poll it while the writer stores 16-21
RH_FOLLOW_WAKE, RH_FOLLOWERS = 32, 33
RH_RATE, RH_TRUNC_REQ, RH_TRUNC_DONE, RH_FIRST_SEQ, RH_FSYNC_COUNT, RH_FSYNC_NS = range(40, 46)
RH_PENDING_RESUME, RH_PENDING_RESUME_HEAD = 46, 47
RH_FAILED_FIRST, RH_FAILED_LAST, RH_FAILED_WHAT = 48, 49, 50
RH_LOG_ID, RH_DIR_DEV, RH_DIR_INO, RH_DIR_PATH_LEN = 52, 54, 55, 56
#: Bytes of the ring header that hold the log directory's path (cut to fit): after the histogram.
RH_DIR_PATH_OFFSET, RH_DIR_PATH_MAX = 1280, 2816
RH_FSYNC_HIST: Final = 64
FSYNC_BUCKETS: Final = 96


def fsync_bucket(us: int) -> int:
    """Histogram bucket of an fsync of ``us`` microseconds: 4 buckets per power of two
    (about 19% wide), exact below 4 us; bucket 95 holds 7 * 2**22 us (about 29.4 s) and
    everything longer, so any fsync up to 29.4 s is placed within 19% (a 10 s fsync reads as
    <= 11.5 s)."""
    if us < 4:
        return max(us, 0)
    bl = us.bit_length()
    return min(FSYNC_BUCKETS - 1, 4 * (bl - 2) + ((us >> (bl - 3)) & 3))


def fsync_bucket_upper(b: int) -> int:
    """The largest microsecond count that falls in bucket ``b`` (the value percentiles report)."""
    if b < 4:
        return b
    bl = b // 4 + 2
    sub = b % 4
    return ((4 | sub) << (bl - 3)) + (1 << (bl - 3)) - 1


# ring states: GONE = its writer found the log directory removed or moved and stopped (the
# ring is unlinked; attached producers raise LogGoneError)
RING_INIT, RING_READY, RING_STOPPED, RING_CLOSED, RING_GONE = range(5)

#: What failed, as the ring's failure words (header 50, lane 23) say it; 0 = not known.
FSYNC_DATASYNC, FSYNC_SEAL, FSYNC_OPEN = 1, 2, 3
FSYNC_FAILURES: Final = {
    0: "an fsync of current.wal",
    FSYNC_DATASYNC: "the fdatasync of current.wal",
    FSYNC_SEAL: "the fsync of current.wal while sealing it (rotation)",
    FSYNC_OPEN: "the fdatasync at start-up of the frames a dead writer left in current.wal",
}

# lane control word indices (relative to the lane's block)
L_HEAD, L_WANT_WRITTEN, L_WANT_DURABLE = 0, 1, 2
L_TAIL, L_PENDING_TAIL, L_VERSION, L_WRITTEN_COUNT = range(8, 12)
L_WRITTEN_SEQ, L_DURABLE_COUNT, L_DURABLE_SEQ, L_SPAN_HEAD = range(12, 16)
L_OWNER_PID, L_OWNER_TOKEN, L_PENDING_SEQ = 16, 18, 19
L_LOST, L_LOST_FIRST, L_LOST_LAST, L_LOST_WHAT = range(20, 24)
L_POISON, L_POISON_FROM, L_POISON_WHY, L_POISON_AT, L_POISON_VALUE, L_POISON_SPAN = range(24, 30)
LANE_WORDS: Final = LANE_CTL_SIZE // 8


#: The ring's lock file in the log directory, and its lock bytes (above).
RING_LOCK_NAME: Final = "wal.ring.lock"
LOCK_CLAIM: Final = 0
LOCK_WRITER: Final = 1
LOCK_LANE0: Final = 64
LOCK_FOLLOWER0: Final = 2048
FOLLOWER_LOCKS: Final = 1024


def _align4096(n: int) -> int:
    return (n + 4095) & ~4095


def ring_layout(slots: int, ring_size: int) -> tuple[int, int, int]:
    """(span log offset, lane data offset, total region size) for a ring of this shape."""
    spans = _align4096(RING_HEADER_SIZE + slots * LANE_CTL_SIZE)
    data = _align4096(spans + slots * SPAN_LOG * SPAN_SIZE)
    return spans, data, data + slots * ring_size
