"""Starting a writer: the one mapping between ``Config`` and ``ringwal serve``'s options, the
detached launch that ``ringwal.open`` does, and the ready/error line a writer reports on.

A producer that finds no writer runs ``python -m ringwal serve --detach --ready-fd N ...``
with the options ``serve_argv`` derives from its Config. The launcher forks (so the writer is
not the producer's child: it must outlive it and never linger as its zombie) and exits; the
writer opens the log and the ring and writes one JSON line to fd N:

* ``{"event": "ready", "pid": P}`` once it serves, or
* ``{"event": "error", "type": "LockedError", "message": "...", "attrs": {"pid": P, ...}}``
  when it could not start; ``attrs`` are the exception's coordinates (path, offset, pid...).

``start_writer`` reads that line with a deadline. A lost start race (another writer holds
``wal.lock``) is success: the producer attaches to the winner.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
from typing import Any

from . import errors as _errors
from ._fileutil import create_file
from .config import Config
from .errors import LockedError, WALError, WriterGoneError

__all__ = [
    "SERVE_OPTIONS",
    "add_serve_options",
    "config_from_args",
    "report_error",
    "report_ready",
    "serve_argv",
    "start_writer",
]

#: Config field -> (``ringwal serve`` option, type, metavar, help). The one place the two meet.
SERVE_OPTIONS: dict[str, tuple[str, type, str, str]] = {
    "segment_size": ("--segment-size", int, "B", "rotate current.wal after B bytes"),
    "segment_duration": ("--segment-duration", float, "S", "rotate a non-empty current.wal after S seconds"),
    "flush_interval": ("--flush-interval", float, "S", "fsync every S seconds even if nobody calls sync()"),
    "write_buffer_size": ("--write-buffer-size", int, "B", "largest batch written per drain"),
    "max_record_size": ("--max-record-size", int, "B", "largest record payload"),
    "ring_size": ("--ring-size", int, "B", "bytes of ring per producer lane"),
    "producer_slots": ("--producer-slots", int, "N", "producer lanes in the ring"),
    "retention_max_bytes": ("--retention-max-bytes", int, "B", "remove the oldest completed segments beyond B bytes"),
    "retention_max_age": (
        "--retention-max-age",
        float,
        "S",
        "remove completed segments closed more than S seconds ago",
    ),
    "log_level": ("--log-level", str, "LEVEL", "lowest level logged: debug, info, warning or error"),
    "metrics_port": (
        "--metrics-port",
        int,
        "PORT",
        "serve Prometheus metrics on PORT (0: any free port; ringwal[metrics])",
    ),
    "metrics_address": ("--metrics-address", str, "ADDR", "address the metrics endpoint listens on"),
    "group": ("--group", str, "NAME", "let this group's members append and read: directory 2770, files 0660"),
    # A flag (type bool): present means True.
    "keep_unshipped": (
        "--keep-unshipped",
        bool,
        "",
        "retention keeps every segment the shipper (ringwal ship) has not seen acknowledged",
    ),
}

#: Error attributes carried over the ready pipe, so the rebuilt exception keeps its coordinates.
_ATTRS = (
    "path", "offset", "pid", "expected", "computed", "first_seq", "last_seq", "reason", "needed", "available",
    "uid", "mode", "extra", "system", "machine", "stream", "seq", "directory", "first_gone", "first_available",
    "lane", "first_dropped",
)  # fmt: skip


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """Add one option per ``SERVE_OPTIONS`` entry; each defaults to None (= Config's default)."""
    defaults = Config()
    for field, (flag, typ, metavar, text) in SERVE_OPTIONS.items():
        default = getattr(defaults, field)
        if typ is bool:
            parser.add_argument(flag, action="store_true", default=None, dest=field, help=text)
            continue
        shown = "none" if default is None else default
        parser.add_argument(flag, type=typ, default=None, metavar=metavar, dest=field, help=f"{text} (default {shown})")


def serve_argv(config: Config) -> list[str]:
    """``ringwal serve`` options that reproduce ``config`` (floats exactly, via repr)."""
    argv = ["--dir", config.dir, "--serializer", config.serializer.name]
    for field, (flag, typ, _m, _h) in SERVE_OPTIONS.items():
        value = getattr(config, field)
        if typ is bool:
            if value:
                argv.append(flag)
        elif value is not None:
            argv += [flag, repr(value) if typ is float else str(value)]
    return argv


def config_from_args(args: argparse.Namespace, serializer: Any) -> Config:
    """The Config that ``ringwal serve`` options describe; unset options keep Config's defaults."""
    given = {f: getattr(args, f) for f in SERVE_OPTIONS if getattr(args, f, None) is not None}
    return Config(dir=args.dir, serializer=serializer, **given)


# --------------------------------------------------------------------------- the ready line


def report_ready(fd: int) -> None:
    _report(fd, {"event": "ready", "pid": os.getpid()})


def report_error(fd: int, exc: BaseException) -> None:
    attrs = {a: getattr(exc, a) for a in _ATTRS if isinstance(getattr(exc, a, None), (int, str))}
    _report(fd, {"event": "error", "type": type(exc).__name__, "message": str(exc), "attrs": attrs})


def _report(fd: int, message: dict[str, Any]) -> None:
    try:
        os.write(fd, json.dumps(message).encode() + b"\n")
        os.close(fd)
    except OSError:
        pass  # the producer that asked gave up waiting: nothing to tell


def _rebuild(message: dict[str, Any], directory: str) -> BaseException:
    """The exception a writer reported, as its own type when it is a ringwal error."""
    name, text, attrs = message.get("type", ""), message.get("message", ""), message.get("attrs", {})
    cls = getattr(_errors, str(name), None)
    if isinstance(cls, type) and issubclass(cls, WALError):
        kwargs: dict[str, Any]
        for kwargs in (attrs, {}):
            try:
                return cls(text, **kwargs)
            except TypeError:
                continue
    return WriterGoneError(f"could not start a writer for {directory}: {name}: {text}")


# --------------------------------------------------------------------------- launching


def start_writer(config: Config, linger: float, deadline: float) -> bool:
    """Start a detached writer for ``config.dir``; True once it serves or another writer won
    the start race, False when it died before saying anything (killed while starting, as a
    writer can be at any moment: the caller may start another while its deadline lasts).
    Raises the writer's own error (rebuilt) when it reported one, and WriterGoneError when
    its launcher did not return or it said something else before ``deadline``
    (time.monotonic)."""
    directory = config.dir
    cmd = [sys.executable, "-m", "ringwal", "serve", *serve_argv(config), "--linger", repr(linger), "--detach"]
    r, w = os.pipe()
    try:
        cmd += ["--ready-fd", str(w)]
        # A producer run by systemd (Type=notify) passes NOTIFY_SOCKET on; its writer is not
        # the service's main process and must not speak for it.
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        with os.fdopen(create_file(os.path.join(directory, "writer.log"), os.O_WRONLY | os.O_APPEND), "ab") as logf:
            proc = subprocess.Popen(
                cmd, pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=logf,
                start_new_session=True, close_fds=True, env=env,
            )  # fmt: skip
        os.close(w)
        w = -1
        try:  # the launcher forks the writer and exits at once (no zombie left here)
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise WriterGoneError(
                f"could not start a writer for {directory}: its launcher did not return in time; "
                f"see {directory}/writer.log"
            ) from None
        line = _read_line(r, deadline)
    finally:
        if w >= 0:
            os.close(w)
        os.close(r)
    try:
        message = json.loads(line) if line else {}
    except ValueError:
        message = {}
    event = message.get("event") if isinstance(message, dict) else None
    if event == "ready":
        return True
    if event == "error":
        exc = _rebuild(message, directory)
        if isinstance(exc, LockedError):
            return True  # another writer won the lock: attach to it
        raise exc
    if not line:
        return False  # the ready pipe closed unwritten: the writer died (or it said nothing by the deadline)
    raise WriterGoneError(f"could not start a writer for {directory}: {line}; see {directory}/writer.log")


def detach() -> None:
    """In ``ringwal serve --detach``: fork; the parent (the launcher) exits at once."""
    if os.fork():
        os._exit(0)
    os.setsid()


def _read_line(fd: int, deadline: float) -> str:
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
