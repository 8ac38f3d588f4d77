"""``repair(dir)``: make a damaged log usable again without losing a byte silently.

What it does, file by file (completed segments in order, then ``current.wal``):

* a frame that fails its checksum (or has impossible fields, or a zero-filled gap) with
  valid frames after it: the damaged bytes are cut out and every valid frame before and
  after is kept, byte for byte (frames carry their own seqs, so nothing is renumbered);
* a damaged tail (nothing valid after the damage) is cut off; a torn tail of
  ``current.wal`` is cut off the same way (the next writer would do it anyway);
* a damaged segment header is rebuilt from the log's serializer, its log id and the seqs
  around it (its version from where its first valid frame starts: 80 bytes in, version 2;
  64, version 1);
* a completed segment with nothing valid left, or holding no records, is set aside;
* a valid frame repeating seqs already in the log is dropped;
* zero bytes after the last frame of a completed segment are truncated (no data);
* stray temp files are removed and ``wal_index.json`` is rebuilt from the files, also when
  it is the only thing wrong (it disagrees with the files by name, size, or seqs checked
  against the segment headers: ``index.reconcile``).

Every seq range that disappears (inside a file, or between two files: a segment gone or
cut short) is recorded as a hole in ``wal_holes.json`` (``holes.py``), with the file,
offset and reason, so replay and verify report it instead of failing. Every file that
loses non-zero bytes is first kept whole as ``<name>.broken``. The report names each seq
that went. Refused, with a clear error and nothing changed: a writer holds the directory,
a segment of an unknown format version, segments written with different serializers or
carrying different log ids, or
segments that overlap (two files claiming the same seqs: a human must pick one).

Order of the changes and what a crash at each step leaves (rerunning repair finishes):

1. the repaired content of each file is written to ``<name>.repair.tmp`` and fsynced
   -> stray ``.repair.tmp`` files, which no reader looks at; the next repair removes them;
2. each file to be changed is hard-linked to ``<name>.broken``; directory fsync
   -> extra ``.broken`` names, nothing else changed;
3. ``wal_holes.json`` is replaced with the new holes added
   -> holes recorded while the damaged files are still in place: verify reports both the
   corruption and the holes, and the next repair finds the same damage (holes are merged,
   never duplicated);
4. each ``.repair.tmp`` is renamed over its file (files set aside are unlinked: their
   ``.broken`` link keeps the bytes); directory fsync
   -> some files repaired, others not yet: the next repair does the rest;
5. ``wal_index.json`` is rebuilt -> a stale index, which every writer rebuilds anyway.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ._fileutil import DirLock, FsyncFn, check_directory, create_file, fsync_dir
from .errors import CorruptSegmentError, FormatError, UnsupportedVersionError
from .format import FRAME_HEADER_SIZE, LOG_ID_SIZE, SEGMENT_HEADER_SIZE, SEGMENT_HEADER_V1_SIZE, SegmentHeader, align8
from .holes import Hole, load_holes, write_holes
from .index import INDEX_NAME, load_index, reconcile, write_index
from .segment import (
    CURRENT,
    SPARE,
    TORN,
    Damage,
    Reporter,
    SegmentScan,
    find_valid_frame,
    list_segments,
    read_file,
    read_header,
)

__all__ = ["RepairReport", "repair"]

_TMP_SUFFIX = ".repair.tmp"


@dataclass
class RepairReport:
    directory: str
    actions: list[str] = field(default_factory=list)
    holes: list[Hole] = field(default_factory=list)  # the holes this run recorded
    broken_copies: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.actions)

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            "dir": self.directory,
            "dry_run": self.dry_run,
            "changed": self.changed,
            "actions": list(self.actions),
            "holes": [asdict(h) for h in self.holes],
            "lost_records": sum(h.records for h in self.holes),
            "broken_copies": list(self.broken_copies),
        }


@dataclass
class _FilePlan:
    name: str
    content: bytes | None  # None: set the file aside (nothing valid left)
    keep_copy: bool  # non-zero bytes are dropped: keep the original as .broken


def repair(directory: str, *, dry_run: bool = False, fsync: FsyncFn = os.fsync) -> RepairReport:
    """Repair the log in ``directory`` (see the module docstring); return what was done.

    Raises LockedError while a writer holds the directory, and FormatError for damage it
    will not decide alone (both leave everything untouched).
    """
    directory = check_directory(directory, create=False)
    lock = DirLock(directory)
    try:
        return _Repair(directory, dry_run, fsync).run()
    finally:
        lock.release()


class _Repair:
    def __init__(self, directory: str, dry_run: bool, fsync: FsyncFn) -> None:
        self.dir = directory
        self.fsync = fsync
        self.report = RepairReport(directory, dry_run=dry_run)
        self.holes = load_holes(directory)
        self.new_holes: list[Hole] = []
        self.plans: list[_FilePlan] = []
        self.log_id: bytes | None = None
        self.now = time.time_ns()
        index, _ = load_index(directory)
        self.index = {e.file: e for e in index or ()}

    def say(self, text: str) -> None:
        self.report.actions.append(text)

    # ------------------------------------------------------------------ planning

    def run(self) -> RepairReport:
        d = self.dir
        names = [name for _, name in list_segments(d)]
        if os.path.exists(os.path.join(d, CURRENT)):
            names.append(CURRENT)
        self.serializer = self._serializer(names)
        expected: int | None = None
        open_loss: tuple[str, int, str] | None = (
            None  # damage cut from the end of a file: its seqs are known at the next file
        )
        for name in names:
            expected, open_loss = self._file(name, expected, open_loss)
        if open_loss is not None:
            file, off, reason = open_loss
            self.say(
                f"{file}: the damaged bytes at offset {off} ({reason}) were the end of the log; whatever seqs they "
                f"held, if any, are unknown (never readable); the log goes on at seq {expected}"
            )
        strays = [
            n for n in os.listdir(d) if n.endswith(_TMP_SUFFIX) or n in ("current.wal.tmp", "wal_index.json.tmp", SPARE)
        ]
        for n in sorted(strays):
            self.say(f"{n}: removed (left by an interrupted writer or repair)")
        index_bad = self._index_needs_rebuild()
        if not self.report.dry_run:
            self._apply(strays, rebuild_index=index_bad or bool(self.plans))
        elif index_bad:
            self.say(f"{INDEX_NAME}: would be rebuilt from the segment files")
        self.report.holes = self.new_holes
        return self.report

    def _serializer(self, names: list[str]) -> str:
        """The serializer the readable headers agree on (and, in ``log_id``, the log id that
        the version 2 ones agree on, or None); CorruptSegmentError when they disagree."""
        found: dict[str, list[str]] = {}
        ids: dict[bytes, list[str]] = {}
        for name in names:
            path = os.path.join(self.dir, name)
            try:
                header = read_header(path)
            except UnsupportedVersionError:
                raise
            except FormatError:
                continue
            found.setdefault(header.serializer, []).append(name)
            if header.log_id is not None:
                ids.setdefault(header.log_id, []).append(name)
        if len(ids) > 1:
            parts = "; ".join(f"{i.hex()}: {', '.join(ns)}" for i, ns in ids.items())
            raise CorruptSegmentError(
                f"{self.dir}: segments of different logs are in this directory (log ids {parts}); "
                "repair will not pick one: move the foreign files away first",
                path=self.dir,
            )
        self.log_id = next(iter(ids)) if ids else None
        if len(found) > 1:
            parts = "; ".join(f"{s!r}: {', '.join(ns)}" for s, ns in found.items())
            raise CorruptSegmentError(
                f"{self.dir}: segments were written with different serializers ({parts}); "
                "repair will not pick one: move the foreign files away first",
                path=self.dir,
            )
        if not found:
            if not names:
                return ""
            raise CorruptSegmentError(
                f"{self.dir}: no segment has a readable header, so the log's serializer is unknown; nothing repaired",
                path=self.dir,
            )
        return next(iter(found))

    def _hole(self, first: int, last: int, file: str, offset: int, reason: str, copy: bool) -> None:
        if first > last or self.holes.with_added(self.new_holes).explains(first, last) is not None:
            return
        h = Hole(first, last, file, offset, reason, f"{file}.broken" if copy and file else "", self.now)
        self.new_holes.append(h)
        self.say(f"hole recorded: {h.describe()}")

    def _file(
        self, name: str, expected: int | None, open_loss: tuple[str, int, str] | None
    ) -> tuple[int | None, tuple[str, int, str] | None]:
        path = os.path.join(self.dir, name)
        sealed = name != CURRENT
        buf = read_file(path)
        header = None
        header_note = ""
        try:
            header = read_header(path)
        except UnsupportedVersionError:
            raise
        except FormatError as exc:
            header_note = str(exc).removeprefix(f"{path}: ")
        if header is not None:
            first = header.first_seq
            start = header.size
        else:
            found = find_valid_frame(buf, SEGMENT_HEADER_V1_SIZE, len(buf), expected or 1)
            if found is None:
                # Nothing readable at all: set the whole file aside.
                nonzero = any(buf)
                self.plans.append(_FilePlan(name, None, nonzero))
                self.say(
                    f"{name}: header damaged ({header_note}) and no valid frame in {len(buf)} bytes: "
                    f"set aside as {name}.broken"
                )
                if nonzero:
                    self.report.broken_copies.append(f"{name}.broken")
                return expected, open_loss or (name, 0, f"segment header damaged ({header_note}), no valid frame")
            first = found[1]
            if expected is not None and expected < first:
                first = expected
            entry = self.index.get(name)
            created = entry.created_ns if entry is not None else int(os.stat(path).st_mtime_ns)
            # Frames start right after the header: a first valid frame at 64 or 80 tells the
            # damaged header's version; further in, the version the log's other headers have.
            v1 = found[0] == SEGMENT_HEADER_V1_SIZE or (found[0] != SEGMENT_HEADER_SIZE and self.log_id is None)
            start = SEGMENT_HEADER_V1_SIZE if v1 else SEGMENT_HEADER_SIZE
            what = "version 1"
            if v1:
                header = SegmentHeader(self.serializer, first, created, version=1)
            else:
                if self.log_id is None:
                    # Every other header that could say it is damaged too: the log gets a new
                    # id (a ring its last writer left is then not found: ringwal rings lists it).
                    self.log_id = os.urandom(LOG_ID_SIZE)
                    what = f"a new log id {self.log_id.hex()} (no readable header had one)"
                else:
                    what = f"log id {self.log_id.hex()}"
                header = SegmentHeader(self.serializer, first, created, self.log_id)
            self.say(
                f"{name}: segment header damaged ({header_note}); "
                f"rebuilt it (serializer {self.serializer!r}, first seq {first}, {what})"
            )
        # Seqs between the previous file and this one.
        if expected is not None and first > expected and not self.holes.bridging(expected, first):
            if open_loss is not None:
                file, off, reason = open_loss
                self._hole(expected, first - 1, file, off, reason, True)
            else:
                self._hole(
                    expected,
                    first - 1,
                    "",
                    0,
                    f"no segment file holds these seqs (before {name}: a segment is missing)",
                    False,
                )
        elif expected is not None and first < expected:
            raise CorruptSegmentError(
                f"{path}: starts at seq {first} but the previous segment ends at {expected - 1}: "
                "two files claim the same seqs; "
                "repair will not choose between them: move one aside (keep a copy) and run repair again",
                path=path,
                offset=32,
            )
        open_loss = None
        out, nxt, records, copy, open_loss = self._frames(name, buf, first, sealed, start)
        changed = bool(header_note) or out is not None
        if records == 0 and sealed:
            self.plans.append(_FilePlan(name, None, copy or any(buf[start:])))
            self.say(f"{name}: completed segment holds no valid records: set aside as {name}.broken")
            self.report.broken_copies.append(f"{name}.broken")
            return nxt, open_loss
        if changed:
            body = out if out is not None else bytes(buf[start:])
            content = header.encode() + body
            self.plans.append(_FilePlan(name, content, copy or bool(header_note)))
            if copy or header_note:
                self.report.broken_copies.append(f"{name}.broken")
        return nxt, open_loss

    def _frames(
        self, name: str, buf: bytes, first: int, sealed: bool, start: int
    ) -> tuple[bytes | None, int, int, bool, tuple[str, int, str] | None]:
        """Walk the frames from offset ``start`` with the salvaging policy; return (new body
        or None if unchanged, next seq, records kept, whether non-zero bytes are dropped,
        damage at the end whose seqs are not known yet)."""
        policy = _Salvage(self, name)
        path = os.path.join(self.dir, name)
        scan = SegmentScan(buf, path, sealed=sealed, start=start, next_seq=first, holes=self.holes, reporter=policy)
        kept = [(off, off + FRAME_HEADER_SIZE + align8(length)) for off, _, _, length in scan.frames()]
        open_loss = None
        if scan.tail is not None:  # TORN or DAMAGED: damage with nothing valid after it
            d = scan.tail
            kind = "torn tail" if scan.outcome == TORN else "damaged tail"
            self.say(
                f"{name}: cut a {kind} of {scan.tail_bytes} bytes at offset {d.offset} ({d.what}); "
                f"copy kept in {name}.broken"
            )
            policy.changed = policy.copy = True
            open_loss = (name, d.offset, d.what)
        elif sealed and scan.end < len(buf):
            self.say(f"{name}: truncated {len(buf) - scan.end} zero bytes after the last frame (no data)")
            policy.changed = True
        if not policy.changed:
            return None, scan.next_seq, scan.records, False, None
        body = b"".join(buf[a:b] for a, b in kept)
        return body, scan.next_seq, scan.records, policy.copy, open_loss

    def _index_needs_rebuild(self) -> bool:
        """Whether wal_index.json disagrees with the files: names and sizes, and every entry's
        seqs against the segment headers (``index.reconcile``, the check the writer applies)."""
        entries, reason = load_index(self.dir)
        if entries is None:
            return reason != "missing" or bool(list_segments(self.dir))
        try:
            _, reason = reconcile(self.dir, full=False, holes=self.holes)
        except FormatError:
            return True  # a damaged header: the index is rebuilt after the files are repaired
        return bool(reason)

    # ------------------------------------------------------------------ applying

    def _apply(self, strays: list[str], rebuild_index: bool) -> None:
        d, fsync = self.dir, self.fsync
        for n in strays:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(d, n))
        # 1. repaired contents, fsynced, under names nobody reads
        for plan in self.plans:
            if plan.content is None:
                continue
            tmp = os.path.join(d, plan.name + _TMP_SUFFIX)
            fd = create_file(tmp, os.O_WRONLY | os.O_TRUNC)
            try:
                view = memoryview(plan.content)
                while view:
                    view = view[os.write(fd, view) :]
                fsync(fd)
            finally:
                os.close(fd)
        # 2. the originals stay reachable as .broken
        for plan in self.plans:
            if plan.keep_copy:
                src = os.path.join(d, plan.name)
                dst = src + ".broken"
                k = 1
                while os.path.exists(dst) and not os.path.samefile(src, dst):
                    dst = f"{src}.broken.{k}"
                    k += 1
                if not os.path.exists(dst):
                    os.link(src, dst)
        fsync_dir(d, fsync)
        # 3. the lost ranges are on record before any byte of them disappears
        if self.new_holes:
            self.holes = self.holes.with_added(self.new_holes)
            write_holes(d, self.holes, fsync)
        # 4. swap the repaired files in
        for plan in self.plans:
            path = os.path.join(d, plan.name)
            if plan.content is None:
                if plan.keep_copy:
                    os.unlink(path)
                else:
                    os.replace(path, path + ".broken")
            else:
                os.replace(path + _TMP_SUFFIX, path)
        fsync_dir(d, fsync)
        # 5. the index, from the files as they are now
        if rebuild_index:
            entries, _ = reconcile(d, full=True, holes=self.holes)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(d, INDEX_NAME))
            write_index(d, self.serializer, entries, fsync)
            self.say(f"{INDEX_NAME}: rebuilt from the segment files ({len(entries)} completed segment(s))")


class _Salvage(Reporter):
    """Repair's policy for the scan: cut damage out and go on at the next valid frame, drop a
    frame repeating seqs, and record every seq that goes as a hole."""

    def __init__(self, repair: _Repair, name: str) -> None:
        self.repair = repair
        self.name = name
        self.changed = False  # the file's content changes
        self.copy = False  # non-zero bytes are dropped, or seqs lost: keep the original

    def damage(self, scan: SegmentScan, d: Damage) -> bool:
        if d.later is None:
            return False  # a damaged tail: the caller cuts it off
        self.changed = self.copy = True
        self.repair.say(
            f"{self.name}: cut {d.later - d.offset} damaged bytes at offsets {d.offset}-{d.later - 1} ({d.what}); "
            f"a valid frame follows at {d.later}"
        )
        if d.later_seq is not None and d.later_seq > scan.next_seq:
            reason = f"{d.later - d.offset} bytes damaged at offset {d.offset}: {d.what}"
            self.repair._hole(scan.next_seq, d.later_seq - 1, self.name, d.offset, reason, True)
        return True

    def seq_jump(self, scan: SegmentScan, offset: int, first_seq: int, count: int) -> bool:
        if first_seq < scan.next_seq:
            self.repair.say(
                f"{self.name}: dropped the frame at offset {offset}: its seqs {first_seq}-{first_seq + count - 1} "
                "repeat seqs already in the log"
            )
            self.changed = self.copy = True
            return False
        reason = f"valid frame at offset {offset} starts at seq {first_seq}, expected {scan.next_seq}"
        self.repair._hole(scan.next_seq, first_seq - 1, self.name, offset, reason, True)
        self.copy = True
        return True
