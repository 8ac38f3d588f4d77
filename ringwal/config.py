"""``Config``: every setting with its default and the risk it carries."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Generic, TypeVar, overload

from .errors import ConfigError
from .format import MAX_FRAME_BODY
from .serializers import BinarySerializer, Serializer, get_serializer

__all__ = ["Config"]

MiB = 1 << 20
#: Longest duration any setting accepts, seconds (100 years). Deadlines are computed as
#: ``time.monotonic() + setting`` and handed to the kernel (futex, select) as C longs, and
#: segment ages in i64 nanoseconds: 1e300 would overflow them inside a running writer.
MAX_SECONDS = 100 * 365.25 * 86400
#: Largest ``segment_size`` (1 TiB): a segment is preallocated whole (``posix_fallocate``
#: takes an ``off_t``, so 2**63 overflows) and a completed one is read whole by replay.
MAX_SEGMENT_SIZE = 1 << 40
#: ``log_level`` names (the writer's ``writer.log`` / stderr), lowest first.
LOG_LEVELS = ("debug", "info", "warning", "error")

_In = TypeVar("_In")
_Out = TypeVar("_Out")


class _Converted(Generic[_In, _Out]):
    """A dataclass field that accepts the wider type ``_In`` and stores (and reads back) ``_Out``.

    ``convert`` turns what it recognises (a ``Path``, a ``timedelta``, a serializer name) into
    the stored form and leaves anything else as given; ``Config.validate`` then names what
    cannot work. So a value assigned after construction is converted as well, and checked
    at the next ``open``.
    """

    def __init__(self, default: _Out, convert: Callable[[_In], _Out]) -> None:
        self.default = default
        self.convert = convert

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = "_" + name

    @overload
    def __get__(self, obj: None, owner: type) -> _Out: ...
    @overload
    def __get__(self, obj: object, owner: type) -> _Out: ...
    def __get__(self, obj: object | None, owner: type) -> _Out:
        if obj is None:
            return self.default  # the dataclass reads the field's default here
        value: _Out = getattr(obj, self.attr, self.default)
        return value

    def __set__(self, obj: object, value: _In) -> None:
        setattr(obj, self.attr, self.convert(value))


def _path(value: str | os.PathLike[str]) -> str:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else value


def _seconds_or_none(value: float | timedelta | None) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else value


def _serializer(value: Serializer | type[Serializer] | str) -> Serializer:
    """An instance as given; a class instantiated; a registered name looked up."""
    if isinstance(value, str):
        try:
            return get_serializer(value)
        except KeyError as exc:
            raise ConfigError(f"serializer={value!r}: {exc.args[0]}") from None
    if isinstance(value, type):
        try:
            return value()
        except TypeError as exc:
            raise ConfigError(f"serializer={value!r} is a class that cannot be made without arguments: {exc}") from None
    return value


#: The values of ``Config.wait_strategy``, named after the LMAX Disruptor's wait strategies.
WAIT_STRATEGIES = ("blocking", "yielding", "busy-spin")


@dataclass
class Config:
    """Settings of a log. Names follow the Go original (``SegmentSize`` -> ``segment_size``).

    Every setting is checked when the Config is made (ConfigError names the first that cannot
    work, and its limit) and again at ``open``/``WAL``/``serve``. Durations are seconds as an
    int or float, or a ``datetime.timedelta`` (the Go original's ``time.Duration``); read back
    they are float seconds. Each is at most ``MAX_SECONDS`` (100 years).

    dir: where the segment files live: a ``str`` or any ``os.PathLike`` (read back as ``str``).
        Default ``./wal_data`` (relative to the working dir).
    segment_size: bytes after which ``current.wal`` is closed and a new one starts (16 MiB).
        Each segment is preallocated to this size, and a running writer keeps the next one
        ready as well (``next.wal.tmp``): 2 x this much disk beyond the completed segments,
        given back when the log is closed. A single record larger than this gets a segment of
        its own. Why 16 MiB: each rotation costs the writer two fsyncs (the segment's seal and
        the directory); with 2 MiB segments at a million 100-byte records a second that was
        about 13% of its time on a busy disk, with 16 MiB it is under 2%, and 64 MiB (etcd's
        size) saves under 1% more while a replay would hold 4 x the memory (a segment at a
        time) and every log 4 x the disk (bench/rotation.py). Larger segments mean fewer files
        but coarser retention.
    segment_duration: seconds after which a non-empty ``current.wal`` is rotated (300).
        Measured on the monotonic clock while a writer runs, so a wall-clock step neither
        holds rotation back nor hurries it (docs/FORMAT.md, "Clocks").
    serializer: payload encoding (``BinarySerializer()``): an instance, a class (made with no
        arguments) or a registered name (``"binary"``, ``"json"``, ``"proto"``, or one given to
        ``register_serializer``); read back it is an instance. ``"proto"`` needs the
        ``ringwal[proto]`` extra (MissingExtraError names it). Fixed for the life of a log: the
        segment headers name it and opening with another raises SerializerMismatchError.
    flush_interval: seconds between background flush+fsync passes; None (default) disables
        them, and records reach the OS only when the buffer fills or on ``flush()``/``sync()``.
        Risk: with None, records appended but not flushed are lost if the process dies.
    write_buffer_size: bytes of encoded records buffered in the process before they are
        written to the OS as one checksummed batch (1 MiB). Larger batches cost less per record.
        The writer process frames at most this many bytes at once (a larger single record goes
        alone), and no more than fits in what is left of ``segment_size``.
    max_record_size: largest encoded record payload accepted (1 MiB); larger ones raise
        InvalidRecordError at ``append``. Through the ring it must fit a lane: at most
        ``ring_size - 4``.

    Ring settings (used by ``ringwal.open`` and the writer process; when ``open`` attaches to a
    running writer, the ring it created rules and these are ignored):

    ring_size: bytes of shared memory per producer lane (2 MiB), a power of two >= 64 KiB.
        A producer blocks in ``append`` when its lane is full, so this bounds how far one
        producer can run ahead of the writer. It must hold a record plus its 4-byte length,
        so with the default max_record_size (1 MiB) it cannot be smaller than 2 MiB.
    producer_slots: lanes in the ring, i.e. processes that can be attached at once (16).
        A slot whose process died is reclaimed (after its complete records are written).
        More producers than slots get SlotsExhaustedError at ``open``.

    The ring is ``producer_slots x ring_size`` bytes plus 16 KiB of span log and 256 bytes
    of control per lane and a 4 KiB header, all in ``/dev/shm``, and the writer reserves all
    of it when it creates the ring (a ``/dev/shm`` without room fails ``open``/``serve`` with
    ShmTooSmallError instead of a SIGBUS later). Reserved means resident: the memory is
    taken whether or not the lanes are used. The defaults (16 x 2 MiB: 32.3 MiB) take half
    of the 64 MiB that Docker gives a container's ``/dev/shm``, leaving room for a second
    log or other users; the trade-off is 16 producer processes at once rather than 32.
    For more producers, raise producer_slots (and ``--shm-size``), or halve ring_size and
    max_record_size together.
    append_timeout: seconds ``append`` waits for room in a full lane before raising
        RingFullError (10).
    sync_timeout: seconds ``flush``/``sync``/``close`` wait for a live writer before raising
        WaitTimeoutError (30). A dead writer is noticed within ~0.1 s whatever this is.
    start_writer: whether ``open`` (and a producer that finds the writer dead) starts a
        detached writer process when none is running (True). Set False when a supervisor runs
        ``ringwal serve``; then a dead writer raises WriterGoneError after ``writer_wait``.
    writer_wait: seconds to wait for a writer to appear (started by us or by a supervisor)
        before raising WriterGoneError (10).
    writer_linger: seconds a writer started by ``open`` stays up with no producer attached
        before it drains, cleans up its shared memory and exits (2).
    wait_strategy: how a producer waits for the writer in ``sync``/``flush`` (and for room in
        a full lane), named after the LMAX Disruptor's strategies
        (``com.lmax.disruptor.BlockingWaitStrategy``, ``YieldingWaitStrategy``,
        ``BusySpinWaitStrategy``). Every strategy posts the wait to the writer once, checks
        that the writer lives every 0.1 s and honours ``sync_timeout``:

        * ``"blocking"`` (default): sleep on the ring's futex word until the writer's one
          wake-up call per fsync. No CPU while waiting; each wait pays a wake-up (tens of µs,
          hundreds on a busy virtual machine) on top of the fsync.
        * ``"yielding"``: poll the progress words, giving the CPU away (``sched_yield``)
          between looks; never sleeps. It saves the wake-up at the price of a core per
          waiting producer whenever nothing else wants it (the Disruptor's words: "will use
          100% CPU, but will more readily give up the CPU than a busy spin"). Measured on 2
          cores with one producer syncing every record: p50 of ``sync()`` 0.2-0.5x the
          blocking one's, 1.6-2.6x its CPU per record. It pays only while the syncing
          producers and the writer are fewer than the cores: with 16 producers on those 2
          cores it reached 0.3x the records/s of ``"blocking"``.
        * ``"busy-spin"``: poll without yielding: the lowest latency when every waiter has a
          core of its own ("best used when threads can be bound to specific CPU cores"),
          and a disaster otherwise (16 producers on 2 cores: 0.02x). Only with fewer
          syncing producers than the cores less one (the writer's).

        Each handle's Config rules its own waits; the writer's own wait for work is the same
        whatever the producers chose (``writer.py`` says why), so ``ringwal serve`` has no
        such option.

    Who may use the log (README, "Trust model"):

    group: None (default): the log is private to the user that creates it: the directory
        is made ``0700`` and every file ``0600``, the shared-memory ring ``0600``, whatever
        the umask. A group name (or gid), e.g. ``"wal-users"``: its members may append and
        read: the directory is made ``2770`` and given the group, files ``0660``, the ring
        ``0660`` (``ringwal serve --group NAME``). Producers and the writer may then run as
        different users of the group. For a directory that exists already, the setting is
        checked, not applied (ConfigError names the chgrp/chmod that share it). What a
        process trusts is read from the directory itself: its owner, root and, when the
        directory is group-writable, its group.

    Retention (applied by the writer about once a second; None, the default, keeps everything):

    retention_max_bytes: remove the oldest completed segments while the log's files hold
        more than this many bytes. The active segment is never removed, so the log can stay
        above the limit by up to one segment.
    retention_max_age: remove completed segments closed more than this many seconds ago
        (monotonic while a writer runs; the wall clock is read once, at the writer's start,
        for segments closed before it: see docs/FORMAT.md, "Clocks").
        Risk: both delete records for good; replay from a seq that retention removed starts
        at the first seq kept. ``Handle.truncate_before(seq)`` removes what a snapshot made
        obsolete explicitly instead.
    keep_unshipped: make retention (by bytes, by age and ``truncate_before``) keep every
        completed segment holding a record that the shipper (``ringwal ship``) has not yet seen
        acknowledged by its JetStream stream (False). The writer reads the shipped seq from
        ``wal_shipped.json``, which the shipper replaces atomically as acknowledgements come;
        until a shipper has written it, nothing is removed. Risk: a shipper that stays down
        lets the log grow without bound (``ringwal stats`` shows the lag).

    The writer process (``ringwal serve``, or the writer ``open`` starts):

    log_level: the lowest level the writer logs, ``"debug"``, ``"info"`` (default),
        ``"warning"`` or ``"error"``; lines carry a UTC timestamp and the level, on stderr
        (``writer.log`` for a writer started by ``open``). A lost start race is at debug.
    metrics_port: serve Prometheus metrics at ``http://metrics_address:PORT/metrics`` (None,
        the default: no endpoint; 0: any free port, logged at start). Needs the
        ``ringwal[metrics]`` extra (``prometheus_client``). See ``ringwal/metrics.py``.
    metrics_address: the address the metrics endpoint listens on (``127.0.0.1``: this
        machine only; ``0.0.0.0`` for a scraper in another container or pod).
    """

    dir: _Converted[str | os.PathLike[str], str] = _Converted("./wal_data", _path)
    segment_size: int = 16 * MiB
    segment_duration: _Converted[float | timedelta, float] = _Converted(300.0, _seconds)
    serializer: _Converted[Serializer | type[Serializer] | str, Serializer] = _Converted(
        BinarySerializer(), _serializer
    )
    flush_interval: _Converted[float | timedelta | None, float | None] = _Converted(None, _seconds_or_none)
    write_buffer_size: int = 1 * MiB
    max_record_size: int = 1 * MiB
    ring_size: int = 2 * MiB
    producer_slots: int = 16
    append_timeout: _Converted[float | timedelta, float] = _Converted(10.0, _seconds)
    sync_timeout: _Converted[float | timedelta, float] = _Converted(30.0, _seconds)
    start_writer: bool = True
    writer_wait: _Converted[float | timedelta, float] = _Converted(10.0, _seconds)
    writer_linger: _Converted[float | timedelta, float] = _Converted(2.0, _seconds)
    wait_strategy: str = "blocking"
    retention_max_bytes: int | None = None
    retention_max_age: _Converted[float | timedelta | None, float | None] = _Converted(None, _seconds_or_none)
    log_level: str = "info"
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    group: str | None = None
    keep_unshipped: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first setting that cannot work.

        Runs when a Config is made and again at ``open``/``WAL``/``serve`` (a field may have
        been assigned since). Ring settings are checked against each other by ``validate_ring``.
        """
        if not isinstance(self.dir, str) or not self.dir:
            raise ConfigError(f"dir must be a non-empty path (str or os.PathLike), got {self.dir!r}")
        _positive_int("segment_size", self.segment_size, MAX_SEGMENT_SIZE)
        _positive_number("segment_duration", self.segment_duration)
        if self.flush_interval is not None:
            _positive_number("flush_interval", self.flush_interval)
        _positive_int("write_buffer_size", self.write_buffer_size, MAX_FRAME_BODY)
        _positive_int("max_record_size", self.max_record_size)
        if self.max_record_size > MAX_FRAME_BODY - 4:
            raise ConfigError(
                f"max_record_size={self.max_record_size} exceeds the format's limit of {MAX_FRAME_BODY - 4} bytes"
            )
        _positive_number("append_timeout", self.append_timeout)
        _positive_number("sync_timeout", self.sync_timeout)
        _positive_number("writer_wait", self.writer_wait)
        if (
            isinstance(self.writer_linger, bool)
            or not isinstance(self.writer_linger, (int, float))
            or not 0 <= self.writer_linger <= MAX_SECONDS
        ):
            raise ConfigError(
                f"writer_linger must be a number of seconds (or a timedelta) from 0 to {MAX_SECONDS:.0f}, "
                f"got {self.writer_linger!r}"
            )
        if self.retention_max_bytes is not None:
            _positive_int("retention_max_bytes", self.retention_max_bytes)
        if self.retention_max_age is not None:
            _positive_number("retention_max_age", self.retention_max_age)
        if self.wait_strategy not in WAIT_STRATEGIES:
            choices = ", ".join(repr(w) for w in WAIT_STRATEGIES)
            raise ConfigError(f"wait_strategy must be one of {choices}, got {self.wait_strategy!r}")
        if self.group is not None and (not isinstance(self.group, str) or not self.group):
            raise ConfigError(f"group must be a group name (or gid) or None, got {self.group!r}")
        if not isinstance(self.keep_unshipped, bool):
            raise ConfigError(f"keep_unshipped must be True or False, got {self.keep_unshipped!r}")
        if not isinstance(self.start_writer, bool):
            raise ConfigError(f"start_writer must be True or False, got {self.start_writer!r}")
        name = getattr(self.serializer, "name", None)
        if not (
            isinstance(name, str)
            and callable(getattr(self.serializer, "encode", None))
            and callable(getattr(self.serializer, "decode", None))
        ):
            raise ConfigError(
                f"serializer={self.serializer!r} is not a Serializer (needs name, encode, decode); give an "
                "instance, a class, or a registered name such as 'binary', 'json' or 'proto'"
            )
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.metrics_port is not None:
            if isinstance(self.metrics_port, bool) or not isinstance(self.metrics_port, int):
                raise ConfigError(f"metrics_port must be an int from 0 to 65535 or None, got {self.metrics_port!r}")
            if not 0 <= self.metrics_port <= 65535:
                raise ConfigError(f"metrics_port must be from 0 to 65535 (0: any free port), got {self.metrics_port}")
        if not isinstance(self.metrics_address, str) or not self.metrics_address:
            raise ConfigError(f"metrics_address must be a host name or IP address, got {self.metrics_address!r}")

    def validate_ring(self) -> None:
        """Also check the ring settings (``ringwal.open`` and the writer call this)."""
        self.validate()
        rs, slots = self.ring_size, self.producer_slots
        _positive_int("ring_size", rs)
        _positive_int("producer_slots", slots)
        if rs & (rs - 1) or not MIN_RING_SIZE <= rs <= MAX_RING_SIZE:
            raise ConfigError(
                f"ring_size must be a power of two from {MIN_RING_SIZE} to {MAX_RING_SIZE} bytes, got {rs}"
            )
        if slots > MAX_PRODUCER_SLOTS:
            raise ConfigError(f"producer_slots must be at most {MAX_PRODUCER_SLOTS}, got {slots}")
        if self.max_record_size + 4 > rs:
            raise ConfigError(
                f"max_record_size={self.max_record_size} does not fit a ring lane of ring_size={rs} bytes "
                "(a record plus its 4-byte length must fit); raise ring_size or lower max_record_size"
            )


MIN_RING_SIZE = 64 * 1024
MAX_RING_SIZE = 1 << 30
MAX_PRODUCER_SLOTS = 1024


def _positive_int(name: str, value: object, most: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    if most is not None and value > most:
        raise ConfigError(f"{name}={value} is more than the largest that can work, {most} bytes")


def _positive_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ConfigError(f"{name} must be a positive number of seconds (or a timedelta), got {value!r}")
    if value > MAX_SECONDS:
        raise ConfigError(f"{name}={value!r} seconds is more than the longest that can work, {MAX_SECONDS:.0f} (100 y)")
