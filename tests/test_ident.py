"""A log's identity (issue 12 item 2): a random id chosen once, in every segment header."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import ringwal
from ringwal import WAL, Config, CorruptSegmentError, NoLogError
from ringwal.format import SEGMENT_HEADER_SIZE, SegmentHeader
from ringwal.index import reconcile, write_index
from ringwal.segment import CURRENT, list_segments

from .conftest import ROOT, rec, write_log


def seg_paths(d: str) -> list[str]:
    return [os.path.join(d, n) for _, n in list_segments(d)] + [os.path.join(d, CURRENT)]


def to_version_1(path: str) -> None:
    """Rewrite a segment as ringwal wrote it before log ids: a 64-byte header, no id."""
    data = open(path, "rb").read()
    h = SegmentHeader.decode(data, path)
    v1 = SegmentHeader(h.serializer, h.first_seq, h.created_ns, version=1).encode()
    with open(path, "wb") as f:
        f.write(v1 + data[h.size :])


def test_log_id_is_32_hex_chosen_once_and_kept_by_rotation_and_reopen(tmp_path):
    d = str(tmp_path / "wal")
    write_log(d, 60)  # several rotations
    lid = ringwal.log_id(d)
    assert re.fullmatch(r"[0-9a-f]{32}", lid)
    assert len(seg_paths(d)) > 3
    for p in seg_paths(d):
        assert SegmentHeader.decode(open(p, "rb").read(SEGMENT_HEADER_SIZE), p).log_id == bytes.fromhex(lid)
    with WAL(Config(dir=d, segment_size=2048)) as w:
        w.append(rec(99))
    assert ringwal.log_id(d) == lid
    other = str(tmp_path / "other")
    write_log(other, 1)
    assert ringwal.log_id(other) != lid  # a new log, a new id


def test_log_id_without_a_log_is_no_log_error(tmp_path):
    for d in (tmp_path / "missing", tmp_path):
        with pytest.raises(NoLogError) as info:
            ringwal.log_id(str(d))
        assert info.value.path == str(d)


def test_log_id_while_current_wal_is_missing_mid_rotation(tmp_path):
    d = str(tmp_path / "wal")
    write_log(d, 20)
    lid = ringwal.log_id(d)
    os.unlink(os.path.join(d, CURRENT))  # a crash between rotation steps 2 and 3
    assert ringwal.log_id(d) == lid


def test_version_1_log_reads_and_its_next_writer_gives_it_an_id(tmp_path):
    d = str(tmp_path / "wal")
    write_log(d, 40)
    for p in seg_paths(d):
        to_version_1(p)
    entries, _ = reconcile(d)  # the index's sizes were those of the version 2 files
    write_index(d, "binary", entries, os.fsync)
    before = [(r.seq, r.data) for r in ringwal.replay(d)]
    assert len(before) == 40
    report = ringwal.verify(d)
    assert report.ok, report.problems
    with pytest.raises(NoLogError, match="before log ids"):
        ringwal.log_id(d)
    n_segments = len(list_segments(d))
    with WAL(Config(dir=d, segment_size=2048)) as w:  # current.wal holds records: it is rotated
        w.append(rec(20))
    lid = ringwal.log_id(d)
    assert len(list_segments(d)) == n_segments + 1
    cur = os.path.join(d, CURRENT)
    assert SegmentHeader.decode(open(cur, "rb").read(SEGMENT_HEADER_SIZE), cur).log_id == bytes.fromhex(lid)
    assert [(r.seq, r.data) for r in ringwal.replay(d)] == [*before, (41, rec(20).data)]
    report = ringwal.verify(d)
    assert report.ok, report.problems
    assert report.log_id == lid


def test_empty_version_1_current_wal_is_replaced_by_one_with_an_id(tmp_path):
    d = str(tmp_path / "wal")
    with WAL(Config(dir=d)):
        pass
    to_version_1(os.path.join(d, CURRENT))
    with WAL(Config(dir=d)) as w:
        assert w.append(rec(0)) == 1
    assert not list_segments(d)
    assert len(ringwal.log_id(d)) == 32
    assert [r.seq for r in ringwal.replay(d)] == [1]


def test_segments_of_two_logs_in_one_directory_are_refused(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_log(a, 60)
    write_log(b, 60)  # the same records, seqs and file names: only the ids tell them apart
    name = list_segments(a)[1][1]
    shutil.copyfile(os.path.join(b, name), os.path.join(a, name))
    with pytest.raises(CorruptSegmentError, match="two logs") as info:
        WAL(Config(dir=a, segment_size=2048))
    assert info.value.path == os.path.join(a, name)
    report = ringwal.verify(a)
    assert not report.ok
    assert any(p.path.endswith(name) and "belongs to log" in p.message for p in report.problems)


def test_stats_shows_the_log_id(tmp_path):
    d = str(tmp_path / "wal")
    write_log(d, 3)
    lid = ringwal.log_id(d)
    run = [sys.executable, "-m", "ringwal", "stats", "--dir", d]
    out = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert f"log id {lid}" in out
    js = subprocess.run([*run, "--json"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert json.loads(js)["log_id"] == lid
