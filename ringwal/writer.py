"""The writer process: drains the ring into the log, assigns seqs, group-commits fsyncs.

One writer per directory, decided by the ``wal.lock`` flock that ``SegmentLog`` takes. The loop:

1. drain: the lanes' published spans go into one body, written as one frame (the
   pending-drain protocol in ``ring.py`` makes this restartable without duplicates);
   repeat until the lanes are empty. A frame's body is at most ``write_buffer_size`` bytes
   and at most what is left of ``segment_size`` in ``current.wal`` (a lane's span is cut at
   a record boundary to fit, and the next drain starts with its rest), so a segment never
   grows past ``segment_size`` unless one record is larger than that. A span that is not
   whole records is dropped, its producer poisoned, and the drop logged as an error;
   everyone else carries on;
2. tell producers waiting in ``flush`` that their records reached the OS;
3. if any producer waits in ``sync`` (or ``flush_interval`` is due), one ``fdatasync``
   covers every record written so far: group commit. Records that arrive while it runs are
   drained and covered by the next one, at once. There is no commit delay (waiting, yielding
   the CPU, for the producers the last fsync woke to publish again): measured on 2 cores
   with 16 producers syncing every record it made no difference to records/s (8 interleaved
   pairs, median ratio 1.05 without it, either side ahead by up to 1.8x in single pairs),
   while each ``sched_yield`` on a busy machine can give the CPU away for a whole time slice
   (a 100 us delay averaged 150-600 us), and the ceiling (``bench/ceiling.py``) has none;
4. with nothing to do, sleep on the writer semaphore (producers post it when they wait or
   their lane is half full; a timeout bounds every sleep). The writer's own wait is always
   this one, whatever ``Config.wait_strategy`` the producers chose: a polling writer would
   burn a core for every producer all the time, and measured with one yielding producer it
   did not lower the p50 of ``sync()`` (the semaphore's wake is small beside an fsync).

Every step between an fdatasync's return and the futex wake that ends the producers' waits
is on their critical path, and on a 2-core machine whatever the writer runs after the wake
delays the woken producers too: so a pass is one drain (more only when a frame's budget cut
it), the durable progress and the wake come right after the fsync and the statistics after
the wake, and posts already served are swallowed with one read of the semaphore's value.

A producer is never woken per record: only a producer that waits is woken, once per wait,
and all the producers one pass satisfies are woken by a single futex syscall (``_futex.py``).

Start-up (``Writer.open``): take the directory lock and recover the log (which fdatasyncs
whatever a dead writer left in the page cache), create or reuse the ring (a new one is
reserved whole in ``/dev/shm``: ShmTooSmallError when it has no room), resolve a pending
drain against the last seq on disk, mark every lane's written records durable, then take
the ring's writer lock (a byte of ``wal.ring.lock``, dropped by the kernel when this process
dies: how producers in any PID namespace tell that it lives) and publish ``state = READY``;
then remove the rings of other logs that are gone and hold nothing (``ring.clean_orphans``).
The ring is named after the log's id and refused when it records another log or was made by
a user the log does not trust (``ring.py``, "Identity, trust and ownership").

The directory going away: every PLACE_INTERVAL, and before every fsync, the writer checks
that its directory is still at its path (``SegmentLog.check_place``). If it was removed or
moved, the writer acknowledges nothing more, marks the ring GONE (waiting producers raise
LogGoneError), removes it and exits non-zero (``Writer.gone``).

The loop never waits for a lock a producer can hold: a dead producer's lane is found and
freed by taking its lane lock without waiting (``ring.py``, "Liveness and locks").

A failed fsync (docs/FORMAT.md, "When fsync fails"): the log declares what it had written
but not made durable lost (``seglog.py``) and latches; the loop ends, and shutdown reports
the range in the ring (``WriterSide.record_loss``: producers waiting on those records get
LogFailedError, and the next writer reads the range even if the hole could not be written),
sets STOPPED, wakes every waiter and exits with the error. The next writer reads what the
ring says about its predecessors before recovering the log (``_prior``): the range to cut
and record, and the last seq they acknowledged.

Shutdown (SIGTERM/SIGINT, or an idle writer started by ``open``): drain, fsync, and holding
every lane's lock either unlink the ring (no lane owned, all empty) or leave it ``STOPPED``
for the next writer. Producers that are still attached see the writer gone and start another
(or raise WriterGoneError).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

from . import _fileutil, _notify
from ._fileutil import FsyncFn
from ._launch import report_error, report_ready
from .config import Config
from .errors import LogFailedError, LogGoneError, WALError
from .format import FSYNC_FAILURES
from .ring import Ring, RingView, WriterSide, check_platform, clean_orphans
from .seglog import Prior, SegmentLog

__all__ = ["Writer", "serve"]

log = logging.getLogger("ringwal")

#: Longest sleep with nothing to do; bounds how late an OS-buffered append reaches the OS.
IDLE_SLEEP = 0.05
#: How often lane owners are checked for death (one non-blocking lock attempt per owned lane).
LIVENESS_INTERVAL = 0.25
#: How often the writer checks that its directory is still where it opened it (a stat and
#: an fstat): a removed or moved log is noticed within this many seconds of the loop.
PLACE_INTERVAL = 0.25
#: Grace before an idle writer started by ``open`` exits if nobody ever attaches.
FIRST_ATTACH_GRACE = 10.0
#: Smallest frame a drain sizes to the room left in current.wal; with less room left the
#: drain takes a whole write_buffer_size and the segment rotates before it.
MIN_FRAME = 1024


class Writer:
    """A writer serving one directory. ``run()`` loops until ``stop()`` (or idle exit).

    The ring's writer side (``ring.WriterSide``) does everything that touches shared memory;
    this class decides when: drain, notify, group commit, housekeeping, shutdown.

    ``wal`` and ``side`` exist from construction until ``shutdown``; after it they are
    closed and the writer is not used again (``_closed``).
    """

    wal: SegmentLog
    side: WriterSide
    _closed = True  # until both are open; again once shutdown has closed them

    def __init__(
        self,
        config: Config,
        *,
        linger: float | None = None,
        fsync: FsyncFn = os.fsync,
        fdatasync: FsyncFn = _fileutil.fdatasync,
    ) -> None:
        config.validate_ring()
        check_platform()
        self.config = config
        self.linger = linger  # None: run until stopped (serve); a number: exit when idle
        self._stop = False
        name = config.serializer.name
        self.wal = wal = SegmentLog(config, name, fsync=fsync, fdatasync=fdatasync, prior=self._prior, at=self._at)
        side: WriterSide | None = None
        try:
            self.dir = wal.dir
            self.side = side = WriterSide.open(
                self.dir, config.producer_slots, config.ring_size, config.max_record_size, name, self._at, wal.log_id
            )
            ring = side.ring
            if not ring.created and (ring.slots, ring.ring_size) != (config.producer_slots, config.ring_size):
                log.warning(
                    "%s: reusing the existing ring (%d slots of %d bytes); "
                    "the configured ring settings apply after a clean shutdown",
                    self.dir, ring.slots, ring.ring_size,
                )  # fmt: skip
            loss = wal.recovered_loss
            done = side.recover(wal.last_seq, wal.first_seq, loss[:3] if loss is not None else None)
            if done:
                log.warning("%s: %s", self.dir, done)
            side.publish_ready()
            _clean_orphans()
        except BaseException:
            if side is not None:
                side.close()
            wal.close()
            raise
        self._closed = False
        self._frame_cap = config.write_buffer_size
        self._last_sync = time.monotonic()
        self._unsynced = False
        self._ever_attached = False
        self._idle_since = time.monotonic()
        self._next_liveness = 0.0
        self._next_place_check = 0.0
        self._next_tick = 0.0
        self._tick_at = 0.0
        self._tick_records = 0
        self._retention = config.retention_max_bytes is not None or config.retention_max_age is not None
        # Counters for the metrics endpoint (metrics.py reads them from its own thread; an
        # int read or += is atomic under the GIL, and a scrape that sees one frame late is fine).
        self.bytes_written = 0  # frame bodies written to current.wal (records, u32 lengths included)
        self.retention_removed_segments = 0
        self.retention_removed_bytes = 0

    def _prior(self) -> Prior | None:
        """What the ring of the directory says about the writers before this one (called by
        the log holding the directory lock, before it recovers): None when there is no ring."""
        view = RingView.attach(self.config.dir)
        if view is None:
            return None
        try:
            return Prior(view.durable_seq(), view.failure())
        finally:
            view.close()

    @property
    def ring(self) -> Ring | None:
        """The mapped ring (for diagnostics: slots, ring_size, name); None after shutdown."""
        return None if self._closed else self.side.ring

    # ------------------------------------------------------------------ the loop

    def drain(self) -> int:
        """Write one frame of whatever producers published; return the records written.

        The frame's body is at most ``write_buffer_size`` and at most what fits before
        ``segment_size``: in current.wal, or, when it has less than MIN_FRAME left (the frame
        then starts a new segment), in a new one. A single record larger than that still
        goes whole (``WriterSide.drain`` takes at least one).
        """
        wal = self.wal
        cap = self._frame_cap
        room = wal.frame_room
        if room < MIN_FRAME:
            room = max(MIN_FRAME, wal.fresh_frame_room)
        side = self.side
        got = side.drain(wal.last_seq + 1, min(room, cap), self._write_body)
        if got:
            self._unsynced = True
        if side.dropped:
            for _lane, _pid, message in side.dropped:
                log.error("%s: %s", self.dir, message)
            side.dropped.clear()
        return got

    def _write_body(self, body: bytes, count: int) -> int:
        first = self.wal.write_body(body, count)
        self.bytes_written += len(body)
        return first

    def _at(self, point: str) -> None:
        """A named crash point: the tests' subclass kills the process here. The drain's
        (``ring.py``), ``synced``, and the rotation's (``seglog.py``, "Rotation"; ``spare``,
        ``named`` and ``indexed`` on the log's background thread)."""

    def sync(self) -> None:
        """One fdatasync covering every record written so far (group commit); wake its waiters,
        then count the fsync in the statistics.

        Raises LogGoneError, acknowledging nothing, when the log directory is no longer where
        it was opened (a stat and an fstat, next to an fsync of ~100 us or more): records are
        never called durable in files no reader will look at."""
        self.wal.check_place()
        t0 = time.perf_counter_ns()
        self.wal.sync()
        ns = time.perf_counter_ns() - t0
        self._at("synced")
        side = self.side
        side.mark_durable(self.wal.last_seq)
        side.notify(durable=True)
        side.count_fsync(ns)
        self._unsynced = False
        self._last_sync = time.monotonic()

    def step(self) -> bool:
        """One pass of the loop; False when there was nothing to do. Raises LogGoneError
        (before draining anything) once the log directory is no longer at its path."""
        now = time.monotonic()
        if now >= self._next_place_check:
            self._next_place_check = now + PLACE_INTERVAL
            self.wal.check_place()
        side = self.side
        if side.attachments_changed() and side.owned():
            self._ever_attached = True
        wrote = self.drain()
        while side.more and wrote < 1 << 20:  # a frame's budget cut the last drain short
            wrote += self.drain()
        if wrote:
            side.notify(durable=False)
        fi = self.config.flush_interval
        if side.sync_wanted() or (self._unsynced and fi is not None and time.monotonic() - self._last_sync >= fi):
            self.sync()
            return True
        return bool(wrote)

    def _housekeeping(self, now: float) -> None:
        side = self.side
        before = side.truncation_requested()
        if before:
            self._truncate(before)
        if now >= self._next_tick:
            records = side.records_written()
            if self._tick_at:
                side.set_rate(int((records - self._tick_records) / max(now - self._tick_at, 1e-3)))
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
        removed, first = self.wal.truncate_before(before)
        for e in removed:
            log.info(
                "%s: truncate_before(%d) removed %s (seqs %d-%d)", self.dir, before, e.file, e.first_seq, e.last_seq
            )
        self.side.truncation_served(before, first)

    def _apply_retention(self) -> None:
        removed, first = self.wal.apply_retention(self.config.retention_max_bytes, self.config.retention_max_age)
        for e in removed:
            log.info(
                "%s: retention removed %s (seqs %d-%d, %d bytes)", self.dir, e.file, e.first_seq, e.last_seq, e.size
            )
        if removed:
            self.retention_removed_segments += len(removed)
            self.retention_removed_bytes += sum(e.size for e in removed)
            self.side.set_first_seq(first)

    def _reclaim_dead(self) -> None:
        for k, pid in self.side.reclaim_dead():
            log.info(
                "%s: the producer of lane %d (pid %d in its namespace) died; the lane is free (its published "
                "records are kept)", self.dir, k, pid,
            )  # fmt: skip

    def run(self) -> None:
        """Serve until ``stop()`` (a signal handler may call it) or, with a linger, until idle.

        Raises LogGoneError when the log directory was removed or moved meanwhile (``step``),
        after ``gone``: the writer serves nothing more."""
        side = self.side
        try:
            while not self._stop:
                side.clear_posts()  # before the look: a post made after it wakes the sleep below
                busy = self.step()
                now = time.monotonic()
                self._housekeeping(now)
                if busy:
                    self._idle_since = now
                    continue
                if self.linger is not None and self._idle_exit_due(now, self.linger):
                    break
                side.wait_posted(IDLE_SLEEP)
        except LogGoneError as exc:
            self.gone(exc)
            raise
        finally:
            self.shutdown()

    def gone(self, exc: LogGoneError) -> None:
        """The log directory is gone: stop without draining or syncing anything more (it
        would go where no reader looks, or into deleted files), mark the ring GONE so that
        every attached producer's wait raises LogGoneError, remove the ring (by the name and
        object this writer opened), and close. Crash windows: a writer killed before the
        GONE store leaves producers to find it dead (they then find the directory gone
        themselves); after it, the ring may stay in /dev/shm as an orphan
        (``clean_orphans``)."""
        if self._closed:
            return
        try:
            self.side.mark_gone()
        finally:
            self._closed = True
            self.side.close()
            self.wal.abandon()

    def _idle_exit_due(self, now: float, linger: float) -> bool:
        owned = self.side.owned()
        if owned:
            self._ever_attached = True  # attachments_changed() is a hint that can miss one
        if owned or self.side.has_records():
            self._idle_since = now
            return False
        grace = linger if self._ever_attached else max(linger, FIRST_ATTACH_GRACE)
        return now - self._idle_since >= grace

    def stop(self) -> None:
        self._stop = True

    def shutdown(self) -> None:
        """Drain, fsync, then unlink the ring if nobody uses it, else leave it for the next writer."""
        if self._closed:
            return
        wal = self.wal
        try:
            if wal.failed is None and not wal.closed:
                try:
                    while self.drain():
                        pass
                    self.sync()
                except LogFailedError:
                    if wal.failed is None:
                        raise
                else:
                    self.side.notify(durable=False)
                    if not self.side.shutdown():
                        log.info("%s: producers are still attached; leaving the ring for the next writer", self.dir)
            if wal.failed is not None:
                self._report_failure()
        except LogGoneError as exc:
            self.gone(exc)
            raise
        finally:
            if not self._closed:
                self._close_resources()

    def _report_failure(self) -> None:
        """The log latched: say in the ring which records were lost (if any), stop serving."""
        lost = self.wal.lost
        if lost is not None:
            n = self.side.record_loss(lost.first_seq, lost.last_seq, lost.what)
            log.error(
                "%s: seqs %d-%d were written but never made durable (%s failed); recorded as lost, never "
                "acknowledged (%d producer lane(s) told)",
                self.dir, lost.first_seq, lost.last_seq, FSYNC_FAILURES[lost.what], n,
            )  # fmt: skip
        self.side.stop()

    def _close_resources(self) -> None:
        self._closed = True
        self.side.close()
        self.wal.close()


