"""wal_index.json is a cache: deleted, garbled or stale, it is rebuilt and nothing else changes."""

from __future__ import annotations

import json
import logging
import os
import signal

import pytest

from ringwal import WAL, Config, replay, verify
from ringwal.index import INDEX_NAME, load_index

from .conftest import rec, write_log


@pytest.fixture
def log(tmp_path):
    return write_log(str(tmp_path / "wal"), 200)


def index_path(cfg):
    return os.path.join(cfg.dir, INDEX_NAME)


def damage_delete(cfg):
    os.unlink(index_path(cfg))


def damage_garble(cfg):
    with open(index_path(cfg), "w") as f:
        f.write('{"format": 1, "segments": [{"file": ')


def damage_stale(cfg):
    doc = json.load(open(index_path(cfg)))
    doc["segments"] = doc["segments"][:-2]  # as after a crash between rename and index write
    doc["segments"][0]["size"] += 8
    json.dump(doc, open(index_path(cfg), "w"))


def damage_lying(cfg):
    doc = json.load(open(index_path(cfg)))
    doc["segments"].append(dict(doc["segments"][-1], file="999999.wal"))
    json.dump(doc, open(index_path(cfg), "w"))


@pytest.mark.parametrize("damage", [damage_delete, damage_garble, damage_stale, damage_lying])
def test_index_is_rebuilt_on_open(log, damage, caplog):
    good = json.load(open(index_path(log)))
    damage(log)
    assert [r.seq for r in replay(log.dir)] == list(range(1, 201))  # readers cope without rebuilding
    assert [r.seq for r in replay(log.dir, 150)] == list(range(151, 201))
    assert not verify(log.dir).ok
    with caplog.at_level(logging.WARNING, "ringwal"), WAL(log) as w:
        assert w.last_seq == 200
    assert "rebuilt it from the segment files" in caplog.text
    rebuilt = json.load(open(index_path(log)))
    strip = lambda doc: [(e["file"], e["first_seq"], e["last_seq"], e["size"]) for e in doc["segments"]]  # noqa: E731
    assert strip(rebuilt) == strip(good)
    assert verify(log.dir).ok


def test_index_written_atomically_lists_every_segment(log):
    entries, reason = load_index(log.dir)
    assert reason == "" and len(entries) >= 8
    assert entries[0].first_seq == 1
    assert all(b.first_seq == a.last_seq + 1 for a, b in zip(entries, entries[1:]))
    assert all(e.closed_ns >= e.created_ns > 0 for e in entries)
    assert not os.path.exists(index_path(log) + ".tmp")


# ---------------------------------------------------------------------- an index that lies
#
# Each lie keeps every file name and size right, so only the segment headers can tell: the
# entry's first seq against its file's header, its last seq against the next file's first seq.
# A lie returns (the log's first seq afterwards, a seq to replay after that lands on the lie).


def lie_last_seq_low(doc, d):
    e = doc["segments"][2]
    e["last_seq"] -= 1
    return 1, e["last_seq"]  # replay must yield the segment's real last record


def lie_last_seq_high(doc, d):
    e = doc["segments"][2]
    e["last_seq"] += 1
    return 1, e["first_seq"] + 1


def lie_last_seq_of_the_last_segment(doc, d):
    e = doc["segments"][-1]  # the one before current.wal
    e["last_seq"] -= 3
    return 1, e["last_seq"]


def lie_first_seq(doc, d):
    e = doc["segments"][2]
    e["first_seq"] += 1
    return 1, e["first_seq"] - 2


def lie_first_seq_of_the_log(doc, d):
    doc["segments"][0]["first_seq"] += 1  # replay would start at 2 and call seq 1 "removed by retention"
    return 1, 0


def lie_missing_entry(doc, d):
    e = doc["segments"].pop(2)
    return 1, e["first_seq"]


def lie_extra_entry(doc, d):
    # A crash between retention's unlink and its index write: the index names a file that is gone.
    gone = doc["segments"][0]
    os.unlink(os.path.join(d, gone["file"]))
    return gone["last_seq"] + 1, gone["last_seq"] + 5


