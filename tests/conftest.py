"""Shared helpers: a controllable clock, record factories, and a child-process runner."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

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
    os.makedirs(d)
    # The ring's name comes from the directory's device and inode, which a new directory can
    # inherit from a deleted one whose ring was left behind (a killed run): that ring is
    # garbage for this directory, maybe of another layout version.
    unlink_names(d)
    yield d
    kill_writers(d)


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
