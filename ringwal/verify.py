"""``verify(dir)``: read every byte of a log and report every problem with file and offset.

Checks: each segment header (magic, version, checksum, serializer the same everywhere, the
same log id in every version 2 header),
every frame checksum, every frame body splitting into exactly its count of records (a frame
can pass its checksum and still not: replay cannot read it), seq continuity inside and across
segments, completed segments ending exactly at their last frame, and ``wal_index.json``
agreeing with the files. A torn tail of
``current.wal`` is reported as a note, not a problem: it is the normal result of a crash and
the next writer truncates it. Seq ranges that ``ringwal repair`` cut out are listed in
``wal_holes.json``; each is reported in ``holes`` (the log is consistent, the loss is on
record) and a jump over exactly such a range is not a problem. Safe to run while a writer
appends.

``progress(done_bytes, total_bytes)``, when given, is called after each segment (the CLI
draws a progress bar with it on a terminal).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._fileutil import writer_holds_lock
from .errors import FormatError
from .format import MAX_FRAME_BODY, describe_walk, walk_records
from .holes import HOLES_NAME, Hole, Holes, load_holes
from .index import INDEX_NAME, load_index
from .segment import CURRENT, LOST, SPARE, TORN, LiveWriter, SegmentScan, list_segments, require_log, segment_number

__all__ = ["Problem", "VerifyReport", "verify"]


@dataclass(frozen=True)
class Problem:
    path: str
    offset: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.offset}" if self.offset is not None else self.path
        return f"{where}: {self.message}"


@dataclass
class VerifyReport:
    directory: str
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    segments: int = 0
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    bytes: int = 0  # SegmentScan.log_bytes summed: the same number ringwal stats reports
    holes: list[Hole] = field(default_factory=list)
    log_id: str | None = None  # 32 hex characters; None when no header carries one (format 1)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "dir": self.directory,
            "log_id": self.log_id,
            "ok": self.ok,
            "segments": self.segments,
            "records": self.records,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "bytes": self.bytes,
            "problems": [{"path": p.path, "offset": p.offset, "message": p.message} for p in self.problems],
            "notes": list(self.notes),
            "holes": [dataclasses.asdict(h) for h in self.holes],
        }


REPLANS = 1000  # a writer rotating faster than verify reads could otherwise keep it busy forever


def verify(directory: str | os.PathLike[str], progress: Callable[[int, int], object] | None = None) -> VerifyReport:
    """Check every byte of the log in ``directory``; the report lists each problem found.

    Raises NoLogError when ``directory`` is missing or holds no log: a health check of a
    wrong or unmounted path must fail, not pass as an empty log.
    """
    directory = require_log(directory)
    report = VerifyReport(directory)
    try:
        holes = load_holes(directory)
    except FormatError as exc:
        report.problems.append(
            Problem(exc.path or os.path.join(directory, HOLES_NAME), None, _strip(str(exc), exc.path or ""))
        )
        holes = Holes()
    report.holes = list(holes)
    found: dict[str, tuple[int, int, int]] = {}  # file -> (first_seq, last_seq, size)
    serializer = None
    expected: int | None = None  # next seq the following segment must start at
    names = [name for _, name in list_segments(directory)]
    if os.path.exists(os.path.join(directory, CURRENT)):
        names.append(CURRENT)
    sizes = {}
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            sizes[name] = os.stat(os.path.join(directory, name)).st_size
    total, done = sum(sizes.values()), 0
    # A writer may rotate while we read: before trusting where current.wal starts, the
    # segments that appeared meanwhile are verified first (up to REPLANS times).
    queue = [name for name in names if name != CURRENT] + [CURRENT]
    seen: set[str] = set()
    replans = 0
    i = 0
    while i < len(queue):
        name = queue[i]
        i += 1
        path = os.path.join(directory, name)
        sealed = name != CURRENT
        if progress is not None:
            progress(min(done, total), total)
            done += sizes.get(name, 0)
        try:
            scan = SegmentScan.open(path, sealed=sealed, holes=holes, written=None if sealed else LiveWriter(directory))
        except FileNotFoundError:
            if sealed:
                # Retention removes completed segments oldest first: when this one went, every
                # older one had gone before it. One still there means something else removed it.
                number = segment_number(name)
                older = sorted(
                    (segment_number(n), n)
                    for n in seen
                    if n != CURRENT and segment_number(n) < number and os.path.exists(os.path.join(directory, n))
                )
                if older:
                    report.problems.append(
                        Problem(
                            path,
                            None,
                            f"disappeared while verify ran, but the older {older[-1][1]} is still there: not "
                            "retention (which removes the oldest first); records are missing",
                        )
                    )
                else:
                    report.notes.append(f"{path}: removed while verify ran (retention)")
                expected = None  # what follows it cannot be checked against it
            elif replans < REPLANS and writer_holds_lock(directory):
                # Mid-rotation: current.wal was renamed and its successor is not there yet
                # (creating it is a preallocation and two fsyncs away). Verify the segment it
                # became (and any newer), then look for current.wal again.
                if replans:
                    time.sleep(0.001)
                newer = [n for _, n in list_segments(directory) if n not in seen and n not in queue[i:]]
                replans += 1
                queue[i:i] = [*newer, CURRENT]
            continue
        except FormatError as exc:
            report.segments += 1
            with contextlib.suppress(FileNotFoundError):
                report.bytes += os.stat(path).st_size
            report.problems.append(Problem(path, exc.offset, _strip(str(exc), path)))
            expected = None
            continue
        with scan:
            header = scan.header
            if not sealed and expected is not None and header.first_seq > expected and replans < REPLANS:
                newer = [n for _, n in list_segments(directory) if n not in seen]
                if newer:
                    replans += 1
                    queue[i:i] = [*newer, CURRENT]
                    continue
            seen.add(name)
            report.segments += 1
            if header.log_id is not None:
                if report.log_id is None:
                    report.log_id = header.log_id.hex()
                elif header.log_id.hex() != report.log_id:
                    report.problems.append(
                        Problem(
                            path,
                            48,
                            f"belongs to log {header.log_id.hex()}, not to log {report.log_id} of earlier segments: "
                            "a file of another log is in this directory",
                        )
                    )
            if serializer is None:
                serializer = header.serializer
            elif header.serializer != serializer:
                report.problems.append(
                    Problem(
                        path, 16, f"serializer {header.serializer!r} differs from {serializer!r} of earlier segments"
                    )
                )
            if expected is not None and header.first_seq != expected and not holes.bridging(expected, header.first_seq):
                what = "gap" if header.first_seq > expected else "overlap"
                report.problems.append(
                    Problem(
                        path, 32, f"seq {what}: starts at {header.first_seq}, previous segment ends at {expected - 1}"
                    )
                )
            if report.first_seq is None:
                report.first_seq = header.first_seq
            try:
                for offset, _first, count, length in scan.frames():
                    res = walk_records(scan.body(offset, length), count, MAX_FRAME_BODY)
                    if res[0]:
                        why = f"frame passes its checksum but its body does not split into the {count} records: "
                        report.problems.append(Problem(path, offset, why + describe_walk(res, count, length)))
            except FormatError as exc:
                report.problems.append(Problem(path, exc.offset, _strip(str(exc), path)))
                report.records += scan.records
                report.bytes += scan.log_bytes
                expected = None
                continue
            report.records += scan.records
            report.bytes += scan.log_bytes
            if scan.records:
                report.last_seq = scan.next_seq - 1
            expected = scan.next_seq
            if sealed:
                if scan.records == 0:
                    report.problems.append(Problem(path, header.size, "completed segment holds no records"))
                if scan.end != scan.size:
                    report.problems.append(
                        Problem(
                            path, scan.end, f"{scan.size - scan.end} bytes after the last frame of a completed segment"
                        )
                    )
                found[name] = (header.first_seq, scan.next_seq - 1, scan.size)
            elif scan.outcome == TORN:
                how = (
                    "a crash mid-write"
                    if scan.tail is None or scan.tail.later is None
                    else "unsynced writes a power loss persisted out of order"
                )
                report.notes.append(
                    f"{path}:{scan.end}: torn tail of {scan.tail_bytes} bytes ({how}); "
                    "the next writer truncates it and keeps the bytes beside the file"
                )
            elif scan.outcome == LOST:
                report.notes.append(
                    f"{path}:{scan.end}: frames from here on hold seqs recorded as lost (a writer's fsync failed "
                    "after writing them; wal_holes.json); the next writer cuts them"
                )
    if progress is not None:
        progress(total, total)
    _check_index(directory, found, report)
    strays = ["current.wal.tmp", "wal_index.json.tmp"]
    if not writer_holds_lock(directory):  # a running writer keeps its next segment ready there
        strays.append(SPARE)
    for stray in strays:
        if os.path.exists(os.path.join(directory, stray)):
            report.notes.append(
                f"{os.path.join(directory, stray)}: left by an interrupted writer; the next writer removes it"
            )
    return report


#: How long verify keeps looking when the index disagrees while a writer runs: the writer
#: replaces the index right after a rotation or a retention removal, a few fsyncs later.
INDEX_SETTLE = 2.0


def _check_index(directory: str, found: dict[str, tuple[int, int, int]], report: VerifyReport) -> None:
    """Compare the index with the segments read. While a writer holds the directory the
    index may be mid-update (a rotation or retention just changed the files): look again
    until it agrees or INDEX_SETTLE passes; only a lasting disagreement is a problem."""
    deadline = time.monotonic() + INDEX_SETTLE
    while True:
        problems: list[Problem] = []
        _index_problems(directory, found, problems)
        if not problems or time.monotonic() >= deadline or not writer_holds_lock(directory):
            report.problems.extend(problems)
            return
        time.sleep(0.005)  # the writer's index update is a few fsyncs away
        found = {n: v for n, v in found.items() if os.path.exists(os.path.join(directory, n))}


def _index_problems(directory: str, found: dict[str, tuple[int, int, int]], report_problems: list[Problem]) -> None:
    path = os.path.join(directory, INDEX_NAME)
    entries, reason = load_index(directory)
    if entries is None:
        if found or reason != "missing":
            report_problems.append(Problem(path, None, f"index {reason}; the next writer rebuilds it"))
        return
    listed = {e.file: e for e in entries}
    for name, (first, last, size) in found.items():
        e = listed.pop(name, None)
        if e is None:
            report_problems.append(Problem(path, None, f"does not list {name}"))
        elif (e.first_seq, e.last_seq, e.size) != (first, last, size):
            report_problems.append(
                Problem(
                    path,
                    None,
                    f"entry for {name} says seqs {e.first_seq}-{e.last_seq}, {e.size} bytes; "
                    f"the file holds {first}-{last}, {size} bytes",
                )
            )
    for name in sorted(listed):
        if not os.path.exists(os.path.join(directory, name)):  # else: rotated in after the scan
            report_problems.append(Problem(path, None, f"lists {name}, which does not exist"))


def _strip(message: str, path: str) -> str:
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message
