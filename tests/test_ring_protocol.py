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

from ringwal import WAL, BinarySerializer, Config, LanePoisonedError, Record
from ringwal.format import L_DURABLE_COUNT, L_HEAD, L_PENDING_TAIL, L_POISON, L_TAIL, L_WRITTEN_COUNT
from ringwal.ring import ProducerSide, Ring, WriterSide, ring_names

SER = BinarySerializer()
RING_SIZE = 64 * 1024
MAX_RECORD = RING_SIZE - 4  # the largest Config allows: the writer checks every length against it


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
    d = str(tmp_path / "wal")
    WAL(Config(dir=d)).close()  # a log (its id names the ring); the tests' Disk stands for its frames
    yield d
    name, sem = ring_names(d)
    for unlink in (lambda: posix_ipc.unlink_shared_memory(name), lambda: posix_ipc.unlink_semaphore(sem)):
        try:
            unlink()
        except posix_ipc.ExistentialError:
            pass


def open_writer(d: str, disk: Disk, at=never, slots: int = 4) -> WriterSide:
    side = WriterSide.open(d, slots, RING_SIZE, MAX_RECORD, SER.name, at)
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


@pytest.mark.parametrize("packed", [False, True])
def test_a_lane_whose_positions_and_counts_wrap_past_2_32_keeps_every_record_and_receipt(rdir, packed):
    """pos32 and count32 wrap every 4 GiB and 4G records; start a lane just short of both
    (as a long-lived ring's lane would be) and publish across them: the head word's halves
    wrap on their own (no carry from one into the other), nothing is lost or doubled, and
    receipts name the seqs."""
    disk = Disk()
    w = open_writer(rdir, disk)
    w.close()  # the ring stays; set lane 0 up as if 2**32 - 300 records, 2**32 - 5000 bytes went through
    count32, pos32 = (1 << 32) - 300, (1 << 32) - 5000
    ring = Ring.attach(rdir)
    c = ring.lane_ctl(0)
    c[L_HEAD] = c[L_TAIL] = c[L_PENDING_TAIL] = count32 << 32 | pos32
    c[L_WRITTEN_COUNT] = c[L_DURABLE_COUNT] = count32
    ring.close()
    w = open_writer(rdir, disk)
    a = producer(rdir)
    assert a.lane == 0 and a.count == count32
    pack_into, hlen = SER.packed_head() or (None, 0)
    assert pack_into is not None
    counts = []
    ctl = a.ring.lane_ctl(0)
    for i in range(900):
        # The first record ends exactly at pos32 == 2**32 (and the lane's end); then odd sizes.
        data = b"a:%d|" % i + bytes(5000 - hlen - 4 if i == 0 else i % 53)
        if packed and i % 3 != 1:
            got = a.publish_packed(pack_into, hlen, hlen + len(data), 1, i, data)
        else:
            got = a.publish(SER.frame(Record(1, i, data)), 1)
        assert got == (counts[-1] if counts else count32) + 1
        counts.append(got)
        head = ctl[L_HEAD]
        assert head >> 32 == got & 0xFFFFFFFF
        if i % 40 == 39:
            drain_all(w, disk, budget=700)
    drain_all(w, disk)
    assert counts[-1] > 1 << 32 and head & 0xFFFFFFFF < 60_000  # both halves wrapped
    check(disk, {"a": 900})
    where = seq_map(disk)
    for i in (0, 299, 300, 301, 899):
        assert a.wait_progress(False, counts[i], time.monotonic() + 5, no_writer_change) is not None
        assert a.seq_of(counts[i]) == where[b"a:%d" % i]
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
    w.mark_durable(disk.last_seq)
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



# ---------------------------------------------------------------- spans cut to fit a frame

BUDGET = 600


def frame_sizes(disk: Disk) -> list[int]:
    return [sum(len(SER.frame(r)) for r in recs) for _, recs in disk.frames]


def contiguous(disk: Disk, tag: bytes) -> list[int]:
    """The seqs of ``tag``'s records, checked to be one unbroken run."""
    seqs = [seq for key, seq in seq_map(disk).items() if key.startswith(tag + b":")]
    assert seqs == list(range(min(seqs), min(seqs) + len(seqs))), f"{tag!r}'s publication was split: {seqs}"
    return seqs


