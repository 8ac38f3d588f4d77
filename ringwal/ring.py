"""The shared-memory ring: lanes, positions, publication, and who may write which word.

The region (layout in ``format.py``) holds one single-producer/single-consumer *lane* per
attached producer process. A producer claims a lane at ``open``; it alone writes the lane's
data and its ``head`` word. The writer process alone writes ``tail``, the progress words and
the span log. The claim lock (``flock`` on ``<dir>/wal.ring.lock``, dropped by the kernel
when its holder dies) guards only lane ownership and the attach generation: it is held for a
few word stores, never across a copy, so producers never wait on each other to append.

Positions and counts
    ``head`` and ``tail`` pack ``count32 << 32 | pos32``: the number of records and bytes ever
    published (head) or consumed (tail) in the lane, modulo 2**32. ``ring_size`` is a power of
    two that divides 2**32, so ``pos32 % ring_size`` is the byte offset, and ``head - tail``
    (mod 2**32) is what is in the lane. One word carries both numbers, so one store publishes
    the bytes *and* the count, and a reader can never pair a new position with an old count.

Publishing (producer)
    1. copy the records (u32 length + payload, the on-disk body layout) into the free space
       ``[head, tail + ring_size)``, splitting the copy at the end of the lane;
    2. store the new ``head`` word.
    A producer killed before 2 published nothing: the bytes past ``head`` are garbage that the
    next owner of the lane overwrites. Killed after 2, its records are complete and the writer
    writes them. There is no third state, so no partial record can ever reach a segment.

Consuming (writer), one drain = one frame
    1. read each lane's ``head``; the bytes ``[tail, head)`` are whole records;
    2. copy those spans into one body, one lane after another (this order *is* the total order);
    3. store each drained lane's new tail in ``pending_tail``, then ``pending_first``,
       ``pending_last`` and finally ``pending = 1`` in the ring header;
    4. append the body to ``current.wal`` as one checksummed frame (seqs pending_first..last);
    5. store ``tail = pending_tail``, the progress words and a span-log entry per lane, then
       ``pending = 0``.
    Crash windows: before 3 completes, ``pending`` is 0 and the tails are unchanged, so the
    next writer drains the same records again (none reached the disk). Between 3 and 5 the
    next writer compares ``pending_last`` with the last seq on disk after recovery: if the
    frame is there it finishes step 5 (tails advance, the records are not written twice); if
    not (not yet written, or torn and cut away by recovery) it resets ``pending_tail = tail``
    and drains them again. A frame is all or nothing on disk, so these are the only cases.
    Invariant outside a drain: ``pending == 0`` and ``pending_tail == tail`` in every lane.

Progress words and the span log
    ``written``/``durable`` count and seq pairs are published under a per-lane seqlock
    (``version`` odd while they change); a reader retries until it sees the same even version
    before and after. The span log maps lane counts to seqs for receipts; an entry is written
    before ``span_head`` is advanced past it, and a reader checks ``span_head`` again after
    reading to know the entry was not overwritten meanwhile.

Memory ordering: what this relies on
    CPython offers no atomics or fences on an mmap, so the argument is made at the machine
    level, for x86-64 (the platform this is built and tested on):

    * Every control word is read and written as one aligned 8-byte access: a ``'Q'`` item of a
      ``memoryview.cast('Q')`` is loaded/stored through an ``unsigned long long *`` in C, a
      single ``mov`` on an 8-aligned address, which x86-64 (and AArch64) make single-copy
      atomic. So a word is never observed half-written.
    * x86-64 is total-store-order: stores become visible to other cores in program order, and
      loads are not reordered with older loads. So a writer that sees a new ``head`` also sees
      every byte copied before it; a producer that sees a new ``tail`` knows the writer had
      finished reading (copying out) the bytes before storing it, since x86 never moves a store
      above an earlier load.
    * The compiler cannot reorder either side's steps: each is a separate call through the
      interpreter loop into opaque C functions, which acts as a compiler barrier.
    * The one reordering x86 allows, a store followed by a load of another word, matters only
      for wake-ups ("I published; is the writer asleep?"). A producer that must be woken
      stores its ``want`` word and then posts the writer semaphore (a locked instruction, a
      full barrier) before it re-checks and sleeps. The writer wakes producers through the
      futex word ``RH_WAKE``, stored after the progress it announces (see ``_futex.py`` for
      why a sleeper cannot miss it). The writer reads ``want`` words after storing progress
      without a barrier, so in theory it can miss a want stored a few nanoseconds earlier;
      the producer then still sees the bumped wake word (its futex wait returns at once) or,
      at worst, re-checks at its ``POLL`` timeout. Every sleeper has a timeout.
    * A killed process's completed stores stay visible (the memory is shared, not private),
      which is what makes the crash windows above the only ones.

    On a weakly ordered CPU (AArch64, POWER) the second point does not hold and the copy could
    become visible after ``head``; ``open`` refuses such machines rather than risk it.

Lifecycle
    The writer creates the region and its semaphore (``O_CREAT``), sets ``state = READY``
    last, and on a clean exit with no lane owned and every lane empty sets ``state = CLOSED``
    and unlinks them under the claim lock. Otherwise (a crash, or producers still attached)
    it leaves them, and the next writer on the directory reuses them, resolving a pending
    drain as above. ``Ring.close`` unmaps this process's view; ``Ring.unlink`` removes the
    names; they are separate, as in ``multiprocessing.shared_memory``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import platform
import secrets
import struct
from collections.abc import Iterator

import posix_ipc
import psutil

from . import _futex
from .errors import RingError, UnsupportedVersionError
from .format import (
    L_OWNER_CTIME,
    L_OWNER_PID,
    L_OWNER_TOKEN,
    LANE_CTL_SIZE,
    LANE_WORDS,
    RH_ATTACH_GEN,
    RH_MAGIC,
    RH_MAX_RECORD,
    RH_RING_SIZE,
    RH_SERIALIZER_OFFSET,
    RH_SLOTS,
    RH_SPAN_LOG,
    RH_STATE,
    RH_VERSION,
    RH_WAKE,
    RH_FOLLOW_WAKE,
    RH_FOLLOWERS,
    RH_NEXT_SEQ,
    RH_DURABLE_SEQ,
    RING_READY,
    RH_WRITER_CTIME,
    RH_WRITER_PID,
    RING_CLOSED,
    RING_HEADER_SIZE,
    RING_INIT,
    RING_MAGIC,
    RING_VERSION,
    SERIALIZER_NAME_SIZE,
    SPAN_LOG,
    SPAN_SIZE,
    ring_layout,
)

__all__ = ["Ring", "RingView", "claim_lock", "process_alive", "ring_names"]

M32 = 0xFFFFFFFF
_MAGIC_WORD = int.from_bytes(RING_MAGIC, "little")
_F64 = struct.Struct("<d")
_U64 = struct.Struct("<Q")
CLAIM_LOCK_NAME = "wal.ring.lock"
SUPPORTED_MACHINES = ("x86_64", "amd64", "AMD64", "i686", "i386")


def f64_bits(x: float) -> int:
    return _U64.unpack(_F64.pack(x))[0]


def bits_f64(w: int) -> float:
    return _F64.unpack(_U64.pack(w))[0]


def check_machine() -> None:
    """Refuse CPUs whose memory model the publication argument does not cover."""
    m = platform.machine()
    if m not in SUPPORTED_MACHINES and not os.environ.get("RINGWAL_ALLOW_WEAK_MEMORY"):
        raise RingError(
            f"the shared-memory ring relies on x86 total store order; this machine is {m!r}. "
            "See ringwal/ring.py (set RINGWAL_ALLOW_WEAK_MEMORY=1 to override at your own risk)"
        )


def ring_names(directory: str) -> tuple[str, str]:
    """(shared memory name, writer semaphore name) for a directory.

    Derived from the directory's device and inode, so every path that reaches the same
    directory (symlinks, relative paths) names the same ring.
    """
    st = os.stat(directory)
    digest = hashlib.sha256(f"{st.st_dev}:{st.st_ino}".encode()).hexdigest()[:16]
    base = f"/ringwal.{digest}"
    return base, base + ".w"


def process_alive(pid: int, ctime: float) -> bool:
    """True when ``pid`` is running and is the process created at ``ctime`` (not a reuse)."""
    if pid <= 0:
        return False
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - ctime) > 0.05:
            return False
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # pragma: no cover - another user's live process
        return True


_own_ctime: tuple[int, float] | None = None


def own_identity() -> tuple[int, float]:
    """(pid, create time) of this process, recomputed after a fork."""
    global _own_ctime
    pid = os.getpid()
    if _own_ctime is None or _own_ctime[0] != pid:
        _own_ctime = (pid, psutil.Process(pid).create_time())
    return _own_ctime


@contextlib.contextmanager
def claim_lock(directory: str) -> Iterator[None]:
    """The short lock that guards lane ownership; released by the kernel if we die."""
    fd = os.open(os.path.join(directory, CLAIM_LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Ring:
    """This process's mapping of a directory's ring.

    ``words`` is the whole region as 64-bit words; ``lane_ctl(k)`` / ``lane_data(k)`` /
    ``span_log(k)`` are views of one lane. Class-level defaults make ``close`` safe on a
    half-built object.
    """

    _mm: mmap.mmap | None = None
    _views: list[memoryview] = []
    words: memoryview | None = None

    def __init__(self, directory: str, shm: posix_ipc.SharedMemory, created: bool) -> None:
        self.directory = directory
        self.name, self.writer_sem_name = ring_names(directory)
        self.created = created
        self._views = []
        try:
            self._mm = mmap.mmap(shm.fd, shm.size)
        finally:
            shm.close_fd()
        self.buf = self._view(memoryview(self._mm))
        self.words = self._view(self.buf.cast("Q"))
        base = _futex.base_address(self._mm)
        self.wake_addr = base + RH_WAKE * 8
        self.follow_addr = base + RH_FOLLOW_WAKE * 8

    def _view(self, v: memoryview) -> memoryview:
        self._views.append(v)
        return v

    # ------------------------------------------------------------------ opening

    @classmethod
    def attach(cls, directory: str) -> Ring:
        """Map an existing ring (producers). FileNotFoundError when there is none."""
        name = ring_names(directory)[0]
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError:
            raise FileNotFoundError(f"no ring {name} for {directory}") from None
        if shm.size < RING_HEADER_SIZE:
            shm.close_fd()
            raise FileNotFoundError(f"ring {name} is still being created")
        ring = cls(directory, shm, created=False)
        try:
            ring.check_header()
        except BaseException:
            ring.close()
            raise
        return ring

    @classmethod
    def create_or_reuse(cls, directory: str, slots: int, ring_size: int, max_record: int, serializer: str) -> Ring:
        """The writer's open: reuse a ring left by an earlier writer, else create one.

        Call with the directory's writer lock and the claim lock held.
        """
        name = ring_names(directory)[0]
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError:
            shm = None
        if shm is not None and shm.size >= RING_HEADER_SIZE:
            ring = cls(directory, shm, created=False)
            try:
                ring.check_header()
                if ring.words[RH_STATE] != RING_CLOSED:
                    return ring
            except FileNotFoundError:
                pass  # its creator died before writing the magic: it never held a record
            except BaseException:
                # Not a layout we can drain: refusing keeps whatever it holds for a build
                # that can; the message says how to discard it deliberately.
                ring.close()
                raise
            ring.close()
        elif shm is not None:
            shm.close_fd()  # a creator died before sizing it: nothing in it
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_shared_memory(name)
        _spans, _data, size = ring_layout(slots, ring_size)
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        ring = cls(directory, shm, created=True)
        w = ring.words
        w[RH_VERSION] = RING_VERSION
        w[RH_SLOTS] = slots
        w[RH_RING_SIZE] = ring_size
        w[RH_MAX_RECORD] = max_record
        w[RH_SPAN_LOG] = SPAN_LOG
        enc = serializer.encode()
        ring.buf[RH_SERIALIZER_OFFSET : RH_SERIALIZER_OFFSET + SERIALIZER_NAME_SIZE] = enc.ljust(SERIALIZER_NAME_SIZE, b"\0")
        w[RH_STATE] = RING_INIT
        w[RH_MAGIC] = _MAGIC_WORD  # last: a ring without magic is one whose creator died
        ring.check_header()
        return ring

    def check_header(self) -> None:
        w = self.words
        if w[RH_MAGIC] != _MAGIC_WORD:
            raise FileNotFoundError(f"ring {self.name} is still being created")
        if w[RH_VERSION] != RING_VERSION:
            raise UnsupportedVersionError(
                f"shared-memory ring {self.name} (for {self.directory}) has layout version {w[RH_VERSION]}; "
                f"this build reads version {RING_VERSION}. Stop the processes using it with the other build, "
                f"or discard it (losing unwritten records) with: rm /dev/shm{self.name}",
                path=f"/dev/shm{self.name}",
                offset=8,
            )
        self.slots = w[RH_SLOTS]
        self.ring_size = w[RH_RING_SIZE]
        self.max_record = w[RH_MAX_RECORD]
        if w[RH_SPAN_LOG] != SPAN_LOG or not self.slots or self.ring_size & (self.ring_size - 1):
            raise RingError(f"shared-memory ring {self.name} has a damaged header; remove /dev/shm{self.name}")
        self.spans_off, self.data_off, size = ring_layout(self.slots, self.ring_size)
        if size > len(self.buf):
            raise RingError(f"shared-memory ring {self.name} is {len(self.buf)} bytes; its header needs {size}")
        raw = bytes(self.buf[RH_SERIALIZER_OFFSET : RH_SERIALIZER_OFFSET + SERIALIZER_NAME_SIZE])
        self.serializer = raw.rstrip(b"\0").decode("ascii", "replace")

    # ------------------------------------------------------------------ views

    def lane_ctl(self, k: int) -> memoryview:
        base = (RING_HEADER_SIZE + k * LANE_CTL_SIZE) // 8
        return self._view(self.words[base : base + LANE_WORDS])

    def span_log(self, k: int) -> memoryview:
        base = (self.spans_off + k * SPAN_LOG * SPAN_SIZE) // 8
        return self._view(self.words[base : base + SPAN_LOG * 2])

    def lane_data(self, k: int) -> memoryview:
        off = self.data_off + k * self.ring_size
        return self._view(self.buf[off : off + self.ring_size])

    def writer_identity(self) -> tuple[int, float]:
        w = self.words
        return w[RH_WRITER_PID], bits_f64(w[RH_WRITER_CTIME])

    def writer_alive(self) -> bool:
        return process_alive(*self.writer_identity())

    @staticmethod
    def wake_bit(k: int) -> int:
        """Lane ``k``'s futex bit: its producer waits on it, the writer wakes it (lanes 32 apart share one)."""
        return 1 << (k & 31)

    def owner(self, k: int) -> tuple[int, float, int]:
        base = (RING_HEADER_SIZE + k * LANE_CTL_SIZE) // 8
        w = self.words
        return w[base + L_OWNER_PID], bits_f64(w[base + L_OWNER_CTIME]), w[base + L_OWNER_TOKEN]

    # ------------------------------------------------------------------ ownership (claim lock held)

    def claim_lane(self, pid: int, ctime: float) -> tuple[int, int]:
        """Take a free lane, or one whose owner died; return (lane, token)."""
        for k in range(self.slots):
            opid, octime, _tok = self.owner(k)
            if opid == 0 or not process_alive(opid, octime):
                base = (RING_HEADER_SIZE + k * LANE_CTL_SIZE) // 8
                w = self.words
                token = secrets.randbits(63) | 1
                w[base + 1] = 0  # want_written
                w[base + 2] = 0  # want_durable
                w[base + L_OWNER_CTIME] = f64_bits(ctime)
                w[base + L_OWNER_TOKEN] = token
                w[base + L_OWNER_PID] = pid
                w[RH_ATTACH_GEN] += 1
                return k, token
        return -1, 0

    def release_lane(self, k: int, token: int) -> bool:
        """Give up lane ``k`` if ``token`` still owns it."""
        base = (RING_HEADER_SIZE + k * LANE_CTL_SIZE) // 8
        w = self.words
        if w[base + L_OWNER_TOKEN] != token:
            return False
        w[base + 1] = 0
        w[base + 2] = 0
        w[base + L_OWNER_PID] = 0
        w[base + L_OWNER_TOKEN] = 0
        w[RH_ATTACH_GEN] += 1
        return True

    # ------------------------------------------------------------------ semaphores

    def writer_sem(self, create: bool = False) -> posix_ipc.Semaphore:
        flags = posix_ipc.O_CREAT if create else 0
        return posix_ipc.Semaphore(self.writer_sem_name, flags, mode=0o600)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Unmap this process's view (the ring itself stays). Idempotent."""
        views, self._views = self._views, []
        for v in reversed(views):
            v.release()
        self.words = None
        mm, self._mm = self._mm, None
        if mm is not None:
            mm.close()

    def unlink(self) -> None:
        """Remove the ring's shared memory and semaphore by name (mappings stay valid)."""
        unlink_names(self.directory)


