"""``ringwal.open``: this process's handle on a directory's log, through the ring.

A ``Handle`` owns one lane of the ring (see ``ring.py``). ``append`` encodes the record
straight into the on-disk body layout, copies it into the lane and publishes it with one
word store; it returns a ``Receipt`` without talking to the writer. ``flush``/``sync`` post
the writer's semaphore once; when recent waits were short they poll for up to ``SPIN``
seconds (about one fsync, yielding the CPU between looks), so a waiter whose fsync is
already running does not pay for a sleep and a wake-up (about 20 us of CPU each on the
2-core VM this was measured on); then they sleep on the ring's futex word (``_futex.py``)
until the writer says the records reached the OS / stable storage.

Every wait is bounded. While waiting, a handle checks every ``POLL`` seconds that the writer
(pid + create time in the ring header) is alive; when it is gone, the handle starts a new
one (``start_writer``) or waits ``writer_wait`` for a supervisor's, then carries on; the
ring and its records outlive writers. If none comes, it raises WriterGoneError.

After ``fork`` the child's copy of a handle never touches the parent's lane: the first call
in the child claims a lane of its own (receipts from before the fork raise in the child).
"""

from __future__ import annotations

import bisect
import builtins
import contextlib
import os
import select
import subprocess
import sys
import threading
import time
import weakref
from array import array
from collections.abc import Callable, Iterable

import posix_ipc

from . import _futex
from . import errors as _errors
from .config import Config
from .errors import (
    ClosedError,
    LockedError,
    RingFullError,
    SerializerMismatchError,
    SlotsExhaustedError,
    WaitTimeoutError,
    WALError,
    WriterGoneError,
)
from .format import (
    L_DURABLE_COUNT,
    L_DURABLE_SEQ,
    L_HEAD,
    L_OWNER_TOKEN,
    L_SPAN_HEAD,
    L_TAIL,
    L_VERSION,
    L_WANT_DURABLE,
    L_WANT_WRITTEN,
    L_WRITTEN_COUNT,
    L_WRITTEN_SEQ,
    RH_FIRST_SEQ,
    RH_FOLLOW_WAKE,
    RH_STATE,
    RH_TRUNC_DONE,
    RH_TRUNC_REQ,
    RH_WAKE,
    RH_WRITER_GEN,
    RING_READY,
    SPAN_LOG,
)
from .log import _as_record, _too_large
from .record import Record, check_seq
from .replay import replay_into
from .ring import M32, Ring, check_machine, claim_lock, own_identity
from .serializers import with_batch_methods

__all__ = ["BatchReceipt", "Handle", "Receipt", "open"]

#: Seconds between writer-liveness checks while waiting.
POLL = 0.1
SPIN = 0.0005  # seconds a waiter polls (yielding the CPU) before it sleeps on the futex
#: Spans of seq mapping a handle keeps for resolving old receipts.
KEEP_SPANS = 1 << 16
_WANT = 1 << 32
_HALF = 1 << 31

_handles: weakref.WeakSet[Handle] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for h in list(_handles):
        h._forked_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def open(config: Config | None = None) -> Handle:  # noqa: A001 - the Go original's verb
    """Attach this process to the log in ``config.dir``, starting a writer if none runs."""
    return Handle(Config() if config is None else config)


class Receipt:
    """Proof that a record is in the ring. ``seq`` waits (bounded) until it is written."""

    __slots__ = ("_handle", "_count")

    def __init__(self, handle: Handle, count: int) -> None:
        self._handle = handle
        self._count = count

    @property
    def seq(self) -> int:
        """The record's seq in the log (blocks until the writer has written it)."""
        return self._handle._seq_of(self._count)

    def __repr__(self) -> str:
        return f"<Receipt #{self._count} of {self._handle.dir}>"


class BatchReceipt:
    """Receipt for ``append_many``; ``seqs`` lists the records' seqs in order."""

    __slots__ = ("_handle", "_first", "_n")

    def __init__(self, handle: Handle, first: int, n: int) -> None:
        self._handle = handle
        self._first = first
        self._n = n

    def __len__(self) -> int:
        return self._n

    @property
    def seqs(self) -> list[int]:
        h = self._handle
        return [h._seq_of(c) for c in range(self._first, self._first + self._n)] if self._n else []

    @property
    def last_seq(self) -> int:
        if not self._n:
            raise ValueError("an empty batch has no seq")
        return self._handle._seq_of(self._first + self._n - 1)

    def __repr__(self) -> str:
        return f"<BatchReceipt of {self._n} records of {self._handle.dir}>"


