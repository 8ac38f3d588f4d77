"""The ring's protocol in one process: a writer side and two producer sides over one mapping.

Each crash window of a drain (``ring.py``: pending, written, lane_finished) is stepped by
abandoning the writer side exactly there and letting a new one recover from what the "disk"
(a list of frames) holds: every record ends up in the log exactly once, in each producer's
order, and receipts name the seqs the records really got. The multi-process crash tests
(``test_ring_crash.py``) kill real processes at the same points.
"""

from __future__ import annotations

import os
import threading
import time

import posix_ipc
import pytest

from ringwal import BinarySerializer, Record
from ringwal.ring import ProducerSide, Ring, WriterSide, ring_names, unlink_names

SER = BinarySerializer()
RING_SIZE = 64 * 1024


class Crash(Exception):
    """Stands for the writer process dying at a named point."""


class Disk:
    """What the log would hold: frames of (first seq, records)."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, list[Record]]] = []

    @property
    def last_seq(self) -> int:
        if not self.frames:
            return 0
        first, recs = self.frames[-1]
        return first + len(recs) - 1

    def write(self, body: bytes, count: int) -> int:
        first = self.last_seq + 1
        self.frames.append((first, list(SER.decode_batch(bytes(body), count, first))))
        return first

    def records(self) -> list[Record]:
        return [r for _, recs in self.frames for r in recs]


def never(name: str) -> None:
    pass


def crash_at(point: str, nth: int = 1):
    seen = {"n": 0}

    def at(name: str) -> None:
        if name == point:
            seen["n"] += 1
            if seen["n"] == nth:
                raise Crash(point)

    return at


def no_writer_change() -> bool:
    return False


@pytest.fixture
def rdir(tmp_path):
    d = str(tmp_path)
    unlink_names(d)  # a ring leaked by a deleted directory with the same recycled inode
    yield d
    name, sem = ring_names(d)
    for unlink in (lambda: posix_ipc.unlink_shared_memory(name), lambda: posix_ipc.unlink_semaphore(sem)):
        try:
            unlink()
        except posix_ipc.ExistentialError:
            pass


def open_writer(d: str, disk: Disk, at=never, slots: int = 4) -> WriterSide:
    side = WriterSide.open(d, slots, RING_SIZE, 4096, SER.name, at)
    side.recover(disk.last_seq, 1)
    side.publish_ready()
    return side


def producer(d: str) -> ProducerSide:
    side = ProducerSide.claim(Ring.attach(d), 0)
    assert side is not None
    return side


def rec(tag: str, i: int, size: int = 20) -> bytes:
    return SER.frame(Record(1, i, f"{tag}:{i}|".encode() + bytes(size)))


def drain_all(w: WriterSide, disk: Disk, budget: int = 1 << 20) -> int:
    n = 0
    while True:
        got = w.drain(disk.last_seq + 1, budget, disk.write)
        if not got:
            return n
        n += got


def check(disk: Disk, expected: dict[str, int]) -> dict[str, list[int]]:
    seqs = []
    per: dict[str, list[int]] = {}
    for first, recs in disk.frames:
        for i, r in enumerate(recs):
            seqs.append(first + i)
            tag, _, rest = r.data.partition(b":")
            per.setdefault(tag.decode(), []).append(int(rest.split(b"|")[0]))
    assert seqs == list(range(1, len(seqs) + 1)), "seqs must be gap-free"
    for tag, n in expected.items():
        assert per.get(tag) == list(range(n)), f"{tag}: each record once, in order"
    return per


def seq_map(disk: Disk) -> dict[bytes, int]:
    return {r.data.split(b"|")[0]: first + i for first, recs in disk.frames for i, r in enumerate(recs)}


def test_two_producers_interleave_into_one_gap_free_order_and_receipts_name_the_seqs(rdir):
    disk = Disk()
    w = open_writer(rdir, disk)
    a, b = producer(rdir), producer(rdir)
    assert a.lane != b.lane
    counts = {}
    for i in range(300):
        counts[(b"a", i)] = a.publish(rec("a", i), 1)
        counts[(b"b", i)] = b.publish(rec("b", i), 1)
        if i % 37 == 0:
            drain_all(w, disk, budget=512)  # small frames: many drains, lanes interleave
    drain_all(w, disk)
    check(disk, {"a": 300, "b": 300})
    where = seq_map(disk)
    for (tag, i), count in counts.items():
        side = a if tag == b"a" else b
        assert side.wait_progress(False, count, time.monotonic() + 5, no_writer_change) is not None
        assert side.seq_of(count) == where[tag + b":%d" % i]
    a.release(), b.release()
    w.close()


@pytest.mark.parametrize("point, nth", [("pending", 1), ("pending", 3), ("written", 1), ("written", 2), ("lane_finished", 1), ("lane_finished", 2)])
def test_writer_dying_at_each_drain_step_loses_and_doubles_nothing(rdir, point, nth):
    disk = Disk()
    w = open_writer(rdir, disk, crash_at(point, nth))
    a, b = producer(rdir), producer(rdir)
    for i in range(50):
        a.publish(rec("a", i), 1)
        b.publish(rec("b", i), 1)
        if i % 10 == 9:
            try:
                drain_all(w, disk, budget=256)
            except Crash:
                break
    else:
        pytest.fail(f"never reached {point} #{nth}")
    w.close()  # the dead writer's mapping goes; its words stay as it left them
    w2 = open_writer(rdir, disk)  # recovers against what the disk holds
    for i in range(i + 1, 50):
        a.publish(rec("a", i), 1)
        b.publish(rec("b", i), 1)
    drain_all(w2, disk)
    check(disk, {"a": 50, "b": 50})
    where = seq_map(disk)
    for side, tag in ((a, b"a"), (b, b"b")):
        for i in range(50):
            assert side.seq_of(side.base + i + 1) == where[tag + b":%d" % i]
    a.release(), b.release()
    w2.close()


def test_a_pending_frame_cut_away_by_recovery_is_written_again(rdir):
    """The frame reached the disk but recovery cut it (a torn tail): the drain is redone."""
    disk = Disk()
    w = open_writer(rdir, disk, crash_at("written"))
    a = producer(rdir)
    for i in range(5):
        a.publish(rec("a", i), 1)
    with pytest.raises(Crash):
        drain_all(w, disk)
    w.close()
    disk.frames.pop()  # torn: the next writer's recovery truncated it
    w2 = open_writer(rdir, disk)
    drain_all(w2, disk)
    check(disk, {"a": 5})
    a.release()
    w2.close()


def test_records_straddling_the_end_of_a_lane_arrive_whole(rdir):
    disk = Disk()
    w = open_writer(rdir, disk)
    a = producer(rdir)
    n = total = 0
    for _ in range(6):  # six lane-fulls, with odd record sizes so copies split at the wrap
        while True:
            blob = rec("a", n, size=n % 97)
            if a.publish(blob, 1) < 0:
                break
            n += 1
            total += len(blob)
        drain_all(w, disk, budget=5000)
    check(disk, {"a": n})
    assert total > 5 * RING_SIZE
    a.release()
    w.close()


def test_a_full_lane_refuses_and_accepts_again_after_a_drain(rdir):
    disk = Disk()
    w = open_writer(rdir, disk)
    a = producer(rdir)
    big = rec("a", 0, size=RING_SIZE // 4 - 40)
    got = [a.publish(big, 1) for _ in range(5)]
    assert got[:4] == [1, 2, 3, 4] and got[4] == -1  # nothing written on refusal
    assert not a.wait_room(len(big), time.monotonic() + 0.05, no_writer_change)
    drain_all(w, disk)
    assert a.wait_room(len(big), time.monotonic() + 5, no_writer_change)
    assert a.publish(big, 1) == 5
    a.release()
    w.close()


def test_a_sync_waiter_is_woken_by_the_durable_notify(rdir):
    disk = Disk()
    w = open_writer(rdir, disk)
    a = producer(rdir)
    c = a.publish(rec("a", 0), 1)
    result: list[int | None] = []
    t = threading.Thread(target=lambda: result.append(a.wait_progress(True, c, time.monotonic() + 30, no_writer_change)))
    t.start()
    deadline = time.monotonic() + 30
    while not w.sync_wanted():  # the waiter's want becomes visible to the writer
        assert time.monotonic() < deadline and t.is_alive()
        os.sched_yield()
    drain_all(w, disk)
    w.notify(durable=False)
    w.mark_durable(disk.last_seq, 1000)
    w.notify(durable=True)
    t.join(30)
    assert result == [1]
    assert w.sync_wanted() == 0
    a.release()
    w.close()


def test_shutdown_reclaims_dead_owners_and_unlinks_only_an_unused_ring(rdir):
    disk = Disk()
    w = open_writer(rdir, disk)
    a = producer(rdir)
    assert not w.shutdown()  # a live owner: the ring stays for the next writer
    assert os.path.exists("/dev/shm" + ring_names(rdir)[0])
    w.close()
    w2 = open_writer(rdir, disk)
    a.release()
    assert w2.shutdown()
    w2.close()
    assert not os.path.exists("/dev/shm" + ring_names(rdir)[0])

