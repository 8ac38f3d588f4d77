"""``Config``: every setting with its default and the risk it carries."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import ConfigError
from .format import MAX_FRAME_BODY
from .serializers import BinarySerializer, Serializer

__all__ = ["Config"]

MiB = 1 << 20


@dataclass
class Config:
    """Settings of a log. Names follow the Go original (``SegmentSize`` -> ``segment_size``).

    dir: where the segment files live. Default ``./wal_data`` (relative to the working dir).
    segment_size: bytes after which ``current.wal`` is closed and a new one starts (2 MiB).
        Each segment is preallocated to this size. A single record larger than this gets a
        segment of its own. Larger segments mean fewer files but coarser retention.
    segment_duration: seconds after which a non-empty ``current.wal`` is rotated (300).
    serializer: payload encoding (``BinarySerializer()``). Fixed for the life of a log: the
        segment headers name it and opening with another raises SerializerMismatchError.
    flush_interval: seconds between background flush+fsync passes; None (default) disables
        them, and records reach the OS only when the buffer fills or on ``flush()``/``sync()``.
        Risk: with None, records appended but not flushed are lost if the process dies.
    write_buffer_size: bytes of encoded records buffered in the process before they are
        written to the OS as one checksummed batch (1 MiB). Larger batches cost less per record.
    max_record_size: largest encoded record accepted (16 MiB); larger ones raise
        InvalidRecordError at ``append``. At most 4 GiB - 1.
    """

    dir: str = "./wal_data"
    segment_size: int = 2 * MiB
    segment_duration: float = 300.0
    serializer: Serializer = field(default_factory=BinarySerializer)
    flush_interval: float | None = None
    write_buffer_size: int = 1 * MiB
    max_record_size: int = 16 * MiB

    def validate(self) -> None:
        """Raise ConfigError naming the first setting that cannot work."""
        if not isinstance(self.dir, str) or not self.dir:
            raise ConfigError(f"dir must be a non-empty path string, got {self.dir!r}")
        _positive_int("segment_size", self.segment_size)
        _positive_number("segment_duration", self.segment_duration)
        if self.flush_interval is not None:
            _positive_number("flush_interval", self.flush_interval)
        _positive_int("write_buffer_size", self.write_buffer_size)
        _positive_int("max_record_size", self.max_record_size)
        if self.max_record_size > MAX_FRAME_BODY - 4:
            raise ConfigError(f"max_record_size={self.max_record_size} exceeds the format's limit of {MAX_FRAME_BODY - 4} bytes")
        name = getattr(self.serializer, "name", None)
        if not (isinstance(name, str) and callable(getattr(self.serializer, "encode", None)) and callable(getattr(self.serializer, "decode", None))):
            raise ConfigError(f"serializer={self.serializer!r} is not a Serializer (needs name, encode, decode)")


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")


def _positive_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
