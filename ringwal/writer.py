"""The writer process: drains the ring into the log, assigns seqs, group-commits fsyncs.

One writer per directory, decided by the ``wal.lock`` flock that ``WAL`` takes. The loop:

1. drain: every lane's published span goes into one body, written as one frame (the
   pending-drain protocol in ``ring.py`` makes this restartable without duplicates);
   repeat until the lanes are empty;
2. tell producers waiting in ``flush`` that their records reached the OS;
3. if any producer waits in ``sync`` (or ``flush_interval`` is due), one ``fdatasync``
   covers every record written so far: group commit. Records that arrive while it runs are
   drained and covered by the next one;
4. with nothing to do, sleep on the writer semaphore (producers post it when they wait or
   their lane is half full; a timeout bounds every sleep).

A producer is never woken per record: only a producer that waits is woken, once per wait,
and all the producers one pass satisfies are woken by a single futex syscall (``_futex.py``).

Start-up (``Writer.open``): take the directory lock and recover the log (which fdatasyncs
whatever a dead writer left in the page cache), create or reuse the ring, resolve a pending
drain against the last seq on disk, mark every lane's written records durable, then publish
``state = READY`` with this process's pid and create time.

Shutdown (SIGTERM/SIGINT, or an idle writer started by ``open``): drain, fsync, and under
the claim lock either unlink the ring (no lane owned, all empty) or leave it ``STOPPED`` for
the next writer. Producers that are still attached see the writer gone and start another
(or raise WriterGoneError).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable

import posix_ipc

from . import _futex
from .config import Config
from .errors import ConfigError, LogFailedError, WALError
from .format import (
    L_DURABLE_COUNT,
    L_DURABLE_SEQ,
    L_HEAD,
    LANE_WORDS,
    L_OWNER_PID,
    L_PENDING_SEQ,
    L_PENDING_TAIL,
    L_SPAN_HEAD,
    L_TAIL,
    L_VERSION,
    L_WANT_DURABLE,
    L_WANT_WRITTEN,
    L_WRITTEN_COUNT,
    L_WRITTEN_SEQ,
    RH_ATTACH_GEN,
    RH_DURABLE_SEQ,
    FSYNC_BUCKETS,
    RH_FIRST_SEQ,
    RH_FOLLOW_WAKE,
    RH_FOLLOWERS,
    RH_FSYNC_COUNT,
    RH_FSYNC_HIST,
    RH_FSYNC_NS,
    RH_FSYNCS,
    RH_HEARTBEAT,
    RH_RATE,
    RH_TRUNC_DONE,
    RH_TRUNC_REQ,
    RH_NEXT_SEQ,
    RH_PENDING,
    RH_PENDING_FIRST,
    RH_PENDING_LAST,
    RH_RECORDS,
    RH_STARTED_NS,
    RH_STATE,
    RH_WRITER_CTIME,
    RH_WRITER_GEN,
    RH_WAKE,
    RH_WRITER_PID,
    RING_CLOSED,
    RING_HEADER_SIZE,
    RING_READY,
    RING_STOPPED,
    SPAN_LOG,
    fsync_bucket,
)
from ._fileutil import FsyncFn
from .log import WAL
from .ring import M32, Ring, check_machine, claim_lock, f64_bits, own_identity, process_alive
from .serializers import BaseSerializer

__all__ = ["Writer", "serve"]

log = logging.getLogger("ringwal")

#: Longest sleep with nothing to do; bounds how late an OS-buffered append reaches the OS.
GATHER = 0.0001  # commit delay bound, seconds (see Writer._gather)
IDLE_SLEEP = 0.05
#: How often lane owners are checked for death.
LIVENESS_INTERVAL = 0.25
#: Grace before an idle writer started by ``open`` exits if nobody ever attaches.
FIRST_ATTACH_GRACE = 10.0


class _NameOnly(BaseSerializer):
    """The writer never encodes or decodes: it needs only the serializer's name."""

    def __init__(self, name: str) -> None:
        self.name = name  # type: ignore[misc]

    def encode(self, record):  # pragma: no cover - the writer only copies encoded bytes
        raise TypeError(f"the writer process does not encode records (serializer {self.name!r} runs in producers)")

    def decode(self, payload, seq):  # pragma: no cover - the writer never reads records back
        raise TypeError(f"the writer process does not decode records (serializer {self.name!r} runs in readers)")

    def __repr__(self) -> str:
        return f"<serializer {self.name!r}>"


