"""What the writer does with the spans producers publish, with real processes and files.

* ``append_many`` is one publication: one contiguous range of seqs, all or nothing when its
  producer is killed, refused whole (naming ``ring_size``) when it cannot fit a lane;
* segments stay within ``segment_size``: frames are cut to the room left, never one lane's
  whole backlog;
* a span that is not records (a producer scribbling over its lane) is dropped: its producer
  gets LanePoisonedError, the writer logs it and serves everyone else, the log replays.
"""

from __future__ import annotations

import os
import signal

import pytest

from ringwal import verify
from ringwal.format import FRAME_HEADER_SIZE
from ringwal.segment import SegmentScan, list_segments

from .ringhelp import PRODUCER, check_log, collect, read_line, spawn, start_serve

RING_SIZE = 65536

#: A producer whose ``append_many`` of BATCH records (about 51 KiB, more than half a lane of
#: 64 KiB: it used to go out in two publications) is watched at its first publication.
#: after=wait: wait until it is written, then another handle appends one record and syncs;
#: after=kill: SIGKILL this process right after it. too_large: a batch beyond ring_size.
BATCH = """
import os, signal, sys, time, ringwal
d, mode = sys.argv[1], sys.argv[2]
cfg = ringwal.Config(dir=d, start_writer=False, sync_timeout=20)
h = ringwal.open(cfg)
other = ringwal.open(cfg)
side = h._side
real = side.publish
calls = []

def publish(blob, count):
    c = real(blob, count)
    calls.append(count)
    if len(calls) == 1 and c > 0:
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        side.wait_progress(False, c, time.monotonic() + 20, lambda: False)
        other.append(ringwal.Record(1, 0, b"other:0|"))
        other.sync()
    return c

side.publish = publish
n = 70 if mode == "too_large" else 50
batch = [ringwal.Record(1, i, b"batch:%d|" % i + bytes(1000)) for i in range(n)]
print("ready", flush=True)
try:
    r = h.append_many(batch)
except ringwal.InvalidRecordError as exc:
    print("refused", exc, flush=True)
    h.append(ringwal.Record(1, 0, b"after:0|"))
else:
    h.sync()
    print("seqs", *r.seqs, flush=True)
print("publications", *calls, flush=True)
h.close()
other.close()
"""


def batch_seqs(directory: str) -> tuple[list[int], dict[str, list[int]]]:
    from ringwal import replay

    seqs: dict[str, list[int]] = {}
    for r in replay(directory, 0):
        seqs.setdefault(r.data.split(b":")[0].decode(), []).append(r.seq)
    return seqs.get("batch", []), seqs


def honest(directory: str, n: int = 2, records: str = "3000", every: str = "100") -> list:
    return [spawn(PRODUCER, directory, f"h{i}", records, every, "0") for i in range(n)]


def test_append_many_is_one_publication_no_other_record_lands_inside_it(wdir):
    w = start_serve(wdir, "--ring-size", str(RING_SIZE), "--max-record-size", "4096")
    try:
        others = honest(wdir)
        p = spawn(BATCH, wdir, "wait")
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, out + err
        for q in others:
            top, lines = collect(q)
            assert q.returncode == 0, lines
    finally:
        w.terminate()
        assert w.wait(20) == 0
    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert lines["publications"] == "50", "one publication for the whole batch"
    got, per_tag = batch_seqs(wdir)
    assert got == list(range(got[0], got[0] + 50)), f"the batch's seqs are not one run: {got}"
    assert [int(s) for s in lines["seqs"].split()] == got  # the receipt says the same
    assert not set(per_tag["other"]) & set(range(got[0], got[-1] + 1))
    check_log(wdir, {}, {"h0": 3000, "h1": 3000})


def test_a_producer_killed_right_after_publishing_a_batch_leaves_all_of_it(wdir):
    w = start_serve(wdir, "--ring-size", str(RING_SIZE), "--max-record-size", "4096")
    try:
        others = honest(wdir)
        p = spawn(BATCH, wdir, "kill")
        assert read_line(p) == "ready"
        p.wait(60)
        assert p.returncode == -signal.SIGKILL
        for q in others:
            top, lines = collect(q)
            assert q.returncode == 0, lines
    finally:
        w.terminate()
        assert w.wait(20) == 0  # drains what the dead producer published
    got, _ = batch_seqs(wdir)
    assert len(got) == 50, f"{len(got)} of the batch's 50 records are in the log"
    assert got == list(range(got[0], got[0] + 50))
    check_log(wdir, {}, {"h0": 3000, "h1": 3000})


def test_a_batch_larger_than_a_lane_is_refused_before_anything_is_written(wdir):
    w = start_serve(wdir, "--ring-size", str(RING_SIZE), "--max-record-size", "4096")
    try:
        p = spawn(BATCH, wdir, "too_large")
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, out + err
    finally:
        w.terminate()
        assert w.wait(20) == 0
    refused = [line for line in out.splitlines() if line.startswith("refused")]
    assert refused, out
    assert f"ring_size={RING_SIZE}" in refused[0] and "70 records" in refused[0], refused[0]
    got, per_tag = batch_seqs(wdir)
    assert got == [] and len(per_tag["after"]) == 1  # nothing of it; the handle carries on


