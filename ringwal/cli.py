"""The ``ringwal`` command line (also ``python -m ringwal``).

Commands:
  verify --dir DIR    check every checksum, header, seq and the index; exit 0 when clean,
                      1 with one line per problem (file:offset: what) otherwise
  replay --dir DIR    print records as JSON lines (``--after SEQ``, ``--limit N``)

Errors print one line and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
from collections.abc import Sequence

from .errors import WALError


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify

    report = verify(args.dir)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    for problem in report.problems:
        print(problem)
    span = f"seqs {report.first_seq}-{report.last_seq}" if report.last_seq is not None else "no records"
    status = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    print(f"{status}: {report.segments} segment(s), {report.records} record(s), {span}, {report.bytes} bytes", file=sys.stderr)
    return 0 if report.ok else 1


def _cmd_replay(args: argparse.Namespace) -> int:
    from .replay import replay

    out = sys.stdout
    for n, rec in enumerate(replay(args.dir, args.after), 1):
        try:
            data = {"text": rec.data.decode("utf-8")}
        except UnicodeDecodeError:
            data = {"base64": base64.b64encode(rec.data).decode()}
        out.write(json.dumps({"seq": rec.seq, "type": rec.type, "time": rec.time, **data}) + "\n")
        if args.limit is not None and n >= args.limit:
            break
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ringwal", description="A durable write-ahead log shared by many processes.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    v = sub.add_parser("verify", help="check a log's checksums, headers, seqs and index")
    v.add_argument("--dir", required=True, help="the log directory")
    v.set_defaults(fn=_cmd_verify)
    r = sub.add_parser("replay", help="print records as JSON lines")
    r.add_argument("--dir", required=True, help="the log directory")
    r.add_argument("--after", type=int, default=0, metavar="SEQ", help="only records with seq > SEQ")
    r.add_argument("--limit", type=int, default=None, metavar="N", help="stop after N records")
    r.set_defaults(fn=_cmd_replay)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="ringwal: %(levelname)s: %(message)s")
    try:
        return args.fn(args)
    except (WALError, OSError) as exc:
        if args.debug:
            raise
        print(f"ringwal {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # pragma: no cover - e.g. piped into head
        return 0
    except KeyboardInterrupt:
        return 130
