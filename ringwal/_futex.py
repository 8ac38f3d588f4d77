"""Futex wait and wake on a 32-bit word of the shared ring (Linux x86-64, through ctypes).

Why a futex and not one semaphore per lane: after an fdatasync the writer must wake every
producer whose ``sync()`` it just satisfied. With a semaphore each that is one
``sem_post`` per producer, each a Python call plus a syscall, done one after another while
the woken producers queue up behind them (measured: about 8 us per post, 100 us per commit
with 12 waiters). ``FUTEX_WAKE_BITSET`` wakes every waiter whose bit is in a mask in one
syscall, so a commit costs one call however many producers it satisfies.

Protocol (the word is ``RH_WAKE`` in the ring header; only the writer stores it):

* a waiter loads the word, *then* checks the progress it waits for, and only if that is not
  there yet calls ``wait(addr, loaded_value, deadline, bit)``; the kernel compares the word
  with ``loaded_value`` under its own lock and returns at once if it changed;
* the writer publishes progress, *then* stores ``word + 1`` (mod 2**32), then calls
  ``wake(addr, bits)``.

On x86-64 a waiter that saw old progress loaded the old word (loads are not reordered with
older loads, stores not with older stores), so either the kernel sees the new word and the
wait returns ``EAGAIN``, or the waiter is queued before the writer's wake. Every wait also
has a deadline, so nothing depends on a wake arriving for liveness.

Shared futexes (no ``FUTEX_PRIVATE_FLAG``) key on the page of the mapped file, so processes
that map the ring at different addresses meet on the same word.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os

_SYS_FUTEX = 202  # x86-64; ring.check_platform refuses other machines
_FUTEX_WAIT_BITSET = 9
_FUTEX_WAKE_BITSET = 10
_WAKE_ALL = 0x7FFFFFFF
_EXPECTED = (errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR)

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [
    ctypes.c_long,  # syscall number
    ctypes.c_void_p,  # uaddr
    ctypes.c_int,  # futex_op
    ctypes.c_uint,  # val
    ctypes.c_void_p,  # timeout
    ctypes.c_void_p,  # uaddr2
    ctypes.c_uint,  # val3 (the bitset)
]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def base_address(mm: mmap.mmap) -> int:
    """The address of an mmap's first byte (valid while it stays mapped)."""
    probe = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(probe)
    finally:
        del probe  # releases the buffer export, so the mmap can still be closed


def wait(addr: int, expected: int, deadline: float, bit: int) -> None:
    """Sleep while the word at ``addr`` equals ``expected``, until woken for ``bit``.

    ``deadline`` is absolute, on ``time.monotonic()``'s clock (CLOCK_MONOTONIC). Returns on a
    wake, a changed word, the deadline or a signal alike: the caller re-checks its condition.
    """
    sec = int(deadline)
    ts = _Timespec(sec, int((deadline - sec) * 1e9))
    if _syscall(_SYS_FUTEX, addr, _FUTEX_WAIT_BITSET, expected, ctypes.byref(ts), None, bit) < 0:
        err = ctypes.get_errno()
        if err not in _EXPECTED:  # pragma: no cover - a kernel without futexes, or a bad address
            raise OSError(err, f"futex wait: {os.strerror(err)}")


def wake(addr: int, bits: int) -> int:
    """Wake every waiter on ``addr`` whose bit is in ``bits``; return how many woke."""
    n: int = _syscall(_SYS_FUTEX, addr, _FUTEX_WAKE_BITSET, _WAKE_ALL, None, None, bits)
    if n < 0:  # pragma: no cover - see wait
        err = ctypes.get_errno()
        raise OSError(err, f"futex wake: {os.strerror(err)}")
    return n
