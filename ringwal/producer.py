"""``ringwal.open``: this process's handle on a directory's log, through the ring.

A ``Handle`` owns one lane of the ring (see ``ring.py``). ``append`` encodes the record
straight into the on-disk body layout, copies it into the lane and publishes it with one
word store; it returns a ``Receipt`` without talking to the writer. ``flush``/``sync`` post
the writer's semaphore once, then wait until the writer says the records reached the OS /
stable storage as ``Config.wait_strategy`` says: asleep on the ring's futex word until the
writer's one wake-up call per fsync (``blocking``, the default: no CPU while waiting), or
polling the progress words with (``yielding``) or without (``busy-spin``) giving the CPU
away, which saves the wake-up's latency at the price of a core while waiting.

Every wait is bounded, and no call waits for a lock another producer holds (``ring.py``,
"Liveness and locks"): ``open`` claims a lane by taking its lock in ``wal.ring.lock`` without
waiting, and holds it until ``close``. While waiting, a handle checks every ``POLL`` seconds
that the writer is alive (its lock in ``wal.ring.lock`` is held and the ring is READY: this
works across PID namespaces, so the writer may run in another container); when it is gone,
the handle starts a new one (``start_writer``; again, at most once a second, if the one it
started dies before it is ready) or waits ``writer_wait`` for a supervisor's, then carries
on; the ring and its records outlive writers. If none serves within ``writer_wait``, it
raises WriterGoneError.

After ``fork`` the child's copy of a handle never touches the parent's lane: the child lets
go of its copy of the lane's lock at once (so the lane dies with the parent), and its first
call claims a lane of its own (receipts from before the fork raise in the child).

The lane's token (threads)
    The threads of a process that share a handle take turns on its lane through a *token*:
    a list that holds one element. ``list.pop()`` takes it and ``list.append`` gives it
    back, each one C call that no other thread can interleave with (under the GIL, and in
    free-threaded builds, where every list has its own lock), and about a quarter of what
    ``with threading.Lock()`` costs an append (``bench/hot_instr.py``). Whoever popped the
    token is the only thread that publishes, gives the lane back or reads receipts' seqs;
    every path gives it back in a ``finally``, and no path takes it while holding it (it is
    not re-entrant: flush, sync, close and receipts each take it once, around code that
    never takes it again). A pop that finds the list empty means another thread holds it:
    the caller waits on a condition (``_take_waiting``), bounded (``_tok_patience``).

    No lost wake-up: a waiter counts itself (``_tok_waiters``) under the condition's lock,
    then retries the pop, still under it, and sleeps in ``wait``, which lets go of that lock
    only once it sleeps. A holder gives the token back (``append``), then reads the count,
    and when it is not zero notifies under the condition's lock. Pop and append are ordered
    by the list (one lock, or the GIL): if the waiter's pop came first (and failed), its
    count, stored before that pop, is seen by the holder's read after its append, and the
    holder's notify, which needs the condition's lock, reaches a waiter that is asleep (or
    one that, after a timeout, retries the pop once more before it leaves); if the append
    came first, the waiter's pop finds the token. A woken waiter that finds the token taken
    again sleeps again: the thread that took it notifies when it gives it back.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import NoReturn, SupportsIndex

from ._launch import start_writer
from .config import Config
from .errors import (
    ClosedError,
    InvalidRecordError,
    LanePoisonedError,
    LogFailedError,
    LogGoneError,
    RingFullError,
    SerializerMismatchError,
    WaitTimeoutError,
    WALError,
    WriterGoneError,
)
from .log import _as_record, _too_large
from .record import Record, check_seq
from .replay import replay_into
from .ring import CLAIM_PATIENCE, ProducerSide, Ring, check_platform
from .serializers import with_batch_methods

__all__ = ["BatchReceipt", "Handle", "Receipt", "open"]

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

    # No __init__: append makes one with Receipt() and two slot stores, which costs half of a
    # call through a Python __init__ (measured with callgrind, bench/hotpath.py).
    __slots__ = ("_handle", "_count")
    _handle: Handle
    _count: int

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
    """This process's handle on a log. Context manager; thread-safe; ``close`` is idempotent.

    The ring's producer side (``ring.ProducerSide``) does everything that touches shared
    memory; the handle adds records, locks, deadlines, errors and the writer's lifecycle.
    """

    _closed = True
    _side: ProducerSide | None = None
    _poisoned: LanePoisonedError | None = None  # set once: the handle refuses all work after it
    #: Set once records of this handle were lost to a writer's failed fsync (never durable,
    #: never acknowledged): every later call raises it (docs/FORMAT.md, "When fsync fails").
    _lost: LogFailedError | None = None

    def __init__(self, config: Config) -> None:
        config.validate_ring()
        check_platform()
        self.config = config
        self._ser = with_batch_methods(config.serializer)
        self._frame = self._ser.frame
        self._frame_many = self._ser.frame_many
        from ._fileutil import check_directory

        self.dir = check_directory(config.dir, create=True, group=config.group)
        st = os.stat(self.dir)
        self._place = (st.st_dev, st.st_ino)  # the directory this handle opened (check_place)
        self._new_token()  # guards the lane (module docstring, "The lane's token")
        self._wait_lock = threading.Lock()  # one waiter at a time; appends go on meanwhile
        # The longest another thread may hold the token (its own waits are bounded: room or
        # progress, a new writer after a dead one, a new lane after a fork), twice over for a
        # busy machine: past that, a thread waiting for the token raises.
        self._tok_patience = 2 * (
            max(config.append_timeout, config.sync_timeout) + 2 * config.writer_wait + CLAIM_PATIENCE
        )
        self._count = 0  # records appended by this handle, ever (local numbering)
        self._publish: Callable[[bytes, int], int] = _no_room
        self._publish_packed: Callable[[Callable[..., None], int, int, int, int, bytes], int] = _no_room_packed
        # The append fast path (a serializer whose frame body is a fixed head packed from the
        # record's type and time, then its data: ring.ProducerSide.publish_packed).
        packed = self._ser.packed_head()
        self._pack_into: Callable[..., None] | None = packed[0] if packed else None
        self._hlen = packed[1] if packed else 0
        self._forked = False
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
                self._check_serializer(ring)
                side = ProducerSide.claim(ring, self._count, self.config.wait_strategy)
            except BaseException:
                ring.close()
                raise
            if side is None:
                ring.close()
                return False
            self._side = side
            self._count = side.count
            self._maxn = ring.max_record + 4
            self._max_record = ring.max_record
            self._publish, self._publish_packed = side.publish, side.publish_packed
            return True

        self._await_writer(attached, f"no writer serves {self.dir} after {self.config.writer_wait:g}s")

    def _await_writer(self, ready: Callable[[], bool], gone: str) -> None:
        """Poll ``ready`` until true, starting a writer when allowed; WriterGoneError after writer_wait."""
        deadline = time.monotonic() + self.config.writer_wait
        next_start = 0.0
        died = 0
        while not ready():
            now = time.monotonic()
            if self.config.start_writer and now >= next_start:
                # Another process may be starting one right now (the lock decides); give a
                # writer that won the lock a second to come up before trying again.
                next_start = now + 1.0
                if start_writer(self.config, self.config.writer_linger, deadline):
                    continue
                died += 1  # killed while starting: start another while writer_wait lasts
            if now >= deadline:
                hint = ""
                if not self.config.start_writer:
                    hint = " (start_writer=False: start one with `ringwal serve --dir DIR`)"
                if died:
                    hint += (
                        f" ({died} writer(s) started here died or said nothing before they were ready; "
                        f"see {self.dir}/writer.log)"
                    )
                raise WriterGoneError(gone + hint)
            _pause(0.02)

    def _try_ring(self) -> Ring | None:
        try:
            ring = Ring.attach(self.dir)
        except FileNotFoundError:
            return None
        if not ring.ready():
            ring.close()
            return None
        return ring

    def _check_serializer(self, ring: Ring) -> None:
        if ring.serializer != self._ser.name:
            raise SerializerMismatchError(
                f"{self.dir}: the log's writer uses serializer {ring.serializer!r} but Config.serializer is "
                f"{self._ser.name!r}; open it with the serializer named in the log",
                path=self.dir,
            )

    # ------------------------------------------------------------------ the lane's token

    def _new_token(self) -> None:
        """Make the lane's token, free, and the condition its waiters sleep on (at open, and
        in a forked child, where a thread of the parent may have held the old one)."""
        self._tok = [True]
        self._tok_cond = threading.Condition(threading.Lock())
        self._tok_waiters = 0

    def _take(self) -> None:
        """Take the lane's token, waiting while another thread holds it; give it back with
        ``_give`` in a ``finally``. ``append`` inlines both (the same steps)."""
        try:
            self._tok.pop()
        except IndexError:
            self._take_waiting()

    def _try_take(self) -> bool:
        """Take the lane's token if it is free now (True); never waits."""
        try:
            self._tok.pop()
        except IndexError:
            return False
        return True

    def _give(self) -> None:
        """Give the lane's token back; wake a thread waiting for it, if any."""
        self._tok.append(True)
        if self._tok_waiters:  # after the append: see the module docstring
            self._wake_taker()

    def _take_waiting(self) -> None:
        """The slow half of ``_take``: another thread holds the token. Wait until it is given
        back; WaitTimeoutError after ``_tok_patience`` seconds (nothing done)."""
        cond = self._tok_cond
        deadline = time.monotonic() + self._tok_patience
        with cond:
            self._tok_waiters += 1  # before the pop below: see the module docstring
            try:
                while True:
                    try:
                        self._tok.pop()
                        return
                    except IndexError:
                        pass
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise WaitTimeoutError(
                            f"{self.dir}: another thread of this process held this handle's lane for "
                            f"{self._tok_patience:g}s, twice as long as its own waits may last (append_timeout "
                            "or sync_timeout, whichever is longer, plus twice writer_wait); this call did nothing"
                        )
                    cond.wait(left)  # then one more pop, even after a timeout
            finally:
                self._tok_waiters -= 1

    def _wake_taker(self) -> None:
        cond = self._tok_cond
        with cond:
            cond.notify()

    # ------------------------------------------------------------------ appending

    def append(self, record: Record) -> Receipt:
        """Put one record into the ring; return its receipt. Waits up to append_timeout if full."""
        if record.__class__ is not Record:
            record = _as_record(record)  # a Record again, or InvalidRecordError
        typ, tm, data, seq = record  # one unpack costs less than the four subscripts it replaces
        if seq:
            _as_record(record)  # raises InvalidRecordError: the log assigns seqs
        pack_into = self._pack_into
        if pack_into is not None:
            hlen = self._hlen
            n = hlen + len(data)
            if n > self._maxn:
                raise _too_large(n - 4, self._max_record)
            # _take and _give, inlined: a method call each would cost more than the pop.
            try:
                self._tok.pop()
            except IndexError:
                self._take_waiting()
            try:
                try:
                    # Loaded under the token (close and fork replace it), and as an attribute:
                    # a call spelt self._publish_packed(...) looks it up as a method, which costs more.
                    publish = self._publish_packed
                    c = publish(pack_into, hlen, n, typ, tm, data)
                except LanePoisonedError as exc:
                    raise self._lane_lost(exc) from None
                if c < 0:
                    c = self._publish_waiting(self._frame(record), 1, self.config.append_timeout)
            finally:
                self._tok.append(True)
                if self._tok_waiters:
                    self._wake_taker()
            r = Receipt()
            r._handle = self
            r._count = c
            return r
        b = self._frame(record)
        if len(b) > self._maxn:
            raise _too_large(len(b) - 4, self._max_record)
        self._take()
        try:
            try:
                c = self._publish(b, 1)
            except LanePoisonedError as exc:
                raise self._lane_lost(exc) from None
            if c < 0:
                c = self._publish_waiting(b, 1, self.config.append_timeout)
        finally:
            self._give()
        r = Receipt()
        r._handle = self
        r._count = c
        return r

    def try_append(self, record: Record) -> Receipt | None:
        """Like ``append`` but returns None at once when the lane is full (nothing written)."""
        if record.__class__ is not Record or record[3]:
            record = _as_record(record)
        b = self._frame(record)
        if len(b) > self._maxn:
            raise _too_large(len(b) - 4, self._max_record)
        self._take()
        try:
            side = self._usable_side()
            try:
                c = side.publish(b, 1)
            except LanePoisonedError as exc:
                raise self._lane_lost(exc) from None
            if c < 0:
                side.post()
                return None
        finally:
            self._give()
        r = Receipt()
        r._handle = self
        r._count = c
        return r

    def append_many(self, records: Iterable[Record]) -> BatchReceipt:
        """Put records into the ring in order as one publication: all are accepted or none.

        The batch gets one contiguous range of seqs (no other producer's record lands inside
        it), and a process killed during the call leaves all of it or none of it in the log.
        So the whole batch must fit one ring lane: a batch larger than ``ring_size`` (framed:
        4 bytes per record plus its payload) raises InvalidRecordError before anything is
        written. Waits up to ``append_timeout`` for room for the whole batch.
        """
        recs = [r if r.__class__ is Record and not r[3] else _as_record(r) for r in records]
        framed = self._frame_many(recs)
        limit = self._maxn
        for f in framed:
            if len(f) > limit:
                raise _too_large(len(f) - 4, limit - 4)
        blob = b"".join(framed)
        self._take()
        try:
            side = self._usable_side()
            first = side.count + 1
            if not framed:
                return BatchReceipt(self, first, 0)
            ring_size = side.ring.ring_size
            if len(blob) > ring_size:
                raise InvalidRecordError(
                    f"a batch of {len(framed)} records is {len(blob)} bytes framed, more than one ring lane "
                    f"holds (ring_size={ring_size}); append_many publishes a batch at once, so nothing was "
                    "written: split the batch, or raise ring_size in Config (it applies when the writer next "
                    "creates the ring)"
                )
            self._publish_waiting(blob, len(framed), self.config.append_timeout)
            return BatchReceipt(self, first, len(framed))
        finally:
            self._give()

    def _publish_waiting(self, blob: bytes, count: int, timeout: float) -> int:
        """Publish, waiting up to ``timeout`` for room; the new count (token held)."""
        side = self._usable_side()
        try:
            c = side.publish(blob, count)
            if c < 0:
                if not side.wait_room(len(blob), time.monotonic() + timeout, self._writer_changed):
                    raise RingFullError(
                        f"{self.dir}: the ring lane stayed full for {timeout:g}s (append_timeout); "
                        "nothing was written. The writer is alive but not keeping up"
                    )
                c = side.publish(blob, count)
        except LanePoisonedError as exc:
            raise self._lane_lost(exc) from None
        self._count = c
        return c

    def _lane_lost(self, exc: LanePoisonedError) -> LanePoisonedError:
        """The writer dropped a span of our lane: refuse all work from now on and give the
        lane back (token held). Returns the error to raise.

        Before giving it back, wait (briefly) until the writer has dropped whatever else we
        published, so the next owner of the lane does not inherit records of ours.
        """
        if self._poisoned is None:
            self._poisoned = exc
            self._stop_publishing()
            side, self._side = self._side, None
            if side is not None:
                self._count = side.count
                side.wait_emptied(time.monotonic() + min(self.config.sync_timeout, 1.0))
                side.release()
        return self._poisoned

    def _lose_lane(self, exc: LanePoisonedError) -> LanePoisonedError:
        """``_lane_lost`` from a thread that does not hold the token (a waiter; ``ringwal.aio``)."""
        self._take()
        try:
            return self._lane_lost(exc)
        finally:
            self._give()

    # ------------------------------------------------------------------ waiting

    def _wait(self, side: ProducerSide, durable: bool, count: int, *, locked: bool = False) -> int:
        """Wait (bounded by sync_timeout) until our records up to ``count`` are written or
        durable. ``locked``: the caller holds the lane's token."""
        deadline = time.monotonic() + self.config.sync_timeout
        try:
            seq = side.wait_progress(durable, count, deadline, self._writer_changed)
        except LogFailedError as exc:
            if self._lost is None:
                self._lost = exc
                self._stop_publishing()  # appends take the slow path, which raises it
            raise
        except LanePoisonedError as exc:
            raise (self._lane_lost(exc) if locked else self._lose_lane(exc)) from None
        except (AttributeError, ValueError):
            # Another thread gave the lane back while we waited (its words are gone).
            if self._poisoned is not None:
                raise self._poisoned from None
            if self._closed:
                raise ClosedError(
                    f"this handle on {self.dir} was closed by another thread while this call waited"
                ) from None
            raise
        if seq is None:
            raise WaitTimeoutError(
                f"{self.dir}: the writer did not {'sync' if durable else 'write'} our records within "
                f"{self.config.sync_timeout:g}s (sync_timeout)"
            )
        return seq

    def _writer_changed(self) -> bool:
        """Check the writer; if it died, get a new one. True when a new writer took over."""
        side = self._side
        if side is None:
            raise ClosedError(f"this handle on {self.dir} was closed while waiting for the writer")
        if side.writer_ready():
            return side.writer_changed()
        self._check_place(side)
        self._await_writer(
            side.writer_ready,
            f"the writer of {self.dir} is gone and no new writer took over within {self.config.writer_wait:g}s; "
            "records not yet written stay in the ring for the next writer",
        )
        side.writer_changed()
        return True

    def _check_place(self, side: ProducerSide) -> None:
        """Raise LogGoneError when the writer stopped because the directory is gone, or the
        directory this handle opened is no longer at its path (a new writer would start a
        new log there, which this handle's records never belonged to)."""
        try:
            st = os.stat(self.dir)
            here = (st.st_dev, st.st_ino) == self._place
        except OSError:
            here = False
        if side.log_gone() or not here:
            raise LogGoneError(
                f"{self.dir}: the log directory was removed or moved while this handle was attached; its writer "
                "stopped. Records appended here and not yet durable may be lost: open the log where it is now",
                path=self.dir,
            )

    def flush(self) -> None:
        """Return once the writer has written every record appended here to the OS."""
        self._take()
        try:
            side = self._usable_side()
            target = self._count = side.count
        finally:
            self._give()
        if target > side.base:
            with self._wait_lock:
                self._wait(side, False, target)

    def sync(self) -> int:
        """Return once every record appended here is durable; the seq of the last one (0: none).

        Raises LogFailedError (with ``first_seq``/``last_seq``) when some of them were lost to
        a writer's failed fsync instead: they are never acknowledged, and the handle refuses
        all work from then on (open a new one). WaitTimeoutError after ``sync_timeout``."""
        self._take()
        try:
            side = self._usable_side()
            target = self._count = side.count
        finally:
            self._give()
        if target <= side.base:
            return 0
        with self._wait_lock:
            return self._wait(side, True, target)

    def truncate_before(self, seq: int) -> int:
        """Remove the completed segments whose records all have seqs below ``seq`` (what a
        snapshot taken at ``seq - 1`` made obsolete); return the first seq still in the log.

        The writer does the removal (``WAL.truncate_before`` names its crash window); the
        active segment is never removed, so records may remain below ``seq``. Replay from
        ``after_seq >= seq - 1`` is unaffected. Waits up to ``sync_timeout``.
        """
        check_seq(seq, "truncate_before's seq")
        self._take()
        try:
            side = self._usable_side()
        finally:
            self._give()
        first = side.truncate_before(seq, time.monotonic() + self.config.sync_timeout, self._writer_changed)
        if first is None:
            raise WaitTimeoutError(
                f"{self.dir}: the writer did not serve truncate_before({seq}) "
                f"within {self.config.sync_timeout:g}s (sync_timeout)"
            )
        return first

    # ------------------------------------------------------------------ receipts

    def _seq_of(self, count: int) -> int:
        self._take()
        try:
            if self._poisoned is not None:
                raise self._poisoned
            if self._closed:
                raise ClosedError(
                    f"this handle on {self.dir} is closed: a receipt's seq is known only while it is open"
                )
            side = self._side
            if self._forked or side is None or count <= side.forgotten:
                raise WALError(
                    "this receipt belongs to a lane this handle no longer owns (it was issued before a fork) "
                    "or is older than the span history kept; its record is in the log, "
                    "but its seq is no longer known here"
                )
            if count > side.count:
                raise ValueError("receipt from the future")
            self._usable_side()  # raises if closed meanwhile
            self._wait(side, False, count, locked=True)
            seq = side.seq_of(count)
            if seq is None:
                raise WALError(f"the seq of record #{count} of this handle is no longer known (span history trimmed)")
            return seq
        finally:
            self._give()

    # ------------------------------------------------------------------ reading, lifecycle

    def replay_from(self, seq: int, fn: Callable[[Record], object]) -> int:
        """Flush this handle, then call ``fn`` for every record with seq > ``seq``; return the count.

        ``seq=0`` starts at the first record still in the log; raises RecordsRemovedError when
        retention removed seq + 1 (``replay``)."""
        self.flush()
        return replay_into(self.dir, seq, self._ser, fn)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def lane(self) -> int:
        """The ring lane this handle owns (for diagnostics)."""
        return self._side.lane if self._side is not None else -1

    def _stop_publishing(self) -> None:
        """Send every append to the slow path (``_publish_waiting`` -> ``_usable_side``), which
        raises why the handle is closed, forked, poisoned or lost records: both publish paths."""
        self._publish, self._publish_packed = _no_room, _no_room_packed

    def _usable_side(self) -> ProducerSide:
        """The lane to use now: raises when the handle is closed; claims a lane after a fork."""
        if self._closed:
            raise ClosedError(f"this handle on {self.dir} is closed")
        if self._poisoned is not None:
            raise self._poisoned
        if self._lost is not None:
            raise self._lost
        if self._forked:
            self._reattach_after_fork()
        side = self._side
        if side is None:
            # Only when claiming a lane after a fork failed (WriterGoneError, raised then).
            raise WriterGoneError(f"this handle on {self.dir} holds no ring lane (claiming one after a fork failed)")
        return side

    def _forked_in_child(self) -> None:
        # Runs in the child right after fork, before any other thread exists there.
        self._forked = True
        self._stop_publishing()
        self._new_token()  # a thread of the parent may have held the old one: it does not exist here
        self._wait_lock = threading.Lock()

    def _reattach_after_fork(self) -> None:
        # The parent's lane, semaphore and mapping stay the parent's: drop our references
        # without touching them (no close of shared state), then claim a lane of our own.
        side, self._side = self._side, None
        if side is not None:
            self._count = side.count
            side.abandon()
        self._attach()  # raises WriterGoneError when no writer comes; the next call tries again
        self._forked = False

    def close(self) -> None:
        """Sync what this handle appended, give back its lane. Idempotent.

        Raises (after releasing everything) if the sync could not complete; the records then
        stay in the ring for the next writer.
        """
        self._close(sync=True)

    def _close(self, *, sync: bool) -> None:
        """``close``; with ``sync=False`` the lane is given back without waiting for the
        writer (``ringwal.aio`` has waited already, or gave up after its own deadline)."""
        self._take()
        try:
            if self._closed:
                return
            failure: BaseException | None = None
            side = self._side
            # A handle whose records were lost has said so already; nothing it holds can become durable.
            if sync and not self._forked and side is not None and side.count > side.base and self._lost is None:
                try:
                    self._wait(side, True, side.count, locked=True)
                except WALError as exc:
                    failure = exc
            self._closed = True
            self._stop_publishing()
            _handles.discard(self)
            if side is not None:
                self._count = side.count
                if self._forked:
                    side.abandon()
                else:
                    side.release()
            self._side = None
            if failure is not None:
                raise failure
        finally:
            self._give()

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        # multiprocessing's spawn and forkserver pickle a Process's arguments. A handle is this
        # process's lane of the ring (its token, its mapping), which cannot travel: say so
        # instead of pickle's "cannot pickle '_thread.lock' object".
        raise TypeError(
            f"a ringwal.Handle cannot be sent to another process (pickled): it is this process's lane of the "
            f"ring of {self.dir}. Pass the Config instead (it pickles) and open a handle in the child with "
            "ringwal.open(config); a child made by fork may use an inherited handle"
        )

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        side = self._side
        state = "closed" if self._closed or side is None else f"lane {side.lane}"
        appended = side.count - side.base if side is not None else 0
        return f"<ringwal.Handle {self.dir} {state} appended={appended}>"


def _no_room(blob: bytes, count: int) -> int:
    """The publish function of a closed or forked handle: sends every append to the slow path."""
    return -1


def _no_room_packed(pack_into: Callable[..., None], hlen: int, n: int, a: int, b: int, data: bytes) -> int:
    """``_no_room`` for the packed path."""
    return -1


def _pause(seconds: float) -> None:
    """Wait for another process to act (start a writer); used only in the rare slow paths."""
    time.sleep(seconds)