LIES = [
    lie_last_seq_low,
    lie_last_seq_high,
    lie_last_seq_of_the_last_segment,
    lie_first_seq,
    lie_first_seq_of_the_log,
    lie_missing_entry,
    lie_extra_entry,
]


def ranges(doc):
    return [(e["file"], e["first_seq"], e["last_seq"], e["size"]) for e in doc["segments"]]


def tell_a_lie(d, lie):
    """Make the index of ``d`` lie; return (first seq, a seq to replay after, the entries the
    files support, as ``ranges`` gives them)."""
    path = os.path.join(d, INDEX_NAME)
    doc = json.load(open(path))
    good = ranges(doc)
    first, after = lie(doc, d)
    with open(path, "w") as f:
        json.dump(doc, f)
    return first, after, [r for r in good if os.path.exists(os.path.join(d, r[0]))]


@pytest.fixture
def lied(wdir):
    write_log(wdir, 200)
    return wdir


@pytest.mark.parametrize("lie", LIES)
def test_a_wrong_index_entry_is_caught_by_readers_and_rebuilt_by_the_writer(lied, lie):
    from ringwal.stats import log_stats

    from .ringhelp import start_serve

    d = lied
    first, after, truth = tell_a_lie(d, lie)
    # Readers check the index against the segment headers and read the files' truth.
    assert [r.seq for r in replay(d)] == list(range(first, 201))
    assert [r.seq for r in replay(d, after)] == list(range(after + 1, 201))
    st = log_stats(d)
    assert (st["first_seq"], st["last_seq"], st["records"]) == (first, 200, 201 - first)
    assert [(s["file"], s["first_seq"], s["last_seq"], s["bytes"]) for s in st["segment_files"][:-1]] == truth
    report = verify(d)  # the index problem is reported until a writer rebuilds it
    assert report.problems and all(p.path == os.path.join(d, INDEX_NAME) for p in report.problems), report.problems
    # A real writer starts, says so, and rewrites the index from the files.
    p = start_serve(d)
    try:
        warned = [line for line in p.startup_lines if "wal_index.json" in line]
        assert warned and "rebuilt it from the segment files" in warned[0], p.startup_lines
        assert ranges(json.load(open(os.path.join(d, INDEX_NAME)))) == truth
        assert verify(d).ok
        assert [r.seq for r in replay(d, after)] == list(range(after + 1, 201))
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0


@pytest.mark.parametrize("lie", LIES)
def test_repair_rebuilds_a_wrong_index(lied, lie):
    from .test_cli import ringwal_cli

    d = lied
    _, _, truth = tell_a_lie(d, lie)
    lying = open(os.path.join(d, INDEX_NAME)).read()
    r = ringwal_cli("repair", "--dir", d, "--dry-run")
    assert r.returncode == 0 and "would: wal_index.json: would be rebuilt" in r.stdout, (r.stdout, r.stderr)
    assert open(os.path.join(d, INDEX_NAME)).read() == lying
    r = ringwal_cli("repair", "--dir", d)
    assert r.returncode == 0 and "nothing to repair" not in r.stderr, (r.stdout, r.stderr)
    assert "wal_index.json: rebuilt from the segment files" in r.stdout
    assert ranges(json.load(open(os.path.join(d, INDEX_NAME)))) == truth
    assert verify(d).ok
    r = ringwal_cli("repair", "--dir", d)
    assert "nothing to repair" in r.stderr, (r.stdout, r.stderr)


def test_an_index_that_agrees_across_a_recorded_hole_is_trusted(tmp_path, caplog):
    """Checking last_seq against the next header must allow a gap repair recorded as lost."""
    from ringwal.repair import repair

    d = str(tmp_path / "wal")
    write_log(d, 200)
    os.unlink(os.path.join(d, "000003.wal"))  # a lost segment, recorded as a hole by repair
    repair(d)
    with caplog.at_level(logging.WARNING, "ringwal"), WAL(Config(dir=d, segment_size=2048)) as w:
        w.append(rec(200))
    assert "wal_index.json" not in caplog.text
    assert repair(d).actions == []
    assert verify(d).ok
