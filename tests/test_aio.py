"""ringwal.aio with a real writer process, real shared memory and real fsyncs.

What is checked: many coroutines' ``sync`` calls share fsyncs (group commit); the loop keeps
running while the writer is stopped (SIGSTOP) with coroutines waiting in ``sync`` and in
``append`` for room; cancelling a waiting coroutine leaves the handle usable (and a cancelled
``append`` wrote nothing); ``close`` with pending waiters is bounded; a writer SIGKILLed while
coroutines wait is replaced; async ``follow`` across rotations, cancelled; uvloop.

The loop's liveness is measured by a ticker coroutine (sleeps of 5 ms, the longest gap kept):
the thresholds are generous (a shared 2-core machine) yet far below what a blocking call
costs here (the writer is stopped for seconds).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

import ringwal
import ringwal.aio
from ringwal import Config, Record, replay
from ringwal.ring import RingView

from .ringhelp import stop_process, wait_until


def cfg_for(d: str, **kw) -> Config:
    kw.setdefault("start_writer", False)
    kw.setdefault("writer_wait", 10)
    return Config(dir=d, **kw)


class Ticker:
    """Measures the loop's longest stall: a coroutine that sleeps 5 ms at a time."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last)
            self.ticks += 1
            last = now

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def aio_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ringwal-aio")]


def wait_no_aio_threads() -> None:
    wait_until(lambda: not aio_threads(), 20, "ringwal.aio threads to end")