class _Lane:
    """The writer's view of one lane, with local mirrors of the words only it writes."""

    __slots__ = ("k", "bit", "ctl", "data", "spans", "tail", "written_count", "written_seq", "durable_count", "posted_w", "posted_d")

    def __init__(self, ring: Ring, k: int) -> None:
        self.k = k
        self.bit = ring.wake_bit(k)
        self.ctl = ring.lane_ctl(k)
        self.data = ring.lane_data(k)
        self.spans = ring.span_log(k)
        c = self.ctl
        self.tail = c[L_TAIL]
        self.written_count = c[L_WRITTEN_COUNT]
        self.written_seq = c[L_WRITTEN_SEQ]
        self.durable_count = c[L_DURABLE_COUNT]
        self.posted_w = 0
        self.posted_d = 0


class Writer:
    """A writer serving one directory. ``run()`` loops until ``stop()`` (or idle exit)."""

    wal: WAL | None = None
    ring: Ring | None = None

    def __init__(
        self,
        config: Config,
        *,
        linger: float | None = None,
        fsync: FsyncFn = os.fsync,
        fdatasync: FsyncFn = os.fdatasync,
    ) -> None:
        config.validate_ring()
        check_machine()
        self.config = config
        self.linger = linger  # None: run until stopped (serve); a number: exit when idle
        self._stop = False
        name = config.serializer.name
        self.wal = WAL(dataclasses.replace(config, serializer=_NameOnly(name), flush_interval=None), fsync=fsync, fdatasync=fdatasync)
        try:
            self.dir = self.wal.dir
            with claim_lock(self.dir):
                self.ring = Ring.create_or_reuse(self.dir, config.producer_slots, config.ring_size, config.max_record_size, name)
                ring = self.ring
                if ring.serializer != name:
                    raise ConfigError(
                        f"the ring of {self.dir} was created for serializer {ring.serializer!r} but the log uses {name!r}; "
                        f"stop its producers or remove /dev/shm{ring.name}"
                    )
                if not ring.created and (ring.slots, ring.ring_size) != (config.producer_slots, config.ring_size):
                    log.warning(
                        "%s: reusing the existing ring (%d slots of %d bytes); the configured ring settings apply after a clean shutdown",
                        self.dir, ring.slots, ring.ring_size,
                    )
                self.wsem = ring.writer_sem(create=True)
                self._hist = ring._view(ring.words[RH_FSYNC_HIST : RH_FSYNC_HIST + FSYNC_BUCKETS])
                self.lanes = [_Lane(ring, k) for k in range(ring.slots)]
                base = RING_HEADER_SIZE // 8
                stop = base + ring.slots * LANE_WORDS
                self._heads = ring._view(ring.words[base + L_HEAD : stop : LANE_WORDS])
                self._wants_w = ring._view(ring.words[base + L_WANT_WRITTEN : stop : LANE_WORDS])
                self._wants_d = ring._view(ring.words[base + L_WANT_DURABLE : stop : LANE_WORDS])
                self._tails = [ln.tail for ln in self.lanes]
                self._dirty: set[_Lane] = set()
                self._recover()
                self._publish_ready()
        except BaseException:
            self._close_resources()
            raise
        self._attach_gen = -1
        self._rr = 0
        self._expect = 0  # producers the last fsync woke: how many to gather before the next
        self._budget = max(4096, min(config.write_buffer_size, config.segment_size // 2))
        self._last_sync = time.monotonic()
        self._unsynced = False
        self._ever_attached = False
        self._idle_since = time.monotonic()
        self._next_liveness = 0.0
        self._next_tick = 0.0
        self._tick_at = 0.0
        self._tick_records = 0
        self._retention = config.retention_max_bytes is not None or config.retention_max_age is not None

    # ------------------------------------------------------------------ start-up

    def _recover(self) -> None:
        """Finish or undo a drain that a dead writer left pending; everything written is durable."""
        w = self.ring.words
        last = self.wal.last_seq  # after recovery, and the WAL fdatasynced it at open
        if w[RH_PENDING]:
            first, plast = w[RH_PENDING_FIRST], w[RH_PENDING_LAST]
            if last >= plast:
                log.warning("%s: finishing a drain of seqs %d-%d left pending by a dead writer", self.dir, first, plast)
                for lane in self.lanes:
                    c = lane.ctl
                    if c[L_PENDING_TAIL] != c[L_TAIL]:
                        self._finish_lane(lane, c[L_PENDING_TAIL], c[L_PENDING_SEQ], redo=True)
            elif last < first:
                log.warning("%s: seqs %d-%d of a dead writer's last drain never reached disk; writing them again", self.dir, first, plast)
                for lane in self.lanes:
                    lane.ctl[L_PENDING_TAIL] = lane.ctl[L_TAIL]
            else:  # pragma: no cover - a frame is all or nothing
                raise LogFailedError(f"{self.dir}: the log ends at seq {last}, inside a pending drain {first}-{plast}")
            w[RH_PENDING] = 0
        for lane in self.lanes:
            self._publish_durable(lane)
            lane.posted_w = lane.posted_d = 0
        w[RH_NEXT_SEQ] = last + 1
        w[RH_DURABLE_SEQ] = last
        w[RH_FIRST_SEQ] = self.wal.first_seq
        w[RH_TRUNC_DONE] = 0  # a request a dead writer left unserved is served (again) by this one

    def _publish_ready(self) -> None:
        w = self.ring.words
        pid, ctime = own_identity()
        w[RH_STATE] = 0
        w[RH_WRITER_CTIME] = f64_bits(ctime)
        w[RH_WRITER_PID] = pid
        w[RH_WRITER_GEN] += 1
        w[RH_STARTED_NS] = time.time_ns()
        for i in range(FSYNC_BUCKETS):  # stats describe this writer, not the ring's earlier ones
            self._hist[i] = 0
        w[RH_FSYNC_COUNT] = w[RH_FSYNC_NS] = w[RH_RATE] = w[RH_RECORDS] = 0
        w[RH_STATE] = RING_READY  # last: producers attach only to a READY ring with a live writer

    # ------------------------------------------------------------------ the drain

    def _note_attachments(self) -> None:
        """A lane was claimed or released: remember whether anyone ever attached (idle exit)."""
        self._attach_gen = self.ring.words[RH_ATTACH_GEN]
        if self._owned():
            self._ever_attached = True

    def drain(self) -> int:
        """Move every published span into one frame; return the records written.

        Lane words are read in bulk (a strided view's ``tolist``: one aligned 8-byte load per
        word, in C), so an idle pass costs well under a microsecond however many lanes exist.
        """
        heads = self._heads.tolist()
        tails = self._tails
        if heads == tails:
            return 0
        n = len(tails)
        start = self._rr
        self._rr = start + 1 if start + 1 < n else 0
        pieces: list[memoryview] = []
        took: list[tuple[_Lane, int, int]] = []
        total = count = 0
        budget = self._budget
        mask = self.ring.ring_size - 1
        lanes = self.lanes
        for i in range(n):
            k = (start + i) % n
            head = heads[k]
            tail = tails[k]
            if head == tail:
                continue
            lane = lanes[k]
            nbytes = (head - tail) & M32
            ncount = ((head >> 32) - (tail >> 32)) & M32
            off = tail & mask
            end = off + nbytes
            if end <= mask + 1:
                pieces.append(lane.data[off:end])
            else:
                pieces.append(lane.data[off:])
                pieces.append(lane.data[: end - mask - 1])
            took.append((lane, head, ncount))
            total += nbytes
            count += ncount
            if total >= budget:
                break
        body = b"".join(pieces)
        del pieces
        w = self.ring.words
        first = self.wal.last_seq + 1
        s = first
        for lane, head, ncount in took:  # ring.py step 3
            lane.ctl[L_PENDING_SEQ] = s
            lane.ctl[L_PENDING_TAIL] = head
            s += ncount
        w[RH_PENDING_FIRST] = first
        w[RH_PENDING_LAST] = s - 1
        w[RH_PENDING] = 1
        self._at("pending")
        got = self.wal.write_body(body, count)  # step 4
        assert got == first, (got, first)
        self._at("written")
        s = first
        dirty = self._dirty
        for lane, head, ncount in took:  # step 5
            self._finish_lane(lane, head, s, redo=False)
            dirty.add(lane)
            self._at("lane_finished")
            s += ncount
        w[RH_PENDING] = 0
        w[RH_NEXT_SEQ] = s
        w[RH_RECORDS] += count
        self._unsynced = True
        return count

    def _finish_lane(self, lane: _Lane, head: int, first_seq: int, *, redo: bool) -> None:
        """Log the span, publish written progress, advance the tail (ring.py step 5)."""
        c = lane.ctl
        tail = c[L_TAIL]
        end32 = head >> 32
        start32 = tail >> 32
        last_seq = first_seq + ((end32 - start32) & M32) - 1
        sl = lane.spans
        h = c[L_SPAN_HEAD]
        entry = (start32 << 32) | end32
        if not (redo and h and sl[((h - 1) % SPAN_LOG) * 2] == entry and sl[((h - 1) % SPAN_LOG) * 2 + 1] == first_seq):
            j = (h % SPAN_LOG) * 2
            sl[j] = entry
            sl[j + 1] = first_seq
            c[L_SPAN_HEAD] = h + 1
        v = c[L_VERSION] | 1  # odd: changing
        c[L_VERSION] = v
        c[L_WRITTEN_COUNT] = end32
        c[L_WRITTEN_SEQ] = last_seq
        c[L_VERSION] = v + 1
        c[L_TAIL] = head
        lane.tail = head
        self._tails[lane.k] = head
        lane.written_count = end32
        lane.written_seq = last_seq

    def _publish_durable(self, lane: _Lane) -> None:
        c = lane.ctl
        wc = c[L_WRITTEN_COUNT]
        if c[L_DURABLE_COUNT] == wc and lane.durable_count == wc:
            return
        v = c[L_VERSION] | 1
        c[L_VERSION] = v
        c[L_DURABLE_COUNT] = wc
        c[L_DURABLE_SEQ] = c[L_WRITTEN_SEQ]
        c[L_VERSION] = v + 1
        lane.durable_count = wc

    # ------------------------------------------------------------------ the loop

    def _sync_wanted(self) -> int:
        """How many lanes wait in ``sync`` for records not yet durable."""
        wants = self._wants_d.tolist()
        if not any(wants):
            return 0
        lanes = self.lanes
        n = 0
        for k, want in enumerate(wants):
            if want and ((lanes[k].durable_count - want) & M32) >= 1 << 31:
                n += 1
        return n

    def _gather(self, waiting: int) -> None:
        """Commit delay: give the producers the last fsync woke a moment to queue again.

        Without it, the first producer back triggers an fsync that covers only itself and
        the rest wait a whole fsync more. Bounded by GATHER seconds; drains meanwhile, so
        what arrives is already in the page cache when the fsync starts.
        """
        until = time.monotonic() + GATHER
        expect = self._expect
        while waiting < expect and time.monotonic() < until:
            os.sched_yield()
            self.drain()
            waiting = self._sync_wanted()
        while self.drain():
            pass

    def _notify(self, durable: bool) -> None:
        """Wake every producer whose wait is now satisfied (each once per want), in one syscall.

        The progress words were stored before this; the wake word is bumped after them and
        before the futex wake (the protocol in ``_futex.py``).
        """
        bits = 0
        if durable:
            bits = self._satisfied(self._wants_d.tolist(), "durable_count", "posted_d")
            self._expect = bits.bit_count()
        bits |= self._satisfied(self._wants_w.tolist(), "written_count", "posted_w")
        w = self.ring.words
        w[RH_WAKE] = (w[RH_WAKE] + 1) & M32
        if bits:
            _futex.wake(self.ring.wake_addr, bits)

    def _satisfied(self, wants: list[int], progress: str, posted: str) -> int:
        if not any(wants):
            return 0
        bits = 0
        lanes = self.lanes
        for k, want in enumerate(wants):
            if want:
                lane = lanes[k]
                if want != getattr(lane, posted) and ((getattr(lane, progress) - want) & M32) < 1 << 31:
                    setattr(lane, posted, want)
                    bits |= lane.bit
        return bits

    def _at(self, point: str) -> None:
        """A named crash point: the tests' subclass kills the process here."""

    def sync(self) -> None:
        t0 = time.perf_counter_ns()
        self.wal.sync()
        ns = time.perf_counter_ns() - t0
        self._at("synced")
        w = self.ring.words
        w[RH_FSYNCS] += 1
        hist = self._hist
        hist[fsync_bucket(ns // 1000)] += 1
        w[RH_FSYNC_COUNT] += 1
        w[RH_FSYNC_NS] += ns
        for lane in self._dirty:
            self._publish_durable(lane)
        self._dirty.clear()
        w[RH_DURABLE_SEQ] = self.wal.last_seq
        self._unsynced = False
        self._last_sync = time.monotonic()
        self._notify(durable=True)
        if w[RH_FOLLOWERS]:
            self._wake_followers()

    def _wake_followers(self) -> None:
        """Bump the follow word and wake everyone sleeping on it (followers, truncate_before)."""
        w = self.ring.words
        w[RH_FOLLOW_WAKE] = (w[RH_FOLLOW_WAKE] + 1) & M32
        _futex.wake(self.ring.follow_addr, M32)

    def step(self) -> bool:
        """One pass of the loop; False when there was nothing to do."""
        w = self.ring.words
        if w[RH_ATTACH_GEN] != self._attach_gen:
            self._note_attachments()
        wrote = 0
        while True:
            got = self.drain()
            if not got:
                break
            wrote += got
            if wrote >= 1 << 20:
                break
        if wrote:
            self._notify(durable=False)
        fi = self.config.flush_interval
        waiting = self._sync_wanted()
        if waiting and waiting < self._expect:
            self._gather(waiting)
        if waiting or (self._unsynced and fi is not None and time.monotonic() - self._last_sync >= fi):
            self.sync()
            return True
        return bool(wrote)

    def _sleep(self, timeout: float) -> None:
        sem = self.wsem
        try:
            while True:  # swallow posts that the pass just served, without a syscall each
                sem.acquire(0)
        except posix_ipc.BusyError:
            pass
        if self.step():
            return
        try:
            sem.acquire(timeout)
        except (posix_ipc.BusyError, posix_ipc.SignalError):
            pass

    def _housekeeping(self, now: float) -> None:
        w = self.ring.words
        w[RH_HEARTBEAT] += 1
        if w[RH_TRUNC_REQ] > w[RH_TRUNC_DONE]:
            self._truncate(w[RH_TRUNC_REQ])
        if now >= self._next_tick:
            records = w[RH_RECORDS]
            if self._tick_at:
                w[RH_RATE] = int((records - self._tick_records) / max(now - self._tick_at, 1e-3))
            self._tick_at, self._tick_records = now, records
            self._next_tick = now + 1.0
            self.wal.flush()  # rotates a current.wal older than segment_duration
            if self._retention:
                self._apply_retention()
        if now >= self._next_liveness:
            self._next_liveness = now + LIVENESS_INTERVAL
            self._reclaim_dead()

    def _truncate(self, before: int) -> None:
        """Serve ``truncate_before`` requests: remove completed segments ending below ``before``."""
        w = self.ring.words
        removed, first = self.wal.truncate_before(before)
        for e in removed:
            log.info("%s: truncate_before(%d) removed %s (seqs %d-%d)", self.dir, before, e.file, e.first_seq, e.last_seq)
        w[RH_FIRST_SEQ] = first
        w[RH_TRUNC_DONE] = before
        self._wake_followers()

    def _apply_retention(self) -> None:
        removed, first = self.wal.apply_retention(self.config.retention_max_bytes, self.config.retention_max_age)
        for e in removed:
            log.info("%s: retention removed %s (seqs %d-%d, %d bytes)", self.dir, e.file, e.first_seq, e.last_seq, e.size)
        if removed:
            self.ring.words[RH_FIRST_SEQ] = first

    def _reclaim_dead(self) -> None:
        dead = []
        for lane in self.lanes:
            pid, ctime, token = self.ring.owner(lane.k)
            if pid and not process_alive(pid, ctime):
                dead.append((lane, token))
        if not dead:
            return
        with claim_lock(self.dir):
            for lane, token in dead:
                pid = self.ring.owner(lane.k)[0]
                if self.ring.release_lane(lane.k, token):
                    log.info("%s: producer pid %d died; its lane %d is free (its published records are kept)", self.dir, pid, lane.k)
                    lane.posted_w = lane.posted_d = 0

    def _owned(self) -> bool:
        return any(ln.ctl[L_OWNER_PID] for ln in self.lanes)

    def run(self) -> None:
        """Serve until ``stop()`` (a signal handler may call it) or, with a linger, until idle."""
        try:
            while not self._stop:
                busy = self.step()
                now = time.monotonic()
                self._housekeeping(now)
                if busy:
                    self._idle_since = now
                    continue
                if self.linger is not None and self._idle_exit_due(now):
                    break
                self._sleep(IDLE_SLEEP)
        finally:
            self.shutdown()

    def _idle_exit_due(self, now: float) -> bool:
        if self._owned() or any(ln.ctl[L_HEAD] != ln.tail for ln in self.lanes):
            self._idle_since = now
            return False
        grace = self.linger if self._ever_attached else max(self.linger, FIRST_ATTACH_GRACE)
        return now - self._idle_since >= grace

    def stop(self) -> None:
        self._stop = True

    def shutdown(self) -> None:
        """Drain, fsync, then unlink the ring if nobody uses it, else leave it for the next writer."""
        if self.ring is None or self.wal is None:
            return
        try:
            if not self.wal.closed:
                while self.drain():
                    pass
                self.sync()
                self._notify(durable=False)
                with claim_lock(self.dir):
                    w = self.ring.words
                    in_use = self._owned() or any(ln.ctl[L_HEAD] != ln.tail for ln in self.lanes)
                    w[RH_STATE] = RING_STOPPED if in_use else RING_CLOSED
                    if not in_use:
                        self.ring.unlink()
                    else:
                        log.info("%s: producers are still attached; leaving the ring for the next writer", self.dir)
                        w[RH_WAKE] = (w[RH_WAKE] + 1) & M32
                        _futex.wake(self.ring.wake_addr, M32)  # waiters look for a new writer now
        finally:
            self._close_resources()

    def _close_resources(self) -> None:
        self.lanes = []
        if getattr(self, "wsem", None) is not None:
            self.wsem.close()
            self.wsem = None
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if self.wal is not None:
            self.wal.close()
            self.wal = None


def serve(
    config: Config,
    *,
    linger: float | None = None,
    ready_fd: int | None = None,
    announce: Callable[[Writer], None] | None = None,
    writer_class: type[Writer] | None = None,
) -> int:
    """Run a writer in this process until SIGTERM/SIGINT (or idle, with ``linger``); exit code."""
    try:
        writer = (writer_class or Writer)(config, linger=linger)
    except BaseException as exc:
        if ready_fd is not None:
            _report(ready_fd, f"error {type(exc).__name__} {getattr(exc, 'pid', '') or ''}|{exc}")
        raise
    def on_signal(signum: int, frame: object) -> None:
        writer.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    if ready_fd is not None:
        _report(ready_fd, "ready")
    if announce is not None:
        announce(writer)
    try:
        writer.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0


def _report(fd: int, message: str) -> None:
    try:
        os.write(fd, message.encode("utf-8", "replace") + b"\n")
        os.close(fd)
    except OSError:
        pass


def log_serializer(directory: str) -> str | None:
    """The serializer named by the log's newest segment header, or None for an empty/new log."""
    from .segment import CURRENT, list_segments, read_header

    if not os.path.isdir(directory):
        return None
    candidates = [os.path.join(directory, CURRENT)] + [os.path.join(directory, n) for _, n in reversed(list_segments(directory))]
    for path in candidates:
        try:
            return read_header(path).serializer
        except (OSError, WALError):
            continue
    return None
