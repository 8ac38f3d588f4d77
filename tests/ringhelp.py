"""Helpers for tests that run real writer and producer processes over a real ring."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time

import posix_ipc
import psutil

from ringwal import WALError, replay
from ringwal.ring import Ring, ring_names

from .conftest import ROOT, spawn_child

#: A producer: appends N records tagged with TAG, syncing every SYNC_EVERY, printing acks.
PRODUCER = """
import os, sys, ringwal
d, tag, n, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
start_writer = sys.argv[5] == "1" if len(sys.argv) > 5 else True
cfg = ringwal.Config(dir=d, start_writer=start_writer, writer_wait=float(os.environ.get("WW", "10")),
                     writer_linger=0.0, sync_timeout=20)
try:
    h = ringwal.open(cfg)
    print("attached", h.lane, flush=True)
    for i in range(n):
        h.append(ringwal.Record(1, i, b"%s:%d|" % (tag.encode(), i) + bytes(40)))
        if (i + 1) % every == 0:
            print("acked", i, h.sync(), flush=True)
    h.close()
except ringwal.WALError as exc:
    print("error", type(exc).__name__, exc, flush=True)
    sys.exit(3)
print("done", flush=True)
"""

#: A writer whose Writer subclass SIGKILLs itself at a named crash point.
KILLABLE_WRITER = """
import os, signal, sys
import ringwal
from ringwal.writer import Writer, serve
d, point, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
calls = {"n": 0}

def maybe_die(name):
    if name == point:
        calls["n"] += 1
        if calls["n"] == nth:
            os.kill(os.getpid(), signal.SIGKILL)

class Killable(Writer):
    def _at(self, name):
        maybe_die(name)

def fdatasync(fd):
    maybe_die("fdatasync")
    os.fdatasync(fd)

class WithSeam(Killable):
    def __init__(self, config, linger=None):
        super().__init__(config, linger=linger, fdatasync=fdatasync)

def announce(w):
    print("serving", os.getpid(), flush=True)

sys.exit(serve(ringwal.Config(dir=d, segment_size=16384), announce=announce, writer_class=WithSeam))
"""


spawn = spawn_child


def read_line(p: subprocess.Popen, timeout: float = 60.0, stream: str = "stdout") -> str:
    """The next line the child prints, waiting at most ``timeout`` (raises on EOF/timeout).

    Reads the pipe a byte at a time with ``os.read``: a buffered ``readline`` can pull two
    lines into Python's buffer, and a ``select`` on the pipe for the second then waits for
    bytes that have already arrived (a writer printing a recovery warning and its "serving"
    line together hung start_serve that way).
    """
    fd = getattr(p, stream).fileno()
    deadline = time.monotonic() + timeout
    line = bytearray()
    while True:
        left = deadline - time.monotonic()
        ready = select.select([fd], [], [], left)[0] if left > 0 else []
        if not ready:
            # Say where it was stuck: its Python stack (py-spy when installed) and what it printed.
            where = ""
            with contextlib.suppress(Exception):
                where = subprocess.run(["py-spy", "dump", "--pid", str(p.pid)], capture_output=True, text=True, timeout=20).stdout
            p.kill()
            _, err = p.communicate(timeout=10)
            raise AssertionError(f"child printed nothing on {stream} for {timeout}s (partial line {bytes(line)!r}); stack:\n{where}\nstderr:\n{err}")
        b = os.read(fd, 1)
        if not b:
            raise AssertionError(f"child exited ({p.wait(10)}): {p.stderr.read() if stream == 'stdout' else ''}")
        if b == b"\n":
            return line.decode("utf-8", "replace")
        line += b


def start_serve(directory: str, *extra: str) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-m", "ringwal", "serve", "--dir", directory, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    lines = []
    while True:  # recovery warnings may come first
        line = read_line(p, stream="stderr")
        lines.append(line)
        if "serving" in line:
            p.startup_lines = lines  # type: ignore[attr-defined]
            return p
        assert " WARNING " in line or " INFO " in line, lines  # recovery and start-up notes


def writer_pid(directory: str) -> int:
    """The writer's pid as it stored it (meaningful here only when it runs in our PID namespace)."""
    ring = Ring.attach(directory)
    try:
        return ring.writer_pid()
    finally:
        ring.close()


