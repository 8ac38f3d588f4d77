"""Record validation: every bad field is a typed error at construction, naming the field."""

from __future__ import annotations

import pytest

import ringwal
from ringwal import InvalidRecordError, Record, RecordType, WALError


def test_record_fields_and_defaults():
    r = Record(RecordType.PLACE, 5, b"x")
    assert (r.type, r.time, r.data, r.seq) == (1, 5, b"x", 0)
    assert Record(2, 0, bytearray(b"ab")).data == b"ab"
    assert Record(2, 0, memoryview(b"cd")).data == b"cd"
    assert [t.value for t in RecordType] == [1, 2, 3, 4]
    assert "seq=0" in repr(r)


@pytest.mark.parametrize(
    "args, match",
    [
        ((0, 1, b"x"), "out of range 1..65535"),
        ((65536, 1, b"x"), "out of range"),
        ((-1, 1, b"x"), "out of range"),
        (("1", 1, b"x"), "must be an int"),
        ((True, 1, b"x"), "must be an int"),
        ((1, 1 << 63, b"x"), "signed 64-bit"),
        ((1, 1.5, b"x"), "signed 64-bit"),
        ((1, 1, "text"), r"must be bytes, got str \(encode text first"),
        ((1, 1, None), "must be bytes, got NoneType"),
        ((1, 1, b"x", -1), "seq must be"),
    ],
)
def test_bad_fields_raise_invalid_record_error(args, match):
    with pytest.raises(InvalidRecordError, match=match) as info:
        Record(*args)
    assert isinstance(info.value, WALError) and isinstance(info.value, ValueError)


def test_make_and_replace_validate_too():
    with pytest.raises(InvalidRecordError):
        Record._make((0, 1, b"x", 0))
    with pytest.raises(InvalidRecordError):
        Record(1, 1, b"x")._replace(type=0)


def test_public_names_are_sorted_and_importable():
    for name in ringwal.__all__:
        assert hasattr(ringwal, name), name
    assert list(ringwal.__all__) == sorted(ringwal.__all__)