async def until(cond, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def fsyncs(d: str) -> int:
    with RingView.attach(d) as view:
        st = view.writer_stats()
        assert st is not None
        return int(st["fsyncs"])


async def _group_commit(d: str, coroutines: int = 200) -> tuple[int, list[int]]:
    async with ringwal.aio.open(cfg_for(d)) as log:
        await log.append(Record(1, 0, b"warm-up"))
        await log.sync()
        before = fsyncs(d)
        gate = asyncio.Event()

        async def one(i: int) -> tuple[int, int]:
            r = await log.append(Record(2, i, b"c%d" % i))
            await gate.wait()  # every coroutine has appended before any syncs
            s = await log.sync()
            return await r.seq(), s

        tasks = [asyncio.ensure_future(one(i)) for i in range(coroutines)]
        await asyncio.sleep(0)
        await until(lambda: all(t.done() or True for t in tasks))
        gate.set()
        results = await asyncio.gather(*tasks)
        # The writer counts an fsync in its stats just after it wakes the waiters.
        await until(lambda: fsyncs(d) > before)
        used = fsyncs(d) - before
    for seq, synced in results:
        assert synced >= seq  # sync covered the coroutine's own record
    return used, sorted(seq for seq, _ in results)


def test_syncs_of_many_coroutines_share_fsyncs(wdir, served):
    served()
    used, seqs = asyncio.run(_group_commit(wdir))
    assert seqs == list(range(2, 202))
    # 200 coroutines waiting in sync at once: one waiter thread posts one want for the
    # highest target, and the fsync that covers it releases all of them.
    assert 1 <= used <= 5, f"{used} fsyncs for 200 concurrent syncs"
    assert [r.data for r in replay(wdir)][1:] == [b"c%d" % i for i in range(200)]
    wait_no_aio_threads()


def test_uvloop_runs_the_same_handle(wdir, served):
    uvloop = pytest.importorskip("uvloop")
    served()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        used, seqs = runner.run(_group_commit(wdir, 100))
    assert seqs == list(range(2, 102))
    assert 1 <= used <= 5
    wait_no_aio_threads()


def test_loop_keeps_running_while_sync_waits_for_a_stopped_writer(wdir, served):
    p = served()

    async def main() -> None:
        async with ringwal.aio.open(cfg_for(wdir)) as log:
            await log.append(Record(1, 1, b"before"))
            await log.sync()
            stop_process(p.pid)
            try:
                await log.append(Record(1, 2, b"while stopped"))
                with Ticker() as ticker:
                    task = asyncio.ensure_future(log.sync())
                    await asyncio.sleep(1.0)
                    assert not task.done()  # the writer is stopped: nothing can be durable
            finally:
                os.kill(p.pid, signal.SIGCONT)
            assert await asyncio.wait_for(task, 30) == 2
        # A blocking sync would have frozen the loop for the whole second.
        assert ticker.ticks >= 20, ticker.ticks
        assert ticker.worst < 0.5, ticker.worst

    asyncio.run(main())
    wait_no_aio_threads()


def test_cancelled_sync_leaves_the_handle_usable(wdir, served):
    p = served()

    async def main() -> None:
        async with ringwal.aio.open(cfg_for(wdir)) as log:
            stop_process(p.pid)
            try:
                await log.append(Record(1, 1, b"one"))
                task = asyncio.ensure_future(log.sync())
                await asyncio.sleep(0.3)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            finally:
                os.kill(p.pid, signal.SIGCONT)
            r = await log.append(Record(1, 2, b"two"))
            assert await asyncio.wait_for(log.sync(), 30) == 2
            assert await r.seq() == 2

    asyncio.run(main())
    assert [r.data for r in replay(wdir)] == [b"one", b"two"]
    wait_no_aio_threads()


def _fill_lane(log: ringwal.aio.AsyncHandle, start: int) -> int:
    """try_append 200-byte records until the lane is full; the number appended."""
    n = 0
    while log.try_append(Record(1, start + n, b"f%06d|" % (start + n) + bytes(192))) is not None:
        n += 1
        assert n < 100_000
    return n


SMALL_RING = ("--ring-size", str(64 * 1024), "--max-record-size", "4096")


def test_append_waits_for_room_without_blocking_and_a_cancelled_one_writes_nothing(wdir, served):
    p = served(*SMALL_RING)

    async def main() -> int:
        async with ringwal.aio.open(cfg_for(wdir, ring_size=64 * 1024, max_record_size=4096)) as log:
            stop_process(p.pid)
            try:
                n = _fill_lane(log, 0)
                assert n > 100
                cancelled = asyncio.ensure_future(log.append(Record(7, 0, bytes(200))))  # as large as the fill
                await asyncio.sleep(0.2)
                assert not cancelled.done()
                cancelled.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await cancelled
                with Ticker() as ticker:
                    waiting = asyncio.ensure_future(log.append(Record(8, 0, bytes(200))))
                    await asyncio.sleep(1.0)
                    assert not waiting.done()
            finally:
                os.kill(p.pid, signal.SIGCONT)
            r = await asyncio.wait_for(waiting, 30)
            await log.sync()
            assert await r.seq() == n + 1
            assert ticker.ticks >= 20 and ticker.worst < 0.5, (ticker.ticks, ticker.worst)
            return n

    n = asyncio.run(main())
    types = [r.type for r in replay(wdir)]
    assert types == [1] * n + [8]  # the cancelled append (type 7) is not in the log
    wait_no_aio_threads()


def test_close_with_pending_waiters_is_bounded(wdir, served):
    p = served(*SMALL_RING)

    async def main() -> None:
        log = await ringwal.aio.open(cfg_for(wdir, ring_size=64 * 1024, max_record_size=4096, sync_timeout=1.0))
        stop_process(p.pid)
        try:
            _fill_lane(log, 0)
            syncs = [asyncio.ensure_future(log.sync()) for _ in range(5)]
            room = asyncio.ensure_future(log.append(Record(9, 0, bytes(200))))
            await asyncio.sleep(0.1)
            t0 = time.monotonic()
            with pytest.raises(ringwal.WaitTimeoutError):
                await log.close()
            took = time.monotonic() - t0
            results = await asyncio.gather(*syncs, room, return_exceptions=True)
        finally:
            os.kill(p.pid, signal.SIGCONT)
        assert took < 15, took  # sync_timeout (1 s) plus the waiter thread's slice, on a busy machine
        assert all(isinstance(r, ringwal.WaitTimeoutError) for r in results[:5]), results
        assert isinstance(results[5], ringwal.ClosedError), results[5]
        assert log.closed
        with pytest.raises(ringwal.ClosedError):
            await log.append(Record(1, 0, b"after close"))
        await log.close()  # idempotent

    asyncio.run(main())
    wait_no_aio_threads()
    # The records left in the ring when close gave up are written by the (resumed) writer.
    wait_until(lambda: sum(1 for _ in replay(wdir)) > 100, 30, "the ring's records to be written")
    assert 9 not in {r.type for r in replay(wdir)}


def test_writer_killed_while_coroutines_wait_is_replaced(wdir):
    cfg = Config(dir=wdir, writer_linger=0.5, writer_wait=20)

    async def main() -> list[int]:
        async with ringwal.aio.open(cfg) as log:
            await log.append(Record(1, 0, b"first"))
            await log.sync()
            with RingView.attach(wdir) as view:
                pid = view.writer_stats()["pid"]  # same PID namespace here
            stop_process(pid)
            for i in range(50):
                await log.append(Record(2, i, b"w%d" % i))
            syncs = [asyncio.ensure_future(log.sync()) for _ in range(20)]
            await asyncio.sleep(0.2)
            os.kill(pid, signal.SIGKILL)  # its records stay in the ring for the next writer
            return await asyncio.wait_for(asyncio.gather(*syncs), 60)

    results = asyncio.run(main())
    assert results == [51] * 20
    assert [r.seq for r in replay(wdir)] == list(range(1, 52))
    wait_no_aio_threads()


def test_async_follow_across_rotations_then_cancelled(wdir, served):
    served("--segment-size", "4096")

    async def main() -> list[int]:
        seen: list[int] = []

        async def consume() -> None:
            async for rec in ringwal.aio.follow(wdir, 0, poll_interval=0.05):
                seen.append(rec.seq)

        consumer = asyncio.ensure_future(consume())
        async with ringwal.aio.open(cfg_for(wdir)) as log:
            for i in range(300):
                await log.append(Record(1, i, b"r%04d|" % i + bytes(40)))
                if i % 50 == 49:
                    await log.sync()
        await until(lambda: len(seen) >= 300, 30, "follow to yield every record")
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        return seen

    seen = asyncio.run(main())
    assert seen == list(range(1, 301))
    assert len([n for n in os.listdir(wdir) if n.endswith(".wal")]) > 3  # it crossed rotations
    wait_no_aio_threads()  # the reader thread ended after the cancel


def test_async_replay_and_receipts_and_batches(wdir, served):
    served()

    async def main() -> None:
        async with ringwal.aio.open(cfg_for(wdir)) as log:
            single = await log.append(Record(1, 10, b"single"))
            batch = await log.append_many(Record(2, 20 + i, b"b%d" % i) for i in range(5000))
            assert len(batch) == 5000
            assert await log.sync() == 5001
            assert await single.seq() == 1
            assert await batch.seqs() == list(range(2, 5002))
            assert await batch.last_seq() == 5001
            got = [r.seq async for r in ringwal.aio.replay(wdir, 4000)]
            assert got == list(range(4001, 5002))
            called: list[int] = []

            async def fn(rec: Record) -> None:
                called.append(rec.seq)

            assert await log.replay_from(4990, fn) == 11
            assert called == list(range(4991, 5002))
            with pytest.raises(ringwal.InvalidRecordError):
                await log.append_many([Record(1, 0, bytes(3 << 20))])

    asyncio.run(main())
    wait_no_aio_threads()


def test_released_waiters_are_answered_a_slice_per_loop_iteration(wdir, served):
    """500 coroutines released by one fsync resume a slice (RESOLVE_SLICE) per loop
    iteration, so other work (a ticker here, I/O in a server) runs between the slices. Counted
    in loop iterations, not time: a coroutine that sleeps(0) in a loop runs once per iteration."""
    p = served()

    async def main() -> int:
        async with ringwal.aio.open(cfg_for(wdir)) as log:
            stop_process(p.pid)
            try:
                for i in range(500):
                    await log.append(Record(1, i, b"s%d" % i))
                done = [0]

                async def waiter() -> None:
                    await log.sync()
                    done[0] += 1

                tasks = [asyncio.ensure_future(waiter()) for _ in range(500)]
                await asyncio.sleep(0.3)  # every waiter is registered; the writer is stopped
                assert done[0] == 0
            finally:
                os.kill(p.pid, signal.SIGCONT)
            worst, last = 0, 0
            deadline = time.monotonic() + 60
            while done[0] < 500:
                assert time.monotonic() < deadline, done[0]
                await asyncio.sleep(0)  # one step per loop iteration
                worst = max(worst, done[0] - last)
                last = done[0]
            await asyncio.gather(*tasks)
            return worst

    worst = asyncio.run(main())
    assert worst <= 2 * ringwal.aio.RESOLVE_SLICE, worst
    wait_no_aio_threads()


def test_records_lost_to_a_failed_fsync_are_never_reported_durable(wdir, tmp_path):
    """A writer under libfiu whose fdatasync fails: the coroutines' sync raises
    LogFailedError naming the lost seqs (never a seq), and the handle refuses more work, as
    the sync handle does (tests/test_fsync_fail.py)."""
    from .test_fsync_fail import FIU, serve_under_fiu

    if not FIU:
        pytest.skip("needs Debian's fiu-utils (fiu-run, fiu-ctrl); scripts/test installs it when it can")
    w = serve_under_fiu(wdir, str(tmp_path / "fiu"), "posix/io/sync/fdatasync")

    async def main() -> list[object]:
        log = await ringwal.aio.open(cfg_for(wdir))
        try:
            for i in range(5):
                await log.append(Record(1, i, b"lost%d" % i))
            await log.flush()  # written to the OS: seqs 1-5
            results = await asyncio.gather(*(log.sync() for _ in range(10)), return_exceptions=True)
            with pytest.raises(ringwal.LogFailedError):
                await log.append(Record(1, 9, b"refused"))
            with pytest.raises(ringwal.LogFailedError):
                await log.sync()
        finally:
            await log.close()
        return results

    try:
        results = asyncio.run(main())
    finally:
        w.kill()
        w.wait(30)
    assert all(isinstance(r, ringwal.LogFailedError) for r in results), results
    assert (results[0].first_seq, results[0].last_seq) == (1, 5)
    wait_no_aio_threads()