def stop_process(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until it is stopped (kill returns before the signal lands)."""
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, 20, f"pid {pid} to stop")


def wait_until(cond, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``cond`` (another process's progress) until true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def ring_objects(directory: str) -> list[str]:
    """Names in /dev/shm that belong to this directory's ring (memory and semaphores)."""
    try:
        base = ring_names(directory)[0].lstrip("/")
    except (OSError, WALError):
        return []  # no log there (any more): no name to look for
    return sorted(n for n in os.listdir("/dev/shm") if n == base or n.startswith("sem." + base))


def kill_writers(directory: str) -> None:
    """Test teardown: SIGKILL any writer of ``directory`` and remove its ring."""
    with contextlib.suppress(FileNotFoundError, OSError, WALError):
        pid = writer_pid(directory)
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            # The pid is the one the writer saw: in another PID namespace it names another
            # process here, so kill only a process that names this directory.
            if directory in " ".join(p.cmdline()):
                p.send_signal(signal.SIGKILL)
                p.wait(10)
    from ringwal.ring import unlink_names

    with contextlib.suppress(OSError):
        unlink_names(directory)
    with contextlib.suppress(posix_ipc.Error, OSError, WALError):
        posix_ipc.unlink_shared_memory(ring_names(directory)[0])


def check_log(directory: str, acked: dict[str, int], complete: dict[str, int] | None = None) -> dict[str, list[int]]:
    """Replay and check: seqs gap-free, each producer's records in order, once, every acked one present.

    ``acked[tag]`` is the highest index acknowledged by sync; ``complete[tag]`` (optional)
    is the exact number of records the producer appended and must all be there.
    """
    per: dict[str, list[int]] = {}
    expect_seq = 1
    for r in replay(directory, 0):
        assert r.seq == expect_seq, (r.seq, expect_seq)
        expect_seq += 1
        tag, _, rest = r.data.partition(b":")
        i = int(rest.split(b"|", 1)[0])
        assert r.time == i
        per.setdefault(tag.decode(), []).append(i)
    for tag, idx in per.items():
        assert idx == list(range(len(idx))), f"{tag}: records out of order, duplicated or missing: {idx[:20]}..."
    for tag, top in acked.items():
        assert len(per.get(tag, [])) > top, f"{tag}: acked record {top} missing (have {len(per.get(tag, []))})"
    for tag, n in (complete or {}).items():
        assert len(per.get(tag, [])) == n, f"{tag}: expected {n} records, found {len(per.get(tag, []))}"
    return per


def collect(p: subprocess.Popen, timeout: float = 60.0) -> tuple[int, list[str]]:
    """Wait for a producer; return (highest acked index, all its output lines)."""
    out, err = p.communicate(timeout=timeout)
    lines = out.splitlines()
    top = -1
    for line in lines:
        if line.startswith("acked"):
            top = max(top, int(line.split()[1]))
    return top, lines + ["stderr: " + err] if err.strip() else lines


def to_version_1(path: str) -> None:
    """Rewrite a segment as ringwal wrote it before log ids: a 64-byte header, no id, and
    version 1 frames (bytes 16-19 zero, not the synced end of format 2)."""
    from ringwal.format import FRAME_HEADER, FRAME_HEADER_SIZE, SegmentHeader, align8, encode_frame

    data = open(path, "rb").read()
    h = SegmentHeader.decode(data, path)
    out = [SegmentHeader(h.serializer, h.first_seq, h.created_ns, version=1).encode()]
    pos = h.size
    while pos + FRAME_HEADER_SIZE <= len(data) and any(data[pos : pos + FRAME_HEADER_SIZE]):
        length, count, first_seq, _synced, _crc = FRAME_HEADER.unpack_from(data, pos)
        body = data[pos + FRAME_HEADER_SIZE : pos + FRAME_HEADER_SIZE + length]
        out.extend(encode_frame(body, count, first_seq))
        pos += FRAME_HEADER_SIZE + align8(length)
    with open(path, "wb") as f:
        f.write(b"".join(out) + data[pos:])


def wait_exit(p: subprocess.Popen, timeout: float = 30) -> int:
    """``p.wait(timeout)``; when it does not exit in time, fail saying where it is stuck: its
    Python stack (py-spy), its signal masks (a SIGINT inherited as ignored or blocked would
    explain a Ctrl-C that does nothing) and what it printed on stderr."""
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        where = masks = ""
        with contextlib.suppress(Exception):
            where = subprocess.run(["py-spy", "dump", "--pid", str(p.pid)], capture_output=True, text=True, timeout=20).stdout
        with contextlib.suppress(OSError):
            masks = "".join(x for x in open(f"/proc/{p.pid}/status") if x.startswith(("Sig", "Shd")))
        p.kill()
        _, err = p.communicate(timeout=10)
        raise AssertionError(f"child did not exit within {timeout}s; stack:\n{where}\nmasks:\n{masks}\nstderr:\n{err}") from None


def ctrl_c_able(*args: str) -> list[str]:
    """argv running ``python -m ringwal ARGS`` with Ctrl-C (SIGINT) delivered as a
    KeyboardInterrupt even when this test process was started with SIGINT ignored (a
    background job of a non-interactive shell: ``scripts/test &``), which the child would
    inherit: Python leaves an inherited SIG_IGN alone, and ``tail -f`` would not stop."""
    boot = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'ringwal'; runpy.run_module('ringwal', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", boot, *args]