def unlink_names(directory: str) -> None:
    name, wname = ring_names(directory)
    with contextlib.suppress(posix_ipc.ExistentialError):
        posix_ipc.unlink_shared_memory(name)
    with contextlib.suppress(posix_ipc.ExistentialError):
        posix_ipc.unlink_semaphore(wname)


class RingView:
    """A read-only look at a directory's ring: what ``stats``, ``follow`` and live readers need.

    It stores into the ring only to register and unregister a follower (under the claim lock).
    ``attach`` returns None when there is no ring, it is still being created, or it has a
    layout this build does not read: callers then work from the files alone.

    Live-reader rule (``docs/FORMAT.md``): the writer stores the written seq after the
    ``pwritev`` of the frame returns, so a reader that loads ``written_seq()`` *before* it
    reads ``current.wal`` is guaranteed to see every frame up to that seq complete.
    """

    _ring: Ring | None = None
    _registered = False

    def __init__(self, ring: Ring) -> None:
        self._ring = ring
        self.directory = ring.directory
        self.follow_addr = ring.follow_addr

    @classmethod
    def attach(cls, directory: str) -> RingView | None:
        try:
            return cls(Ring.attach(directory))
        except (OSError, RingError, UnsupportedVersionError):
            return None

    def writer_alive(self) -> bool:
        """True while a writer serves the ring (state READY and its process alive)."""
        ring = self._ring
        return ring.words[RH_STATE] == RING_READY and ring.writer_alive()

    def closed(self) -> bool:
        """The last writer shut down cleanly and removed the ring: detach and attach again later."""
        return self._ring.words[RH_STATE] == RING_CLOSED

    def written_seq(self) -> int:
        """The last seq the writer has handed to the OS (its ``pwritev`` returned); 0 when none."""
        return max(self._ring.words[RH_NEXT_SEQ] - 1, 0)

    def durable_seq(self) -> int:
        """The last seq covered by a completed fdatasync."""
        return self._ring.words[RH_DURABLE_SEQ]

    def follow_word(self) -> int:
        """Load before checking ``durable_seq``; pass to ``wait_follow`` (the _futex.py protocol)."""
        return self._ring.words[RH_FOLLOW_WAKE]

    def wait_follow(self, word: int, deadline: float) -> None:
        """Sleep until the writer bumps the follow word (after an fsync or a truncation) or
        ``deadline`` (time.monotonic) passes. Wakes only while a follower is registered."""
        _futex.wait(self.follow_addr, word, deadline, M32)

    def register_follower(self) -> None:
        """Ask the writer to bump the follow word after each fsync (idempotent)."""
        if not self._registered:
            with claim_lock(self.directory):
                self._ring.words[RH_FOLLOWERS] += 1
            self._registered = True

    def close(self) -> None:
        """Unregister (if registered) and unmap. Idempotent."""
        ring, self._ring = self._ring, None
        if ring is None:
            return
        if self._registered:
            self._registered = False
            with contextlib.suppress(OSError), claim_lock(self.directory):
                if ring.words[RH_FOLLOWERS]:
                    ring.words[RH_FOLLOWERS] -= 1
        ring.close()

    def __enter__(self) -> RingView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
