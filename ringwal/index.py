"""``wal_index.json``: a cache listing every completed segment and its seq range.

It is only ever a cache, and it is checked before it is used. Readers use it to skip whole
segments without scanning them; the writer rebuilds it from the segment files (with a
warning) whenever it is missing, does not parse, or disagrees with the files. It is replaced
atomically (temp file, fsync, rename, directory fsync), after the rename of the segment it
describes, so a crash between the two leaves a stale index, which the next writer detects and
rebuilds; seqs are never reused because they come from the segments, not from the index.

The check (``reconcile``; every user of the index goes through it: the writer's recovery,
replay's plan, stats, repair). An entry is trusted only when

1. a completed segment file of that name exists, with that size;
2. the first seq in that file's header (80 bytes; 64 in version 1) is the entry's ``first_seq``;
3. its ``last_seq`` (>= ``first_seq``) joins the next segment: ``last_seq + 1`` is the first
   seq in the header of the next completed segment, or of ``current.wal`` after the last
   one, unless every seq between is a hole recorded by repair (``holes.py``).

Anything else (a wrong seq, a segment missing from the index, an entry naming a file that is
gone) makes the index stale: the entries are rebuilt from the files, and the caller decides
what to do with the stale index (the writer rewrites it; readers just use the rebuilt view).
This costs one header read (80 bytes, 64 in version 1) per segment, never a scan of a segment the index
describes correctly. The last completed segment when there is no ``current.wal`` (a crash
between steps 2 and 3 of a rotation) has no next header: the writer scans it, readers treat
its ``last_seq`` as unknown.

Layout::

    {"format": 1, "serializer": "binary",
     "segments": [{"file": "000001.wal", "first_seq": 1, "last_seq": 812,
                   "size": 81264, "created_ns": ..., "closed_ns": ...}, ...]}
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass

from ._fileutil import FsyncFn, atomic_write
from .errors import CorruptSegmentError, FormatError
from .format import SegmentHeader
from .holes import Holes
from .segment import CURRENT, SegmentScan, list_segments, read_header

__all__ = ["INDEX_NAME", "IndexEntry", "load_index", "reconcile", "write_index"]

INDEX_NAME = "wal_index.json"
#: The layout of wal_index.json; apart from the segment format version (segments went to 2, this did not).
INDEX_FORMAT = 1
log = logging.getLogger("ringwal")


@dataclass(frozen=True)
class IndexEntry:
    file: str
    first_seq: int
    last_seq: int
    size: int
    created_ns: int
    closed_ns: int

    @property
    def records(self) -> int:
        return self.last_seq - self.first_seq + 1


def load_index(directory: str) -> tuple[list[IndexEntry] | None, str]:
    """The parsed index, or (None, reason) when it is missing or does not parse."""
    path = os.path.join(directory, INDEX_NAME)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None, "missing"
    try:
        doc = json.loads(raw)
        if doc.get("format") != INDEX_FORMAT:
            return None, f"format {doc.get('format')!r} is not {INDEX_FORMAT}"
        entries = [IndexEntry(**{k: e[k] for k in IndexEntry.__dataclass_fields__}) for e in doc["segments"]]
        for e in entries:
            if not (
                isinstance(e.file, str)
                and all(isinstance(getattr(e, k), int) for k in ("first_seq", "last_seq", "size"))
            ):
                raise ValueError(f"bad entry {e}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"unparseable ({exc})"
    return entries, ""


def write_index(directory: str, serializer: str, entries: list[IndexEntry], fsync: FsyncFn) -> None:
    doc = {"format": INDEX_FORMAT, "serializer": serializer, "segments": [asdict(e) for e in entries]}
    atomic_write(os.path.join(directory, INDEX_NAME), json.dumps(doc, indent=1).encode() + b"\n", fsync)


def reconcile(directory: str, *, full: bool = True, holes: Holes | None = None) -> tuple[list[IndexEntry], str]:
    """Index entries for the completed segments actually in ``directory``, checked against
    their headers (module docstring); returns them and the reason the stored index was not
    usable as it was ("" when it was).

    An entry that fails the check is rebuilt from its file: with ``full=True`` (the writer,
    stats, repair) from its header and a scan for its last seq; with ``full=False`` (replay's
    plan) from its header alone, ``last_seq`` -1 (not known). A segment header that does not
    parse raises FormatError, except that an entry whose name and size match is then kept
    unchecked: the damage is the segment's, and whoever opens that file meets it (the
    writer's recovery reads every header and refuses; replay raises if it needs that segment).

    Retention may remove segments (oldest first) while this runs. Each file is opened once,
    and everything read from it (size, header, the scan) goes through that descriptor, which
    keeps reading after an unlink: a file gone before it was opened is left out, and so is
    every older one found gone then (retention removed it first); one removed later is
    described as it was. Only two are open at a time (a segment is checked against the
    header of the next).
    """
    holes = holes if holes is not None else Holes()
    stored, reason = load_index(directory)
    by_name = {e.file: e for e in stored or ()}
    entries: list[IndexEntry] = []
    unlisted: list[str] = []
    wrong: list[str] = []

    def decide(seg: _Opened, nxt: int | None) -> None:
        """Trust ``seg``'s entry, or rebuild it; ``nxt`` is the first seq of what follows it."""
        name, header = seg.name, seg.header
        e = by_name.pop(name, None)
        if header is None:  # damaged: kept unchecked (see the docstring)
            if e is not None:
                entries.append(e)
            return
        if e is None or e.size != seg.size:
            unlisted.append(name)
        else:
            why = _disagreement(e, header, nxt, holes)
            if not why and nxt is None:  # nothing after it to check last_seq against
                if full:
                    why = _disagreement(e, header, seg.scan(holes).next_seq, holes)
                else:
                    e = IndexEntry(e.file, e.first_seq, -1, e.size, e.created_ns, e.closed_ns)
            if not why:
                entries.append(e)
                return
            wrong.append(why)
        if full:
            scan = seg.scan(holes)
            if scan.records == 0:
                raise CorruptSegmentError(f"{seg.path}: completed segment holds no records", path=seg.path, offset=0)
            mtime_ns = int(os.fstat(seg.fd).st_mtime_ns)
            entries.append(IndexEntry(name, header.first_seq, scan.next_seq - 1, seg.size, header.created_ns, mtime_ns))
        else:
            entries.append(IndexEntry(name, header.first_seq, -1, seg.size, header.created_ns, 0))

    prev: _Opened | None = None
    seg: _Opened | None = None
    try:
        for _, name in list_segments(directory):
            seg = _Opened.open(directory, name, by_name.get(name))
            if seg is None:
                # Removed since the listing (retention). It went after every older segment,
                # so drop those that are gone too: the entries describe one moment's log.
                entries[:] = [e for e in entries if os.path.exists(os.path.join(directory, e.file))]
                if prev is not None and not os.path.exists(prev.path):
                    prev.close()
                    prev = None
                continue
            if prev is not None:
                decide(prev, seg.header.first_seq if seg.header is not None else None)
                prev.close()
            prev, seg = seg, None
        if prev is not None:
            try:
                cur_first: int | None = read_header(os.path.join(directory, CURRENT)).first_seq
            except (FileNotFoundError, FormatError):
                cur_first = None  # no current.wal (a crash mid-rotation), or one its reader will report
            decide(prev, cur_first)
    finally:
        for opened in (prev, seg):
            if opened is not None:
                opened.close()
    gone = sorted(by_name)
    if stored is not None and (unlisted or wrong or gone):
        parts = []
        if unlisted:
            parts.append(f"segments not in it or of another size: {', '.join(unlisted)}")
        if wrong:
            parts.append("entries that disagree with the segment headers: " + "; ".join(wrong))
        if gone:
            parts.append(f"names missing files: {', '.join(gone)}")
        reason = "stale (" + "; ".join(parts) + ")"
    return entries, reason