@pytest.mark.parametrize("segment_size, buffer_size", [(65536, 16384), (16384, 1 << 20)])
def test_segments_stay_within_segment_size_with_many_small_records(wdir, segment_size, buffer_size):
    """Many producers, many small records, no syncs: lanes fill far beyond a segment while
    the writer rotates. Each frame is cut to the room left in current.wal (or in a new one,
    when the frame starts it), so no completed segment passes segment_size (the bound asked
    for: segment_size plus one frame of at most write_buffer_size), none is left much
    emptier, and no frame exceeds write_buffer_size. The second case has a write buffer
    (the default 1 MiB) larger than a segment: a frame that starts a segment must still fit it."""
    w = start_serve(wdir, "--segment-size", str(segment_size), "--write-buffer-size", str(buffer_size))
    try:
        ps = [spawn(PRODUCER, wdir, f"p{i}", "15000", "15000", "0") for i in range(4)]
        for p in ps:
            top, lines = collect(p, timeout=180)
            assert p.returncode == 0, lines
    finally:
        w.terminate()
        assert w.wait(30) == 0
    sizes, bodies = [], []
    for _, name in list_segments(wdir):
        path = os.path.join(wdir, name)
        with SegmentScan.open(path, sealed=True) as scan:
            bodies += [length for _off, _first, _count, length in scan.frames()]
            sizes.append(scan.size)
    print(f"{len(sizes)} segments of {min(sizes)}..{max(sizes)} bytes, frames up to {max(bodies)} bytes")
    assert len(sizes) > 10
    bound = segment_size + FRAME_HEADER_SIZE + buffer_size + 7
    assert max(sizes) <= bound, f"largest segment {max(sizes)} bytes; bound {bound}"
    assert max(sizes) <= segment_size, f"largest segment {max(sizes)} bytes"
    assert min(sizes) >= segment_size - 2048, f"smallest completed segment {min(sizes)} bytes"
    assert max(bodies) <= buffer_size, f"largest frame body {max(bodies)} bytes"
    check_log(wdir, {}, {f"p{i}": 15000 for i in range(4)})


#: A producer that appends and syncs honest records, then publishes something that is not
#: records (``how``), waits until the writer has taken it, and reports what its handle says.
SCRIBBLER = """
import os, sys, time, ringwal
from ringwal.format import L_HEAD, L_TAIL
from ringwal.ring import Ring
d, how = sys.argv[1], sys.argv[2]
h = ringwal.open(ringwal.Config(dir=d, start_writer=False, sync_timeout=20))
for i in range(50):
    h.append(ringwal.Record(1, i, b"bad:%d|" % i + bytes(40)))
h.sync()
side = h._side
lane = h.lane
print("lane", lane, os.getpid(), flush=True)
if how == "lengths":  # bytes whose first length is 0xabababab, with a head claiming 3 records
    side.publish(b"\\xab" * 200, 3)
else:  # a head word claiming more bytes than a lane holds
    head = side._ctl[L_HEAD]
    side._ctl[L_HEAD] = (((head >> 32) + 1) & 0xFFFFFFFF) << 32 | ((head + (1 << 22)) & 0xFFFFFFFF)
garbage = side._ctl[L_HEAD]
side.post()
deadline = time.monotonic() + 30
while side._ctl[L_TAIL] != garbage:  # the writer has taken the garbage (dropped it, or framed it)
    assert time.monotonic() < deadline, "the writer never took the span"
    time.sleep(0.005)
poisoned = getattr(ringwal, "LanePoisonedError", ())
for call in (lambda: h.append(ringwal.Record(1, 50, b"bad:50|")), h.sync, h.flush):
    try:
        call()
        print("no error", flush=True)
    except poisoned as exc:
        print("poisoned", exc.lane, exc.first_dropped, flush=True)
ring = Ring.attach(d)
print("owner", ring.owner(lane)[0], flush=True)  # given back: not us any more
ring.close()
h.close()
print("done", flush=True)
"""


@pytest.mark.parametrize("how", ["lengths", "head"])
def test_garbage_in_a_lane_is_dropped_and_everyone_else_carries_on(wdir, how):
    w = start_serve(wdir)
    try:
        others = honest(wdir, 3)
        p = spawn(SCRIBBLER, wdir, how)
        _, lane, pid = read_line(p).split()
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, out + err
        for q in others:
            top, lines = collect(q, timeout=120)
            assert q.returncode == 0, lines
        assert w.poll() is None, "the writer must keep serving"
    finally:
        w.terminate()
        assert w.wait(20) == 0
        writer_err = w.stderr.read()
    lines = out.splitlines()
    assert lines[:3] == [f"poisoned {lane} 51"] * 3, lines
    assert lines[3] != f"owner {pid}" and lines[-1] == "done", lines
    errors = [line for line in writer_err.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"ring lane {lane} by pid {pid}" in errors[0], writer_err
    per = check_log(wdir, {}, {"h0": 3000, "h1": 3000, "h2": 3000, "bad": 50})
    assert per["bad"] == list(range(50))
    report = verify(wdir)
    assert report.ok, report.problems
    assert report.records == 3 * 3000 + 50


def test_the_lane_of_a_poisoned_producer_serves_the_next_producer(wdir):
    """The poison names the owner (its token), not the lane: with a single lane, the next
    producer claims the very lane that was poisoned and appends as usual."""
    w = start_serve(wdir, "--producer-slots", "1")
    try:
        p = spawn(SCRIBBLER, wdir, "lengths")
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, out + err
        assert "poisoned 0 51" in out.splitlines(), out
        q = spawn(PRODUCER, wdir, "next", "100", "10", "0")
        top, lines = collect(q)
        assert q.returncode == 0 and lines[0] == "attached 0" and top == 99, lines
    finally:
        w.terminate()
        assert w.wait(20) == 0
    check_log(wdir, {}, {"next": 100, "bad": 50})