def _clean_orphans() -> None:
    """Remove the rings in ``/dev/shm`` whose log is gone and that hold no records (a writer
    killed before its directory was deleted leaves one behind; ``ring.clean_orphans``)."""
    try:
        gone = clean_orphans()
    except OSError as exc:  # best effort: the writer serves its own log either way
        log.debug("looking for orphaned rings failed: %r", exc)
        return
    for info in gone:
        log.info("removed /dev/shm/%s, the ring of log %s: %s", info.name, info.log_id, info.why)


def serve(
    config: Config,
    *,
    linger: float | None = None,
    ready_fd: int | None = None,
    announce: Callable[[Writer], None] | None = None,
    writer_class: type[Writer] | None = None,
    notify: bool = True,
) -> int:
    """Run a writer in this process until SIGTERM/SIGINT (or idle, with ``linger``); exit code.

    ``ready_fd``: a pipe to report on, once, with the JSON line of ``_launch``. With
    ``config.metrics_port`` set, Prometheus metrics are served (``metrics.py``; the
    ``ringwal[metrics]`` extra) from before the ready report until the writer has shut down.
    ``notify``: tell systemd ``READY=1`` once serving and ``STOPPING=1`` after the drain when
    ``$NOTIFY_SOCKET`` is set (``_notify.py``); ``ringwal serve --detach`` passes False.
    """
    endpoint = None
    try:
        writer = (writer_class or Writer)(config, linger=linger)
        if config.metrics_port is not None:
            from .metrics import start_metrics

            try:
                endpoint = start_metrics(writer, config.metrics_port, config.metrics_address)
            except BaseException:
                writer.shutdown()
                raise
    except BaseException as exc:
        if ready_fd is not None:
            report_error(ready_fd, exc)
        raise

    def on_signal(signum: int, frame: object) -> None:
        writer.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    if ready_fd is not None:
        report_ready(ready_fd)
    if announce is not None:
        announce(writer)
    if endpoint is not None:
        log.info("%s: Prometheus metrics at %s", writer.dir, endpoint.url)
    if notify:
        _notify.notify(f"READY=1\nSTATUS=serving {writer.dir}\nMAINPID={os.getpid()}\n")
    try:
        writer.run()
    finally:
        if notify:
            _notify.notify("STOPPING=1\n")
        for s, h in old.items():
            signal.signal(s, h)
        if endpoint is not None:
            endpoint.close()
    return 0


def log_serializer(directory: str) -> str | None:
    """The serializer named by the log's newest segment header, or None for an empty/new log."""
    from .segment import CURRENT, list_segments, read_header

    if not os.path.isdir(directory):
        return None
    newest_first = [os.path.join(directory, n) for _, n in reversed(list_segments(directory))]
    for path in [os.path.join(directory, CURRENT), *newest_first]:
        try:
            return read_header(path).serializer
        except (OSError, WALError):
            continue
    return None