class Handle:
    """This process's handle on a log. Context manager; thread-safe; ``close`` is idempotent."""

    _closed = True
    _ring: Ring | None = None
    _lane = -1
    _wsem: posix_ipc.Semaphore | None = None

    def __init__(self, config: Config) -> None:
        config.validate_ring()
        check_machine()
        self.config = config
        self._ser = with_batch_methods(config.serializer)
        self._frame = self._ser.frame
        self._frame_many = self._ser.frame_many
        from ._fileutil import check_directory

        self.dir = check_directory(config.dir, create=True)
        self._lock = threading.Lock()  # guards the lane (appends)
        self._wait_lock = threading.Lock()  # one waiter at a time; appends go on meanwhile
        self._count = 0  # records appended by this handle, ever (local numbering)
        self._base = 0  # _count when the current lane was claimed
        self._room = -1  # free bytes known in the lane; -1 forces the slow path
        self._forked = False
        self._spans_end = array("q")
        self._spans_start = array("q")
        self._spans_seq = array("q")
        self._harvested = 0
        self._forgotten = 0  # receipts with counts <= this can no longer be resolved
        self._recent_wait = 0.0  # moving average of recent waits that slept or polled, seconds
        self._attach()
        self._closed = False
        _handles.add(self)

    # ------------------------------------------------------------------ attaching

    def _attach(self) -> None:
        def attached() -> bool:
            ring = self._try_ring()
            if ring is None:
                return False
            try:
                return self._claim(ring)
            finally:
                if self._ring is not ring:
                    ring.close()

        self._await_writer(attached, f"no writer serves {self.dir} after {self.config.writer_wait:g}s")

    def _await_writer(self, ready: Callable[[], bool], gone: str) -> None:
        """Poll ``ready`` until true, starting a writer when allowed; WriterGoneError after writer_wait."""
        deadline = time.monotonic() + self.config.writer_wait
        next_start = 0.0
        while not ready():
            now = time.monotonic()
            if self.config.start_writer and now >= next_start:
                # Another process may be starting one right now (the lock decides); give a
                # writer that won the lock a second to come up before trying again.
                next_start = now + 1.0
                if self._start_writer(deadline):
                    continue
            if now >= deadline:
                hint = "" if self.config.start_writer else " (start_writer=False: start one with `ringwal serve --dir DIR`)"
                raise WriterGoneError(gone + hint)
            _pause(0.02)

    def _try_ring(self) -> Ring | None:
        try:
            ring = Ring.attach(self.dir)
        except FileNotFoundError:
            return None
        if ring.words[RH_STATE] != RING_READY or not ring.writer_alive():
            ring.close()
            return None
        return ring

    def _claim(self, ring: Ring) -> bool:
        if ring.serializer != self._ser.name:
            raise SerializerMismatchError(
                f"{self.dir}: the log's writer uses serializer {ring.serializer!r} but Config.serializer is "
                f"{self._ser.name!r}; open it with the serializer named in the log",
                path=self.dir,
            )
        pid, ctime = own_identity()
        with claim_lock(self.dir):
            if ring.words[RH_STATE] != RING_READY:
                return False
            k, token = ring.claim_lane(pid, ctime)
        if k < 0:
            raise SlotsExhaustedError(
                f"{self.dir}: all {ring.slots} producer slots of the ring are held by live processes; "
                "raise producer_slots in Config (it applies when the writer next creates the ring)"
            )
        self._ring = ring
        self._lane = k
        self._token = token
        self._ctl = ring.lane_ctl(k)
        self._data = ring.lane_data(k)
        self._spanlog = ring.span_log(k)
        self._size = ring.ring_size
        self._mask = ring.ring_size - 1
        self._maxn = ring.max_record + 4
        self._max_record = ring.max_record
        self._wake_addr = ring.wake_addr
        self._bit = ring.wake_bit(k)
        self._wsem = ring.writer_sem()
        self._gen = ring.words[RH_WRITER_GEN]
        head = self._ctl[L_HEAD]
        self._pos = head & M32
        # Local numbering continues upwards and agrees with the lane's count mod 2**32, so
        # the head word is just (count & M32) << 32 | pos.
        self._count += ((head >> 32) - self._count) & M32
        self._base = self._count
        self._harvested = self._ctl[L_SPAN_HEAD]
        self._forgotten = self._count
        self._refresh_room()
        return True

    def _start_writer(self, deadline: float) -> bool:
        """Start a detached writer; True once it is ready or another writer holds the lock."""
        c = self.config
        cmd = [
            sys.executable, "-m", "ringwal", "serve", "--dir", self.dir,
            "--segment-size", str(c.segment_size), "--segment-duration", repr(c.segment_duration),
            "--serializer", self._ser.name, "--ring-size", str(c.ring_size),
            "--producer-slots", str(c.producer_slots), "--max-record-size", str(c.max_record_size),
            "--write-buffer-size", str(c.write_buffer_size),
            "--linger", repr(c.writer_linger), "--detach",
        ]  # fmt: skip
        if c.flush_interval is not None:
            cmd += ["--flush-interval", repr(c.flush_interval)]
        if c.retention_max_bytes is not None:
            cmd += ["--retention-max-bytes", str(c.retention_max_bytes)]
        if c.retention_max_age is not None:
            cmd += ["--retention-max-age", repr(c.retention_max_age)]
        r, w = os.pipe()
        try:
            cmd += ["--ready-fd", str(w)]
            with _open_log(self.dir) as logf:
                proc = subprocess.Popen(
                    cmd, pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=logf,
                    start_new_session=True, close_fds=True,
                )  # fmt: skip
            os.close(w)
            w = -1
            proc.wait()  # the launcher forks the writer and exits at once (no zombie left here)
            message = _read_line(r, deadline)
        finally:
            if w >= 0:
                os.close(w)
            os.close(r)
        if message == "ready":
            return True
        if message.startswith("error "):
            kind, _, text = message[6:].partition("|")
            name, _, pid = kind.partition(" ")
            if name == "LockedError":
                return True  # another writer won the lock: attach to it
            cls = getattr(_errors, name, None)
            if isinstance(cls, type) and issubclass(cls, WALError) and cls not in (LockedError,):
                try:
                    raise cls(text)
                except TypeError:
                    pass
            raise WriterGoneError(f"could not start a writer for {self.dir}: {name}: {text}")
        raise WriterGoneError(
            f"could not start a writer for {self.dir}: {message or 'it exited without a word'}; see {self.dir}/writer.log"
        )

    # ------------------------------------------------------------------ appending

    def append(self, record: Record) -> Receipt:
        """Put one record into the ring; return its receipt. Waits up to append_timeout if full."""
        if record.__class__ is not Record or record[3]:
            record = _as_record(record)
        b = self._frame(record)
        n = len(b)
        with self._lock:
            room = self._room - n
            if room < 0 or n > self._maxn:
                return Receipt(self, self._publish_slow(b, 1, None))
            # The copy and publication below repeat _publish_slow's on purpose: this is the
            # per-record path, and a method call would cost as much as the copy.
            pos = self._pos
            off = pos & self._mask
            end = off + n
            if end <= self._size:
                self._data[off:end] = b
            else:
                cut = self._size - off
                self._data[off:] = b[:cut]
                self._data[: end - self._size] = b[cut:]
            self._room = room
            self._pos = pos = (pos + n) & M32
            self._count = c = self._count + 1
            self._ctl[L_HEAD] = ((c & M32) << 32) | pos  # publish (ring.py: one 8-byte store)
            if not c & 255:
                self._harvest()
        return Receipt(self, c)

    def try_append(self, record: Record) -> Receipt | None:
        """Like ``append`` but returns None at once when the lane is full (nothing written)."""
        if record.__class__ is not Record or record[3]:
            record = _as_record(record)
        b = self._frame(record)
        with self._lock:
            c = self._publish_slow(b, 1, 0.0)
            return None if c is None else Receipt(self, c)

    def append_many(self, records: Iterable[Record]) -> BatchReceipt:
        """Put records into the ring in order; all are accepted or none (InvalidRecordError)."""
        recs = [r if r.__class__ is Record and not r[3] else _as_record(r) for r in records]
        framed = self._frame_many(recs)
        limit = self._maxn
        for f in framed:
            if len(f) > limit:
                raise _too_large(len(f) - 4, limit - 4)
        with self._lock:
            first = self._count + 1
            # One publication per chunk that fits the lane; each chunk is one head store.
            i, total = 0, len(framed)
            while i < total:
                j, size = i, 0
                cap = max(self._room, self._size // 2)
                while j < total and size + len(framed[j]) <= cap:
                    size += len(framed[j])
                    j += 1
                if j == i:
                    j, size = i + 1, len(framed[i])
                blob = framed[i] if j == i + 1 else b"".join(framed[i:j])
                self._publish_slow(blob, j - i, None)
                i = j
            return BatchReceipt(self, first, total)

    def _publish_slow(self, blob: bytes, count: int, timeout: float | None) -> int | None:
        """Copy ``count`` framed records, waiting for room; return the last one's number."""
        self._check_usable()
        n = len(blob)
        if count == 1 and n > self._maxn:
            raise _too_large(n - 4, self._max_record)
        if n > self._room:
            self._refresh_room()
            if n > self._room:
                if timeout == 0.0:
                    self._wsem.release()
                    return None
                self._wait_room(n)
        pos = self._pos
        off = pos & self._mask
        end = off + n
        if end <= self._size:
            self._data[off:end] = blob
        else:
            cut = self._size - off
            self._data[off:] = blob[:cut]
            self._data[: end - self._size] = blob[cut:]
        old = self._count
        self._pos = pos = (pos + n) & M32
        self._count = c = old + count
        self._room -= n
        self._ctl[L_HEAD] = ((c & M32) << 32) | pos
        if (old >> 8) != (c >> 8):
            self._harvest()
        return c

    def _refresh_room(self) -> None:
        used = (self._pos - self._ctl[L_TAIL]) & M32
        self._room = self._size - used
        if used >= self._size >> 1:
            self._wsem.release()  # half full: ask for a drain now rather than at the idle timeout

    def _wait_room(self, n: int) -> None:
        deadline = time.monotonic() + self.config.append_timeout
        while True:
            self._wait_progress(False, self._count, deadline, full=True)
            self._refresh_room()
            if n <= self._room:
                return

    # ------------------------------------------------------------------ waiting

    @staticmethod
    def _lane32(count: int) -> int:
        return count & M32

    def _read_progress(self, durable: bool) -> tuple[int, int]:
        c = self._ctl
        i_count, i_seq = (L_DURABLE_COUNT, L_DURABLE_SEQ) if durable else (L_WRITTEN_COUNT, L_WRITTEN_SEQ)
        for _ in range(1000):
            v = c[L_VERSION]
            if not v & 1:
                cnt, seq = c[i_count], c[i_seq]
                if c[L_VERSION] == v:
                    return cnt, seq
        return -1, 0  # a writer died mid-update: not done; the liveness check takes over

    def _wait_progress(self, durable: bool, count: int, deadline: float, *, full: bool = False) -> int:
        """Wait until the writer has written (or made durable) our records up to ``count``."""
        t32 = self._lane32(count)
        want_word = L_WANT_DURABLE if durable else L_WANT_WRITTEN
        posted = False
        spin_until = began = None
        words = self._ring.words
        next_check = time.monotonic() + POLL
        while True:
            wake = words[RH_WAKE]  # before the progress words: the order _futex.py relies on
            cnt, seq = self._read_progress(durable)
            if cnt >= 0 and ((cnt - t32) & M32) < _HALF:
                if posted:
                    self._ctl[want_word] = 0  # lets the writer skip this lane at a glance
                if spin_until is not None:
                    self._recent_wait = 0.75 * self._recent_wait + 0.25 * (time.monotonic() - began)
                return seq
            if not posted:
                self._ctl[want_word] = _WANT | t32
                self._wsem.release()  # a locked instruction: our want is visible before it
                posted = True
                continue  # re-check: the writer may have finished before seeing the want
            now = time.monotonic()
            if spin_until is None:
                began = now
                # Poll only when recent waits were short: with a busy CPU and long waits
                # (many producers syncing in bulk) polling would only steal their CPU.
                spin_until = now + SPIN if self._recent_wait < SPIN else now
            if now < spin_until:
                os.sched_yield()
                continue
            if now >= deadline:
                if full:
                    raise RingFullError(
                        f"{self.dir}: the ring lane stayed full for {self.config.append_timeout:g}s (append_timeout); "
                        "nothing was written. The writer is alive but not keeping up"
                    )
                raise WaitTimeoutError(
                    f"{self.dir}: the writer did not {'sync' if durable else 'write'} our records within "
                    f"{self.config.sync_timeout:g}s (sync_timeout)"
                )
            _futex.wait(self._wake_addr, wake, min(next_check, deadline), self._bit)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + POLL
                if self._writer_changed():
                    posted = False

    def _writer_changed(self) -> bool:
        """Check the writer; if it died, get a new one. True when a new writer took over."""
        ring = self._ring
        if ring.words[RH_STATE] == RING_READY and ring.writer_alive():
            if ring.words[RH_WRITER_GEN] != self._gen:
                self._gen = ring.words[RH_WRITER_GEN]
                return True
            return False

        def taken_over() -> bool:
            return ring.words[RH_STATE] == RING_READY and ring.writer_alive()

        self._await_writer(
            taken_over,
            f"the writer of {self.dir} is gone and no new writer took over within {self.config.writer_wait:g}s; "
            "records not yet written stay in the ring for the next writer",
        )
        self._gen = ring.words[RH_WRITER_GEN]
        return True

    def flush(self) -> None:
        """Return once the writer has written every record appended here to the OS."""
        with self._lock:
            self._check_usable()
            target = self._count
        if target > self._base:
            with self._wait_lock:
                self._wait_progress(False, target, time.monotonic() + self.config.sync_timeout)

    def sync(self) -> int:
        """Return once every record appended here is durable; the seq of the last one (0: none)."""
        with self._lock:
            self._check_usable()
            target = self._count
        if target <= self._base:
            return 0
        with self._wait_lock:
            return self._wait_progress(True, target, time.monotonic() + self.config.sync_timeout)

    def truncate_before(self, seq: int) -> int:
        """Remove the completed segments whose records all have seqs below ``seq`` (what a
        snapshot taken at ``seq - 1`` made obsolete); return the first seq still in the log.

        The writer does the removal (``WAL.truncate_before`` names its crash window); the
        active segment is never removed, so records may remain below ``seq``. Replay from
        ``after_seq >= seq - 1`` is unaffected. Waits up to ``sync_timeout``.
        """
        check_seq(seq, "truncate_before's seq")
        with self._lock:
            self._check_usable()
        ring = self._ring
        w = ring.words
        deadline = time.monotonic() + self.config.sync_timeout
        with claim_lock(self.dir):
            if w[RH_TRUNC_REQ] < seq:
                w[RH_TRUNC_REQ] = seq
        self._wsem.release()
        next_check = time.monotonic() + POLL
        while True:
            word = w[RH_FOLLOW_WAKE]  # before the condition: the writer stores it, then bumps this
            if w[RH_TRUNC_DONE] >= seq:
                return w[RH_FIRST_SEQ]
            now = time.monotonic()
            if now >= deadline:
                raise WaitTimeoutError(f"{self.dir}: the writer did not serve truncate_before({seq}) within {self.config.sync_timeout:g}s (sync_timeout)")
            _futex.wait(ring.follow_addr, word, min(next_check, deadline), M32)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + POLL
                if self._writer_changed():
                    self._wsem.release()

    # ------------------------------------------------------------------ receipts

    def _harvest(self) -> None:
        """Copy new span-log entries into local memory before the writer overwrites them."""
        sl = self._spanlog
        ctl = self._ctl
        while True:
            head = ctl[L_SPAN_HEAD]
            lo = max(self._harvested, head - SPAN_LOG)
            if lo > self._harvested:
                self._forgotten = max(self._forgotten, self._count_of(sl[(lo % SPAN_LOG) * 2] >> 32))
            entries = [(sl[(i % SPAN_LOG) * 2], sl[(i % SPAN_LOG) * 2 + 1]) for i in range(lo, head)]
            # Entry lo's slot is rewritten while span_head == lo + SPAN_LOG (the entry is stored
            # before span_head moves past it), so a copy is good only if span_head stayed below.
            if ctl[L_SPAN_HEAD] - lo < SPAN_LOG:
                break
        for word, first_seq in entries:
            end = self._count_of(word & M32)
            start = end - (((word & M32) - (word >> 32)) & M32)
            if end <= self._base:
                continue  # a previous owner's records
            self._spans_end.append(end)
            self._spans_start.append(start)
            self._spans_seq.append(first_seq)
        self._harvested = head
        if len(self._spans_end) > KEEP_SPANS:
            cut = len(self._spans_end) // 2
            self._forgotten = max(self._forgotten, self._spans_end[cut - 1])
            del self._spans_end[:cut], self._spans_start[:cut], self._spans_seq[:cut]

    def _count_of(self, lane32: int) -> int:
        """Local count of a lane count32 at or before the current one."""
        return self._count - ((self._lane32(self._count) - lane32) & M32)

    def _seq_of(self, count: int) -> int:
        with self._lock:
            if self._forked or count <= self._forgotten:
                raise WALError(
                    "this receipt belongs to a lane this handle no longer owns (it was issued before a fork) "
                    "or is older than the span history kept; its record is in the log, "
                    "but its seq is no longer known here"
                )
            if count > self._count:
                raise ValueError("receipt from the future")
            self._check_usable()
            self._wait_progress(False, count, time.monotonic() + self.config.sync_timeout)
            self._harvest()
            ends = self._spans_end
            i = bisect.bisect_left(ends, count)
            if i < len(ends) and self._spans_start[i] < count:
                return self._spans_seq[i] + (count - self._spans_start[i] - 1)
            raise WALError(f"the seq of record #{count} of this handle is no longer known (span history trimmed)")

    # ------------------------------------------------------------------ reading, lifecycle

    def replay_from(self, seq: int, fn: Callable[[Record], object]) -> int:
        """Flush this handle, then call ``fn`` for every record with seq > ``seq``; return the count."""
        self.flush()
        return replay_into(self.dir, seq, self._ser, fn)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def lane(self) -> int:
        """The ring lane this handle owns (for diagnostics)."""
        return self._lane

    def _check_usable(self) -> None:
        if self._closed:
            raise ClosedError(f"this handle on {self.dir} is closed")
        if self._forked:
            self._reattach_after_fork()

    def _forked_in_child(self) -> None:
        # Runs in the child right after fork, before any other thread exists there.
        self._forked = True
        self._room = -1
        self._lock = threading.Lock()
        self._wait_lock = threading.Lock()

    def _reattach_after_fork(self) -> None:
        # The parent's lane, semaphore and mapping stay the parent's: drop our references
        # without touching them (no close of shared state), then claim a lane of our own.
        self._ring = None
        self._wsem = None
        self._forked = False
        self._spans_end, self._spans_start, self._spans_seq = array("q"), array("q"), array("q")
        self._attach()

    def close(self) -> None:
        """Sync what this handle appended, give back its lane. Idempotent.

        Raises (after releasing everything) if the sync could not complete; the records then
        stay in the ring for the next writer.
        """
        with self._lock:
            if self._closed:
                return
            failure: BaseException | None = None
            if not self._forked and self._count > self._base:
                try:
                    self._wait_progress(True, self._count, time.monotonic() + self.config.sync_timeout)
                except WALError as exc:
                    failure = exc
            self._closed = True
            self._room = -1
            _handles.discard(self)
            if not self._forked and self._ring is not None:
                with contextlib.suppress(OSError), claim_lock(self.dir):
                    if self._ctl[L_OWNER_TOKEN] == self._token:
                        self._ring.release_lane(self._lane, self._token)
                with contextlib.suppress(posix_ipc.Error):
                    self._wsem.release()  # an idle writer started by open may now exit
                self._wsem.close()
                self._ctl = self._data = self._spanlog = None
                self._ring.close()
            self._ring = None
            if failure is not None:
                raise failure

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"lane {self._lane}"
        return f"<ringwal.Handle {self.dir} {state} appended={self._count - self._base}>"


def _pause(seconds: float) -> None:
    """Wait for another process to act (start a writer); used only in the rare slow paths."""
    time.sleep(seconds)


def _open_log(directory: str):
    return builtins.open(os.path.join(directory, "writer.log"), "ab")


def _read_line(fd: int, deadline: float) -> str:
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0].decode("utf-8", "replace").strip()

