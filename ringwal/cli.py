"""The ``ringwal`` command line (also ``python -m ringwal``).

Commands:
  verify --dir DIR    check every checksum, header, seq and the index; exit 0 when clean,
                      1 with one line per problem (file:offset: what) otherwise
  replay --dir DIR    print records as JSON lines (``--after SEQ``, ``--limit N``)
  serve --dir DIR     run the writer (durability sidecar) in the foreground; SIGTERM/SIGINT
                      drain the ring, fsync and exit 0; exits 2 at once if another writer
                      holds the directory, naming its pid

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


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    from .config import Config
    from .writer import _NameOnly, log_serializer, serve

    if args.detach:
        # Started by ringwal.open: fork so the launcher exits at once and the writer is not a
        # child of the producer (it must outlive it, and must not linger as its zombie).
        if os.fork():
            os._exit(0)
        os.setsid()
    name = args.serializer or log_serializer(args.dir) or "binary"
    config = Config(
        dir=args.dir,
        segment_size=args.segment_size,
        segment_duration=args.segment_duration,
        serializer=_NameOnly(name),
        flush_interval=args.flush_interval,
        write_buffer_size=args.write_buffer_size,
        max_record_size=args.max_record_size,
        ring_size=args.ring_size,
        producer_slots=args.producer_slots,
    )
    defaults = Config()
    for f in ("segment_size", "segment_duration", "write_buffer_size", "max_record_size", "ring_size", "producer_slots"):
        if getattr(args, f) is None:
            setattr(config, f, getattr(defaults, f))
    def announce(writer) -> None:
        if not args.detach:
            r = writer.ring
            print(
                f"ringwal serve: pid {os.getpid()} serving {writer.dir} (serializer {name}, "
                f"{r.slots} lanes of {r.ring_size} bytes); SIGTERM drains and exits",
                file=sys.stderr,
                flush=True,
            )

    return serve(config, linger=args.linger, ready_fd=args.ready_fd, announce=announce)


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
    s = sub.add_parser("serve", help="run the writer process in the foreground (the durability sidecar)")
    s.add_argument("--dir", required=True, help="the log directory")
    s.add_argument("--segment-size", type=int, default=None, metavar="B", help="rotate current.wal after B bytes (2 MiB)")
    s.add_argument("--segment-duration", type=float, default=None, metavar="S", help="rotate after S seconds (300)")
    s.add_argument("--serializer", default=None, metavar="NAME", help="serializer name (default: the one in the log, else binary)")
    s.add_argument("--flush-interval", type=float, default=None, metavar="S", help="fsync every S seconds even if nobody calls sync()")
    s.add_argument("--write-buffer-size", type=int, default=None, metavar="B", help="largest batch written per drain (1 MiB)")
    s.add_argument("--max-record-size", type=int, default=None, metavar="B", help="largest record payload (1 MiB)")
    s.add_argument("--ring-size", type=int, default=None, metavar="B", help="bytes of ring per producer lane (2 MiB)")
    s.add_argument("--producer-slots", type=int, default=None, metavar="N", help="producer lanes in the ring (32)")
    s.add_argument("--linger", type=float, default=None, help=argparse.SUPPRESS)
    s.add_argument("--detach", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    s.set_defaults(fn=_cmd_serve)
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
