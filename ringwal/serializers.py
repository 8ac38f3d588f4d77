"""Serializers turn a Record's type, time and data into a payload and back.

The frame carries the seq (producers encode before a seq exists), so ``decode`` is given it.
Every segment header names the serializer its payloads were written with; ``get_serializer``
finds it by that name, so a reader needs no configuration.

Implementations override batch methods where they can do better than one call per record:
``frame_many`` (encode straight into the on-disk record layout, length prefix included),
``decode_batch`` (turn a checked frame body into Records) and ``decode_span`` (the same, for a
body still inside the segment's bytes: replay's call, so a frame is not copied out first).
``BinarySerializer`` decodes a batch whose records all have the same length entirely in C,
in place; that is replay's fast path.
"""

from __future__ import annotations

import abc
import base64
import binascii
import json
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import count as _count
from itertools import repeat
from operator import add
from typing import Any, ClassVar, Protocol, runtime_checkable

from .errors import CorruptRecordError, InvalidRecordError, MissingExtraError
from .format import RECORD_LENGTH
from .record import MAX_TYPE, Record

__all__ = [
    "BaseSerializer",
    "BinarySerializer",
    "JSONSerializer",
    "ProtoSerializer",
    "Serializer",
    "get_serializer",
    "register_serializer",
    "serializer_names",
    "with_batch_methods",
]

_tuple_new = tuple.__new__
_unpack_len = RECORD_LENGTH.unpack_from
_pack_len = RECORD_LENGTH.pack


@runtime_checkable
class Serializer(Protocol):
    """What a serializer must provide. Subclass BaseSerializer to get the batch methods."""

    # Read-only, so that a class attribute (as BaseSerializer's ClassVar) satisfies it too.
    @property
    def name(self) -> str: ...

    def encode(self, record: Record) -> bytes: ...

    def decode(self, payload: bytes, seq: int) -> Record: ...


class BaseSerializer(abc.ABC):
    """Default batch methods built on ``encode``/``decode``; subclasses override for speed."""

    name: ClassVar[str] = ""

    @abc.abstractmethod
    def encode(self, record: Record) -> bytes:
        """The payload for ``record``'s type, time and data (non-empty bytes)."""

    @abc.abstractmethod
    def decode(self, payload: bytes, seq: int) -> Record:
        """The Record for ``payload``, with ``seq`` (raise CorruptRecordError if it does not decode)."""

    def frame(self, record: Record) -> bytes:
        """The record as it sits in a frame body: u32 payload length, then the payload."""
        payload = self.encode(record)
        if payload.__class__ is not bytes or not payload:
            raise InvalidRecordError(f"{self!r}.encode must return non-empty bytes, got {payload!r:.60}")
        return _pack_len(len(payload)) + payload

    def frame_many(self, records: Iterable[Record]) -> list[bytes]:
        frame = self.frame
        return [frame(r) for r in records]

    def packed_head(self) -> tuple[Callable[..., None], int] | None:
        """``(pack_into, hlen)`` when ``frame(r)`` is always ``pack_into``'s ``hlen`` bytes of
        ``(10 + len(r.data), r.type, r.time)`` followed by ``r.data``; None otherwise (the default).

        Lets ``append`` write a record straight into the ring (``ProducerSide.publish_packed``)
        instead of building its frame as bytes first."""
        return None

    def decode_batch(
        self, body: bytes, count: int, first_seq: int, where: tuple[str, int] = ("?", 0)
    ) -> Sequence[Record] | Iterator[Record]:
        """Records of a checksum-verified frame body. ``where`` is (path, offset) for errors."""
        decode = self.decode
        return [decode(payload, first_seq + i) for i, payload in enumerate(split_body(body, count, where))]

    def decode_span(
        self, buf: bytes, start: int, length: int, count: int, first_seq: int, where: tuple[str, int] = ("?", 0)
    ) -> Sequence[Record] | Iterator[Record]:
        """Records of the checksum-verified frame body ``buf[start : start + length]`` (replay
        passes a whole segment's bytes). This default copies the body out for ``decode_batch``;
        override it to decode in place (the Records must copy what they keep)."""
        return self.decode_batch(buf[start : start + length], count, first_seq, where)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


class _ProtocolAdapter(BaseSerializer):
    """Gives a serializer that only has name/encode/decode the batch methods."""

    def __init__(self, inner: Serializer) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]

    def encode(self, record: Record) -> bytes:
        return self.inner.encode(record)

    def decode(self, payload: bytes, seq: int) -> Record:
        return self.inner.decode(payload, seq)

    def __repr__(self) -> str:
        return repr(self.inner)


def with_batch_methods(ser: Serializer) -> BaseSerializer:
    """``ser`` itself when it has the batch methods (a BaseSerializer), else an adapter."""
    return ser if isinstance(ser, BaseSerializer) else _ProtocolAdapter(ser)


