"""``Config``: every setting with its default and the risk it carries."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import ConfigError
from .format import MAX_FRAME_BODY
from .serializers import BinarySerializer, Serializer

__all__ = ["Config"]

MiB = 1 << 20
#: The values of ``Config.wait_strategy``, named after the LMAX Disruptor's wait strategies.
WAIT_STRATEGIES = ("blocking", "yielding", "busy-spin")


@dataclass
class Config:
    """Settings of a log. Names follow the Go original (``SegmentSize`` -> ``segment_size``).

    dir: where the segment files live. Default ``./wal_data`` (relative to the working dir).
    segment_size: bytes after which ``current.wal`` is closed and a new one starts (2 MiB).
        Each segment is preallocated to this size. A single record larger than this gets a
        segment of its own. Larger segments mean fewer files but coarser retention.
    segment_duration: seconds after which a non-empty ``current.wal`` is rotated (300).
        Measured on the monotonic clock while a writer runs, so a wall-clock step neither
        holds rotation back nor hurries it (docs/FORMAT.md, "Clocks").
    serializer: payload encoding (``BinarySerializer()``). Fixed for the life of a log: the
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
    """

    dir: str = "./wal_data"
    segment_size: int = 2 * MiB
    segment_duration: float = 300.0
    serializer: Serializer = field(default_factory=BinarySerializer)
    flush_interval: float | None = None
    write_buffer_size: int = 1 * MiB
    max_record_size: int = 1 * MiB
    ring_size: int = 2 * MiB
    producer_slots: int = 16
    append_timeout: float = 10.0
    sync_timeout: float = 30.0
    start_writer: bool = True
    writer_wait: float = 10.0
    writer_linger: float = 2.0
    wait_strategy: str = "blocking"
    retention_max_bytes: int | None = None
    retention_max_age: float | None = None

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
            raise ConfigError(
                f"max_record_size={self.max_record_size} exceeds the format's limit of {MAX_FRAME_BODY - 4} bytes"
            )
        _positive_number("append_timeout", self.append_timeout)
        _positive_number("sync_timeout", self.sync_timeout)
        _positive_number("writer_wait", self.writer_wait)
        if (
            isinstance(self.writer_linger, bool)
            or not isinstance(self.writer_linger, (int, float))
            or not 0 <= self.writer_linger < math.inf
        ):
            raise ConfigError(f"writer_linger must be a number of seconds >= 0, got {self.writer_linger!r}")
        if self.retention_max_bytes is not None:
            _positive_int("retention_max_bytes", self.retention_max_bytes)
        if self.retention_max_age is not None:
            _positive_number("retention_max_age", self.retention_max_age)
        if self.wait_strategy not in WAIT_STRATEGIES:
            choices = ", ".join(repr(w) for w in WAIT_STRATEGIES)
            raise ConfigError(f"wait_strategy must be one of {choices}, got {self.wait_strategy!r}")
        if not isinstance(self.start_writer, bool):
            raise ConfigError(f"start_writer must be True or False, got {self.start_writer!r}")
        name = getattr(self.serializer, "name", None)
        if not (
            isinstance(name, str)
            and callable(getattr(self.serializer, "encode", None))
            and callable(getattr(self.serializer, "decode", None))
        ):
            raise ConfigError(f"serializer={self.serializer!r} is not a Serializer (needs name, encode, decode)")

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


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")


def _positive_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
