"""ringwal: a durable, totally ordered write-ahead log shared by many Python processes.

This release holds the storage core: the segment format, rotation, the index, replay,
recovery and verification (``WAL``, ``replay``, ``verify``).
"""

from __future__ import annotations

from .config import Config
from .errors import (
    ClosedError,
    ConfigError,
    CorruptRecordError,
    CorruptSegmentError,
    FormatError,
    InvalidRecordError,
    LockedError,
    LogFailedError,
    SerializerMismatchError,
    UnsupportedVersionError,
    WALError,
)
from .format import FORMAT_VERSION
from .log import WAL
from .record import Record, RecordType
from .replay import replay
from .serializers import (
    BaseSerializer,
    BinarySerializer,
    JSONSerializer,
    ProtoSerializer,
    Serializer,
    get_serializer,
    register_serializer,
)
from .verify import verify

__version__ = "0.1.0"

__all__ = [
    "BaseSerializer",
    "BinarySerializer",
    "ClosedError",
    "Config",
    "ConfigError",
    "CorruptRecordError",
    "CorruptSegmentError",
    "FORMAT_VERSION",
    "FormatError",
    "InvalidRecordError",
    "JSONSerializer",
    "LockedError",
    "LogFailedError",
    "ProtoSerializer",
    "Record",
    "RecordType",
    "Serializer",
    "SerializerMismatchError",
    "UnsupportedVersionError",
    "WAL",
    "WALError",
    "get_serializer",
    "register_serializer",
    "replay",
    "verify",
]
