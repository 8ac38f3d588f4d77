"""ringwal: a durable, totally ordered write-ahead log shared by many Python processes.

``ringwal.open(config)`` attaches this process to the log in ``config.dir`` through a
shared-memory ring, starting the writer process (the durability sidecar) when none runs.
``WAL`` is the same log used in-process by one writer (records over the segment-level
``seglog.SegmentLog``, which the writer process drives directly); ``replay``, ``follow`` and
``verify`` read the segment files directly, with or without a writer (``since=`` starts
them at a time: ``since.py``). ``import ringwal.aio`` gives the same log to asyncio programs
(not imported here: it loads asyncio, which writers and most producers never need).
"""

from __future__ import annotations

from .config import Config
from .errors import (
    AccessError,
    ClosedError,
    ConfigError,
    CorruptRecordError,
    CorruptSegmentError,
    ForeignRingError,
    FormatError,
    InvalidRecordError,
    LanePoisonedError,
    LockedError,
    LockTimeoutError,
    LogFailedError,
    LogGoneError,
    MissingExtraError,
    NoLogError,
    RecordsLostError,
    RecordsRemovedError,
    RingError,
    RingFullError,
    SerializerMismatchError,
    ShipError,
    ShipLockedError,
    ShmTooSmallError,
    SlotsExhaustedError,
    UnsupportedPlatformError,
    UnsupportedVersionError,
    WaitTimeoutError,
    WALError,
    WriterGoneError,
)
from .follow import follow
from .format import FORMAT_VERSION
from .log import WAL
from .producer import BatchReceipt, Handle, Receipt, open  # noqa: A004 - ringwal.open is the API
from .record import Record, RecordType
from .replay import replay
from .segment import log_id
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

__version__ = "0.2.0"

__all__ = [
    "AccessError",
    "BaseSerializer",
    "BatchReceipt",
    "BinarySerializer",
    "ClosedError",
    "Config",
    "ConfigError",
    "CorruptRecordError",
    "CorruptSegmentError",
    "FORMAT_VERSION",
    "ForeignRingError",
    "FormatError",
    "Handle",
    "InvalidRecordError",
    "JSONSerializer",
    "LanePoisonedError",
    "LockTimeoutError",
    "LockedError",
    "LogFailedError",
    "LogGoneError",
    "MissingExtraError",
    "NoLogError",
    "ProtoSerializer",
    "Receipt",
    "Record",
    "RecordType",
    "RecordsLostError",
    "RecordsRemovedError",
    "RingError",
    "RingFullError",
    "Serializer",
    "SerializerMismatchError",
    "ShipError",
    "ShipLockedError",
    "ShmTooSmallError",
    "SlotsExhaustedError",
    "UnsupportedPlatformError",
    "UnsupportedVersionError",
    "WAL",
    "WALError",
    "WaitTimeoutError",
    "WriterGoneError",
    "follow",
    "get_serializer",
    "log_id",
    "open",
    "register_serializer",
    "replay",
    "verify",
]
