"""Replay holds one segment's bytes at a time: no copy of a frame's body, no read buffer
beyond the file (issue 13 item 6). Measured with tracemalloc, which sees every bytes object
replay reads or makes; speed is for bench/bench_log.py, never a test."""

from __future__ import annotations

import time
import tracemalloc
from collections import deque

from ringwal import WAL, Config, Record, replay
from ringwal.segment import list_segments

SEGMENT = 1 << 20


def test_replay_of_many_segments_holds_one_segment_at_a_time(tmp_path):
    d = str(tmp_path / "wal")
    # Frames of up to 512 KiB (write_buffer_size), two per 1 MiB segment: before, replay held
    # the segment, a copy of the frame's body and a 1 MiB buffer read at the end of the file.
    with WAL(Config(dir=d, segment_size=SEGMENT, write_buffer_size=SEGMENT // 2)) as w:
        now = time.time_ns()
        for k in range(8):
            w.append_many([Record(1, now + i, b"m" * 100) for i in range(10_000)])
    assert len(list_segments(d)) >= 6
    deque(replay(d), maxlen=0)  # imports and caches outside the measurement
    tracemalloc.start()
    try:
        n = sum(1 for _ in replay(d))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 80_000
    assert peak < SEGMENT + SEGMENT // 8, f"replay held {peak} bytes at its peak; one segment is {SEGMENT}"
