"""repair: every kind of damage verify reports, salvaged with the loss on record.

Each test damages a copy of a real log, runs repair, and checks: what repair said, the
``.broken`` copy, ``wal_holes.json``, that verify is clean afterwards (listing the hole),
that replay reports the hole (RecordsLostError) or steps over it when asked, and that a
writer opens the repaired log and goes on from the right seq.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from ringwal import WAL, Config, CorruptSegmentError, LockedError, RecordsLostError, UnsupportedVersionError, replay, verify
from ringwal.format import SEGMENT_HEADER_SIZE, SegmentHeader
from ringwal.holes import HOLES_NAME, load_holes
from ringwal.repair import repair
from ringwal.segment import CURRENT, list_segments, read_header

from .conftest import rec, write_log
from .test_cli import ringwal_cli
from .test_corruption import flip, frame_offsets

N = 100


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """100 records, one frame each, in 2 KiB segments, plus a current.wal of 3 frames."""
    d = str(tmp_path_factory.mktemp("pristine") / "wal")
    write_log(d, N - 3)
    with WAL(Config(dir=d, segment_size=1 << 20)) as w:
        for i in range(N - 3, N):
            w.append(rec(i))
            w.flush()
    return d


@pytest.fixture
def log(pristine, tmp_path):
    d = str(tmp_path / "copy")
    shutil.copytree(pristine, d)
    return d


def segs(d):
    return [os.path.join(d, n) for _, n in list_segments(d)]


def seqs_of_frame(path, k):
    """(first_seq, count) of frame ``k`` of a segment."""
    data = open(path, "rb").read()
    off = frame_offsets(path)[0][k]
    return int.from_bytes(data[off + 8 : off + 16], "little"), int.from_bytes(data[off + 4 : off + 8], "little")


def check_repaired(d, lost: set[int]):
    """verify clean with the holes listed; replay raises at the hole or skips it; a writer goes on."""
    rep = verify(d)
    assert rep.ok, [str(p) for p in rep.problems]
    recorded = set()
    for h in rep.holes:
        recorded |= set(range(h.first_seq, h.last_seq + 1))
    assert recorded == lost
    if lost:
        with pytest.raises(RecordsLostError) as ei:
            list(replay(d))
        assert ei.value.first_seq == min(lost)
    got = [r.seq for r in replay(d, skip_holes=True)]
    assert got == [s for s in range(1, N + 1) if s not in lost]
    # records after the hole replay without complaint
    assert [r.seq for r in replay(d, max(lost) if lost else 0)] == list(range((max(lost) if lost else 0) + 1, N + 1))
    with WAL(Config(dir=d)) as w:
        assert w.append(rec(999)) == N + 1
    assert verify(d).ok


def test_bit_flip_in_a_middle_frame_is_cut_out_and_recorded(log):
    seg = segs(log)[2]
    original = open(seg, "rb").read()
    first, count = seqs_of_frame(seg, 3)
    flip(seg, frame_offsets(seg)[0][3] + 40)
    assert not verify(log).ok
    report = repair(log)
    assert [(h.first_seq, h.last_seq) for h in report.holes] == [(first, first + count - 1)]
    assert any("checksum mismatch" in a for a in report.actions)
    broken = seg + ".broken"
    assert os.path.exists(broken)
    kept = bytearray(original)
    kept[frame_offsets(seg + ".broken")[0][3] + 40] ^= 1
    assert open(broken, "rb").read() == bytes(kept)  # the damaged original, byte for byte
    assert load_holes(log).list[0].broken_copy == os.path.basename(broken)
    check_repaired(log, set(range(first, first + count)))


def test_damaged_last_frame_of_a_completed_segment_loses_exactly_its_seqs(log):
    seg = segs(log)[1]
    offs, _end = frame_offsets(seg)
    first, count = seqs_of_frame(seg, len(offs) - 1)
    flip(seg, offs[-1] + 30)
    report = repair(log)
    assert [(h.first_seq, h.last_seq) for h in report.holes] == [(first, first + count - 1)]
    check_repaired(log, set(range(first, first + count)))


def test_damaged_segment_header_is_rebuilt_without_loss(log):
    seg = segs(log)[3]
    lid = read_header(seg).log_id
    flip(seg, 20)  # inside the serializer name: the header checksum fails
    assert not verify(log).ok
    report = repair(log)
    assert report.holes == []
    assert any("header damaged" in a and f"log id {lid.hex()}" in a for a in report.actions)
    check_repaired(log, set())
    assert read_header(seg).log_id == lid


def test_damaged_version_1_header_is_rebuilt_as_version_1(log):
    from .ringhelp import to_version_1

    seg = segs(log)[3]
    to_version_1(seg)
    flip(seg, 20)
    report = repair(log)
    assert report.holes == [] and any("version 1" in a for a in report.actions)
    check_repaired(log, set())
    assert read_header(seg).version == 1


def test_missing_middle_segment_becomes_a_recorded_hole(log):
    seg = segs(log)[2]
    from ringwal.segment import scan_file

    header, scan = scan_file(seg, sealed=True)
    lost = set(range(header.first_seq, scan.next_seq))
    os.unlink(seg)
    report = repair(log)
    assert len(report.holes) == 1 and "missing" in report.holes[0].reason
    assert report.holes[0].broken_copy == ""
    check_repaired(log, lost)


def test_corruption_inside_current_wal_is_salvaged_and_the_writer_opens_again(log):
    cur = os.path.join(log, CURRENT)
    first, count = seqs_of_frame(cur, 1)
    flip(cur, frame_offsets(cur)[0][1] + 30)
    with pytest.raises(Exception, match="ringwal repair"):
        WAL(Config(dir=log))
    report = repair(log)
    assert [(h.first_seq, h.last_seq) for h in report.holes] == [(first, first + count - 1)]
    assert os.path.exists(cur + ".broken")
    check_repaired(log, {first})


def test_zero_bytes_after_a_completed_segment_are_truncated_without_a_hole(log):
    seg = segs(log)[0]
    size = os.path.getsize(seg)
    with open(seg, "ab") as f:
        f.write(b"\0" * 64)
    assert not verify(log).ok
    report = repair(log)
    assert report.holes == [] and os.path.getsize(seg) == size
    check_repaired(log, set())


def test_garbage_index_and_stray_temp_files_are_rebuilt_and_removed(log):
    with open(os.path.join(log, "wal_index.json"), "w") as f:
        f.write("{not json")
    open(os.path.join(log, "current.wal.tmp"), "w").close()
    report = repair(log)
    assert any("rebuilt" in a for a in report.actions) and any("current.wal.tmp" in a for a in report.actions)
    assert not os.path.exists(os.path.join(log, "current.wal.tmp"))
    check_repaired(log, set())


def test_completed_segment_with_nothing_valid_is_set_aside_and_its_seqs_recorded(log):
    seg = segs(log)[4]
    from ringwal.segment import scan_file

    header, scan = scan_file(seg, sealed=True)
    lost = set(range(header.first_seq, scan.next_seq))
    with open(seg, "r+b") as f:
        f.seek(SEGMENT_HEADER_SIZE)
        f.write(os.urandom(os.path.getsize(seg) - SEGMENT_HEADER_SIZE))
    report = repair(log)
    assert not os.path.exists(seg) and os.path.exists(seg + ".broken")
    assert [(h.first_seq, h.last_seq) for h in report.holes] == [(min(lost), max(lost))]
    check_repaired(log, lost)


def test_dry_run_changes_nothing(log):
    seg = segs(log)[2]
    flip(seg, frame_offsets(seg)[0][2] + 40)
    before = {n: open(os.path.join(log, n), "rb").read() for n in os.listdir(log)}
    report = repair(log, dry_run=True)
    assert report.holes and report.actions
    assert {n: open(os.path.join(log, n), "rb").read() for n in os.listdir(log)} == before


def test_refused_while_a_writer_holds_the_directory(log):
    seg = segs(log)[2]
    with WAL(Config(dir=log)):
        with pytest.raises(LockedError):
            repair(log)
    assert not os.path.exists(seg + ".broken")


def test_unknown_version_and_overlap_are_refused_untouched(log):
    import struct

    from ringwal.format import crc32c

    seg = segs(log)[1]
    with open(seg, "r+b") as f:
        h = bytearray(f.read(SEGMENT_HEADER_SIZE))
        struct.pack_into("<H", h, 8, 9)
        h[-4:] = crc32c(bytes(h[:-4])).to_bytes(4, "little")
        f.seek(0)
        f.write(h)
    before = sorted(os.listdir(log))
    with pytest.raises(UnsupportedVersionError):
        repair(log)
    assert sorted(os.listdir(log)) == before


def test_overlapping_segments_are_refused(log):
    a, b = segs(log)[1], segs(log)[2]
    shutil.copy(a, os.path.join(log, "000099.wal"))  # a copy of old seqs after the last segment
    before = sorted(os.listdir(log))
    with pytest.raises(CorruptSegmentError, match="two files claim the same seqs"):
        repair(log)
    assert sorted(os.listdir(log)) == before and os.path.exists(b)


def test_interrupted_repair_is_finished_by_the_next_one(log, tmp_path):
    """Stop repair at each of its fsyncs (the steps of the module docstring); run it again;
    the result is always the same as one uninterrupted repair."""
    seg = segs(log)[2]
    flip(seg, frame_offsets(seg)[0][3] + 40)
    clean = str(tmp_path / "clean")
    shutil.copytree(log, clean)
    repair(clean)
    want_holes = [(h.first_seq, h.last_seq) for h in load_holes(clean)]
    want_seqs = [r.seq for r in replay(clean, skip_holes=True)]

    class Crash(Exception):
        pass

    n = 0
    while True:
        n += 1
        d = str(tmp_path / f"try{n}")
        shutil.copytree(log, d)
        calls = 0

        def fsync(fd):
            nonlocal calls
            calls += 1
            if calls == n:
                raise Crash()
            os.fsync(fd)

        try:
            repair(d, fsync=fsync)
            finished = True
        except Crash:
            finished = False
        repair(d)
        assert [(h.first_seq, h.last_seq) for h in load_holes(d)] == want_holes, n
        assert [r.seq for r in replay(d, skip_holes=True)] == want_seqs, n
        assert verify(d).ok, n
        if finished:
            break
    assert n > 4  # every step was interrupted once


def test_cli_repair_then_verify_and_dump(log):
    seg = segs(log)[2]
    first, _count = seqs_of_frame(seg, 3)
    flip(seg, frame_offsets(seg)[0][3] + 40)
    r = ringwal_cli("repair", "--dir", log, "--dry-run")
    assert r.returncode == 0 and "would: hole recorded" in r.stdout, r.stdout + r.stderr
    assert not os.path.exists(os.path.join(log, HOLES_NAME))
    r = ringwal_cli("repair", "--dir", log)
    assert r.returncode == 0, r.stderr
    assert f"seq {first} lost" in r.stdout and "1 record(s) lost" in r.stderr
    r = ringwal_cli("verify", "--dir", log)
    assert r.returncode == 0 and f"hole: seq {first} lost" in r.stderr, r.stderr
    r = ringwal_cli("verify", "--dir", log, "--json")
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["holes"][0]["first_seq"] == first and doc["records"] == N - 1
    r = ringwal_cli("dump", "--dir", log)
    assert r.returncode == 1 and "recorded as lost" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stdout.splitlines()) == first - 1  # everything before the hole was printed
    r = ringwal_cli("dump", "--dir", log, "--skip-holes")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == N - 1
    r = ringwal_cli("repair", "--dir", log)
    assert r.returncode == 0 and "nothing to repair" in r.stderr


def _rewrite_header(path, **fields):
    import struct

    from ringwal.format import crc32c

    with open(path, "r+b") as f:
        h = bytearray(f.read(SEGMENT_HEADER_SIZE))
        if "version" in fields:
            struct.pack_into("<H", h, 8, fields["version"])
        if "serializer" in fields:
            h[16:32] = fields["serializer"].encode().ljust(16, b"\0")
        h[-4:] = crc32c(bytes(h[:-4])).to_bytes(4, "little")
        f.seek(0)
        f.write(h)


def _edit_index(d, fn):
    p = os.path.join(d, "wal_index.json")
    doc = json.load(open(p))
    fn(doc["segments"])
    with open(p, "w") as f:
        json.dump(doc, f)


DAMAGE = {
    # kind: (damage, what verify says, whether repair fixes it)
    "checksum": (lambda d: flip(segs(d)[2], frame_offsets(segs(d)[2])[0][1] + 40), "checksum mismatch", True),
    "header": (lambda d: flip(segs(d)[3], 20), "segment header checksum mismatch", True),
    "gap": (lambda d: os.unlink(segs(d)[2]), "seq gap", True),
    "trailing": (lambda d: open(segs(d)[0], "ab").write(b"\0" * 16), "bytes after the last frame", True),
    "empty": (lambda d: os.truncate(segs(d)[3], SEGMENT_HEADER_SIZE), "holds no records", True),
    "index-entry": (lambda d: _edit_index(d, lambda s: s[1].update(size=1)), "the file holds", True),
    "index-extra": (lambda d: _edit_index(d, lambda s: s.append(dict(s[0], file="000077.wal"))), "which does not exist", True),
    "index-garbage": (lambda d: open(os.path.join(d, "wal_index.json"), "w").write("[1,"), "index unparseable", True),
    "serializer": (lambda d: _rewrite_header(segs(d)[1], serializer="json"), "differs from", False),
    "version": (lambda d: _rewrite_header(segs(d)[1], version=9), "version 9", False),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_cli_verify_reports_each_kind_of_damage_and_repair_fixes_or_refuses_it(log, kind):
    damage, says, fixable = DAMAGE[kind]
    damage(log)
    r = ringwal_cli("verify", "--dir", log)
    assert r.returncode == 1, r.stdout + r.stderr
    assert says in r.stdout, r.stdout
    assert all(":" in line for line in r.stdout.splitlines())  # file[:offset]: what
    doc = json.loads(ringwal_cli("verify", "--dir", log, "--json").stdout)
    assert not doc["ok"] and any(says in p["message"] for p in doc["problems"]) and all(p["path"] for p in doc["problems"])
    before = sorted(os.listdir(log))
    r = ringwal_cli("repair", "--dir", log)
    if not fixable:
        assert r.returncode == 1 and "error:" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert sorted(os.listdir(log)) == before
        return
    assert r.returncode == 0, r.stderr
    r = ringwal_cli("verify", "--dir", log)
    assert r.returncode == 0, r.stdout + r.stderr