def split_body(body: bytes, count: int, where: tuple[str, int]) -> list[bytes]:
    """The ``count`` payloads of a frame body; raise CorruptRecordError if they do not tile it."""
    out = []
    pos = 0
    end = len(body)
    for _ in range(count):
        if pos + 4 > end:
            break
        (n,) = _unpack_len(body, pos)
        nxt = pos + 4 + n
        if n == 0 or nxt > end:
            break
        out.append(body[pos + 4 : nxt])
        pos = nxt
    if len(out) != count or pos != end:
        _bad_body(where, count, len(out), pos, end)
    return out


def _bad_body(where: tuple[str, int], count: int, found: int, pos: int, end: int) -> None:
    path, offset = where
    raise CorruptRecordError(
        f"{path}: frame at offset {offset} passes its checksum but its body does not hold "
        f"{count} records (found {found} ending at body byte {pos} of {end})",
        path=path,
        offset=offset,
    )


class BinarySerializer(BaseSerializer):
    """The default: payload = u16 type, i64 time (ns), then the data bytes (10 bytes + data)."""

    name: ClassVar[str] = "binary"
    _HEAD: ClassVar = struct.Struct("<Hq")
    _FRAMED: ClassVar = struct.Struct("<IHq")  # payload length, type, time

    def encode(self, record: Record) -> bytes:
        return self._HEAD.pack(record[0], record[1]) + record[2]

    def decode(self, payload: bytes, seq: int) -> Record:
        if len(payload) < 10:
            raise CorruptRecordError(f"binary payload of {len(payload)} bytes is shorter than its 10-byte head")
        t, tm = self._HEAD.unpack_from(payload, 0)
        if t == 0:
            raise CorruptRecordError("binary payload has record type 0 (reserved)")
        return _tuple_new(Record, (t, tm, payload[10:], seq))

    def frame(self, record: Record) -> bytes:
        data = record[2]
        return self._FRAMED.pack(10 + len(data), record[0], record[1]) + data

    def packed_head(self) -> tuple[Callable[..., None], int] | None:
        # Only this exact class: a subclass may frame records another way.
        return (self._FRAMED.pack_into, self._FRAMED.size) if type(self) is BinarySerializer else None

    def frame_many(self, records: Iterable[Record]) -> list[bytes]:
        pack = self._FRAMED.pack
        return [pack(10 + len(r[2]), r[0], r[1]) + r[2] for r in records]

    def decode_batch(
        self, body: bytes, count: int, first_seq: int, where: tuple[str, int] = ("?", 0)
    ) -> Sequence[Record] | Iterator[Record]:
        return self.decode_span(body, 0, len(body), count, first_seq, where)

    def decode_span(
        self, buf: bytes, start: int, length: int, count: int, first_seq: int, where: tuple[str, int] = ("?", 0)
    ) -> Sequence[Record] | Iterator[Record]:
        """Decoded in place: the fast path reads ``buf`` through a memoryview (no copy of the
        body) and copies each record's data into its own ``bytes``."""
        end = start + length
        (n,) = _unpack_len(buf, start) if length >= 4 else (0,)
        stride = n + 4
        if n >= 10 and stride * count == length:
            # Fast path: every record has the same length, so one Struct decodes them all in C.
            # The lengths are checked with four strided byte-slice compares, also in C.
            lb = n.to_bytes(4, "little")
            # Type 0 (reserved) needs both type bytes zero in one record; when no record has a
            # zero low byte (or none a zero high byte) there is none.
            if all(buf[start + k : end : stride] == lb[k : k + 1] * count for k in range(4)) and (
                0 not in buf[start + 4 : end : stride] or 0 not in buf[start + 5 : end : stride]
            ):
                s = _uniform_struct(n - 10)
                body = buf if start == 0 and end == len(buf) else memoryview(buf)[start:end]
                return map(_tuple_new, repeat(Record), map(add, s.iter_unpack(body), zip(_count(first_seq))))
        body = buf[start:end]
        out: list[Record] = []
        append = out.append
        unpack = self._FRAMED.unpack_from
        pos = 0
        end = len(body)
        seq = first_seq
        for _ in range(count):
            if pos + 14 > end:
                break
            n, t, tm = unpack(body, pos)
            nxt = pos + 4 + n
            if n < 10 or nxt > end or t == 0:
                break
            append(_tuple_new(Record, (t, tm, body[pos + 14 : nxt], seq)))
            pos = nxt
            seq += 1
        if len(out) != count or pos != end:
            _bad_body(where, count, len(out), pos, end)
        return out


_uniform_cache: dict[int, struct.Struct] = {}


def _uniform_struct(data_len: int) -> struct.Struct:
    s = _uniform_cache.get(data_len)
    if s is None:
        if len(_uniform_cache) > 256:
            _uniform_cache.clear()
        s = _uniform_cache[data_len] = struct.Struct(f"<4xHq{data_len}s")
    return s


