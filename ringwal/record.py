"""``Record`` and ``RecordType``.

A Record is an immutable 4-tuple ``(type, time, data, seq)`` with named fields. It is a tuple
so that replay can build millions of them in C (``struct.iter_unpack`` + ``map``) without a
Python call per record; the public constructor validates, replay's internal one does not
need to because every byte it decodes passed a checksum.
"""

from __future__ import annotations

import enum
from collections import namedtuple
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Self

from .errors import InvalidRecordError

__all__ = ["MAX_TYPE", "Record", "RecordType", "check_record"]

#: Record types are u16 on disk; 0 is reserved so that zeroed space never reads as a record.
MAX_TYPE: Final = 0xFFFF
_I64_MIN: Final = -(1 << 63)
_I64_MAX: Final = (1 << 63) - 1
_U64_MAX: Final = (1 << 64) - 1


class RecordType(enum.IntEnum):
    """The record types of the Go original. Any integer 1..65535 is a valid type."""

    PLACE = 1
    CANCEL = 2
    MATCH = 3
    SNAPSHOT = 4


# Type checkers see typed fields (``rec.data`` is bytes). Run time keeps them untyped: hypothesis
# fills every annotated field of a typed NamedTuple, defaults included, so st.builds(Record,
# type=..., time=..., data=...) would draw arbitrary (often negative) seqs instead of 0.
if TYPE_CHECKING:

    class _RecordBase(NamedTuple):
        type: int
        time: int
        data: bytes
        seq: int = 0

else:
    _RecordBase = namedtuple("_RecordBase", ["type", "time", "data", "seq"])


class Record(_RecordBase):
    """One log entry.

    ``type``: integer 1..65535 (0 is reserved). ``time``: nanoseconds since the epoch (signed
    64-bit). ``data``: bytes (a bytearray or memoryview is copied to bytes). ``seq``: assigned
    by the log when the record is appended; leave it 0 when creating a record.
    """

    __slots__ = ()

    def __new__(cls, type: int, time: int, data: bytes | bytearray | memoryview, seq: int = 0) -> Self:  # noqa: A002
        # The hot path, one expression: exact ints and bytes in range (a bool, an IntEnum, a
        # bytearray or a bad value takes check_record, which normalises or raises).
        if (
            type.__class__ is int
            and time.__class__ is int
            and data.__class__ is bytes
            and not seq
            and 0 < type <= 0xFFFF
            and -0x8000_0000_0000_0000 <= time <= 0x7FFF_FFFF_FFFF_FFFF
        ):
            return _tuple_new(cls, (type, time, data, 0))
        return _tuple_new(cls, check_record(type, time, data, seq))

    # The inherited _make (and so _replace) would skip validation. The ignore: mypy gives
    # NamedTuple a synthesized _make that no classmethod override matches.
    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Self:  # type: ignore[override]
        return cls(*iterable)

    def __repr__(self) -> str:
        data = self.data
        shown = repr(data[:32]) + ("..." if len(data) > 32 else "")
        return f"Record(type={self.type}, time={self.time}, data={shown}, seq={self.seq})"


_tuple_new = tuple.__new__


def check_record(type: int, time: int, data: object, seq: int = 0) -> tuple[int, int, bytes, int]:  # noqa: A002
    """Validate record fields, returning them normalised; raise InvalidRecordError otherwise."""
    if isinstance(type, bool) or not isinstance(type, int):
        raise InvalidRecordError(f"record type must be an int in 1..{MAX_TYPE}, got {type!r}")
    if not 1 <= type <= MAX_TYPE:
        raise InvalidRecordError(f"record type {type} is out of range 1..{MAX_TYPE} (0 is reserved)")
    if isinstance(time, bool) or not isinstance(time, int) or not _I64_MIN <= time <= _I64_MAX:
        raise InvalidRecordError(f"record time must be a signed 64-bit int (ns since the epoch), got {time!r}")
    if data.__class__ is not bytes:
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data)
        else:
            raise InvalidRecordError(
                f"record data must be bytes, got {data.__class__.__name__}"
                + (" (encode text first, e.g. s.encode())" if isinstance(data, str) else "")
            )
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= _U64_MAX:
        raise InvalidRecordError(f"record seq must be an int in 0..2**64-1, got {seq!r}")
    return (type, time, data, seq)


def check_seq(value: object, what: str) -> int:
    """``value`` if it is a seq argument (an int >= 0, not a bool); else ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a seq (an int >= 0), got {value!r}")
    return value
