"""The ``ringwal`` command line (also ``python -m ringwal``).

Commands (each has ``--help``; ``ringwal --version`` prints the version):
  stats     segments, seq range, bytes, records; the running writer's pid, uptime, ring fill,
            producers, durable seq, fsync latency percentiles and records/s (``--json``)
  dump      records as JSON lines or text (``--after SEQ``, ``--since TIME``, ``--limit N``,
            ``--format``)
  tail      the last records (``-n``), or those after ``--after`` / from ``--since TIME``;
            ``-f`` follows new ones as they become durable, across rotations and writer
            restarts, until Ctrl-C
  verify    check every checksum, header, seq and the index; exit 0 when clean, 1 with one
            line per problem (file:offset: what) otherwise (``--json``)
  repair    salvage a damaged log: cut damaged bytes, keep ``.broken`` copies, record lost
            seqs in wal_holes.json, rebuild the index (``--dry-run`` shows the plan)
  append    append stdin lines as records through the writer (``--json``)
  truncate  remove completed segments whose records are all below ``--before SEQ`` (``--json``)
  serve     run the writer (durability sidecar) in the foreground; SIGTERM/SIGINT drain
            the ring, fsync and exit 0; exits 1 at once if another writer holds the directory.
            Logs with UTC timestamps and levels (``--log-level``), tells systemd it is ready
            (``$NOTIFY_SOCKET``), serves Prometheus metrics (``--metrics-port``)
  rings     list the shared-memory rings in /dev/shm and whether their logs are still there
            (``--dir`` only that log's); ``--clean`` removes those of logs that are gone and
            hold no records (``--force``: also those that do), ``--remove NAME`` one by name
  ship      publish every durable record to a NATS JetStream stream, exactly once, in seq
            order, until SIGTERM/SIGINT (``--until-caught-up``: what is durable now, then exit)
  restore   rebuild a log directory from such a stream (``--follow``: keep it up to date)

Every command takes ``--dir``; without it, ``$RINGWAL_DIR``. A directory that is missing or
holds no log is an error for every command but ``append`` and ``serve`` (which create one).

Exit status, as Unix tools use it: 0 success; 1 a runtime failure (verify found problems, a
corrupt log, no log in the directory, the lock held by another writer, the writer gone); 2 a
usage error (a bad option or setting); 130 after Ctrl-C. Errors print one line on stderr;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, LockedError, WALError
from .serializers import BaseSerializer
from .since import DEFAULT_CLOCK_SKEW

if TYPE_CHECKING:
    from .config import Config
    from .record import Record
    from .writer import Writer

log = logging.getLogger("ringwal")

#: Exit statuses (module docstring).
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _require_log(directory: str) -> str:
    from .segment import require_log

    return require_log(directory)


# ---------------------------------------------------------------------- printing records


def _data_fields(data: bytes) -> dict[str, str | None]:
    """The data of a jsonl row: the same two keys in every row, so ``jq`` filters never miss.

    ``text`` is the data as UTF-8 (null when it is not valid UTF-8); ``base64`` is always
    the exact bytes."""
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {"text": text, "base64": base64.b64encode(data).decode()}


def _print_records(records: Iterable[Record], fmt: str, limit: int | None = None, flush: bool = False) -> int:
    out = sys.stdout
    n = 0
    for rec in records:
        n += 1
        if fmt == "jsonl":
            out.write(json.dumps({"seq": rec.seq, "type": rec.type, "time": rec.time, **_data_fields(rec.data)}) + "\n")
        else:
            try:
                secs, ns = divmod(rec.time, 1_000_000_000)
                when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ns:09d}Z"
            except (OverflowError, OSError, ValueError):
                when = f"{rec.time}ns"  # outside what the C library can show as a date
            d = _data_fields(rec.data)
            shown = d["text"] if d["text"] is not None else f"base64:{d['base64']}"
            out.write(f"{rec.seq}\t{rec.type}\t{when}\t{shown}\n")
        if flush:
            out.flush()
        if limit is not None and n >= limit:
            break
    return n


def _cmd_dump(args: argparse.Namespace) -> int:
    from .replay import replay

    d = _require_log(args.dir)
    records = replay(d, args.after, skip_holes=args.skip_holes, since=args.since, clock_skew=args.clock_skew)
    _print_records(records, args.format, args.limit)
    return 0


def _cmd_tail(args: argparse.Namespace) -> int:
    from .follow import follow
    from .replay import replay

    d = _require_log(args.dir)
    by_time = {"since": args.since, "clock_skew": args.clock_skew}
    if args.follow:

        def records(after: int) -> Iterator[Record]:
            return follow(d, after, skip_holes=args.skip_holes, poll_interval=args.poll, **by_time)
    else:

        def records(after: int) -> Iterator[Record]:
            return replay(d, after, skip_holes=args.skip_holes, **by_time)

    if args.after is not None or args.since is not None:
        it = records(args.after or 0)
    else:
        # like tail(1): start at the last N records
        from .stats import log_stats

        st = log_stats(d)
        it = _from_last(records, max((st["last_seq"] or 0) - args.lines, (st["first_seq"] or 1) - 1, 0))
    if not args.follow:
        _print_records(it, args.format)
        return 0
    # Runs until Ctrl-C: main() turns the KeyboardInterrupt into exit status 130, and the
    # generator's close unregisters the follower (its lock goes with the process in any case).
    try:
        _print_records(it, args.format, flush=True)
    finally:
        _close(it)
    return 0


def _close(it: Iterator[Record]) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


def _from_last(records: Callable[[int], Iterator[Record]], after: int) -> Iterator[Record]:
    """``records(after)``, where ``after`` was picked from the log's first seq: if retention
    moved the start past it before anything was printed, start where the log starts now
    (that is what "the last N" asks for); once something was printed, a removal is an error."""
    from .errors import RecordsRemovedError

    for _attempt in range(100):  # each retry follows a removal: bounded, like every wait
        printed = False
        it = records(after)
        try:
            for rec in it:
                printed = True
                yield rec
            return
        except RecordsRemovedError as exc:
            if printed:
                raise
            after = exc.first_available - 1
        finally:
            _close(it)
    yield from records(after)


# ---------------------------------------------------------------------- verify, repair


class _Progress:
    """A one-line progress bar on stderr, drawn only on a terminal and for big logs."""

    MIN_BYTES = 16 << 20

    def __init__(self) -> None:
        self.on = sys.stderr.isatty()
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.on or total < self.MIN_BYTES:
            return
        width = 40
        filled = width * done // max(total, 1)
        sys.stderr.write(f"\rverifying [{'#' * filled}{'.' * (width - filled)}] {done >> 20}/{total >> 20} MiB")
        sys.stderr.flush()
        self.drawn = True

    def done(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify

    bar = _Progress() if not args.json else None
    try:
        report = verify(args.dir, progress=bar)
    finally:
        if bar is not None:
            bar.done()
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
        return 0 if report.ok else 1
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    for hole in report.holes:
        print(f"hole: {hole.describe()}", file=sys.stderr)
    for problem in report.problems:
        print(problem)
    span = f"seqs {report.first_seq}-{report.last_seq}" if report.last_seq is not None else "no records"
    status = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    holes = f", {len(report.holes)} recorded hole(s)" if report.holes else ""
    print(
        f"{status}: {report.segments} segment(s), {report.records} record(s), {span}, {report.bytes} bytes{holes}",
        file=sys.stderr,
    )
    return 0 if report.ok else 1


def _cmd_repair(args: argparse.Namespace) -> int:
    from .repair import repair

    report = repair(_require_log(args.dir), dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
        return 0
    prefix = "would: " if args.dry_run else ""
    for line in report.actions:
        print(prefix + line)
    if not report.changed:
        print("nothing to repair", file=sys.stderr)
    else:
        lost = sum(h.records for h in report.holes)
        what = "would record" if args.dry_run else "recorded"
        print(
            f"{'dry run: ' if args.dry_run else 'repaired: '}{what} {len(report.holes)} hole(s), {lost} record(s) lost",
            file=sys.stderr,
        )
    return 0


# ---------------------------------------------------------------------- stats, append, truncate


def _cmd_stats(args: argparse.Namespace) -> int:
    from .stats import format_stats, log_stats

    st = log_stats(_require_log(args.dir))
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        print(format_stats(st))
    return 0


def _log_config(directory: str, **kw: Any) -> Config:
    from .config import Config
    from .serializers import get_serializer
    from .writer import log_serializer

    name = log_serializer(directory) or "binary"
    return Config(dir=directory, serializer=get_serializer(name), **kw)


def _cmd_append(args: argparse.Namespace) -> int:
    import select

    import ringwal

    from .record import Record

    fd = sys.stdin.fileno()
    n = 0
    first = last = None
    with ringwal.open(_log_config(args.dir)) as h:
        pending = b""
        while True:
            chunk = os.read(fd, 1 << 16)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
            else:
                lines, pending = ([pending] if pending else []), b""
            if lines:
                now = time.time_ns()
                r = h.append_many([Record(args.type, now, line) for line in lines])
                n += len(lines)
                if first is None:
                    first = r
            if not chunk:
                break
            if n and not select.select([fd], [], [], 0)[0]:
                last = h.sync()  # the input paused: make what we have durable now
        last = h.sync()
        first_seq = first.seqs[0] if first is not None else None
        span = f"seqs {first_seq}-{last}" if first is not None else "nothing"
    if args.json:
        print(json.dumps({"records": n, "first_seq": first_seq, "last_seq": last if n else None, "durable": True}))
    print(f"appended {n} record(s): {span}", file=sys.stderr)
    return 0


def _cmd_truncate(args: argparse.Namespace) -> int:
    from .config import Config
    from .seglog import SegmentLog
    from .writer import log_serializer

    d = _require_log(args.dir)
    try:
        wal = SegmentLog(Config(dir=d), log_serializer(d) or "binary")  # never encodes: any serializer works
    except LockedError:
        # A writer runs: ask it (through the ring) as a producer would.
        import ringwal

        with ringwal.open(_log_config(d, start_writer=False)) as h:
            first = h.truncate_before(args.before)
        if args.json:  # the writer logs what it removed (writer.log); here only the outcome is known
            print(json.dumps({"before": args.before, "first_seq": first, "by_writer": True, "removed": None}))
        print(f"the writer truncated the log before seq {args.before}; it now starts at seq {first}", file=sys.stderr)
        return 0
    try:
        removed, first = wal.truncate_before(args.before)
    finally:
        wal.close()
    if args.json:
        rows = [{"file": e.file, "first_seq": e.first_seq, "last_seq": e.last_seq, "bytes": e.size} for e in removed]
        print(json.dumps({"before": args.before, "first_seq": first, "by_writer": False, "removed": rows}))
    else:
        for e in removed:
            print(f"removed {e.file} (seqs {e.first_seq}-{e.last_seq}, {e.size} bytes)")
    print(f"{len(removed)} segment(s) removed; the log now starts at seq {first}", file=sys.stderr)
    return 0


class _SerializerName(BaseSerializer):
    """Stands for the log's serializer in ``serve``: the writer copies encoded bytes and needs
    only the name, which may belong to a serializer registered in the producers alone."""

    def __init__(self, name: str) -> None:
        self.name = name  # type: ignore[misc]

    def encode(self, record: Record) -> bytes:  # pragma: no cover - the writer never encodes
        raise TypeError(f"the writer process does not encode records (serializer {self.name!r} runs in producers)")

    def decode(self, payload: bytes, seq: int) -> Record:  # pragma: no cover - the writer never decodes
        raise TypeError(f"the writer process does not decode records (serializer {self.name!r} runs in readers)")


def _cmd_serve(args: argparse.Namespace) -> int:
    from ._launch import config_from_args, detach
    from .writer import log_serializer, serve

    if args.detach:
        detach()  # started by ringwal.open: not the producer's child
    name = args.serializer or log_serializer(args.dir) or "binary"
    config = config_from_args(args, _SerializerName(name))

    def announce(writer: Writer) -> None:
        r = writer.ring
        if r is None:  # pragma: no cover - serve announces a writer that is serving
            raise RuntimeError("announce called with a writer that has shut down")
        log.info(
            "pid %d serving %s (serializer %s, %d lanes of %d bytes); SIGTERM drains and exits",
            os.getpid(), writer.dir, name, r.slots, r.ring_size,
        )  # fmt: skip

    return serve(config, linger=args.linger, ready_fd=args.ready_fd, announce=announce, notify=not args.detach)


class _UTCFormatter(logging.Formatter):
    """``2024-05-01T12:00:00.123Z LEVEL ringwal[pid]: message``: sortable, zone-free, greppable."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _setup_logging(command: str, level: str | None, debug: bool) -> None:
    """``serve`` logs timestamped lines at ``level`` (its stderr is ``writer.log`` when ``open``
    started it); the other commands print warnings and errors as ``ringwal: LEVEL: message``."""
    from .config import LOG_LEVELS

    handler = logging.StreamHandler(sys.stderr)
    if command == "serve":
        handler.setFormatter(_UTCFormatter("%(asctime)s %(levelname)s ringwal[%(process)d]: %(message)s"))
        name = "debug" if debug else (level if level in LOG_LEVELS else "info")
    else:
        handler.setFormatter(logging.Formatter("ringwal: %(levelname)s: %(message)s"))
        name = "debug" if debug else "warning"
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, name.upper()))