class _Opened:
    """A completed segment opened once by ``reconcile``: its size, its header (None when it
    does not parse but the index knows the file) and, when asked, one scan of its frames."""

    def __init__(self, name: str, path: str, fd: int, size: int, header: SegmentHeader | None) -> None:
        self.name, self.path, self.fd, self.size, self.header = name, path, fd, size, header
        self._scan: SegmentScan | None = None

    @classmethod
    def open(cls, directory: str, name: str, known: IndexEntry | None) -> _Opened | None:
        """None when the file is gone; FormatError for a bad header the index cannot vouch for."""
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            try:
                header: SegmentHeader | None = read_header(fd, path)
            except FormatError:
                if known is None or known.size != size:
                    raise
                header = None
        except BaseException:
            os.close(fd)
            raise
        return cls(name, path, fd, size, header)

    def scan(self, holes: Holes) -> SegmentScan:
        """The whole segment scanned (once) through the open descriptor; raises on corruption."""
        if self._scan is None:
            if self.header is None:  # pragma: no cover - decide() never scans a segment kept unchecked
                raise ValueError(f"{self.path}: its header does not parse; it cannot be scanned")
            first = self.header.first_seq
            scan = SegmentScan(
                None, self.path, sealed=True, next_seq=first, holes=holes, fd=self.fd, header=self.header
            )
            for _ in scan.frames():
                pass
            self._scan = scan
        return self._scan

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def _disagreement(e: IndexEntry, header: SegmentHeader | None, nxt: int | None, holes: Holes) -> str:
    """Why entry ``e`` cannot be trusted ("" if it can): its file's header starts elsewhere,
    or its last seq does not join ``nxt``, the first seq of whatever follows it (None: unknown)."""
    if header is not None and header.first_seq != e.first_seq:
        return f"{e.file} starts at seq {header.first_seq}, the index says {e.first_seq}"
    if e.last_seq < e.first_seq:
        return f"{e.file} ends at seq {e.last_seq} before it starts at {e.first_seq}"
    if nxt is not None and e.last_seq + 1 != nxt and not holes.bridging(e.last_seq + 1, nxt):
        return f"{e.file} ends at seq {e.last_seq} but the next segment starts at {nxt}"
    return ""
