"""Every serializer round-trips any valid record, alone and in batches; the registry works;
the committed protobuf module matches proto/ringwal/record.proto."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringwal import BinarySerializer, JSONSerializer, ProtoSerializer, Record, get_serializer, register_serializer
from ringwal.errors import CorruptRecordError
from ringwal.serializers import BaseSerializer, serializer_names

from .conftest import ROOT

SERIALIZERS = [BinarySerializer(), JSONSerializer(), ProtoSerializer()]

records = st.builds(
    Record,
    type=st.integers(1, 0xFFFF),
    time=st.integers(-(1 << 63), (1 << 63) - 1),
    data=st.binary(max_size=300),
)


@pytest.mark.parametrize("ser", SERIALIZERS, ids=lambda s: s.name)
@given(r=records, seq=st.integers(1, (1 << 64) - 1))
def test_round_trip(ser, r, seq):
    back = ser.decode(ser.encode(r), seq)
    assert back == r._replace(seq=seq)
    assert type(back) is Record


@pytest.mark.parametrize("ser", SERIALIZERS, ids=lambda s: s.name)
@given(rs=st.lists(records, min_size=1, max_size=40), first=st.integers(1, 1 << 60))
@settings(max_examples=60)
def test_batch_round_trip(ser, rs, first):
    body = b"".join(ser.frame_many(rs))
    back = list(ser.decode_batch(body, len(rs), first))
    assert back == [r._replace(seq=first + i) for i, r in enumerate(rs)]


@given(n=st.integers(1, 50), size=st.integers(0, 64), t=st.integers(1, 0xFFFF))
def test_binary_uniform_fast_path_matches_slow_path(n, size, t):
    ser = BinarySerializer()
    rs = [Record(t, i, bytes([i % 256]) * size) for i in range(n)]
    body = b"".join(ser.frame_many(rs))
    fast = list(ser.decode_batch(body, n, 7))
    slow = [ser.decode(body[k * (14 + size) + 4 : (k + 1) * (14 + size)], 7 + k) for k in range(n)]
    assert fast == slow == [r._replace(seq=7 + i) for i, r in enumerate(rs)]


@pytest.mark.parametrize("ser", SERIALIZERS, ids=lambda s: s.name)
def test_body_that_does_not_tile_is_corruption(ser):
    body = b"".join(ser.frame_many([Record(1, 2, b"abc"), Record(1, 2, b"abc")]))
    with pytest.raises(CorruptRecordError, match="does not hold 3 records"):
        list(ser.decode_batch(body, 3, 1, ("f.wal", 64)))
    with pytest.raises(CorruptRecordError):
        list(ser.decode_batch(body + b"\x01", 2, 1, ("f.wal", 64)))


def test_binary_fast_path_rejects_type_zero():
    ser = BinarySerializer()
    body = b"".join(ser.frame_many([Record(1, 2, b"ab")] * 3))
    body = body[:20] + b"\x00\x00" + body[22:]  # second record (at 16): its type -> 0
    with pytest.raises(CorruptRecordError):
        list(ser.decode_batch(body, 3, 1))


@pytest.mark.parametrize("ser", SERIALIZERS, ids=lambda s: s.name)
@given(
    rs=st.lists(records, min_size=1, max_size=30),
    uniform=st.booleans(),
    before=st.binary(max_size=40),
    after=st.binary(max_size=40),
    first=st.integers(1, 1 << 60),
)
@settings(max_examples=80)
def test_decode_span_in_place_equals_decode_batch_of_the_copied_body(ser, rs, uniform, before, after, first):
    """Replay decodes each frame's body where it lies in the segment's bytes (decode_span);
    the records are the same as from the body copied out, and own their data."""
    if uniform:  # the binary fast path: every record of the first one's length
        rs = [Record(r.type, r.time, rs[0].data) for r in rs]
    body = b"".join(ser.frame_many(rs))
    buf = before + body + after
    got = list(ser.decode_span(buf, len(before), len(body), len(rs), first))
    assert got == list(ser.decode_batch(body, len(rs), first)) == [r._replace(seq=first + i) for i, r in enumerate(rs)]
    assert all(type(r) is Record and type(r.data) is bytes for r in got)


def test_binary_decode_span_checks_only_its_span():
    """A type-0 record or a wrong length outside the span is not the span's; inside it is."""
    ser = BinarySerializer()
    body = b"".join(ser.frame_many([Record(1, 2, b"ab")] * 3))
    zero = b"".join(ser.frame_many([Record(1, 2, b"ab")]))
    zero = zero[:4] + b"\x00\x00" + zero[6:]  # a type-0 record next to the span
    buf = zero + body + zero
    assert [r.seq for r in ser.decode_span(buf, len(zero), len(body), 3, 5)] == [5, 6, 7]
    bad = body[:20] + b"\x00\x00" + body[22:]  # inside: the second record's type -> 0
    with pytest.raises(CorruptRecordError):
        list(ser.decode_span(zero + bad + zero, len(zero), len(bad), 3, 1))


def test_registry_finds_builtin_and_custom_serializers():
    assert serializer_names()[:3] == ["binary", "json", "proto"]
    assert isinstance(get_serializer("json"), JSONSerializer)

    class Upper(BaseSerializer):
        name = "test-upper"

        def encode(self, r):
            return JSONSerializer().encode(r)

        def decode(self, p, seq):
            return JSONSerializer().decode(p, seq)

    register_serializer(Upper)
    assert isinstance(get_serializer("test-upper"), Upper)
    with pytest.raises(KeyError, match="no serializer named 'nope'"):
        get_serializer("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_serializer(type("Other", (BaseSerializer,), {"name": "json"}))


def _serialized_descriptor(source: str) -> bytes:
    m = re.search(r"AddSerializedFile\((b'.*?')\)", source, re.S)
    assert m, "no serialized descriptor in generated module"
    return eval(m.group(1))  # a bytes literal written by protoc


def test_generated_proto_module_is_current(tmp_path):
    pytest.importorskip("grpc_tools")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Iproto", f"--python_out={tmp_path}", "proto/ringwal/record.proto"],
        cwd=ROOT,
        check=True,
    )
    fresh = (tmp_path / "ringwal" / "record_pb2.py").read_text()
    committed = open(os.path.join(ROOT, "ringwal", "record_pb2.py")).read()
    assert _serialized_descriptor(committed) == _serialized_descriptor(fresh), (
        "ringwal/record_pb2.py is stale against proto/ringwal/record.proto: run scripts/gen-proto"
    )


def test_serializer_with_only_the_protocol_methods_writes_and_replays(tmp_path):
    """A plain class with name/encode/decode (no BaseSerializer) gets the batch methods."""
    from ringwal import WAL, Config, replay

    class Plain:
        name = "test-plain"

        def encode(self, r):
            return BinarySerializer().encode(r)

        def decode(self, p, seq):
            return BinarySerializer().decode(p, seq)

    register_serializer(Plain)
    d = str(tmp_path / "wal")
    with WAL(Config(dir=d, serializer=Plain())) as w:
        assert w.append_many([Record(1, 2, b"ab"), Record(3, 4, b"cd")]) == range(1, 3)
        assert w.append(Record(5, 6, b"ef")) == 3
    got = list(replay(d, serializer=Plain()))
    assert got == [Record(1, 2, b"ab", 1), Record(3, 4, b"cd", 2), Record(5, 6, b"ef", 3)]
    assert list(replay(d)) == got  # found through the registry by the name in the header
