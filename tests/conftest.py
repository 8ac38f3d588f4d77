"""Shared helpers: a controllable clock, record factories, and a child-process runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ringwal import Config, Record, RecordType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeClock:
    """A wall clock for the ``clock=`` seam with its ``monotonic`` companion for the
    ``monotonic=`` seam: time moves only when a test says so.

    ``advance`` is time passing (both move); ``step`` is the wall clock being set (NTP, an
    operator): only the wall clock moves, as on a real machine.
    """

    def __init__(self, start_ns: int = 1_700_000_000_000_000_000, mono_ns: int = 1_000_000_000_000) -> None:
        self.now = start_ns
        self.mono = mono_ns

    def __call__(self) -> int:
        return self.now

    def monotonic(self) -> int:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)
        self.mono += int(seconds * 1e9)

    def step(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


def rec(i: int, size: int = 100) -> Record:
    """Record number ``i``: deterministic type, time and ``size`` bytes of data naming ``i``."""
    tag = b"rec-%d|" % i
    return Record(RecordType.PLACE + i % 3, 1_700_000_000_000_000_000 + i, (tag * (size // len(tag) + 1))[:size])


@pytest.fixture(scope="session", autouse=True)
def no_rings_left_behind(tmp_path_factory):
    """The run leaves nothing in /dev/shm: after the last test, every ring whose log directory
    lies under this run's temporary directories must be gone (each ring records its
    directory; rings of other runs and other users are not looked at).

    A writer started by ``ringwal.open`` lingers ``writer_linger`` seconds and then removes
    its ring, so rings with a live writer get 30 s to go. Whatever is left is removed (its
    writers killed first) and the run fails, naming the directories: a test leaked it.
    """
    base = str(tmp_path_factory.getbasetemp()) + os.sep
    yield
    from ringwal.ring import list_rings, remove_ring

    def ours():
        return [r for r in list_rings() if r.directory and (r.directory + os.sep).startswith(base)]

    deadline = time.monotonic() + 30
    left = ours()
    while any(r.verdict == "live" for r in left) and time.monotonic() < deadline:
        time.sleep(0.2)
        left = ours()
    if not left:
        return
    for r in left:
        _kill_processes_of(r.directory)
        try:
            remove_ring(r.name)
        except Exception as exc:  # noqa: BLE001 - reported below with the rest
            print(f"could not remove {r.name}: {exc!r}", file=sys.stderr)
    pytest.fail(
        "rings made by this run's tests are still in /dev/shm (removed now): "
        + "; ".join(f"{r.name} ({r.verdict}, {r.state}) of {r.directory}" for r in left),
        pytrace=False,
    )


def _kill_processes_of(directory: str) -> None:
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        try:
            if directory in " ".join(p.info["cmdline"] or ()):
                p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cfg(tmp_path) -> Config:
    return Config(dir=str(tmp_path / "wal"), segment_size=64 * 1024)


@pytest.fixture
def wdir(tmp_path):
    """A log directory whose writer processes and shared-memory ring are removed afterwards."""
    from ringwal.ring import unlink_names

    from .ringhelp import kill_writers

    d = str(tmp_path / "wal")
    os.makedirs(d, mode=0o700)  # as ringwal makes a log directory: private
    unlink_names(d)  # nothing: a new directory holds no log, so no ring has its name
    yield d
    kill_writers(d)


@pytest.fixture
def served(wdir):
    """Start a ``ringwal serve`` on ``wdir`` (``served(*extra_args)``; a test may stop it with
    SIGSTOP); each one is resumed and terminated afterwards."""
    import contextlib

    from .ringhelp import start_serve

    procs = []

    def start(*extra: str):
        p = start_serve(wdir, *extra)
        procs.append(p)
        return p

    yield start
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGCONT)
            p.terminate()
        with contextlib.suppress(Exception):
            p.communicate(timeout=30)


def write_log(directory: str, n: int, *, segment_size: int = 2048) -> Config:
    """A log of ``n`` records, one frame each, rotated into several segments."""
    from ringwal import WAL

    cfg = Config(dir=directory, segment_size=segment_size)
    with WAL(cfg) as w:
        for i in range(n):
            w.append(rec(i))
            w.flush()
    return cfg


def run_child(code: str, *args: str, timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process (with ringwal importable); return the result."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        **kw,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def spawn_child(code: str, *args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    """Start ``code`` in a fresh Python process with pipes for stdout/stderr (``env`` adds variables)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, **(env or {})),
        **kw,
    )