def test_a_span_cut_to_fit_the_budget_is_finished_before_any_other_lane(rdir):
    """A publication larger than a frame is cut at record boundaries into several frames;
    the rest of it opens the next drains, so no other lane's record lands inside it."""
    disk = Disk()
    w = open_writer(rdir, disk)
    b, a = producer(rdir), producer(rdir)  # b on lane 0: plain round robin would start with b
    batch = [rec("a", i) for i in range(60)]
    assert a.publish(b"".join(batch), len(batch)) == 60  # one head store
    assert w.drain(disk.last_seq + 1, BUDGET, disk.write) > 0  # cuts a's span
    for i in range(5):
        b.publish(rec("b", i), 1)
    drain_all(w, disk, budget=BUDGET)
    check(disk, {"a": 60, "b": 5})
    assert contiguous(disk, b"a") == list(range(1, 61))
    assert len(disk.frames) > 3 and max(frame_sizes(disk)) <= BUDGET
    for i in range(60):
        assert a.seq_of(a.base + i + 1) == i + 1
    a.release(), b.release()
    w.close()


@pytest.mark.parametrize(
    "point, nth",
    [("pending", 1), ("written", 1), ("lane_finished", 1), ("resume_set", 1), ("pending", 2), ("written", 2), ("resume_set", 2)],
)
def test_a_writer_dying_between_the_frames_of_a_cut_span_resumes_that_lane_first(rdir, point, nth):
    """The fact "lane a's rest comes next" lives in the ring (resume words, stored as the cut
    drain finishes): a new writer, whose round robin would start at lane b, still starts with a."""
    disk = Disk()
    w = open_writer(rdir, disk, crash_at(point, nth))
    b, a = producer(rdir), producer(rdir)
    batch = [rec("a", i) for i in range(60)]
    a.publish(b"".join(batch), len(batch))
    try:
        w.drain(disk.last_seq + 1, BUDGET, disk.write)
        for i in range(5):
            b.publish(rec("b", i), 1)
        drain_all(w, disk, budget=BUDGET)
    except Crash:
        pass
    else:
        pytest.fail(f"never reached {point} #{nth}")
    w.close()
    w2 = open_writer(rdir, disk)
    for i in range(b.count - b.base, 5):
        b.publish(rec("b", i), 1)
    drain_all(w2, disk, budget=BUDGET)
    check(disk, {"a": 60, "b": 5})
    contiguous(disk, b"a")
    assert max(frame_sizes(disk)) <= BUDGET
    where = seq_map(disk)
    for i in range(60):
        assert a.seq_of(a.base + i + 1) == where[b"a:%d" % i]
    a.release(), b.release()
    w2.close()


def test_a_record_larger_than_the_budget_is_a_frame_of_its_own(rdir):
    disk = Disk()
    w = open_writer(rdir, disk)
    a = producer(rdir)
    a.publish(rec("a", 0, size=2000) + rec("a", 1), 2)
    drain_all(w, disk, budget=BUDGET)
    check(disk, {"a": 2})
    assert [len(recs) for _, recs in disk.frames] == [1, 1]
    a.release()
    w.close()


# ---------------------------------------------------------------- spans that are not records


def garbage(side: ProducerSide, how: str) -> None:
    """Publish something that is not records into ``side``'s lane, as a buggy process might."""
    if how == "lengths":  # 0xabababab is no length
        assert side.publish(b"\xab" * 64, 3) > 0
    elif how == "count":  # two good records, the head claims three
        assert side.publish(rec("c", 900) + rec("c", 901), 3) > 0
    elif how == "zero":  # a record length of 0
        assert side.publish(rec("c", 900) + bytes(8), 2) > 0
    else:  # a head word claiming more bytes than the lane holds
        head = side._ctl[L_HEAD]
        side._ctl[L_HEAD] = (((head >> 32) + 1) & 0xFFFFFFFF) << 32 | ((head + RING_SIZE + 8) & 0xFFFFFFFF)


