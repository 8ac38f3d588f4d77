"""``wal_holes.json``: the seq ranges lost from the log, so that nobody mistakes it for a
complete one.

Seqs are gap-free by construction; a log gets a gap only from corruption that ``ringwal
repair`` cut out (or a segment file that went missing), or from a failed fsync: the writer
records the seqs it had written but could not make durable (``seglog.py``, docs/FORMAT.md
"When fsync fails"). Each lost range is recorded here *before* its bytes go, and every
reader consults it:

* a scan (``SegmentScan``) accepts a seq jump only when it is exactly a recorded hole;
* replay raises RecordsLostError when the records it must yield cross a hole, unless told
  ``skip_holes=True`` (then it logs a warning per hole and goes on);
* verify lists each hole (exit status 0: the log is consistent, the loss is on record);
* the writer opens a log whose segments join across recorded holes.

Layout (replaced atomically: temp file, fsync, rename, directory fsync)::

    {"format": 1,
     "holes": [{"first_seq": 120, "last_seq": 134, "file": "000003.wal", "offset": 4096,
                "reason": "checksum mismatch ...", "broken_copy": "000003.wal.broken",
                "repaired_ns": 1764000000000000000}, ...]}

``broken_copy`` is the untouched original kept by repair ("" when there was no file, e.g.
a missing segment). A file of another ``format`` raises UnsupportedVersionError.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from ._fileutil import FsyncFn, atomic_write
from .errors import FormatError, UnsupportedVersionError

__all__ = ["HOLES_NAME", "Hole", "Holes", "load_holes", "write_holes"]

HOLES_NAME = "wal_holes.json"
HOLES_FORMAT = 1


@dataclass(frozen=True)
class Hole:
    first_seq: int
    last_seq: int
    file: str
    offset: int
    reason: str
    broken_copy: str
    repaired_ns: int

    @property
    def records(self) -> int:
        return self.last_seq - self.first_seq + 1

    def describe(self) -> str:
        span = f"seq {self.first_seq}" if self.first_seq == self.last_seq else f"seqs {self.first_seq}-{self.last_seq}"
        where = f"{self.file}:{self.offset}" if self.file else "(no file)"
        copy = f"; original kept as {self.broken_copy}" if self.broken_copy else ""
        return f"{span} lost ({self.records} record(s)) at {where}: {self.reason}{copy}"


class Holes:
    """The recorded holes of one directory, looked up by the seq where each starts."""

    def __init__(self, holes: list[Hole] | None = None) -> None:
        self.list = sorted(holes or (), key=lambda h: h.first_seq)
        self._by_first = {h.first_seq: h for h in self.list}

    def __bool__(self) -> bool:
        return bool(self.list)

    def __len__(self) -> int:
        return len(self.list)

    def __iter__(self) -> Iterator[Hole]:
        return iter(self.list)

    def explains(self, lo: int, hi: int) -> list[Hole] | None:
        """The holes that together cover every seq of ``lo..hi``, or None if some seq there
        is not recorded as lost (adjacent holes from separate repairs chain)."""
        seq, used = lo, []
        for h in self.list:
            if h.last_seq < seq:
                continue
            if h.first_seq > seq:
                return None
            used.append(h)
            seq = h.last_seq + 1
            if seq > hi:
                return used
        return None

    def bridging(self, expected: int, found: int) -> bool:
        """Whether seq ``found`` may follow ``expected - 1``: every seq between is a recorded hole."""
        return found > expected and self.explains(expected, found - 1) is not None

    def overlapping(self, lo: int, hi: int) -> list[Hole]:
        """Holes with any seq in ``lo..hi``."""
        return [h for h in self.list if h.first_seq <= hi and h.last_seq >= lo]

    def with_added(self, new: list[Hole]) -> Holes:
        keep = {(h.first_seq, h.last_seq): h for h in self.list}
        for h in new:
            keep.setdefault((h.first_seq, h.last_seq), h)
        return Holes(list(keep.values()))


def load_holes(directory: str) -> Holes:
    path = os.path.join(directory, HOLES_NAME)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return Holes()
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise FormatError(
            f"{path}: does not parse ({exc}); it lists seqs repair removed, restore it or remove it", path=path
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != HOLES_FORMAT:
        version = doc.get("format") if isinstance(doc, dict) else None
        raise UnsupportedVersionError(f"{path}: format {version!r}; this build reads format {HOLES_FORMAT}", path=path)
    try:
        holes = [Hole(**{k: e[k] for k in Hole.__dataclass_fields__}) for e in doc["holes"]]
        for h in holes:
            if not (isinstance(h.first_seq, int) and isinstance(h.last_seq, int) and 1 <= h.first_seq <= h.last_seq):
                raise ValueError(f"bad range in {h}")
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{path}: bad entry ({exc})", path=path) from None
    return Holes(holes)


def write_holes(directory: str, holes: Holes, fsync: FsyncFn = os.fsync) -> None:
    doc = {"format": HOLES_FORMAT, "holes": [asdict(h) for h in holes]}
    atomic_write(os.path.join(directory, HOLES_NAME), json.dumps(doc, indent=1).encode() + b"\n", fsync)
