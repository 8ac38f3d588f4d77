"""wal_index.json is a cache: deleted, garbled or stale, it is rebuilt and nothing else changes."""

from __future__ import annotations

import json
import logging
import os

import pytest

from ringwal import WAL, replay, verify
from ringwal.index import INDEX_NAME, load_index

from .conftest import write_log


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