@pytest.mark.parametrize("how, kept", [("lengths", 0), ("count", 0), ("zero", 1), ("head", 0)])
def test_a_span_that_is_not_records_is_dropped_and_its_producer_poisoned(rdir, how, kept):
    """Nothing that is not whole records reaches a frame. A span whose failure is at a record
    keeps the whole records before it (``zero``: one good record, then a length of 0); one
    whose lengths tile it into the wrong count is dropped whole."""
    disk = Disk()
    w = open_writer(rdir, disk)
    a, c = producer(rdir), producer(rdir)
    for i in range(10):
        a.publish(rec("a", i), 1)
        c.publish(rec("c", i), 1)
    drain_all(w, disk)
    good = c.count
    garbage(c, how)
    for i in range(10, 20):
        a.publish(rec("a", i), 1)
    drain_all(w, disk)
    per = check(disk, {"a": 20})
    assert per["c"] == list(range(10)) + [900] * kept  # nothing of the garbage reached a frame
    assert len(w.dropped) == 1
    lane, pid, message = w.dropped[0]
    assert (lane, pid) == (c.lane, os.getpid()) and f"ring lane {c.lane}" in message
    with pytest.raises(LanePoisonedError) as e:
        c.publish(rec("c", 10), 1)
    assert e.value.lane == c.lane and e.value.first_dropped == good - c.base + kept + 1
    with pytest.raises(LanePoisonedError):
        c.wait_progress(False, good + kept + 1, time.monotonic() + 5, no_writer_change)
    # the records before the dropped ones keep their seqs
    where = seq_map(disk)
    assert c.seq_of(good) == where[b"c:9"]
    if kept:
        assert c.seq_of(good + 1) == where[b"c:900"]
    assert c.wait_emptied(time.monotonic() + 5)
    a.release(), c.release()
    w.close()


@pytest.mark.parametrize("point", ["resume_set", "poisoned"])
def test_good_records_before_bad_ones_in_one_span_are_written_and_only_the_rest_dropped(rdir, point):
    """Honest records and then garbage, published before the writer looked: the honest ones
    are framed, the rest dropped after the frame, also across a writer dying in between."""
    disk = Disk()
    w = open_writer(rdir, disk, crash_at(point))
    a, c = producer(rdir), producer(rdir)
    for i in range(30):
        c.publish(rec("c", i), 1)
    c.publish(b"\xab" * 64, 3)
    a.publish(rec("a", 0), 1)
    with pytest.raises(Crash):
        drain_all(w, disk)
    w.close()
    w2 = open_writer(rdir, disk)
    a.publish(rec("a", 1), 1)
    drain_all(w2, disk)
    check(disk, {"a": 2, "c": 30})
    with pytest.raises(LanePoisonedError) as e:
        c.publish(rec("c", 30), 1)
    assert e.value.first_dropped == 31
    assert c.seq_of(c.base + 30) == seq_map(disk)[b"c:29"]
    assert c.wait_emptied(time.monotonic() + 5)
    a.release(), c.release()
    w2.close()


def test_a_poisoned_producers_later_publications_are_dropped_too(rdir):
    disk = Disk()
    w = open_writer(rdir, disk)
    a, c = producer(rdir), producer(rdir)
    garbage(c, "lengths")
    drain_all(w, disk)
    c._ctl[L_POISON] = 0  # pretend c published before it could see the poison...
    c.publish(rec("c", 0), 1)
    c._ctl[L_POISON] = c._token  # ... which the writer had stored
    a.publish(rec("a", 0), 1)
    drain_all(w, disk)
    check(disk, {"a": 1})
    assert "c" not in {r.data.split(b":")[0].decode() for r in disk.records()}
    assert c.wait_emptied(time.monotonic() + 5)
    a.release(), c.release()
    w.close()


def test_a_writer_dying_while_dropping_a_span_drops_it_again(rdir):
    """Poison words stored, tail not yet advanced: the next writer drops the span as a
    poisoned owner's, and nothing of it is ever framed."""
    disk = Disk()
    w = open_writer(rdir, disk, crash_at("poisoned"))
    a, c = producer(rdir), producer(rdir)
    a.publish(rec("a", 0), 1)
    garbage(c, "lengths")
    with pytest.raises(Crash):
        drain_all(w, disk)
    w.close()
    w2 = open_writer(rdir, disk)
    a.publish(rec("a", 1), 1)
    drain_all(w2, disk)
    check(disk, {"a": 2})
    with pytest.raises(LanePoisonedError):
        c.publish(rec("c", 0), 1)
    assert c.wait_emptied(time.monotonic() + 5)
    a.release(), c.release()
    w2.close()