class JSONSerializer(BaseSerializer):
    """Payload = UTF-8 JSON ``{"type": int, "time": int, "data": base64 string}``. Human-readable."""

    name: ClassVar[str] = "json"

    def encode(self, record: Record) -> bytes:
        return b'{"type":%d,"time":%d,"data":"%s"}' % (record[0], record[1], base64.b64encode(record[2]))

    def decode(self, payload: bytes, seq: int) -> Record:
        try:
            obj = json.loads(payload)
            t, tm, data = obj["type"], obj["time"], base64.b64decode(obj["data"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise CorruptRecordError(f"JSON payload of seq {seq} does not decode: {exc}") from None
        if not (isinstance(t, int) and 1 <= t <= MAX_TYPE and isinstance(tm, int)):
            raise CorruptRecordError(f"JSON payload of seq {seq} has invalid type/time: {t!r}/{tm!r}")
        return _tuple_new(Record, (t, tm, data, seq))


class ProtoSerializer(BaseSerializer):
    """Payload = the ``ringwal.Record`` protobuf message of ``proto/ringwal/record.proto``."""

    name: ClassVar[str] = "proto"

    def __init__(self) -> None:
        self._cls = _proto_record_class()

    def encode(self, record: Record) -> bytes:
        payload: bytes = self._cls(type=record[0], time=record[1], data=record[2]).SerializeToString()
        return payload

    def decode(self, payload: bytes, seq: int) -> Record:
        msg = self._cls()
        try:
            msg.ParseFromString(payload)
        except Exception as exc:  # noqa: BLE001 - DecodeError, or whatever another protobuf backend raises
            raise CorruptRecordError(f"protobuf payload of seq {seq} does not decode: {exc}") from None
        if not 1 <= msg.type <= MAX_TYPE:
            raise CorruptRecordError(f"protobuf payload of seq {seq} has invalid type {msg.type}")
        return _tuple_new(Record, (msg.type, msg.time, msg.data, seq))

    def frame(self, record: Record) -> bytes:
        payload = self.encode(record)
        if not payload:  # cannot happen (type >= 1 is always encoded), but zero length is never valid
            raise InvalidRecordError("protobuf encoding produced an empty payload")
        return _pack_len(len(payload)) + payload


def _proto_record_class() -> Any:
    """``record_pb2.Record``, importing protobuf only now (only this serializer needs it).

    Raises MissingExtraError naming ``ringwal[proto]`` when protobuf is missing or older than
    the generated module accepts (it checks the runtime version when imported)."""
    want = "protobuf" + _PROTOBUF_SPEC
    try:
        from . import record_pb2
    except ImportError as exc:  # no google.protobuf, or one without runtime_version (< 5.26)
        raise MissingExtraError(
            f"ProtoSerializer needs {want}, which is not installed ({exc}); "
            "install it with: pip install 'ringwal[proto]'",
            extra="proto",
        ) from exc
    except Exception as exc:  # protobuf's VersionError: the generated module is newer than the runtime
        raise MissingExtraError(
            f"ProtoSerializer needs {want}, but {_installed('protobuf')} is installed ({exc}); "
            "install a matching one with: pip install 'ringwal[proto]'",
            extra="proto",
        ) from exc
    return record_pb2.Record


#: The protobuf versions ``record_pb2.py`` (generated by scripts/gen-proto) works with; the
#: ``proto`` extra in pyproject.toml requires the same.
_PROTOBUF_SPEC = ">=7.35.1,<8"


def _installed(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{dist} {version(dist)}"
    except PackageNotFoundError:
        return f"no {dist} distribution"


_REGISTRY: dict[str, type] = {}
_INSTANCES: dict[str, Serializer] = {}


def register_serializer(cls: type) -> type:
    """Register a serializer class under its ``name`` (usable as a decorator)."""
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name or len(name.encode("ascii", "replace")) > 16 or not name.isascii():
        raise ValueError(f"serializer name must be 1-16 ASCII characters, got {name!r}")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"a different serializer is already registered as {name!r}: {existing!r}")
    _REGISTRY[name] = cls
    return cls


def get_serializer(name: str) -> Serializer:
    """The registered serializer called ``name``; raise KeyError listing the known names."""
    inst = _INSTANCES.get(name)
    if inst is None:
        cls = _REGISTRY.get(name)
        if cls is None:
            raise KeyError(f"no serializer named {name!r} is registered (known: {', '.join(sorted(_REGISTRY))})")
        inst = _INSTANCES[name] = cls()
    return inst


def serializer_names() -> list[str]:
    return sorted(_REGISTRY)


for _cls in (BinarySerializer, JSONSerializer, ProtoSerializer):
    register_serializer(_cls)
