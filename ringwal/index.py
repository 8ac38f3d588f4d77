"""``wal_index.json``: a cache listing every completed segment and its seq range.

It is only ever a cache. Readers use it to skip whole segments without opening them; the
writer rebuilds it from the segment files (with a warning) whenever it is missing, does not
parse, or disagrees with the directory (a segment missing from it, a file it names that is
gone or has another size). It is replaced atomically (temp file, fsync, rename, directory
fsync), after the rename of the segment it describes, so a crash between the two leaves a
stale index, which the next writer detects and rebuilds; seqs are never reused because
they come from the segments, not from the index.

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
from .errors import CorruptSegmentError
from .format import FORMAT_VERSION
from .holes import Holes
from .segment import list_segments, read_header, scan_file

__all__ = ["INDEX_NAME", "IndexEntry", "load_index", "reconcile", "write_index"]

INDEX_NAME = "wal_index.json"
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
        if doc.get("format") != FORMAT_VERSION:
            return None, f"format {doc.get('format')!r} is not {FORMAT_VERSION}"
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
    doc = {"format": FORMAT_VERSION, "serializer": serializer, "segments": [asdict(e) for e in entries]}
    atomic_write(os.path.join(directory, INDEX_NAME), json.dumps(doc, indent=1).encode() + b"\n", fsync)


def reconcile(directory: str, *, full: bool = True, holes: Holes | None = None) -> tuple[list[IndexEntry], str]:
    """Index entries for the completed segments actually in ``directory``.

    Entries from the index are trusted when name and size match the file; anything else is
    rebuilt from the segment (its header, and a scan for its last seq). Returns the entries
    and the reason the stored index was not usable as it was ("" when it was).
    With ``full=False`` (read-only callers) an unmatched segment is described from its
    header alone and ``last_seq`` is -1 where it is not known.
    """
    stored, reason = load_index(directory)
    by_name = {e.file: e for e in stored or ()}
    files = list_segments(directory)
    entries = []
    stale = []
    for _, name in files:
        path = os.path.join(directory, name)
        size = os.stat(path).st_size
        e = by_name.pop(name, None)
        if e is not None and e.size == size:
            entries.append(e)
            continue
        stale.append(name)
        if full:
            header, scan = scan_file(path, sealed=True, holes=holes)
            if scan.records == 0:
                raise CorruptSegmentError(f"{path}: completed segment holds no records", path=path, offset=0)
            mtime_ns = int(os.stat(path).st_mtime_ns)
            entries.append(IndexEntry(name, header.first_seq, scan.next_seq - 1, size, header.created_ns, mtime_ns))
        else:
            header = read_header(path)
            entries.append(IndexEntry(name, header.first_seq, -1, size, header.created_ns, 0))
    if stored is not None and (stale or by_name):
        parts = []
        if stale:
            parts.append(f"segments not in it or of another size: {', '.join(stale)}")
        if by_name:
            parts.append(f"names missing files: {', '.join(sorted(by_name))}")
        reason = "stale (" + "; ".join(parts) + ")"
    return entries, reason