def _dir_from_env(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if getattr(args, "dir", None) is None:
        env = os.environ.get("RINGWAL_DIR")
        if not env and not getattr(args, "dir_required", True):
            return  # a command that works without a directory (rings)
        if not env:
            parser.error("--dir is required (or set RINGWAL_DIR)")  # exits 2
        args.dir = env


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _seq(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a seq >= 0, got {text}")
    return value


def _record_type(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 1..65535, got {text}")
    return value


def _cmd_rings(args: argparse.Namespace) -> int:
    from .ring import clean_orphans, list_rings, remove_ring

    for name in args.remove or ():
        if remove_ring(name):
            print(f"removed {name}", file=sys.stderr)
        else:
            print(f"no ring {name}", file=sys.stderr)
    if args.clean:
        for info in clean_orphans(unwritten_too=args.force):
            lost = f", {info.unwritten} unwritten record(s) lost" if info.unwritten else ""
            print(f"removed {info.name} (log {info.log_id}: {info.why}{lost})", file=sys.stderr)
    rings = list_rings()
    if args.dir is not None:
        d = os.path.abspath(args.dir)
        rings = [r for r in rings if r.directory == d]
    if args.json:
        print(json.dumps([r.to_json() for r in rings], indent=1))
        return 0
    for r in rings:
        what = f"log {r.log_id} in {r.directory}, {r.state}, " if r.log_id else ""
        held = f"{r.unwritten} unwritten record(s), " if r.unwritten else ""
        print(f"{r.name}\t{r.verdict}\t{what}{held}{r.size} bytes, uid {r.uid} mode {r.mode:04o}: {r.why}")
    orphans = [r for r in rings if r.verdict == "orphan"]
    if orphans and not args.clean:
        print(
            f"{len(orphans)} orphan(s): `ringwal rings --clean` removes those holding no records "
            "(--force: all of them; their records are lost)",
            file=sys.stderr,
        )
    return 0


def _skew_arg(text: str) -> float:
    from .since import check_skew

    try:
        value = float(text)
        check_skew(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds >= 0 (inf: read every segment), got {text}"
        ) from exc
    return value


def _time_arg(text: str) -> int:
    from .since import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ---------------------------------------------------------------------- ship, restore (issue 16)


def _stop_on_signals() -> tuple[Any, dict[int, Any], list[int]]:
    """(stop event set by SIGTERM/SIGINT, the handlers replaced, the signals received)."""
    import signal
    import threading

    stop = threading.Event()
    got: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        got.append(signum)
        stop.set()

    return stop, {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}, got


def _restore_signals(old: dict[int, Any]) -> None:
    import signal

    for s, h in old.items():
        signal.signal(s, h)


def _cmd_ship(args: argparse.Namespace) -> int:
    from .ship import Shipper
    from .shipped import _durable_seq

    d = _require_log(args.dir)
    shipper = Shipper(
        d,
        args.server,
        args.stream,
        subject=args.subject,
        window=args.window,
        create_stream=args.create_stream,
        replicas=args.replicas,
        ack_timeout=args.ack_timeout,
        retry_timeout=args.retry_timeout,
        lock_timeout=args.lock_timeout,
    )
    until = _durable_seq(d) if args.until_caught_up else None
    stop, old, got = _stop_on_signals()
    print(f"ringwal ship: pid {os.getpid()} shipping {d} to stream {args.stream} ({shipper.subject})",
          file=sys.stderr, flush=True)  # fmt: skip
    try:
        last = shipper.run(stop, until_seq=until)
    finally:
        _restore_signals(old)
    if got and until is not None and last < until:
        print(f"ringwal ship: interrupted at seq {last} of {until}: not caught up", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"shipped up to seq {last} to stream {args.stream}", file=sys.stderr)
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    from .ship import restore

    stop, old, got = _stop_on_signals()
    try:
        last = restore(
            args.dir,
            args.server,
            args.stream,
            subject=args.subject,
            follow=args.follow,
            serializer=args.serializer,
            segment_size=args.segment_size,
            stop=stop,
            retry_timeout=args.retry_timeout,
        )
    finally:
        _restore_signals(old)
    if got and not args.follow:
        print(f"ringwal restore: interrupted at seq {last}: {os.path.abspath(args.dir)} is not complete; "
              "run restore again to go on", file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    print(f"restored {os.path.abspath(args.dir)} from stream {args.stream} up to seq {last}", file=sys.stderr)
    return 0


def _ship_parsers(cmd: Callable[..., argparse.ArgumentParser]) -> None:
    def nats_opts(c: argparse.ArgumentParser) -> None:
        c.add_argument("--server", action="append", required=True, metavar="URL",
                       help="a NATS server (nats://host:4222); repeat for more of the cluster")  # fmt: skip
        c.add_argument("--stream", required=True, metavar="NAME", help="the JetStream stream (one per log)")
        c.add_argument("--subject", default=None, metavar="SUBJ",
                       help="the log's subject (ship: ringwal.<log id>; restore: the stream's only one)")  # fmt: skip
        c.add_argument("--retry-timeout", type=float, default=120.0, metavar="S",
                       help="give up after S seconds without progress (120)")  # fmt: skip

    c = cmd("ship", _cmd_ship, "publish durable records to a NATS JetStream stream, exactly once, in seq order")
    nats_opts(c)
    c.add_argument("--create-stream", action="store_true", help="create the stream (file storage) if it is missing")
    c.add_argument("--replicas", type=int, default=3, metavar="N", help="replicas of a stream it creates (3)")
    c.add_argument("--window", type=int, default=1024, metavar="N", help="most publishes awaiting acknowledgement")
    c.add_argument("--ack-timeout", type=float, default=10.0, metavar="S",
                   help="resynchronise with the stream when an acknowledgement takes longer (10)")  # fmt: skip
    c.add_argument("--lock-timeout", type=float, default=10.0, metavar="S",
                   help="wait this long for another shipper of the log to exit (10)")  # fmt: skip
    c.add_argument("--until-caught-up", action="store_true",
                   help="ship what is durable now, then exit (default: run until SIGTERM/SIGINT)")  # fmt: skip
    c = cmd("restore", _cmd_restore, "rebuild a log directory (--dir) from a stream that ringwal ship filled")
    nats_opts(c)
    c.add_argument("--follow", action="store_true", help="keep applying new messages until SIGTERM/SIGINT")
    c.add_argument("--serializer", default=None, metavar="NAME", help="serializer of a new log (binary)")
    c.add_argument("--segment-size", type=int, default=None, metavar="B", help="segment size of a new log")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from ._launch import add_serve_options
    from .format import FORMAT_VERSION, RING_VERSION

    p = argparse.ArgumentParser(
        prog="ringwal",
        description="A durable write-ahead log shared by many processes.",
        epilog="--dir defaults to $RINGWAL_DIR. Exit status: 0 ok, 1 failure, 2 usage error, 130 interrupted.",
    )
    p.add_argument(
        "--version",
        action="version",
        version=f"ringwal {__version__} (segment format {FORMAT_VERSION}, ring layout {RING_VERSION})",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(
        name: str, fn: Callable[[argparse.Namespace], int], text: str, dir_required: bool = True, **kw: Any
    ) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=text, description=text, **kw)
        c.add_argument("--dir", default=None, help="the log directory (default: $RINGWAL_DIR)")
        c.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug logging"
        )
        c.set_defaults(fn=fn, parser=c, dir_required=dir_required)
        return c

    def records_opts(c: argparse.ArgumentParser) -> None:
        c.add_argument(
            "--format",
            choices=("jsonl", "text"),
            default="jsonl",
            help="JSON lines (default; every row has seq, type, time, text (null unless UTF-8) and base64) "
            "or tab-separated text",
        )
        c.add_argument(
            "--skip-holes",
            action="store_true",
            help="step over seqs recorded as lost (by repair, or a failed fsync) instead of failing",
        )
        c.add_argument(
            "--since",
            type=_time_arg,
            default=None,
            metavar="TIME",
            help="start at the first record whose time is at or after TIME (ISO 8601 with a zone, e.g. "
            "2026-11-30T10:00:00Z, or ns since the epoch), then print every record after it",
        )
        c.add_argument(
            "--clock-skew",
            type=_skew_arg,
            default=DEFAULT_CLOCK_SKEW,
            metavar="S",
            help="how far (s) a producer's clock may run ahead of the writer's for --since to be exact; "
            f"segments closed before TIME - S are skipped unread ({DEFAULT_CLOCK_SKEW:g}; inf reads them all)",
        )

    c = cmd("stats", _cmd_stats, "segments, seq range, bytes and records; the running writer's figures")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c = cmd("dump", _cmd_dump, "print records (data as UTF-8 text when it decodes, and as base64)")
    c.add_argument("--after", type=_seq, default=0, metavar="SEQ", help="only records with seq > SEQ")
    c.add_argument("--limit", type=int, default=None, metavar="N", help="stop after N records")
    records_opts(c)
    c = cmd("replay", _cmd_dump, "the same as dump (kept for scripts written against 0.1)")
    c.add_argument("--after", type=_seq, default=0, metavar="SEQ", help="only records with seq > SEQ")
    c.add_argument("--limit", type=int, default=None, metavar="N", help="stop after N records")
    records_opts(c)
    c = cmd(
        "tail", _cmd_tail, "print the last records; with -f, print new ones as they become durable until interrupted"
    )
    c.add_argument("-f", "--follow", action="store_true", help="keep printing records as they become durable")
    c.add_argument("-n", "--lines", type=int, default=10, metavar="N", help="start with the last N records (10)")
    c.add_argument("--after", type=_seq, default=None, metavar="SEQ", help="start after SEQ instead of the last N")
    c.add_argument(
        "--poll", type=_positive_float, default=0.1, metavar="S", help="longest sleep between looks at the files (0.1)"
    )
    records_opts(c)
    c = cmd("verify", _cmd_verify, "check a log's checksums, headers, seqs and index (exit 1 on problems)")
    c.add_argument("--json", action="store_true", help="print the report as one JSON object")
    c = cmd("repair", _cmd_repair, "salvage a damaged log; lost seqs are recorded, originals kept as .broken")
    c.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")
    c.add_argument("--json", action="store_true", help="print the report as one JSON object")
    c = cmd("append", _cmd_append, "append each line of stdin as one record, through the writer")
    c.add_argument("--type", type=_record_type, default=1, metavar="T", help="record type, 1..65535 (1)")
    c.add_argument("--json", action="store_true", help="print what was appended as one JSON object on stdout")
    c = cmd("truncate", _cmd_truncate, "remove completed segments whose records all have seq < SEQ")
    c.add_argument("--before", type=_seq, required=True, metavar="SEQ", help="keep every record with seq >= SEQ")
    c.add_argument("--json", action="store_true", help="print what was removed as one JSON object on stdout")
    s = cmd("serve", _cmd_serve, "run the writer process in the foreground (the durability sidecar)")
    s.add_argument(
        "--serializer", default=None, metavar="NAME", help="serializer name (default: the one in the log, else binary)"
    )
    add_serve_options(s)
    c = cmd("rings", _cmd_rings, "list the shared-memory rings and whether their logs are still there", False)
    c.add_argument("--json", action="store_true", help="print one JSON list")
    c.add_argument("--clean", action="store_true", help="remove the rings of logs that are gone (holding no records)")
    c.add_argument("--force", action="store_true", help="with --clean: also those holding records (they are lost)")
    c.add_argument(
        "--remove", action="append", metavar="NAME", help="remove this ring (ringwal.<...>) and its semaphore"
    )
    s.add_argument("--linger", type=float, default=None, help=argparse.SUPPRESS)
    s.add_argument("--detach", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    _ship_parsers(cmd)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status (module docstring): 0, 1 failure, 2 usage, 130 Ctrl-C."""
    args = build_parser().parse_args(argv)
    _dir_from_env(args, args.parser)
    _setup_logging(args.command, getattr(args, "log_level", None), args.debug)
    fn: Callable[[argparse.Namespace], int] = args.fn
    try:
        return fn(args)
    except BrokenPipeError:  # e.g. piped into head: not an error
        with_devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(with_devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (WALError, OSError, ValueError) as exc:
        if args.debug:
            raise
        code = EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILURE
        if args.command != "serve":
            print(f"ringwal {args.command}: error: {exc}", file=sys.stderr)
        elif isinstance(exc, LockedError) and args.detach:
            # Started by ringwal.open and another writer won the lock: the normal outcome of
            # a start race (the producer attaches to the winner), not worth an error line.
            log.debug("another writer won the start race: %s", exc)
        else:
            log.error("%s: %s", type(exc).__name__, exc)
        return code