def test_the_rest_of_a_cut_span_that_turns_out_not_records_is_dropped_and_others_go_on(rdir):
    disk = Disk()
    w = open_writer(rdir, disk)
    b, a = producer(rdir), producer(rdir)
    batch = [rec("a", i) for i in range(60)]
    a.publish(b"".join(batch), len(batch))
    w.drain(disk.last_seq + 1, BUDGET, disk.write)  # cut: the rest waits in the lane
    written = len(disk.records())
    tail = a._ctl[L_TAIL] & (RING_SIZE - 1)
    a.ring.lane_data(a.lane)[tail : tail + 4] = b"\xff\xff\xff\x7f"  # something scribbles over the rest
    for i in range(5):
        b.publish(rec("b", i), 1)
    drain_all(w, disk, budget=BUDGET)
    per = check(disk, {"b": 5})
    assert per["a"] == list(range(written))
    with pytest.raises(LanePoisonedError):
        a.publish(rec("a", 60), 1)
    a.release(), b.release()
    w.close()


def fixed(tag: str, i: int) -> bytes:
    """A record whose length does not depend on ``i`` (the writer's same-length fast path)."""
    return SER.frame(Record(1, i, f"{tag}:{i:05d}|".encode() + bytes(20)))


@pytest.mark.parametrize("claimed", [19, 21, 10, 40])
def test_same_length_records_in_every_lane_with_one_count_wrong_are_still_caught(rdir, claimed):
    disk = Disk()
    w = open_writer(rdir, disk)
    a, c, b = producer(rdir), producer(rdir), producer(rdir)
    a.publish(b"".join(fixed("a", i) for i in range(20)), 20)
    c.publish(b"".join(fixed("c", i) for i in range(20)), claimed)
    b.publish(b"".join(fixed("b", i) for i in range(20)), 20)
    drain_all(w, disk)
    check(disk, {"a": 20, "b": 20})
    assert [lane for lane, _pid, _msg in w.dropped] == [c.lane]
    a.release(), b.release(), c.release()
    w.close()


@pytest.mark.parametrize("budget", [BUDGET, 1 << 20])  # checked while cut to fit, or whole
def test_a_bad_length_inside_a_span_keeps_the_records_before_it(rdir, budget):
    disk = Disk()
    w = open_writer(rdir, disk)
    a = producer(rdir)
    batch = [rec("a", i) for i in range(60)]
    batch[5] = b"\xf0\xff\xff\xff" + batch[5][4:]  # record 5 claims 4 GiB
    a.publish(b"".join(batch), 60)
    drain_all(w, disk, budget=budget)
    check(disk, {"a": 5})
    [(lane, _pid, message)] = w.dropped
    assert "dropped 55 records" in message and "the 5 records before them were written" in message
    with pytest.raises(LanePoisonedError) as e:
        a.publish(rec("a", 60), 1)
    assert e.value.first_dropped == 6
    a.release()
    w.close()


def test_one_writer_pass_writes_all_that_was_published_when_the_frame_budget_cuts_it(rdir):
    from ringwal import Config, replay
    from ringwal.writer import Writer

    cfg = Config(dir=rdir, write_buffer_size=4096, ring_size=RING_SIZE, max_record_size=1024, producer_slots=2)
    w = Writer(cfg)
    a = producer(rdir)
    try:
        for i in range(100):
            assert a.publish(rec("a", i, size=200), 1) > 0  # 100 x 230 bytes: six frames of at most 4 KiB
        assert w.step()
        assert w.wal.last_seq == 100  # one pass, every frame: the writer does not sleep on published records
        assert not w.side.has_records()
    finally:
        a.release()
        w.stop()
        w.shutdown()
    assert [r.seq for r in replay(rdir, 0)] == list(range(1, 101))
