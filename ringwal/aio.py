"""``ringwal.aio``: the log from asyncio, without ever blocking the event loop.

::

    async with ringwal.aio.open(config) as log:
        receipt = await log.append(Record(1, time.time_ns(), b"order"))
        seq = await log.sync()            # durable; this process's last durable seq
    async for rec in ringwal.aio.follow(directory, after_seq=seq):
        ...

``open`` gives an :class:`AsyncHandle` over the same ring and writer as ``ringwal.open``:
one lane per handle, shared by every coroutine of the process that uses it. Works with any
asyncio loop (the default one and uvloop: it uses only futures and
``call_soon_threadsafe``).

The bridge (why it is built this way)
    The writer tells waiting producers about progress through a futex word in the shared
    ring (``_futex.py``), and asyncio cannot wait on a futex: something has to sleep in the
    ``futex`` syscall on the loop's behalf. Alternatives considered:

    * a file descriptor the loop can watch (an ``eventfd`` or a pipe) signalled by the
      writer: the writer is another process and would need each producer's descriptor
      (passed over a Unix socket), one ``write`` per waiting process per fsync instead of
      one futex wake for all of them, and a new ring protocol. No;
    * polling the progress words from the loop (a timer): costs loop time whether or not
      anything waits and adds up to one period of latency to every ``sync``. No;
    * ``asyncio.to_thread(handle.sync)`` per call: one executor thread per waiting
      coroutine, all queued behind one lock (the handle serialises waiters), and
      ``append`` still blocks the loop when a lane is full (``bench/bench_aio.py`` measures
      it beside this module);
    * **one waiter thread per handle** (chosen): it sleeps in the futex for the *highest*
      target any coroutine waits for and, when the writer's progress covers some waiters,
      resolves all of them with one ``loop.call_soon_threadsafe`` (one write to the loop's
      self-pipe, whatever the number of coroutines). So every coroutine whose ``sync``
      was pending when an fsync finished is released by that one fsync and one writer
      wake-up: group commit across coroutines, on top of the writer's across processes.

    What runs where:

    * on the loop's thread, and only there: encoding, ``ProducerSide.publish`` (a copy into
      shared memory and one word store), receipts' seq lookups, the waiter list. Each is
      microseconds; a large ``append_many`` is encoded in slices of ``ENCODE_SLICE`` records
      with a yield to the loop between them. The handle's lane token (``Handle._try_take``)
      is taken without waiting: only ``close`` and the giving back of a poisoned lane, both of
      which end all work, hold it in another thread, and then the call raises at once;
    * on the waiter thread: ``ProducerSide.wait_progress`` (which the ring allows beside a
      publish in another thread: it loads progress and stores only the lane's want
      words) and the handle's writer check (``Handle._writer_changed``: a dead writer is
      replaced from this thread, never the loop's). It never polls (``spin=False``), so it
      holds the GIL only for a few microseconds per wake-up;
    * in executor threads: ``open`` (attaching may start a writer and wait for it),
      ``close``'s release of the lane, ``truncate_before``, the reads of ``replay`` and
      ``follow`` (each its own thread, handing records to the loop in batches through a
      bounded buffer, so a reader far behind does not flood memory or hold the GIL for long).

    Every wait keeps the sync handle's deadlines: ``append`` waits ``append_timeout`` for
    room (then RingFullError), ``flush``/``sync``/receipts ``sync_timeout`` (then
    WaitTimeoutError). The waiter thread sleeps at most ``SLICE`` seconds at a time, so a
    new, higher target or an earlier deadline is taken up within that.

Cancellation
    Cancelling a coroutine that waits (``sync``, ``flush``, a receipt, ``append`` waiting
    for room) cancels only its future: its records stay appended (an ``append`` cancelled
    while waiting for room appended nothing), the waiter thread drops the cancelled future
    when it next resolves, and the handle goes on serving everyone else.

``close`` waits (at most ``sync_timeout``) until everything appended is durable, which
also answers every pending ``sync``; waiters still pending after it (``append`` waiting for
room) get ClosedError; then the waiter thread stops and the lane is given back. Bounded:
``sync_timeout`` plus at most ``writer_wait`` when the writer died during the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from datetime import datetime
from typing import Any, Generic, TypeVar

from .config import Config
from .errors import ClosedError, LanePoisonedError, LogFailedError, RingFullError, WaitTimeoutError, WALError
from .follow import follow as _follow
from .log import _as_record, _too_large
from .producer import Handle
from .record import Record, check_seq
from .replay import replay as _replay
from .ring import ProducerSide
from .serializers import Serializer
from .since import DEFAULT_CLOCK_SKEW

__all__ = ["AsyncBatchReceipt", "AsyncHandle", "AsyncReceipt", "follow", "open", "replay"]

#: Longest single wait of the waiter thread (seconds): bounds how late it notices a new
#: target or an earlier deadline while it already waits for the writer. Longer than
#: ``ring.POLL``, so that each wait checks the writer's liveness at least once.
SLICE = 0.25
#: Waiters answered per loop iteration. All the coroutines one fsync releases would
#: otherwise run in one iteration (each resumed task is a callback of the next one), holding
#: timers and I/O back for as long as 1,000 task steps take; in slices, through one queue for
#: all fsyncs, the loop runs its timers and I/O between them.
RESOLVE_SLICE = 16
#: Records encoded between two yields to the loop in ``append_many``.
ENCODE_SLICE = 2048
#: Records a reader thread (``follow``, ``replay``) may hold ready before it waits for the
#: consumer: bounds memory and how long it holds the GIL in one burst.
READ_BUFFER = 4096

T = TypeVar("T")


def open(config: Config | None = None) -> _Opening:  # noqa: A001 - mirrors ringwal.open
    """Attach this process to the log in ``config.dir`` from a coroutine.

    ``async with ringwal.aio.open(config) as log:`` closes the handle at the end of the
    block; ``log = await ringwal.aio.open(config)`` leaves closing to the caller
    (``await log.close()``). Attaching (and starting a writer when none runs, up to
    ``writer_wait``) happens in an executor thread. Raises what ``ringwal.open`` raises.
    The handle belongs to the running loop: use it from that loop only.
    """
    return _Opening(Config() if config is None else config)


class _Opening:
    """What ``open`` returns: awaitable, and an async context manager."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._handle: AsyncHandle | None = None

    async def _open(self) -> AsyncHandle:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, Handle, self._config)
        try:
            handle = await asyncio.shield(fut)
        except asyncio.CancelledError:
            # The thread goes on and may still attach: give that lane back when it does.
            fut.add_done_callback(_close_when_opened)
            raise
        return AsyncHandle(handle, loop)

    def __await__(self) -> Generator[Any, None, AsyncHandle]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncHandle:
        self._handle = await self._open()
        return self._handle

    async def __aexit__(self, *exc: object) -> None:
        if self._handle is not None:
            await self._handle.close()


def _close_when_opened(fut: asyncio.Future[Handle]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        threading.Thread(target=fut.result()._close, kwargs={"sync": False}, daemon=True).start()


class AsyncReceipt:
    """Proof that a record is in the ring; ``await receipt.seq()`` gives its seq."""

    __slots__ = ("_handle", "_count")

    def __init__(self, handle: AsyncHandle, count: int) -> None:
        self._handle = handle
        self._count = count

    async def seq(self) -> int:
        """The record's seq in the log; waits (up to ``sync_timeout``) until it is written."""
        return await self._handle._seq_of(self._count)

    def __repr__(self) -> str:
        return f"<AsyncReceipt #{self._count} of {self._handle.dir}>"


class AsyncBatchReceipt:
    """Receipt for ``append_many``: ``await receipt.seqs()`` lists the records' seqs in order."""

    __slots__ = ("_handle", "_first", "_n")

    def __init__(self, handle: AsyncHandle, first: int, n: int) -> None:
        self._handle = handle
        self._first = first
        self._n = n

    def __len__(self) -> int:
        return self._n

    async def seqs(self) -> list[int]:
        """The seqs of the batch's records (one contiguous range); waits until written."""
        if not self._n:
            return []
        first = await self._handle._seq_of(self._first)
        return list(range(first, first + self._n))

    async def last_seq(self) -> int:
        if not self._n:
            raise ValueError("an empty batch has no seq")
        return await self._handle._seq_of(self._first + self._n - 1)

    def __repr__(self) -> str:
        return f"<AsyncBatchReceipt of {self._n} records of {self._handle.dir}>"


class AsyncHandle:
    """This process's handle on a log, for coroutines of one event loop (module docstring).

    Shares its lane among all the coroutines that use it; ``close`` is idempotent; use after
    close raises ClosedError. The underlying :class:`ringwal.Handle` must not be used
    directly while this wraps it.
    """

    _closing = False
    _poisoned: LanePoisonedError | None = None
    _lost: LogFailedError | None = None  # records of ours were lost to a failed fsync
    _close_task: asyncio.Future[None] | None = None

    def __init__(self, handle: Handle, loop: asyncio.AbstractEventLoop) -> None:
        side = handle._side
        if side is None:  # pragma: no cover - a fresh Handle always owns a lane
            raise ClosedError(f"this handle on {handle.dir} holds no ring lane")
        self._h = handle
        self._side: ProducerSide = side
        self._loop = loop
        self.config = handle.config
        self.dir = handle.dir
        self._frame = handle._frame
        self._frame_many = handle._frame_many
        self._maxn = handle._maxn
        self._room_lock = asyncio.Lock()  # FIFO: appends that wait for room keep their order
        # Made once: a closure per call would be one more object for the GC per sync.
        self._durable_timeout = self._wait_timeout(True)
        self._written_timeout = self._wait_timeout(False)
        self._bridge = _Bridge(self)
        self._bridge.start()

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def lane(self) -> int:
        """The ring lane this handle owns (for diagnostics)."""
        return -1 if self._closing else self._side.lane

    def _usable(self) -> ProducerSide:
        if self._poisoned is not None:
            raise self._poisoned
        if self._lost is not None:
            raise self._lost
        if self._closing:
            raise ClosedError(f"this handle on {self.dir} is closed")
        if self._h._forked:  # the lane, the waiter thread and the loop are the parent's
            raise WALError(
                f"this ringwal.aio handle on {self.dir} was inherited through fork; "
                "open a new one in the child (await ringwal.aio.open(config))"
            )
        return self._side

    def _terminal(self) -> WALError:
        """The error for a call that finds the handle's lane token held by another thread."""
        if self._poisoned is not None:
            return self._poisoned
        if self._lost is not None:
            return self._lost
        return ClosedError(f"this handle on {self.dir} is closed")

    def _on_lost(self, exc: LogFailedError) -> None:
        """A writer's failed fsync lost records of ours (``Handle._wait`` does the same): they
        will never be durable, so the handle refuses all work from now on, as the sync one."""
        if self._lost is None:
            self._lost = exc
            self._h._lost = exc
            self._h._stop_publishing()

    def _on_poison(self, exc: LanePoisonedError) -> None:
        """The writer dropped bytes of our lane (seen by a publish or a wait): refuse all work
        from now on and give the lane back in a thread (``Handle._lose_lane`` takes the lane's
        token, then waits up to 1 s)."""
        if self._poisoned is None:
            self._poisoned = exc
            self._loop.run_in_executor(None, self._h._lose_lane, exc)

    # ------------------------------------------------------------------ appending

    def _try_publish(self, blob: bytes, count: int) -> int:
        """Publish now (loop thread): the new count, or -1 when the lane has no room."""
        side = self._usable()
        h = self._h
        if not h._try_take():
            raise self._terminal()
        try:
            c = side.publish(blob, count)
        except LanePoisonedError as exc:
            self._on_poison(exc)
            raise
        finally:
            h._give()
        if c >= 0:
            self._h._count = c
        return c

    async def _publish(self, blob: bytes, count: int) -> int:
        if not self._room_lock.locked():
            c = self._try_publish(blob, count)
            if c >= 0:
                return c
        async with self._room_lock:
            deadline = time.monotonic() + self.config.append_timeout
            while True:
                c = self._try_publish(blob, count)
                if c >= 0:
                    return c
                # Room comes back as the writer drains the lane: wait until it has written
                # everything published so far (the waiter thread; the loop goes on).
                await self._bridge.wait(False, self._side.count, deadline, self._room_timeout)

    def _room_timeout(self) -> WALError:
        t = self.config.append_timeout
        return RingFullError(
            f"{self.dir}: the ring lane stayed full for {t:g}s (append_timeout); nothing was written. "
            "The writer is alive but not keeping up"
        )

    async def append(self, record: Record) -> AsyncReceipt:
        """Put one record into the ring; return its receipt. When the lane is full, waits up
        to ``append_timeout`` for room without blocking the loop (then RingFullError;
        nothing written). InvalidRecordError for a bad or oversized record."""
        if record.__class__ is not Record or record[3]:
            record = _as_record(record)
        b = self._frame(record)
        if len(b) > self._maxn:
            raise _too_large(len(b) - 4, self._maxn - 4)
        return AsyncReceipt(self, await self._publish(b, 1))

    def try_append(self, record: Record) -> AsyncReceipt | None:
        """Like ``append`` but never waits: None when the lane is full (nothing written)."""
        if record.__class__ is not Record or record[3]:
            record = _as_record(record)
        b = self._frame(record)
        if len(b) > self._maxn:
            raise _too_large(len(b) - 4, self._maxn - 4)
        if self._room_lock.locked():
            return None  # others wait for room first
        c = self._try_publish(b, 1)
        if c < 0:
            self._side.post()
            return None
        return AsyncReceipt(self, c)

    async def append_many(self, records: Iterable[Record]) -> AsyncBatchReceipt:
        """Put records into the ring in order as one publication: one contiguous range of
        seqs, all or none (``Handle.append_many``). A batch larger than one lane
        (``ring_size``) raises InvalidRecordError before anything is written. Encoding
        yields to the loop every ``ENCODE_SLICE`` records."""
        recs = [r if r.__class__ is Record and not r[3] else _as_record(r) for r in records]
        framed: list[bytes] = []
        for i in range(0, len(recs), ENCODE_SLICE):
            if i:
                await asyncio.sleep(0)
            framed += self._frame_many(recs[i : i + ENCODE_SLICE])
        limit = self._maxn
        for f in framed:
            if len(f) > limit:
                raise _too_large(len(f) - 4, limit - 4)
        side = self._usable()
        if not framed:
            return AsyncBatchReceipt(self, side.count + 1, 0)
        blob = b"".join(framed)
        if len(blob) > side.ring.ring_size:
            from .errors import InvalidRecordError

            raise InvalidRecordError(
                f"a batch of {len(framed)} records is {len(blob)} bytes framed, more than one ring lane "
                f"holds (ring_size={side.ring.ring_size}); append_many publishes a batch at once, so nothing was "
                "written: split the batch, or raise ring_size in Config (it applies when the writer next "
                "creates the ring)"
            )
        c = await self._publish(blob, len(framed))
        return AsyncBatchReceipt(self, c - len(framed) + 1, len(framed))

    # ------------------------------------------------------------------ waiting

    async def flush(self) -> None:
        """Return once the writer has written every record appended here to the OS."""
        side = self._usable()
        target = side.count
        if target <= side.base or side.reached(False, target) is not None:
            return
        await self._bridge.wait(False, target, time.monotonic() + self.config.sync_timeout, self._written_timeout)

    async def sync(self) -> int:
        """Return once every record appended here (by any coroutine) before the call is
        durable; the seq of this lane's last durable record then (0: nothing appended).

        All the coroutines waiting in ``sync`` when an fsync finishes are released together
        (module docstring). WaitTimeoutError after ``sync_timeout``.
        """
        side = self._usable()
        target = side.count
        if target <= side.base:
            return 0
        try:
            seq = side.reached(True, target)
        except LogFailedError as exc:
            self._on_lost(exc)
            raise
        if seq is not None:
            return seq
        return await self._bridge.wait(True, target, time.monotonic() + self.config.sync_timeout, self._durable_timeout)

    def _wait_timeout(self, durable: bool) -> Callable[[], WALError]:
        def make() -> WALError:
            return WaitTimeoutError(
                f"{self.dir}: the writer did not {'sync' if durable else 'write'} our records within "
                f"{self.config.sync_timeout:g}s (sync_timeout)"
            )

        return make

    async def _seq_of(self, count: int) -> int:
        side = self._usable()
        if count <= side.forgotten:
            raise WALError(
                "this receipt is older than the span history kept; its record is in the log, "
                "but its seq is no longer known here"
            )
        if side.reached(False, count) is None:
            await self._bridge.wait(False, count, time.monotonic() + self.config.sync_timeout, self._written_timeout)
            side = self._usable()
        seq = side.seq_of(count)
        if seq is None:
            raise WALError(f"the seq of record #{count} of this handle is no longer known (span history trimmed)")
        return seq

    async def truncate_before(self, seq: int) -> int:
        """``Handle.truncate_before`` in an executor thread: remove the completed segments
        whose records all have seqs below ``seq``; return the first seq still in the log."""
        check_seq(seq, "truncate_before's seq")
        side = self._usable()
        deadline = time.monotonic() + self.config.sync_timeout
        first = await asyncio.to_thread(side.truncate_before, seq, deadline, self._h._writer_changed)
        if first is None:
            raise WaitTimeoutError(
                f"{self.dir}: the writer did not serve truncate_before({seq}) "
                f"within {self.config.sync_timeout:g}s (sync_timeout)"
            )
        return first

    # ------------------------------------------------------------------ reading

    async def replay_from(self, seq: int, fn: Callable[[Record], object]) -> int:
        """Flush this handle, then call ``fn`` (on the loop; awaited when it returns an
        awaitable) for every record with seq > ``seq``; return the count. The files are read
        in a thread (:func:`replay`)."""
        await self.flush()
        n = 0
        async for rec in replay(self.dir, seq, self._h._ser):
            r = fn(rec)
            if inspect.isawaitable(r):
                await r
            n += 1
        return n

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        """Wait (up to ``sync_timeout``) until everything appended here is durable, fail the
        remaining waiters with ClosedError, stop the waiter thread, give the lane back.
        Idempotent: concurrent calls share one close, later ones return at once. Raises WaitTimeoutError (or the
        writer's error) after releasing everything if the final sync did not complete."""
        task = self._close_task
        if task is None:
            task = self._close_task = asyncio.ensure_future(self._close())
        elif task.done():
            return  # closed already (its error, if any, went to the first caller)
        await asyncio.shield(task)

    async def _close(self) -> None:
        failure: BaseException | None = None
        side = self._side
        self._closing = True  # no new work from here on; what is pending is answered below
        if self._poisoned is None and self._lost is None:
            try:
                target = side.count
                if target > side.base and side.reached(True, target) is None:  # LogFailedError: lost
                    await self._bridge.wait(
                        True, target, time.monotonic() + self.config.sync_timeout, self._durable_timeout
                    )
            except WALError as exc:
                failure = exc
        bridge = self._bridge
        bridge.stop(ClosedError(f"this handle on {self.dir} was closed while this call waited"))
        await asyncio.to_thread(bridge.join, self.config.writer_wait + 2 * SLICE)
        await asyncio.to_thread(self._h._close, sync=False)
        if failure is not None:
            raise failure

    async def __aenter__(self) -> AsyncHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closing else f"lane {self._side.lane}"
        return f"<ringwal.aio.AsyncHandle {self.dir} {state}>"


class _Waiter:
    __slots__ = ("durable", "target", "deadline", "fut", "on_timeout")

    def __init__(
        self,
        durable: bool,
        target: int,
        deadline: float,
        fut: asyncio.Future[int],
        on_timeout: Callable[[], WALError],
    ) -> None:
        self.durable = durable
        self.target = target
        self.deadline = deadline
        self.fut = fut
        self.on_timeout = on_timeout


class _Bridge(threading.Thread):
    """The waiter thread of one AsyncHandle (module docstring, "The bridge").

    ``wait`` (loop thread) adds a waiter under ``_cv`` and returns its future; the thread
    waits for the highest durable target (else the highest written one), then resolves every
    waiter the writer's progress covers, and fails the expired ones, in one callback on the
    loop. ``_cv`` is held only to add, take or swap waiters: never across a wait.
    """

    def __init__(self, owner: AsyncHandle) -> None:
        super().__init__(name=f"ringwal-aio-waiter:{owner.dir}", daemon=True)
        self._owner = owner
        self._side = owner._side
        self._loop = owner._loop
        self._check_writer = owner._h._writer_changed
        self._cv = threading.Condition(threading.Lock())
        self._waiters: list[_Waiter] = []
        self._stopping: WALError | None = None
        # Answers on their way to the loop, and whether a _resolve callback is scheduled
        # (both under _cv): one queue, so at most RESOLVE_SLICE are set per loop iteration
        # however many fsyncs finish while the loop works through them.
        self._answers: deque[tuple[asyncio.Future[int], int | BaseException]] = deque()
        self._resolving = False

    def wait(
        self, durable: bool, target: int, deadline: float, on_timeout: Callable[[], WALError]
    ) -> asyncio.Future[int]:
        """A future resolved with the lane's written (durable) seq once record ``target`` is
        written (durable); failed with ``on_timeout()`` at ``deadline``. Loop thread only."""
        fut: asyncio.Future[int] = self._loop.create_future()
        w = _Waiter(durable, target, deadline, fut, on_timeout)
        with self._cv:
            if self._stopping is not None:
                raise self._stopping
            self._waiters.append(w)
            if len(self._waiters) == 1:
                self._cv.notify()
        return fut

    def stop(self, error: WALError) -> None:
        """Fail every waiter still pending with ``error`` and end the thread (loop thread)."""
        with self._cv:
            self._stopping = error
            pending, self._waiters = self._waiters, []
            self._cv.notify()
        for w in pending:
            if not w.fut.done():
                w.fut.set_exception(error)

    def run(self) -> None:
        side = self._side
        while True:
            with self._cv:
                while not self._waiters and self._stopping is None:
                    self._cv.wait()
                if not self._waiters:
                    return
                durable = any(w.durable for w in self._waiters)
                target = max(w.target for w in self._waiters if w.durable == durable)
                deadline = min(w.deadline for w in self._waiters)
            error: BaseException | None = None
            try:
                side.wait_progress(
                    durable, target, min(deadline, time.monotonic() + SLICE), self._check_writer, spin=False
                )
            except (AttributeError, ValueError):  # the lane was given back under us (poison, close)
                error = self._owner._terminal()
            except Exception as exc:  # noqa: BLE001 - handed to the waiting coroutines, which raise it
                error = exc
            self._settle(error)

    def _settle(self, error: BaseException | None) -> None:
        """Take every waiter that is answered (progress, deadline, error) and answer them on
        the loop with one callback."""
        side = self._side
        now = time.monotonic()
        done: list[tuple[asyncio.Future[int], int | BaseException]] = []
        with self._cv:
            keep = []
            for w in self._waiters:
                if w.fut.done():  # cancelled by its coroutine
                    continue
                seq = None
                if error is None:
                    try:
                        seq = side.reached(w.durable, w.target)
                    except LogFailedError as exc:  # records of ours lost to a failed fsync
                        error = exc
                    except (AttributeError, ValueError):  # the lane was given back meanwhile
                        error = self._owner._terminal()
                if seq is not None:
                    done.append((w.fut, seq))
                elif error is not None:
                    done.append((w.fut, error))
                elif now >= w.deadline:
                    done.append((w.fut, w.on_timeout()))
                else:
                    keep.append(w)
            self._waiters = keep
            if not done:
                return
            self._answers.extend(done)
            if self._resolving:
                return  # the scheduled _resolve takes these too
            self._resolving = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits these
            self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        """On the loop: answer up to ``RESOLVE_SLICE`` waiters (a cancelled one is skipped);
        if more are queued, go on in the next loop iteration."""
        answers = self._answers
        for _ in range(RESOLVE_SLICE):
            try:
                fut, result = answers.popleft()  # deque ends are thread-safe
            except IndexError:
                break
            if fut.done():
                continue
            if isinstance(result, BaseException):
                if isinstance(result, LanePoisonedError):
                    self._owner._on_poison(result)
                elif isinstance(result, LogFailedError):
                    self._owner._on_lost(result)
                fut.set_exception(result)
            else:
                fut.set_result(result)
        with self._cv:
            more = self._resolving = bool(answers)
        if more:
            self._loop.call_soon(self._resolve)


# ---------------------------------------------------------------------- reading


class _Pump(Generic[T]):
    """Runs a blocking iterator in a thread of its own and hands its items to the loop in
    batches, through a buffer of at most ``limit`` items (the thread waits when it is full).

    The thread checks ``stop`` before each item it adds; ``source`` gets the event too (the
    sync ``follow`` wakes from its sleeps on it), so ``close`` ends the thread within the
    source's longest sleep.
    """

    def __init__(self, source: Callable[[threading.Event], Iterator[T]], limit: int = READ_BUFFER) -> None:
        self._loop = asyncio.get_running_loop()
        self._source = source
        self._limit = limit
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._items: deque[T] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ringwal-aio-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            it = self._source(self.stop)
            try:
                for item in it:
                    with self._lock:
                        while len(self._items) >= self._limit and not self.stop.is_set():
                            self._space.wait(SLICE)
                        if self.stop.is_set():
                            break
                        self._items.append(item)
                        self._wake()
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            error = exc
        with self._lock:
            self._error = error
            self._done = True
            self._wake()

    def _wake(self) -> None:
        """(lock held) Wake the consumer if it waits: one callback per batch, not per item."""
        w, self._waiter = self._waiter, None
        if w is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(_set_none, w)

    async def batch(self) -> list[T]:
        """The items ready now (at least one); [] at the end. Raises the source's error."""
        while True:
            with self._lock:
                if self._items:
                    items = list(self._items)
                    self._items.clear()
                    self._space.notify()
                    return items
                if self._done:
                    if self._error is not None:
                        raise self._error
                    return []
                fut: asyncio.Future[None] = self._loop.create_future()
                self._waiter = fut
            try:
                await fut
            finally:
                with self._lock:
                    if self._waiter is fut:
                        self._waiter = None

    def close(self) -> None:
        """Ask the thread to stop (it ends within its source's longest sleep); never waits."""
        self.stop.set()
        with self._lock:
            self._space.notify()


def _set_none(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _drain(pump: _Pump[Record]) -> AsyncIterator[Record]:
    try:
        while True:
            items = await pump.batch()
            if not items:
                return
            for item in items:
                yield item
    finally:
        pump.close()


def follow(
    directory: str,
    after_seq: int = 0,
    *,
    since: int | datetime | str | None = None,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
    serializer: Serializer | None = None,
    poll_interval: float = 0.1,
    skip_holes: bool = False,
) -> AsyncIterator[Record]:
    """``ringwal.follow`` as an async iterator: every record with ``seq > after_seq`` (from
    the first with ``time >= since`` when given: ``ringwal.replay``), then each new one as
    it becomes durable, across rotations and writer restarts.

    The files are read in a thread of its own; the loop only receives batches of records.
    Cancelling the consuming task, ``break`` or ``aclose()`` stops that thread within
    ``poll_interval``. Raises what ``ringwal.follow`` raises (ValueError for bad arguments
    at the first ``__anext__``).
    """

    def source(stop: threading.Event) -> Iterator[Record]:
        return _follow(
            directory,
            after_seq,
            since=since,
            clock_skew=clock_skew,
            serializer=serializer,
            poll_interval=poll_interval,
            skip_holes=skip_holes,
            stop=stop,
        )

    async def gen() -> AsyncIterator[Record]:
        async for rec in _drain(_Pump(source)):
            yield rec

    return gen()


def replay(
    directory: str,
    after_seq: int = 0,
    serializer: Serializer | None = None,
    *,
    since: int | datetime | str | None = None,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
    skip_holes: bool = False,
) -> AsyncIterator[Record]:
    """``ringwal.replay`` as an async iterator, reading in a thread of its own (a long log
    would otherwise hold the loop for as long as it takes to read). Same arguments, same
    records, same errors (raised from ``__anext__``)."""

    def source(stop: threading.Event) -> Iterator[Record]:
        return _replay(directory, after_seq, serializer, since=since, clock_skew=clock_skew, skip_holes=skip_holes)

    async def gen() -> AsyncIterator[Record]:
        async for rec in _drain(_Pump(source)):
            yield rec

    return gen()
