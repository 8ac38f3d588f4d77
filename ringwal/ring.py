"""The shared-memory ring: lanes, positions, publication, and who may write which word.

The region (layout in ``format.py``) holds one single-producer/single-consumer *lane* per
attached producer process. A producer claims a lane at ``open``; it alone writes the lane's
data and its ``head`` word. The writer process alone writes ``tail``, the progress words, the
span log, the resume words and the poison words. Who is alive (the writer, each lane's owner)
is decided by kernel locks in ``<dir>/wal.ring.lock``, never by pid (see "Liveness and
locks"), and no process ever waits for another's lock without a deadline: producers never
wait on each other to append.

This module owns every algorithm over the region, in agrona's shape (one file holds both
sides of ``ManyToOneRingBuffer``; the layout stays apart in ``format.py``):

* :class:`Ring` maps the region: create, attach, check the header, views, close, unlink;
* :class:`ProducerSide`: claim a lane, publish, room, wait for written/durable progress,
  receipt lookups, truncation requests, release;
* :class:`WriterSide`: drain (checking, cutting and dropping spans), the pending/finish/
  recover steps, mark written and durable, wake waiters, reclaim dead lanes, serve
  truncation, stats words, shutdown;
* :class:`RingView`: the read-only look that ``stats``, ``follow`` and live readers need.

Outside this module no code indexes ring words.

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
    1. read each lane's ``head``; the bytes ``[tail, head)`` are said to be whole records.
       Visit the lanes in this drain's order: the lane in the resume words first (up to the
       head stored there), then round robin from a rotating start;
    2. copy spans into one body, one lane after another (this order *is* the total order),
       at most ``budget`` bytes: a span that does not fit is cut at the last record boundary
       that does (at least one record when the body is still empty) and the drain stops
       there. Every span is checked on the writer's private copy (``walk_records``: each u32
       length is 1..max_record_size, the lengths tile the span exactly, into as many records
       as the count in ``head`` says); what is not records is dropped after step 5 (below);
    3. store each drained lane's new tail in ``pending_tail``, the cut lane and its head (or
       none) in ``pending_resume``, then ``pending_first``, ``pending_last`` and finally
       ``pending = 1`` in the ring header;
    4. append the body to ``current.wal`` as one checksummed frame (seqs pending_first..last);
    5. store ``tail = pending_tail``, the progress words and a span-log entry per lane, then
       ``resume = pending_resume``, then ``pending = 0``.
    Crash windows: before 3 completes, ``pending`` is 0 and the tails and resume words are
    unchanged, so the next writer drains the same records again (none reached the disk).
    Between 3 and 5 the next writer compares ``pending_last`` with the last seq on disk after
    recovery: if the frame is there it finishes step 5 (tails advance, the records are not
    written twice, resume takes the pending value); if not (not yet written, or torn and cut
    away by recovery) it resets ``pending_tail = tail`` and drains them again, resume still
    naming what it named before. A frame is all or nothing on disk, so these are the only
    cases. Invariant outside a drain: ``pending == 0`` and ``pending_tail == tail`` in every
    lane.

A publication stays contiguous in seq order
    One ``head`` store publishes a batch (``append_many``), and its records must get one
    contiguous range of seqs with nothing of another lane inside. A drain that takes a span
    whole never splits a publication. A drain that cuts a span (to keep a frame within its
    budget) may cut one in two, so the rest of that lane, up to the head the cut drain saw,
    must open the next frame before any other lane's records. The ring says so (the resume
    words, stored in step 5 of the cut drain), not the writer's memory, so it holds across a
    writer crash between the two frames. A resume whose lane's tail has reached its head (or
    passed it: the span was dropped) is void. Bounding the resume by the head seen at the cut
    keeps a producer that publishes without pause from holding the writer to its lane.

Dropping a span that is not records
    A producer bug (or anything else in its process) can write garbage into its lane or its
    ``head`` word. Framed, it would pass every checksum and break every replay, so the writer
    checks each span and drops what is not records. When the walk fails at a record (a bad
    length, or one running past the span), the whole records before it are framed as usual
    and only the rest is dropped; a span whose lengths tile it into the wrong number of
    records, or a head no lane can hold, is dropped whole. The drop comes after the drain's
    frame is finished (step 5), so the tail it moves from is past the good records: the
    poison words (what was wrong, the first record dropped, then the owner's token, last),
    then ``tail = pending_tail = head`` of the span, then the wake word and a futex wake of
    the lane. Nothing dropped is in a frame, so this is not part of a pending drain: no seqs,
    no span-log entry. While a lane's poison word equals its owner's token, every later span
    of it is dropped as well (a publication that raced the poisoning). The poisoned producer sees its token in the
    poison word at its next ``publish`` or wait and raises LanePoisonedError (records before
    the first dropped one are written and waited for as usual); its handle waits until the
    writer has dropped everything it published, then gives the lane back, so the next owner
    inherits no record of it. Crash windows: before the frame is finished, the pending
    protocol above decides about the good records and the bad ones are still at (or after)
    the tail; before the poison words, the next writer finds the bad bytes at the tail and
    drops them; after them but before the tail store, the same (the owner is poisoned
    already); after the tail store, a pending tail may lag the tail, and ``recover`` realigns
    every pending tail when no drain is pending.
    What it does not catch: garbage whose lengths happen to tile with the right count (its
    payloads reach the log and fail in the serializer at replay), and a lane whose poisoned
    owner died and was reclaimed, then claimed by another producer before the writer drained
    the garbage (the new owner is poisoned for it).

Progress words and the span log
    ``written``/``durable`` count and seq pairs are published under a per-lane seqlock
    (``version`` odd while they change); a reader retries until it sees the same even version
    before and after. The span log maps lane counts to seqs for receipts; an entry is written
    before ``span_head`` is advanced past it, and a reader checks ``span_head`` again after
    reading to know the entry was not overwritten meanwhile.

Records lost to a failed fsync (docs/FORMAT.md, "When fsync fails")
    A writer whose fsync failed declares the records it had written but not made durable
    lost (``seglog.py``) and, before it exits, says so in the ring: in every lane holding
    such records (written count != durable count, written seq in the range) it stores the
    range and what failed (lane words 21-23), then the lane's ``lost`` word (20: the count32
    of its last lost record), then the header's failure words (50, 49, then 48 last), then
    STOPPED, and wakes every waiter. A producer waiting for durability loads its progress
    words first and then ``lost``; a lost record of its own (count above the count it
    claimed the lane at) raises LogFailedError naming the seqs, even once the durable count
    has passed it (a later writer's durable count does pass it). So the lost word is stored
    before any durable count that passes the record, which x86 keeps in that order.
    The next writer's ``recover`` does the same for a range the log says it continued past
    (``lost``: the failing writer may have died before its ring stores), then clears word
    48: the hole is in ``wal_holes.json`` by then (``SegmentLog`` recorded it before).
    Crash windows: a failing writer killed before its ring stores leaves the range in
    ``wal_holes.json`` (or, if that failed too, nowhere but the page cache's truncation, see
    ``seglog.py``); killed after them, the next writer finds word 48 set.

Memory ordering: what this relies on
    CPython offers no atomics or fences on an mmap, so the argument is made at the machine
    level, for x86-64 (the platform this is built and tested on):

    * Every control word is read and written as one aligned 8-byte access: an ``'L'`` item of a
      ``memoryview.cast('L')`` is loaded/stored through an ``unsigned long *`` in C (8 bytes on
      Linux x86-64, LP64; ``'L'`` rather than ``'Q'`` because CPython converts it with
      ``PyLong_AsUnsignedLong``, a digit loop, not the generic byte-array path), a
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
    become visible after ``head``; ``open`` and ``serve`` refuse every platform but Linux on
    x86-64 (``check_platform``: UnsupportedPlatformError) rather than risk it.

Liveness and locks
    Pids decide nothing: they mean nothing across PID namespaces (a writer and producers in
    separate containers that share the volume and ``/dev/shm``) and get reused. Liveness is
    judged by byte-range OFD locks on ``<dir>/wal.ring.lock`` (``_fileutil.ByteLocks``; the
    byte map is in ``format.py``): kernel state on the file, dropped when the holder dies
    however it dies, seen by every process that shares the file. Invariants:

    * **Writer.** The writer holds the *writer byte* from just before it stores READY until
      after it has stored STOPPED or CLOSED (or until it dies). A writer serves the ring iff
      ``state == READY`` and the writer byte is held by someone. Producers, followers and
      ``stats`` test that with ``F_OFD_GETLK``, which takes nothing, so a probe never
      disturbs a writer that is starting. (``wal.lock`` is not used for this: ``ringwal
      repair`` and an in-process ``WAL`` hold it too, and a probe of an ``flock`` must take
      it for a moment, which can make a starting writer's own lock attempt fail.)
    * **Lane ownership.** A producer owns lane k exactly while it holds *lane byte k*. Every
      store to lane k's owner and want words is made by the holder of that byte (its owner,
      or the writer freeing it). A claim takes the byte without waiting (the first free lane
      wins; no global lock, so a stopped producer delays nobody's claim), then, holding it,
      checks ``state == READY`` and stores the owner words, the token last. A claimer that
      finds a token already set knows its owner died (it would still hold the byte) and
      takes the lane over; that owner's published records stay and are drained as usual.
    * **Reclaiming.** Every ``LIVENESS_INTERVAL`` the writer tries the byte of each lane whose
      token is set: getting it means the owner died; it clears the owner and want words,
      then drops the byte. A claim that meets a byte held for that moment tries the next
      lane, and scans again for up to ``CLAIM_PATIENCE`` before it reports every slot taken.
    * **Shutdown.** The writer takes the bytes of all lanes in one call. If it gets them,
      no producer owns or is claiming a lane: with every lane drained it stores CLOSED and
      unlinks the ring, then drops them (a claim that gets a byte afterwards sees CLOSED and
      looks for a new writer). If it does not, or records remain, it stores STOPPED.
    * **Fork.** A forked child shares its parent's locks; every ByteLocks is closed in the
      child at once (``_fileutil``), so a child never keeps its parent's lane or writer byte
      alive after the parent died. The child's handle claims a lane of its own.
    * **Followers.** A registered follower holds one follower byte (``LOCK_FOLLOWER0 + j``,
      the first free one, taken without waiting) until it closes or dies; ``stats`` and the
      metrics count the held ones (``RingView.live_followers``), since the follower count
      word stays high when a follower dies without unregistering.
    * **The claim lock** (byte 0) guards only the follower count and the truncation request,
      for a few word stores. It is taken with a deadline (``CLAIM_WAIT``), after which
      LockTimeoutError names the file. Neither ``open``, ``append``, ``flush``, ``sync`` nor
      the writer takes it.
    * **So the writer's loop never waits for a lock**: each attempt is non-blocking, and a
      lane whose byte it cannot take has a live owner (or one mid-claim) and is left alone.

    The pid words are stored for ``ringwal stats`` only, each in its process's own namespace.

Identity, trust and ownership (docs/FORMAT.md, "A ring belongs to exactly one log")
    * The name is ``/ringwal.<log id>.<place>`` (``ring_names``): the log's id from its
      segment headers, and a hash of the directory's device and inode. The creator stores the
      id, device and inode (words 52-55) before the magic; every opener checks them
      (``check_identity``) and refuses another log's ring with ForeignRingError before it
      reads a record or stores a word.
    * Before mapping an object, every opener checks its owner and mode (``_open_shm``,
      ``Access.problem``): an object made by an untrusted user, or open to others, raises
      AccessError and is never read. The writer creates the region and its semaphore with
      ``O_EXCL`` and fchmods them to the directory's ``shm_mode``.
    * The writer holds the *owner lock*, an OFD lock on byte 0 of the shared-memory object
      itself (through a descriptor of its own, so the mapping does not keep it), from before
      it trusts anything in the ring until ``close``, having checked that the name still
      names the object it mapped. A cleaner (``clean_orphans``, ``remove_ring``) removes a
      ring only while holding that lock, taken without waiting: never one a writer has open.
    * ``unlink`` removes a name only while it names the object this process opened (same
      inode): a writer never removes a ring it did not open.
    Crash windows: a creator that dies before the magic leaves a ring that the next writer
    of the log (holding its owner lock) removes and makes again, and that ``ringwal rings``
    shows as ``starting``; a writer that dies leaves its ring, with the owner lock dropped by
    the kernel, for the next writer of the log, or as an orphan if the log is gone.

Lifecycle
    The writer creates the region and its semaphore (``O_EXCL``), reserving the whole region
    in ``/dev/shm`` first (``posix_fallocate``): a tmpfs without room refuses it there, and
    the writer unlinks what it made and raises ShmTooSmallError with the bytes needed and
    free, instead of leaving a region whose untouched pages raise SIGBUS in whoever first
    touches them. It sets ``state = READY`` last. On a clean exit it takes every lane's byte:
    holding them all, it frees the lanes of producers that died (one killed just before the
    writer's SIGTERM still owns its lane until someone notices) and, every lane empty, sets
    ``state = CLOSED`` and unlinks the names; otherwise (a live producer, or records left) it
    sets ``STOPPED``, wakes every waiter and leaves the ring for the next writer, which reuses
    it, resolving a pending drain as above. A writer that finds its log directory removed or
    moved (``SegmentLog.check_place``) sets ``GONE`` instead, unlinks the names and wakes
    every waiter: producers raise LogGoneError. ``Ring.close`` unmaps this process's view (and
    drops its locks); ``Ring.unlink`` removes the names; they are separate, as in
    ``multiprocessing.shared_memory``.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import platform
import re
import secrets
import stat
import struct
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import compress
from typing import Any

import posix_ipc

from . import _futex
from ._fileutil import Access, ByteLocks, describe_owner, preallocate
from .errors import (
    AccessError,
    ConfigError,
    ForeignRingError,
    LanePoisonedError,
    LogFailedError,
    NoLogError,
    RingError,
    ShmTooSmallError,
    SlotsExhaustedError,
    UnsupportedPlatformError,
    UnsupportedVersionError,
)
from .format import (
    FOLLOWER_LOCKS,
    FSYNC_BUCKETS,
    FSYNC_FAILURES,
    L_DURABLE_COUNT,
    L_DURABLE_SEQ,
    L_HEAD,
    L_LOST,
    L_LOST_FIRST,
    L_LOST_LAST,
    L_LOST_WHAT,
    L_OWNER_PID,
    L_OWNER_TOKEN,
    L_PENDING_SEQ,
    L_PENDING_TAIL,
    L_POISON,
    L_POISON_AT,
    L_POISON_FROM,
    L_POISON_SPAN,
    L_POISON_VALUE,
    L_POISON_WHY,
    L_SPAN_HEAD,
    L_TAIL,
    L_VERSION,
    L_WANT_DURABLE,
    L_WANT_WRITTEN,
    L_WRITTEN_COUNT,
    L_WRITTEN_SEQ,
    LANE_CTL_SIZE,
    LANE_WORDS,
    LOCK_CLAIM,
    LOCK_FOLLOWER0,
    LOCK_LANE0,
    LOCK_WRITER,
    LOG_ID_SIZE,
    RH_ATTACH_GEN,
    RH_DIR_DEV,
    RH_DIR_INO,
    RH_DIR_PATH_LEN,
    RH_DIR_PATH_MAX,
    RH_DIR_PATH_OFFSET,
    RH_DURABLE_SEQ,
    RH_FAILED_FIRST,
    RH_FAILED_LAST,
    RH_FAILED_WHAT,
    RH_FIRST_SEQ,
    RH_FOLLOW_WAKE,
    RH_FOLLOWERS,
    RH_FSYNC_COUNT,
    RH_FSYNC_HIST,
    RH_FSYNC_NS,
    RH_FSYNCS,
    RH_LOG_ID,
    RH_MAGIC,
    RH_MAX_RECORD,
    RH_NEXT_SEQ,
    RH_PENDING,
    RH_PENDING_FIRST,
    RH_PENDING_LAST,
    RH_PENDING_RESUME,
    RH_PENDING_RESUME_HEAD,
    RH_RATE,
    RH_RECORDS,
    RH_RESUME,
    RH_RESUME_HEAD,
    RH_RING_SIZE,
    RH_SERIALIZER_OFFSET,
    RH_SLOTS,
    RH_SPAN_LOG,
    RH_STARTED_NS,
    RH_STATE,
    RH_TRUNC_DONE,
    RH_TRUNC_REQ,
    RH_VERSION,
    RH_WAKE,
    RH_WRITER_GEN,
    RH_WRITER_PID,
    RING_CLOSED,
    RING_GONE,
    RING_HEADER_SIZE,
    RING_INIT,
    RING_LOCK_NAME,
    RING_MAGIC,
    RING_READY,
    RING_STOPPED,
    RING_VERSION,
    SERIALIZER_NAME_SIZE,
    SPAN_LOG,
    SPAN_SIZE,
    WALK_COUNT,
    WALK_SPAN,
    WalkResult,
    describe_walk,
    fsync_bucket,
    ring_layout,
    same_length_run,
    walk_records,
)
from .segment import read_log_id

__all__ = [
    "POLL",
    "ProducerSide",
    "Ring",
    "RingView",
    "WriterSide",
    "check_platform",
    "claim_lock",
    "ring_names",
    "unlink_names",
]

M32 = 0xFFFFFFFF
M64 = (1 << 64) - 1
_HALF = 1 << 31
_WANT = 1 << 32
_ONE_RECORD = 1 << 32  # one more record in a head word's count half
_MAGIC_WORD = int.from_bytes(RING_MAGIC, "little")
_U32 = struct.Struct("<I")
#: Seconds between writer-liveness checks while a producer waits.
POLL = 0.1
#: Seconds the claim lock (follower count, truncation request) is waited for before
#: LockTimeoutError: it is held for a few word stores, so only a stopped or hung holder lasts.
CLAIM_WAIT = 2.0
#: Seconds a claim keeps scanning when every lane's byte was held: the writer holds a lane's
#: byte for a moment while freeing a dead owner's lane, and all of them while it shuts down.
CLAIM_PATIENCE = 0.25
#: Seconds a new writer tries to take the writer byte. Only a process that kept a dead
#: writer's lock file open can hold it (the writer holds wal.lock, so no other writer runs).
WRITER_BYTE_PATIENCE = 2.0
#: ``Config.wait_strategy`` -> how ``ProducerSide.wait_progress`` passes the time between looks.
_SLEEP, _YIELD, _SPIN = 0, 1, 2
WAIT_MODES = {"blocking": _SLEEP, "yielding": _YIELD, "busy-spin": _SPIN}
#: Seconds a writer waits for the owner lock of its ring's shared-memory object: only a
#: cleaner (``clean_orphans``) holds it, for a moment, while no writer serves the ring.
OWNER_PATIENCE = 2.0
#: Where POSIX shared memory and semaphores live (Linux: a tmpfs).
SHM_DIR = "/dev/shm"
#: Seconds a stopping writer waits for attached producers to release their lanes (or die)
#: before it leaves the ring for the next writer instead of removing it.
SHUTDOWN_GRACE = 0.5
#: Spans of the seq mapping a producer keeps for resolving old receipts.
KEEP_SPANS = 1 << 16
#: ``platform.machine()`` names of x86-64 on Linux. Nothing else is supported: the publication
#: argument needs total store order, ``_futex`` calls syscall 202 (x86-64's number), and the
#: ring's locks need Linux OFD locks.
SUPPORTED_MACHINES = ("x86_64", "amd64")


def check_platform(system: str | None = None, machine: str | None = None, pointer_bits: int | None = None) -> None:
    """Raise UnsupportedPlatformError unless this is Linux on x86-64 with a 64-bit Python.

    Called by ``open`` and the writer (``serve``) before they touch shared memory. The
    arguments are the seam tests use to fake another platform; None means this process's
    ``platform.system()``, ``platform.machine()`` and pointer width (a 32-bit Python on an
    x86-64 kernel makes i386 syscalls, whose futex number is not 202).
    """
    system = platform.system() if system is None else system
    machine = platform.machine() if machine is None else machine
    bits = struct.calcsize("P") * 8 if pointer_bits is None else pointer_bits
    if system == "Linux" and machine.lower() in SUPPORTED_MACHINES and bits == 64:
        return
    seen = f"{system} on {machine!r}" + ("" if bits == 64 else f" with a {bits}-bit Python")
    raise UnsupportedPlatformError(
        f"ringwal's shared-memory ring runs only on Linux on x86-64 with a 64-bit Python; this is {seen}. "
        "It relies on x86-64's total store order, x86-64's futex syscall and Linux OFD locks. Reading a log "
        "(ringwal.replay, ringwal.verify, ringwal dump) works anywhere",
        system=system,
        machine=machine,
    )


def ring_names(directory: str, log_id: bytes | None = None) -> tuple[str, str]:
    """(shared memory name, writer semaphore name) of the ring of the log in ``directory``.

    ``/ringwal.<log id>.<place>``: the log's id (32 hex digits, read from its newest segment
    header unless given) and the first 12 hex digits of SHA-256 of ``"<st_dev>:<st_ino>"``
    of the directory. So every path that reaches the same directory (symlinks, relative
    paths, a rename) names the same ring; a new log never finds an old log's ring, even in a
    directory that reuses a deleted one's inode; and a copy of a log directory (same id,
    another inode) gets a ring of its own. Raises NoLogError when the directory holds no log.
    """
    st = os.stat(directory)
    return _names(st, read_log_id(directory) if log_id is None else log_id)


def _names(st: os.stat_result, log_id: bytes) -> tuple[str, str]:
    place = hashlib.sha256(f"{st.st_dev}:{st.st_ino}".encode()).hexdigest()[:12]
    base = f"/ringwal.{log_id.hex()}.{place}"
    return base, base + ".w"


def shm_path(name: str) -> str:
    """Where the shared-memory object ``name`` (``/ringwal...``) lives."""
    return SHM_DIR + name


def sem_path(name: str) -> str:
    """Where the POSIX semaphore ``name`` (``/ringwal....w``) lives."""
    return f"{SHM_DIR}/sem.{name.lstrip('/')}"


def _untrusted(what: str, path: str, st: os.stat_result, why: str, directory: str) -> AccessError:
    return AccessError(
        f"{path}: {what} of {directory} cannot be trusted ({describe_owner(st)}): {why}. Nothing was read from "
        "it. If no process of this log made it, another local user did: remove it (as root: rm "
        f"{path}) and find out who. If this log's processes run as several users, share its directory with "
        "their group (Config.group, `ringwal serve --group`)",
        path=path,
        uid=st.st_uid,
        mode=stat.S_IMODE(st.st_mode),
    )


def _open_shm(name: str, access: Access, directory: str) -> posix_ipc.SharedMemory | None:
    """Open the existing shared-memory object ``name`` after checking who made it: None when
    there is none; AccessError (nothing read) when its owner or mode is not to be trusted,
    or when this process may not open it."""
    path = shm_path(name)
    try:
        shm = posix_ipc.SharedMemory(name)
    except posix_ipc.ExistentialError:
        return None
    except posix_ipc.PermissionsError:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        why = f"this process (uid {os.geteuid()}) may not open it"
        raise _untrusted("the shared-memory ring", path, st, why, directory) from None
    st = os.fstat(shm.fd)  # the object we opened (glibc's shm_open does not follow links)
    why = access.problem(st)
    if why:
        shm.close_fd()
        raise _untrusted("the shared-memory ring", path, st, why, directory)
    return shm


def ring_locks(directory: str) -> ByteLocks:
    """The ring's lock file of ``directory`` (opened on first use; see format.py for its bytes).

    Created with the mode and group the directory gives its files (``_fileutil.Access``), so
    producers running as other members of a shared directory's group can take their lane's lock.
    """
    return ByteLocks(os.path.join(directory, RING_LOCK_NAME))


@contextlib.contextmanager
def claim_lock(directory: str, timeout: float = CLAIM_WAIT) -> Iterator[None]:
    """The short lock that guards the follower count and the truncation request (byte 0 of
    ``wal.ring.lock``); dropped by the kernel if we die. Raises LockTimeoutError, naming the
    file, when another process holds it for ``timeout`` seconds (it is stopped or hung)."""
    locks = ring_locks(directory)
    try:
        locks.lock(LOCK_CLAIM, 1, timeout, "the ring's claim lock")
        yield
    finally:
        locks.close()


def shm_free() -> tuple[int, int]:
    """(free, total) bytes of the file system behind POSIX shared memory (``/dev/shm``)."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return -1, -1
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def _no_room(directory: str, name: str, needed: int, slots: int, ring_size: int) -> ShmTooSmallError:
    free, total = shm_free()
    mib = 1 << 20
    return ShmTooSmallError(
        f"the shared-memory ring of {directory} needs {needed} bytes ({needed / mib:.1f} MiB: producer_slots={slots} "
        f"lanes of ring_size={ring_size} bytes, plus {needed - slots * ring_size} bytes of control and span logs) "
        f"but /dev/shm has {free} bytes free (of {total}). Lower ring_size or producer_slots (Config, or "
        "`ringwal serve --ring-size N --producer-slots N`), or give /dev/shm more room: `docker run --shm-size`, "
        "`shm_size:` in Compose, or a memory-backed emptyDir mounted at /dev/shm in Kubernetes",
        path=f"/dev/shm{name}",
        needed=needed,
        available=free,
    )


class Ring:
    """This process's mapping of a directory's ring: creation, attaching, the header check,
    views and the lifecycle. The algorithms are the sides below; outside this module nothing
    indexes ring words.

    ``words`` is the whole region as 64-bit words; ``lane_ctl(k)`` / ``lane_data(k)`` /
    ``span_log(k)`` are views of one lane. ``locks`` is this mapping's own open of the ring's
    lock file (an open file description of its own, so locks taken through two Rings of one
    process conflict as between processes). ``close`` is safe on a half-built object (``_mm``
    and ``locks`` default to None, ``_views`` is set first). After ``close`` every view,
    ``words`` and ``buf`` included, is released (any use raises ValueError) and every lock
    taken through ``locks`` is dropped.
    """

    _mm: mmap.mmap | None = None
    _views: list[memoryview]
    words: memoryview
    buf: memoryview
    locks: ByteLocks | None = None
    _owner: _Owner | None = None  # the writer's lock on the shared-memory object itself
    _sem_ino: int | None = None  # the semaphore's inode, once writer_sem opened it

    def __init__(
        self,
        directory: str,
        name: str,
        shm: posix_ipc.SharedMemory,
        created: bool,
        dir_stat: os.stat_result,
        log_id: bytes,
    ) -> None:
        self._views = []
        self.locks = ring_locks(directory)
        self.directory = directory
        self.name = name
        self.writer_sem_name = name + ".w"
        self.created = created
        self.log_id = log_id
        self.access = Access.of(directory, dir_stat)
        self._place = (dir_stat.st_dev, dir_stat.st_ino)
        try:
            self.shm_ino = os.fstat(shm.fd).st_ino
            self._mm = mmap.mmap(shm.fd, shm.size)
        finally:
            shm.close_fd()
        self.buf = self.keep(memoryview(self._mm))
        self.words = self.keep(self.buf.cast("L"))
        base = _futex.base_address(self._mm)
        self.wake_addr = base + RH_WAKE * 8
        self.follow_addr = base + RH_FOLLOW_WAKE * 8

    def keep(self, v: memoryview) -> memoryview:
        """Register a view of the mapping so ``close`` releases it before unmapping."""
        self._views.append(v)
        return v

    # ------------------------------------------------------------------ opening

    @classmethod
    def attach(cls, directory: str) -> Ring:
        """Map the ring of the log in ``directory`` (producers, readers). FileNotFoundError
        when there is none (or no log yet); AccessError when the object there was made by
        someone this log does not trust; ForeignRingError when it belongs to another log."""
        st = os.stat(directory)
        try:
            log_id = read_log_id(directory)
        except NoLogError:
            raise FileNotFoundError(f"no log in {directory} yet, so no ring") from None
        name = _names(st, log_id)[0]
        shm = _open_shm(name, Access.of(directory, st), directory)
        if shm is None:
            raise FileNotFoundError(f"no ring {name} for {directory}")
        if shm.size < RING_HEADER_SIZE:
            shm.close_fd()
            raise FileNotFoundError(f"ring {name} is still being created")
        ring = cls(directory, name, shm, False, st, log_id)
        try:
            ring.check_header()
            ring.check_identity()
        except BaseException:
            ring.close()
            raise
        return ring

    @classmethod
    def create_or_reuse(
        cls, directory: str, log_id: bytes, slots: int, ring_size: int, max_record: int, serializer: str
    ) -> Ring:
        """The writer's open: reuse the ring an earlier writer of this log left, else create one.

        Call with the directory's writer lock held. The returned ring holds the *owner lock*
        (byte 0 of an OFD lock on the shared-memory object itself) until ``close``: no cleaner
        removes a ring whose owner lock is held (``clean_orphans``), and a writer takes it
        before it trusts anything in the ring, checking that the name still names the object
        it opened. Creating reserves the whole region in ``/dev/shm``; ShmTooSmallError
        (nothing left behind) when it has no room. AccessError when an object at the name
        was made by someone this log does not trust; ForeignRingError when it is another
        log's.
        """
        st = os.stat(directory)
        access = Access.of(directory, st)
        name = _names(st, log_id)[0]
        for _attempt in range(8):
            shm = _open_shm(name, access, directory)
            if shm is not None:
                ino = os.fstat(shm.fd).st_ino
                ring: Ring | None = None
                usable = False
                if shm.size >= RING_HEADER_SIZE:
                    ring = cls(directory, name, shm, False, st, log_id)
                    try:
                        ring.check_header()
                        ring.check_identity()
                        usable = ring.words[RH_STATE] != RING_CLOSED
                    except FileNotFoundError:
                        pass  # its creator died before writing the magic: it never held a record
                    except BaseException:
                        # Not a layout we can drain, or not this log's: refusing keeps whatever
                        # it holds; the message says how to discard it deliberately.
                        ring.close()
                        raise
                else:
                    shm.close_fd()  # a creator died before sizing it: nothing in it
                owner = _take_owner(name, ino)
                if owner is None:  # the name was removed or replaced meanwhile: look again
                    if ring is not None:
                        ring.close()
                    continue
                if ring is not None and usable:
                    ring._owner = owner
                    return ring
                if ring is not None:
                    ring.close()
                # Closed, or never finished: remove it (holding its owner lock) and start anew.
                _unlink_if(name, ino)
                owner.close()
            made = cls._create(directory, name, access, st, log_id, slots, ring_size, max_record, serializer)
            if made is not None:
                return made
        raise RingError(f"{shm_path(name)}: the ring's name kept changing while this writer opened it; try again")

    @classmethod
    def _create(
        cls,
        directory: str,
        name: str,
        access: Access,
        st: os.stat_result,
        log_id: bytes,
        slots: int,
        ring_size: int,
        max_record: int,
        serializer: str,
    ) -> Ring | None:
        """Create the ring at ``name`` (None when something else created it first)."""
        _spans, _data, size = ring_layout(slots, ring_size)
        try:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=access.shm_mode)
        except posix_ipc.ExistentialError:
            return None  # the caller looks again (and checks whoever made it)
        owner = None
        try:
            access.apply(shm.fd, access.shm_mode)  # the umask narrowed the mode; the group
            # Reserve every page now: a tmpfs without room says so here (ENOSPC) rather than
            # with a SIGBUS in whichever process first touches a page it cannot back.
            preallocate(shm.fd, size)
            owner = _take_owner(name, os.fstat(shm.fd).st_ino)
            if owner is None:
                raise RingError(f"{shm_path(name)}: removed by another process while this writer created it")
        except BaseException as exc:
            ino = os.fstat(shm.fd).st_ino
            shm.close_fd()
            _unlink_if(name, ino)
            if owner is not None:
                owner.close()
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                raise _no_room(directory, name, size, slots, ring_size) from None
            raise
        ring = cls(directory, name, shm, True, st, log_id)
        ring._owner = owner
        w = ring.words
        w[RH_VERSION] = RING_VERSION
        w[RH_SLOTS] = slots
        w[RH_RING_SIZE] = ring_size
        w[RH_MAX_RECORD] = max_record
        w[RH_SPAN_LOG] = SPAN_LOG
        enc = serializer.encode().ljust(SERIALIZER_NAME_SIZE, b"\0")
        ring.buf[RH_SERIALIZER_OFFSET : RH_SERIALIZER_OFFSET + SERIALIZER_NAME_SIZE] = enc
        ring.buf[RH_LOG_ID * 8 : RH_LOG_ID * 8 + LOG_ID_SIZE] = log_id
        w[RH_DIR_DEV], w[RH_DIR_INO] = ring._place
        ring.store_path()
        w[RH_STATE] = RING_INIT
        w[RH_MAGIC] = _MAGIC_WORD  # last: a ring without magic is one whose creator died
        ring.check_header()
        return ring

    def store_path(self) -> None:
        """Record the directory's path in the header (for ``ringwal rings``; cut to fit)."""
        raw = os.fsencode(self.directory)
        keep = raw[:RH_DIR_PATH_MAX]
        self.buf[RH_DIR_PATH_OFFSET : RH_DIR_PATH_OFFSET + RH_DIR_PATH_MAX] = keep.ljust(RH_DIR_PATH_MAX, b"\0")
        self.words[RH_DIR_PATH_LEN] = len(raw)

    def check_identity(self) -> None:
        """Refuse a ring that is not this log's (another log id, or another directory): its
        records are never read. ForeignRingError naming both logs."""
        w = self.words
        lid = bytes(self.buf[RH_LOG_ID * 8 : RH_LOG_ID * 8 + LOG_ID_SIZE])
        if lid != self.log_id or (w[RH_DIR_DEV], w[RH_DIR_INO]) != self._place:
            info = ring_info(self.name, self.buf)
            raise ForeignRingError(
                f"{shm_path(self.name)} is the ring of log {lid.hex()} in {info.directory or '?'} (device "
                f"{w[RH_DIR_DEV]}, inode {w[RH_DIR_INO]}), not of log {self.log_id.hex()} in {self.directory} (device "
                f"{self._place[0]}, inode {self._place[1]}): a ring serves only its own log, so none of its records "
                f"were read. If no process of that log runs, remove it: ringwal rings --remove {self.name.lstrip('/')}",
                path=shm_path(self.name),
            )

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

    @staticmethod
    def lane_base(k: int) -> int:
        """Word index of lane ``k``'s control block."""
        return (RING_HEADER_SIZE + k * LANE_CTL_SIZE) // 8

    def lane_ctl(self, k: int) -> memoryview:
        base = self.lane_base(k)
        return self.keep(self.words[base : base + LANE_WORDS])

    def span_log(self, k: int) -> memoryview:
        base = (self.spans_off + k * SPAN_LOG * SPAN_SIZE) // 8
        return self.keep(self.words[base : base + SPAN_LOG * 2])

    def lane_data(self, k: int) -> memoryview:
        off = self.data_off + k * self.ring_size
        return self.keep(self.buf[off : off + self.ring_size])

    def view_words(self, start: int, n: int) -> memoryview:
        return self.keep(self.words[start : start + n])

    def _locks(self) -> ByteLocks:
        locks = self.locks
        if locks is None:
            raise ValueError("operation on a closed ring")
        return locks

    def writer_pid(self) -> int:
        """The serving writer's pid as it sees itself (its PID namespace may not be ours): for display."""
        return self.words[RH_WRITER_PID]

    def writer_alive(self) -> bool:
        """Some process holds the writer byte (a writer is serving, starting or stopping)."""
        return self._locks().held_elsewhere(LOCK_WRITER)

    def owner(self, k: int) -> tuple[int, int]:
        """(pid, token) of lane ``k``'s owner; (0, 0) when the lane is free. The pid is for
        display (the owner's PID namespace); ``lane_owner_alive`` says whether it lives."""
        base = self.lane_base(k)
        w = self.words
        token = w[base + L_OWNER_TOKEN]
        return (w[base + L_OWNER_PID], token) if token else (0, 0)

    def lane_owner_alive(self, k: int) -> bool:
        """Some process holds lane ``k``'s byte: its owner lives (or a claim or reclaim is under way)."""
        return self._locks().held_elsewhere(LOCK_LANE0 + k)

    def ready(self) -> bool:
        """A writer serves the ring: state READY and the writer byte held (by a live process)."""
        return self.words[RH_STATE] == RING_READY and self.writer_alive()

    @staticmethod
    def wake_bit(k: int) -> int:
        """Lane ``k``'s futex bit: its producer waits on it, the writer wakes it (lanes 32 apart share one)."""
        return 1 << (k & 31)

    # ------------------------------------------------------------------ semaphores

    def writer_sem(self, create: bool = False) -> posix_ipc.Semaphore:
        """The writer's semaphore, opened after checking who made it (AccessError otherwise);
        ``create`` (the writer): made, exclusively, when there is none, with the ring's mode.

        There is no descriptor to fstat, so it is looked at by path right after opening it.
        ``/dev/shm`` is sticky: nobody else can remove (or replace) an object of ours, so a
        trusted owner seen after the open is the owner of what was opened.
        """
        name, path = self.writer_sem_name, sem_path(self.writer_sem_name)
        mode = self.access.shm_mode
        sem = None
        if create:
            try:
                sem = posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=mode)
            except posix_ipc.ExistentialError:
                pass
            else:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                    try:
                        self.access.apply(fd, mode)
                    finally:
                        os.close(fd)
                except BaseException:
                    sem.close()
                    with contextlib.suppress(posix_ipc.ExistentialError):
                        posix_ipc.unlink_semaphore(name)
                    raise
        if sem is None:
            try:
                sem = posix_ipc.Semaphore(name)
            except posix_ipc.PermissionsError:
                st = os.lstat(path)
                why = f"this process (uid {os.geteuid()}) may not open it"
                raise _untrusted("the writer's semaphore", path, st, why, self.directory) from None
        try:
            seen: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            seen = None  # removed meanwhile (the writer shut down): the handle works as long as it is open
        if seen is not None:
            why = self.access.problem(seen) or ("" if stat.S_ISREG(seen.st_mode) else "it is not a regular file")
            if why:
                sem.close()
                raise _untrusted("the writer's semaphore", path, seen, why, self.directory)
            if create:
                self._sem_ino = seen.st_ino
        return sem

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Unmap this process's view and drop the locks taken through it (the ring itself
        stays). Idempotent."""
        locks, self.locks = self.locks, None
        if locks is not None:
            locks.close()
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.close()
        views, self._views = self._views, []
        for v in reversed(views):
            v.release()
        mm, self._mm = self._mm, None
        if mm is not None:
            mm.close()

    def unlink(self) -> None:
        """Remove the ring's shared memory and semaphore by the names this process opened,
        each only while the name still names the object it opened (same inode): a writer
        never removes a ring it did not open. Mappings stay valid. (Between the look and the
        unlink only a process that removed our object and made another in its place could
        change it; in sticky ``/dev/shm`` that is the owner, or root.)"""
        _unlink_if(self.name, self.shm_ino)
        if self._sem_ino is not None:
            _unlink_if(self.writer_sem_name, self._sem_ino, sem=True)


class _Owner:
    """The writer's lock on a shared-memory object (an OFD lock on byte 0 of a descriptor of
    its own, not of the mapping's, so that closing it drops the lock)."""

    def __init__(self, locks: ByteLocks, ino: int) -> None:
        self.locks = locks
        self.ino = ino

    def close(self) -> None:
        self.locks.close()


def _take_owner(name: str, ino: int) -> _Owner | None:
    """Take the owner lock of the object at ``name`` (waiting up to OWNER_PATIENCE for a
    cleaner that holds it for a moment), provided ``name`` still names the object of inode
    ``ino``; None when it no longer does. LockTimeoutError when the lock stays held (a
    process stopped while it held it)."""
    locks = ByteLocks(shm_path(name), create=False)
    try:
        if os.fstat(locks.fileno()).st_ino != ino:
            locks.close()
            return None
        locks.lock(0, 1, OWNER_PATIENCE, "the ring's owner lock")
    except FileNotFoundError:
        locks.close()
        return None
    except BaseException:
        locks.close()
        raise
    return _Owner(locks, ino)


def _unlink_if(name: str, ino: int, *, sem: bool = False) -> bool:
    """Unlink shared memory (or a semaphore) ``name`` if it is still the object of inode
    ``ino``; True when it was removed."""
    try:
        if os.lstat(sem_path(name) if sem else shm_path(name)).st_ino != ino:
            return False
    except FileNotFoundError:
        return False
    with contextlib.suppress(posix_ipc.ExistentialError):
        (posix_ipc.unlink_semaphore if sem else posix_ipc.unlink_shared_memory)(name)
        return True
    return False


def unlink_names(directory: str) -> None:
    """Remove the ring and semaphore named after the log in ``directory`` (tests, tools),
    whoever made them; nothing when the directory holds no log."""
    try:
        name, wname = ring_names(directory)
    except (OSError, NoLogError):
        return
    with contextlib.suppress(posix_ipc.ExistentialError):
        posix_ipc.unlink_shared_memory(name)
    with contextlib.suppress(posix_ipc.ExistentialError):
        posix_ipc.unlink_semaphore(wname)


# --------------------------------------------------------------------------- every ring here

#: Names of rings this layout version makes (``ringwal.<log id>.<place>``), and of any version.
_NAME_RE = re.compile(r"^ringwal\.([0-9a-f]{32})\.([0-9a-f]{12})$")
_ANY_NAME_RE = re.compile(r"^ringwal\.[0-9a-f.]+$")
_STATES = {
    RING_INIT: "starting",
    RING_READY: "ready",
    RING_STOPPED: "stopped",
    RING_CLOSED: "closed",
    RING_GONE: "gone",
}


@dataclass
class RingInfo:
    """What ``/dev/shm`` holds of one ring, and whether its log is still there.

    ``verdict``: ``live`` (a writer has it open: its owner lock is held), ``idle`` (no writer,
    but its log is in its directory: the next writer of that log reuses it, writing whatever
    it holds), ``orphan`` (its log is gone: the directory was removed, replaced, or holds
    another log), ``unknown`` (its directory cannot be checked from here), ``starting`` (being
    created), ``other layout`` (made by a ringwal build with another layout version: who it
    belongs to cannot be read), ``unreadable`` (this process may not read it). ``why`` says
    it in words; ``unwritten`` counts records published into it and not written to the log.
    """

    name: str
    size: int = 0
    uid: int = -1
    mode: int = 0
    version: int | None = None
    log_id: str | None = None
    directory: str | None = None
    dev: int = 0
    ino: int = 0
    state: str = ""
    slots: int = 0
    unwritten: int = 0
    verdict: str = "unreadable"
    why: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__, mode=f"{self.mode:04o}")


def ring_info(name: str, buf: memoryview | bytes | mmap.mmap) -> RingInfo:
    """The header facts of a ring (``name`` without the leading slash, or with), from its bytes."""
    info = RingInfo(name.lstrip("/"))
    if len(buf) < RING_HEADER_SIZE:
        info.verdict, info.why = "starting", "its creator has not sized it yet"
        return info
    hdr = memoryview(buf)[:RING_HEADER_SIZE].cast("Q")
    try:
        if hdr[RH_MAGIC] != _MAGIC_WORD:
            info.verdict, info.why = "starting", "its creator has not finished it (no magic yet)"
            return info
        info.version = hdr[RH_VERSION]
        if info.version != RING_VERSION:
            info.verdict = "other layout"
            info.why = f"layout version {info.version}, made by another ringwal build: whose it is cannot be read"
            return info
        info.log_id = bytes(buf[RH_LOG_ID * 8 : RH_LOG_ID * 8 + LOG_ID_SIZE]).hex()
        info.dev, info.ino = hdr[RH_DIR_DEV], hdr[RH_DIR_INO]
        n = hdr[RH_DIR_PATH_LEN]
        if 0 < n <= RH_DIR_PATH_MAX:
            info.directory = os.fsdecode(bytes(buf[RH_DIR_PATH_OFFSET : RH_DIR_PATH_OFFSET + n]))
        info.state = _STATES.get(hdr[RH_STATE], str(hdr[RH_STATE]))
        info.slots = hdr[RH_SLOTS]
    finally:
        hdr.release()
    return info


def _count_unwritten(info: RingInfo, buf: mmap.mmap) -> None:
    words = memoryview(buf).cast("Q")
    try:
        for k in range(min(info.slots, (len(buf) - RING_HEADER_SIZE) // LANE_CTL_SIZE)):
            base = Ring.lane_base(k)
            info.unwritten += ((words[base + L_HEAD] >> 32) - (words[base + L_TAIL] >> 32)) & M32
    finally:
        words.release()


def _judge_place(info: RingInfo) -> None:
    """Set ``verdict``/``why`` of a readable ring of this layout from its directory."""
    d = info.directory
    if d is None:
        info.verdict, info.why = "unknown", "its directory's path is too long to have been recorded"
        return
    try:
        st = os.stat(d)
    except FileNotFoundError:
        info.verdict, info.why = "orphan", f"its directory {d} is gone"
        return
    except OSError as exc:
        info.verdict, info.why = "unknown", f"its directory {d} cannot be looked at: {exc.strerror}"
        return
    if (st.st_dev, st.st_ino) != (info.dev, info.ino):
        info.verdict, info.why = "orphan", f"{d} is another directory now (the log's was removed or moved)"
        return
    try:
        lid = read_log_id(d).hex()
    except NoLogError:
        info.verdict, info.why = "orphan", f"{d} holds no log any more"
        return
    except OSError as exc:
        info.verdict, info.why = "unknown", f"the log in {d} cannot be read: {exc.strerror}"
        return
    if lid != info.log_id:
        info.verdict, info.why = "orphan", f"{d} holds another log now ({lid})"
    else:
        info.verdict, info.why = "idle", f"its log is in {d}: the next writer of it reuses the ring"


def _inspect(name: str, fd: int) -> RingInfo:
    """Everything ``list_rings`` says about the object open at ``fd``."""
    st = os.fstat(fd)
    size = st.st_size
    info = RingInfo(name)
    if size >= RING_HEADER_SIZE:
        with mmap.mmap(fd, min(size, RING_HEADER_SIZE + MAX_LANES * LANE_CTL_SIZE), prot=mmap.PROT_READ) as mm:
            info = ring_info(name, mm)
            if info.version == RING_VERSION:
                _count_unwritten(info, mm)
    else:
        info = ring_info(name, b"")
    info.size, info.uid, info.mode = size, st.st_uid, stat.S_IMODE(st.st_mode)
    if info.version == RING_VERSION:
        if _owner_held(fd):
            info.verdict, info.why = "live", "a writer has it open (its owner lock is held)"
        else:
            _judge_place(info)
    return info


def _owner_held(fd: int) -> bool:
    """Another open of the object holds its owner lock (byte 0): a writer has it."""
    res = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _FLOCK_PROBE)
    return bool(struct.unpack("hhqqi0q", res)[0] != fcntl.F_UNLCK)


_FLOCK_PROBE = struct.pack("hhqqi0q", fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
#: Lanes a ring can have (Config's limit), which bounds how much of a ring ``list_rings`` maps.
MAX_LANES = 1024


def list_rings() -> list[RingInfo]:
    """Every ringwal shared-memory object in ``/dev/shm``, in name order, each judged
    (``RingInfo.verdict``). Maps each read-only, header and lane controls only; changes nothing."""
    try:
        names = sorted(n for n in os.listdir(SHM_DIR) if _ANY_NAME_RE.match(n))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        try:
            fd = os.open(os.path.join(SHM_DIR, n), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except PermissionError:
            try:
                st = os.lstat(os.path.join(SHM_DIR, n))
                out.append(
                    RingInfo(n, st.st_size, st.st_uid, stat.S_IMODE(st.st_mode), why="this user may not read it")
                )
            except FileNotFoundError:
                pass
            continue
        try:
            out.append(_inspect(n, fd))
        finally:
            os.close(fd)
    return out


def remove_ring(name: str) -> bool:
    """Remove the ring ``name`` (``ringwal.<...>``, as ``list_rings`` names it) and its
    semaphore, whoever made it and whatever it holds, unless a writer has it open (its
    owner lock is held: RingError). False when there was no such ring."""
    name = "/" + name.lstrip("/")
    if not _ANY_NAME_RE.match(name[1:]):
        raise ValueError(f"{name[1:]!r} is not the name of a ringwal ring")
    locks = ByteLocks(shm_path(name), create=False)
    try:
        ino = os.fstat(locks.fileno()).st_ino
        if not locks.try_lock(0):
            raise RingError(f"{shm_path(name)}: a writer has this ring open; stop it first (ringwal serve, SIGTERM)")
        removed = _unlink_if(name, ino)
    except FileNotFoundError:
        return False
    finally:
        locks.close()
    with contextlib.suppress(posix_ipc.ExistentialError):
        posix_ipc.unlink_semaphore(name + ".w")
    return removed


def clean_orphans(*, unwritten_too: bool = False) -> list[RingInfo]:
    """Remove the rings of logs that are gone (``RingInfo.verdict == "orphan"``) and return
    what was removed. A ring still holding records is kept unless ``unwritten_too`` (its
    directory may only have been moved: a writer started where it is now finds the ring by
    its log id and device and inode, and writes them).

    Race-free against a writer: each orphan is removed only while holding its owner lock,
    taken without waiting (a writer holds it from before it trusts the ring until it closes
    it, so a ring a writer has open is never removed), after judging it again, and only if
    its name still names the object judged. Runs in every writer as it starts (without
    ``unwritten_too``), and as ``ringwal rings --clean``.
    """
    removed = []
    for info in list_rings():
        if info.verdict != "orphan":
            continue
        name = "/" + info.name
        locks = ByteLocks(shm_path(name), create=False)
        try:
            fd = locks.fileno()
            if not locks.try_lock(0):
                continue  # a writer opened it meanwhile
            again = _inspect(info.name, fd)  # the lock is ours: our own probe does not see it
            if again.verdict != "orphan" or (again.unwritten and not unwritten_too):
                continue
            if _unlink_if(name, os.fstat(fd).st_ino):
                with contextlib.suppress(posix_ipc.ExistentialError):
                    posix_ipc.unlink_semaphore(name + ".w")
                removed.append(again)
        except (FileNotFoundError, PermissionError):
            continue
        finally:
            locks.close()
    return removed


class RingView:
    """A read-only look at a directory's ring: what ``stats``, ``follow`` and live readers need.

    It stores into the ring only to register and unregister a follower (under the claim lock,
    with its deadline). ``attach`` returns None when there is no ring, it is still being
    created, or it has a layout this build does not read: callers then work from the files
    alone.

    Live-reader rule (``docs/FORMAT.md``): the writer stores the written seq after the
    ``pwritev`` of the frame returns, so a reader that loads ``written_seq()`` *before* it
    reads ``current.wal`` is guaranteed to see every frame up to that seq complete.
    """

    _ring: Ring
    _registered = False
    _closed = True  # until __init__ has run: close() is then a no-op

    def __init__(self, ring: Ring) -> None:
        self._ring = ring
        self._closed = False
        self.directory = ring.directory
        self.follow_addr = ring.follow_addr

    @classmethod
    def attach(cls, directory: str) -> RingView | None:
        try:
            return cls(Ring.attach(directory))
        except (OSError, RingError, UnsupportedVersionError, AccessError):
            return None  # no ring, or none to trust: readers work from the files alone

    def writer_alive(self) -> bool:
        """True while a writer serves the ring (state READY and the writer byte held)."""
        return self._ring.ready()

    def closed(self) -> bool:
        """The last writer shut down cleanly and removed the ring: detach and attach again later."""
        return self._ring.words[RH_STATE] == RING_CLOSED

    def written_seq(self) -> int:
        """The last seq the writer has handed to the OS (its ``pwritev`` returned); 0 when none."""
        return max(self._ring.words[RH_NEXT_SEQ] - 1, 0)

    def durable_seq(self) -> int:
        """The last seq covered by a completed fdatasync (stored before any producer is told:
        no seq above it was acknowledged)."""
        return self._ring.words[RH_DURABLE_SEQ]

    def failure(self) -> tuple[int, int, int] | None:
        """(first seq, last seq, what) that a writer whose fsync failed declared lost and the
        next writer has not yet recorded; None when there is none."""
        w = self._ring.words
        first = w[RH_FAILED_FIRST]
        return (first, w[RH_FAILED_LAST], w[RH_FAILED_WHAT]) if first else None

    def follow_word(self) -> int:
        """Load before checking ``durable_seq``; pass to ``wait_follow`` (the _futex.py protocol)."""
        return self._ring.words[RH_FOLLOW_WAKE]

    def wait_follow(self, word: int, deadline: float) -> None:
        """Sleep until the writer bumps the follow word (after an fsync or a truncation) or
        ``deadline`` (time.monotonic) passes. Wakes only while a follower is registered."""
        _futex.wait(self.follow_addr, word, deadline, M32)

    def register_follower(self) -> None:
        """Ask the writer to bump the follow word after each fsync (idempotent), and hold a
        follower byte of ``wal.ring.lock`` (the first free one, never waited for) so that
        ``stats`` counts this follower exactly while it lives. Raises LockTimeoutError when
        the claim lock stays held (then nothing changed: try again later)."""
        if not self._registered:
            with claim_lock(self.directory):
                self._ring.words[RH_FOLLOWERS] += 1
            self._registered = True
            locks = self._ring.locks
            if locks is not None:  # more than FOLLOWER_LOCKS followers: the rest go uncounted
                for j in range(FOLLOWER_LOCKS):
                    if locks.try_lock(LOCK_FOLLOWER0 + j):
                        break

    def live_followers(self) -> int:
        """Followers alive right now: the follower bytes of ``wal.ring.lock`` held by other
        processes (a follower that died, however, holds none; the count word can stay high)."""
        return self._ring._locks().count_held_elsewhere(LOCK_FOLLOWER0, FOLLOWER_LOCKS)

    def writer_stats(self) -> dict[str, Any] | None:
        """The running writer's figures (``ringwal stats``), or None when no writer is alive."""
        ring = self._ring
        w = ring.words
        if not self.writer_alive():
            return None
        producers = []
        used = 0
        lanes_used = []
        for k in range(ring.slots):
            base = ring.lane_base(k)
            head, tail = w[base + L_HEAD], w[base + L_TAIL]
            pid, token = ring.owner(k)
            fill = (head - tail) & M32
            used += fill
            lanes_used.append(fill)
            if token:
                alive = ring.lane_owner_alive(k)
                producers.append({"lane": k, "pid": pid, "alive": alive, "ring_bytes_used": fill})
        return {
            "pid": w[RH_WRITER_PID],
            "state": w[RH_STATE],
            "started_ns": w[RH_STARTED_NS],
            "next_seq": w[RH_NEXT_SEQ],
            "durable_seq": w[RH_DURABLE_SEQ],
            "records_per_s": w[RH_RATE],
            "records_written": w[RH_RECORDS],
            "ring_bytes": ring.slots * ring.ring_size,
            "ring_bytes_used": used,
            "lane_size": ring.ring_size,
            "lane_bytes_used": lanes_used,
            "lanes": ring.slots,
            "producers": producers,
            "followers": self.live_followers(),
            "fsyncs": w[RH_FSYNC_COUNT],
            "fsync_ns": w[RH_FSYNC_NS],
            "fsync_histogram": [w[RH_FSYNC_HIST + b] for b in range(FSYNC_BUCKETS)],
        }

    def close(self) -> None:
        """Unregister (if registered) and unmap. Idempotent; the view is unusable afterwards."""
        if self._closed:
            return
        self._closed = True
        ring = self._ring
        del self._ring  # any later use raises AttributeError
        if self._registered:
            self._registered = False
            # A stopped claim-lock holder leaves the count high: one extra futex wake per fsync.
            with contextlib.suppress(OSError, RingError), claim_lock(self.directory):
                if ring.words[RH_FOLLOWERS]:
                    ring.words[RH_FOLLOWERS] -= 1
        ring.close()

    def __enter__(self) -> RingView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ProducerSide:
    """One producer's lane: claim, publish, room, waiting for progress, receipts, release.

    Words it stores: its lane's ``head`` and ``want`` words; holding its lane's byte, the
    lane's owner words and the attach generation (a hint); under the claim lock, the
    truncation request. Everything else it only loads. It holds its lane's byte of
    ``wal.ring.lock`` (through its ring's ``locks``) from the claim until ``release``.

    Not thread-safe: the handle serialises calls (its lane token for publishing, a lock for
    waiting; ``wait_progress`` and ``publish`` may run in two threads at once, since they
    store different words and the local fields they share are only read by the waiter).

    Local numbering: ``count`` is the number of records this side's owner (a handle) has
    published, ever; it agrees with the lane's count32 modulo 2**32, so the head word is
    ``(count & M32) << 32 | pos``. ``base`` is ``count`` when the lane was claimed.

    Publishing state: ``_head`` is the head word as last stored; ``_off`` the offset in the
    mapping where the next record's bytes go (the lane's start plus ``pos32 % ring_size``);
    ``_limit`` the offset in the mapping up to which bytes may be written without looking at
    the tail again: within the room seen at the last ``_refresh_room``, and short of the
    lane's end by at least one byte. So a publication that ends at or before ``_limit`` is
    one contiguous copy, and its head is ``_head + (count << 32) + n`` with no carry out of
    the pos half (pos32 reaches a multiple of 2**32 only at the lane's end, since ring_size
    divides 2**32). The count half can carry out of the 64 bits, every 2**32 records, only
    when the count passes a multiple of 256: there the head is masked, beside the span-log
    harvest. Everything else (a record reaching the lane's end, no room) takes the general
    path, which computes the head from its halves.
    """

    _closed = False

    def __init__(self, ring: Ring, lane: int, token: int, count: int, wait: str = "blocking") -> None:
        self.ring = ring
        self._wait_mode = WAIT_MODES[wait]
        self.lane = lane
        self._token = token
        self._words = ring.words
        self._ctl = ring.lane_ctl(lane)
        # The mapping itself and the lane's offset in it: mmap's own slice assignment and
        # struct.pack_into on it cost less than through a memoryview (publish_packed).
        mm = ring._mm
        assert mm is not None  # a mapped ring (Ring.close unmaps it only after its sides are gone)
        self._mm = mm
        self._lane_off = ring.data_off + lane * ring.ring_size
        self._lane_end = self._lane_off + ring.ring_size
        self._spanlog = ring.span_log(lane)
        self._size = ring.ring_size
        self._mask = ring.ring_size - 1
        self._wake_addr = ring.wake_addr
        self._bit = ring.wake_bit(lane)
        self._wsem = ring.writer_sem()
        self.generation = ring.words[RH_WRITER_GEN]
        head = self._ctl[L_HEAD]
        self._head = head
        self._off = self._lane_off + (head & self._mask)
        self.count = count + (((head >> 32) - count) & M32)
        self.base = self.count
        self._harvested = self._ctl[L_SPAN_HEAD]
        self.forgotten = self.count  # receipts with counts <= this can no longer be resolved
        self._spans_end = array("q")
        self._spans_start = array("q")
        self._spans_seq = array("q")
        self._limit = 0
        self._refresh_room()

    @classmethod
    def claim(cls, ring: Ring, count: int, wait: str = "blocking") -> ProducerSide | None:
        """Take a free lane of a READY ring (or one whose owner died) for this process;
        ``wait`` is its ``Config.wait_strategy``.

        None when the ring is not READY (its writer is starting or stopping). Raises
        SlotsExhaustedError when every lane's byte stays held (by live owners) for
        ``CLAIM_PATIENCE``. Never waits for a lock: each lane's byte is tried once per scan.
        """
        w = ring.words
        locks = ring._locks()
        deadline = 0.0
        pause = 0.0005
        while True:
            if w[RH_STATE] != RING_READY:
                return None
            for k in range(ring.slots):
                if not locks.try_lock(LOCK_LANE0 + k):
                    continue  # a live owner, a claim under way, or the writer freeing it
                if w[RH_STATE] != RING_READY:  # checked holding the byte: see shutdown()
                    locks.unlock(LOCK_LANE0 + k)
                    return None
                # We hold the byte, so no one else stores these words; an owner token still
                # set belongs to a producer that died (it held the byte while it owned the lane).
                base = ring.lane_base(k)
                token = secrets.randbits(63) | 1
                w[base + L_WANT_WRITTEN] = 0
                w[base + L_WANT_DURABLE] = 0
                w[base + L_OWNER_PID] = os.getpid()
                w[base + L_OWNER_TOKEN] = token  # last: a lane with a token is fully claimed
                w[RH_ATTACH_GEN] += 1
                return cls(ring, k, token, count, wait)
            now = time.monotonic()
            if not deadline:
                deadline = now + CLAIM_PATIENCE
            elif now >= deadline:
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
        raise SlotsExhaustedError(
            f"{ring.directory}: all {ring.slots} producer slots of the ring are held by live processes; "
            "raise producer_slots in Config (it applies when the writer next creates the ring)"
        )

    # ------------------------------------------------------------------ publishing

    def publish(self, blob: bytes, count: int) -> int:
        """Copy ``count`` records (body layout) into the lane and publish them with one store.

        Returns the new ``count``, or -1 when the lane has no room for ``len(blob)`` bytes
        now (nothing written). The caller checks sizes: ``len(blob) <= ring_size``. Raises
        LanePoisonedError (nothing written) once the writer has dropped a span of this lane.
        """
        if self._ctl[L_POISON] == self._token:
            raise self.poison_error()
        n = len(blob)
        off = self._off
        end = off + n
        if end > self._limit:
            if self._refresh_room() < n:
                return -1
            if end > self._limit:
                return self._publish_at_end(blob, count)
        self._mm[off:end] = blob
        self._off = end
        old = self.count
        self.count = c = old + count
        h = self._head + (count << 32) + n  # no carry out of pos32: see the class docstring
        if (old ^ c) >> 8:
            self._ctl[L_HEAD] = self._head = h & M64  # publish: one 8-byte store, after the copy
            self._harvest()  # about every 256 records: keep up with the span log
        else:
            self._ctl[L_HEAD] = self._head = h  # publish: one 8-byte store, after the copy
        return c

    def _publish_at_end(self, blob: bytes, count: int) -> int:
        """``publish`` of a span that reaches the lane's end (room checked): the copy is split
        there (or ends there), and the head is computed from its halves."""
        n = len(blob)
        mm = self._mm
        off = self._off
        cut = self._lane_end - off
        if n <= cut:
            mm[off : off + n] = blob
        else:
            mm[off : self._lane_end] = blob[:cut]
            mm[self._lane_off : self._lane_off + n - cut] = blob[cut:]
        old = self.count
        self.count = c = old + count
        pos = ((self._head & M32) + n) & M32
        self._off = self._lane_off + (pos & self._mask)
        self._ctl[L_HEAD] = self._head = ((c & M32) << 32) | pos  # publish: one 8-byte store, after the copy
        self._refresh_room()
        if (old ^ c) >> 8:
            self._harvest()
        return c

    def publish_packed(self, pack_into: Callable[..., None], hlen: int, n: int, a: int, b: int, data: bytes) -> int:
        """``publish`` of one record of ``n`` bytes (``hlen + len(data)``: the caller has
        checked it against ``max_record_size``) whose frame-body bytes are ``pack_into(buf,
        off, n - 4, a, b)`` (``hlen`` bytes: the u32 record length, then the serializer's
        fixed head) followed by ``data``, written straight into the lane: no framed copy is
        built.

        The append fast path of a serializer with a fixed head (``BinarySerializer``); the
        same contract as ``publish`` (-1 when there is no room, LanePoisonedError), and the
        same single head store after the copy. A record that would reach the lane's end is
        built as bytes and goes through ``publish``. ``pack_into`` raises struct.error
        (nothing published) for values its format cannot hold.
        """
        if self._ctl[L_POISON] == self._token:
            raise self.poison_error()
        off = self._off
        end = off + n
        if end > self._limit:
            if self._refresh_room() < n:
                return -1
            if end > self._limit:
                blob = bytearray(hlen)
                pack_into(blob, 0, n - 4, a, b)
                return self.publish(bytes(blob) + data, 1)
        mm = self._mm
        pack_into(mm, off, n - 4, a, b)
        mm[off + hlen : end] = data
        self._off = end
        self.count = c = self.count + 1
        h = self._head + _ONE_RECORD + n  # no carry out of pos32: see the class docstring
        if c & 0xFF:
            self._ctl[L_HEAD] = self._head = h  # publish: one 8-byte store, after the copy
        else:  # every 256 records: keep up with the span log (and count32 may wrap here)
            self._ctl[L_HEAD] = self._head = h & M64
            self._harvest()
        return c

    def _refresh_room(self) -> int:
        """Look at the tail: the room in the lane now (bytes); sets ``_limit`` from it."""
        used = ((self._head & M32) - self._ctl[L_TAIL]) & M32
        room = self._size - used
        self._limit = min(self._off + room, self._lane_end - 1)
        if used >= self._size >> 1:
            self.post()  # half full: ask for a drain now rather than at the writer's idle timeout
        return room

    def post(self) -> None:
        """Wake the writer (it sleeps on its semaphore when idle)."""
        self._wsem.release()

    def wait_room(self, n: int, deadline: float, check_writer: Callable[[], bool]) -> bool:
        """Wait until ``n`` bytes fit in the lane; False at ``deadline`` (time.monotonic)."""
        while True:
            if n <= self._refresh_room():
                return True
            if self.wait_progress(False, self.count, deadline, check_writer) is None:
                return n <= self._refresh_room()

    # ------------------------------------------------------------------ waiting

    def _read_progress(self, durable: bool) -> tuple[int, int]:
        c = self._ctl
        i_count, i_seq = (L_DURABLE_COUNT, L_DURABLE_SEQ) if durable else (L_WRITTEN_COUNT, L_WRITTEN_SEQ)
        for _ in range(1000):
            v = c[L_VERSION]
            if not v & 1:
                cnt, seq = c[i_count], c[i_seq]
                if c[L_VERSION] == v:
                    return cnt, seq
        return -1, 0  # a writer died mid-update: not done; the liveness check takes over

    def reached(self, durable: bool, count: int) -> int | None:
        """The lane's last written (durable) seq if record ``count`` of this side is written
        (durable) already, else None. Never waits; stores nothing (any thread may call it).
        Raises LogFailedError, as ``wait_progress`` does, when records of this side were
        lost to a failed fsync (a durable count past them is never a success)."""
        cnt, seq = self._read_progress(durable)
        if durable and self._ctl[L_LOST] >> 32:  # after the progress words: see wait_progress
            lost = self.loss_error()
            if lost is not None:
                raise lost
        if cnt >= 0 and ((cnt - (count & M32)) & M32) < _HALF:
            return seq
        return None

    def wait_progress(
        self, durable: bool, count: int, deadline: float, check_writer: Callable[[], bool], *, spin: bool = True
    ) -> int | None:
        """Wait until the writer has written (or made durable) this lane's records up to
        ``count``; return the lane's last written (durable) seq then (that of record
        ``count`` or a later one), or None at ``deadline``.

        The wait is posted once (the want word, then the writer's semaphore); between looks
        at the progress words it passes the time as ``Config.wait_strategy`` says: asleep on
        the futex word until the writer's wake (``blocking``, the _futex.py protocol), giving
        the CPU away (``yielding``), or not at all (``busy-spin``). Every ``POLL`` seconds it
        calls ``check_writer()``, which may start a new writer or raise; True means a new
        writer took over, and the want is posted again. ``spin=False`` always sleeps, whatever
        the strategy: ``ringwal.aio``'s waiter thread passes it, since polling there would
        hold the GIL that the event loop's thread needs.
        """
        t32 = count & M32
        want_word = L_WANT_DURABLE if durable else L_WANT_WRITTEN
        words = self._words
        ctl = self._ctl
        mode = self._wait_mode if spin else _SLEEP
        monotonic = time.monotonic
        posted = False
        next_check = 0.0
        while True:
            wake = words[RH_WAKE]  # before the progress words: the order _futex.py relies on
            cnt, seq = self._read_progress(durable)
            # After the progress words (the writer stores ``lost`` before any durable count
            # that passes a lost record): a lost record of ours is never reported durable.
            if durable and ctl[L_LOST] >> 32:
                lost = self.loss_error()
                if lost is not None:
                    ctl[want_word] = 0
                    raise lost
            if cnt >= 0 and ((cnt - t32) & M32) < _HALF:
                if posted:
                    ctl[want_word] = 0  # lets the writer skip this lane at a glance
                return seq
            # Record ``count`` was dropped (it comes after the first dropped one): it never
            # gets a seq. Records before it still do, and are waited for as usual.
            if ctl[L_POISON] == self._token and 0 < ((t32 - ctl[L_POISON_FROM]) & M32) < _HALF:
                ctl[want_word] = 0
                raise self.poison_error()
            if not posted:
                ctl[want_word] = _WANT | t32
                self._wsem.release()  # a locked instruction: our want is visible before it
                posted = True
                next_check = monotonic() + POLL
                # Look again before waiting: a writer that stored its progress and read the wants
                # in the moment before ours was visible did not wake us, but (its stores are
                # visible a few ns after it makes them) its progress is there for this look.
                continue
            now = monotonic()
            if now >= deadline:
                return None
            if now >= next_check:
                next_check = now + POLL
                if check_writer():
                    posted = False
                continue
            if mode == _SLEEP:
                _futex.wait(self._wake_addr, wake, min(next_check, deadline), self._bit)
            elif mode == _YIELD:
                os.sched_yield()

    # ------------------------------------------------------------------ lost records

    def loss_error(self) -> LogFailedError | None:
        """The error to raise when records this side published were lost to a writer's failed
        fsync (the lane's lost word names one after ``base``); None otherwise."""
        c = self._ctl
        word = c[L_LOST]
        if not word >> 32 or self._count_of(word & M32) <= self.base:
            return None
        first, last, what = c[L_LOST_FIRST], c[L_LOST_LAST], c[L_LOST_WHAT]
        d = self.ring.directory
        return LogFailedError(
            f"{d}: records appended by this handle were lost: {FSYNC_FAILURES.get(what, FSYNC_FAILURES[0])} "
            f"failed after the writer had written seqs {first}-{last}, so they were never durable; they are "
            f"recorded as lost in {d}/wal_holes.json and will never be acknowledged. This handle accepts no "
            "more work: open a new one (records appended after them are written as usual)",
            path=os.path.join(d, "current.wal"),
            first_seq=first,
            last_seq=last,
        )

    # ------------------------------------------------------------------ poison

    def poison_error(self) -> LanePoisonedError:
        """The error for a lane whose span the writer dropped (call when the poison word
        holds this side's token): which records, and what was wrong with them."""
        c = self._ctl
        first = max(self._count_of(c[L_POISON_FROM]) - self.base, 0) + 1  # 1: the first since the claim
        why_word, span = c[L_POISON_WHY], c[L_POISON_SPAN]
        res = (why_word >> 32, why_word & M32, c[L_POISON_AT], c[L_POISON_VALUE])
        why = describe_walk(res, span >> 32, span & M32, self.ring.max_record)
        return LanePoisonedError(
            f"{self.ring.directory}: the writer found bytes in ring lane {self.lane} (this process, pid "
            f"{os.getpid()}) that are not whole records ({why}) and dropped them without writing them: the records "
            f"this handle appended on that lane from the {_nth(first)} on are not in the log (those before it are). "
            "Something in this process "
            "wrote into the shared-memory ring; the handle has given back its lane and accepts no more work: "
            "open a new one",
            lane=self.lane,
            first_dropped=first,
            reason=why,
        )

    def wait_emptied(self, deadline: float) -> bool:
        """After a poisoning: wait until the writer has dropped everything this side published
        (tail == head), so that no record of it is left for whoever claims the lane next.
        False at ``deadline`` (time.monotonic)."""
        ctl = self._ctl
        words = self._words
        while True:
            wake = words[RH_WAKE]
            if ctl[L_TAIL] == ctl[L_HEAD]:
                return True
            if time.monotonic() >= deadline:
                return False
            self.post()
            _futex.wait(self._wake_addr, wake, min(deadline, time.monotonic() + POLL), self._bit)

    def writer_ready(self) -> bool:
        """The ring is READY and its writer process is alive."""
        return self.ring.ready()

    def log_gone(self) -> bool:
        """The writer stopped because the log directory was removed or moved (state GONE)."""
        return self._words[RH_STATE] == RING_GONE

    def writer_changed(self) -> bool:
        """A different writer than last time serves the ring (call when ``writer_ready``)."""
        gen = self._words[RH_WRITER_GEN]
        if gen == self.generation:
            return False
        self.generation = gen
        return True

    # ------------------------------------------------------------------ truncation

    def truncate_before(self, seq: int, deadline: float, check_writer: Callable[[], bool]) -> int | None:
        """Ask the writer to remove completed segments below ``seq``; wait until it has.

        Returns the first seq still in the log, or None at ``deadline``. The request word only
        rises (under the claim lock), so concurrent requests never undo each other. Raises
        LockTimeoutError when the claim lock stays held (by a stopped or hung process) for
        ``CLAIM_WAIT`` seconds or until ``deadline``; nothing was requested then.
        """
        w = self._words
        with claim_lock(self.ring.directory, max(0.0, min(CLAIM_WAIT, deadline - time.monotonic()))):
            if w[RH_TRUNC_REQ] < seq:
                w[RH_TRUNC_REQ] = seq
        self.post()
        next_check = time.monotonic() + POLL
        while True:
            word = w[RH_FOLLOW_WAKE]  # before the condition: the writer stores it, then bumps this
            if w[RH_TRUNC_DONE] >= seq:
                return w[RH_FIRST_SEQ]
            now = time.monotonic()
            if now >= deadline:
                return None
            _futex.wait(self.ring.follow_addr, word, min(next_check, deadline), M32)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + POLL
                if check_writer():
                    self.post()

    # ------------------------------------------------------------------ receipts

    def _harvest(self) -> None:
        """Copy new span-log entries into local memory before the writer overwrites them."""
        sl = self._spanlog
        ctl = self._ctl
        while True:
            head = ctl[L_SPAN_HEAD]
            lo = max(self._harvested, head - SPAN_LOG)
            if lo > self._harvested:
                self.forgotten = max(self.forgotten, self._count_of(sl[(lo % SPAN_LOG) * 2] >> 32))
            entries = [(sl[(i % SPAN_LOG) * 2], sl[(i % SPAN_LOG) * 2 + 1]) for i in range(lo, head)]
            # Entry lo's slot is rewritten while span_head == lo + SPAN_LOG (the entry is stored
            # before span_head moves past it), so a copy is good only if span_head stayed below.
            if ctl[L_SPAN_HEAD] - lo < SPAN_LOG:
                break
        for word, first_seq in entries:
            end = self._count_of(word & M32)
            start = end - (((word & M32) - (word >> 32)) & M32)
            if end <= self.base:
                continue  # a previous owner's records
            self._spans_end.append(end)
            self._spans_start.append(start)
            self._spans_seq.append(first_seq)
        self._harvested = head
        if len(self._spans_end) > KEEP_SPANS:
            cut = len(self._spans_end) // 2
            self.forgotten = max(self.forgotten, self._spans_end[cut - 1])
            del self._spans_end[:cut], self._spans_start[:cut], self._spans_seq[:cut]

    def _count_of(self, lane32: int) -> int:
        """Local count of a lane count32 at or before the current one."""
        return self.count - (((self.count & M32) - lane32) & M32)

    def seq_of(self, count: int) -> int | None:
        """The seq the writer gave record ``count`` (call once it is written); None when
        the span history no longer reaches back that far."""
        self._harvest()
        ends = self._spans_end
        i = bisect.bisect_left(ends, count)
        if count > self.forgotten and i < len(ends) and self._spans_start[i] < count:
            return self._spans_seq[i] + (count - self._spans_start[i] - 1)
        return None

    # ------------------------------------------------------------------ lifecycle

    def release(self) -> None:
        """Give the lane back (clearing its owner words while still holding its byte), wake
        the writer, unmap (which drops the byte). Idempotent."""
        if self._closed:
            return
        ring = self.ring
        base = ring.lane_base(self.lane)
        w = self._words
        if w[base + L_OWNER_TOKEN] == self._token:  # always, while we hold the byte
            w[base + L_WANT_WRITTEN] = 0
            w[base + L_WANT_DURABLE] = 0
            w[base + L_OWNER_TOKEN] = 0  # first: a lane without a token is free
            w[base + L_OWNER_PID] = 0
            w[RH_ATTACH_GEN] += 1
        with contextlib.suppress(posix_ipc.Error):
            self._wsem.release()  # an idle writer started by open may now exit
        self.abandon()

    def abandon(self) -> None:
        """Drop this process's references without touching shared state (after a fork, the
        lane, the semaphore and the mapping are the parent's; the lane's byte was already
        let go in the child by ``_fileutil``'s at-fork hook). Idempotent; the side is
        unusable afterwards (its views are gone: any use raises AttributeError)."""
        if self._closed:
            return
        self._closed = True
        del self._ctl, self._spanlog, self._words
        with contextlib.suppress(posix_ipc.Error):
            self._wsem.close()
        self.ring.close()


def _advance(word: int, records: int, nbytes: int) -> int:
    """A head/tail word moved on by ``records`` records in ``nbytes`` bytes."""
    return (((word >> 32) + records) & M32) << 32 | ((word + nbytes) & M32)


def _bad_rest(
    lane: _WriterLane, head: int, res: WalkResult, ncount: int, nbytes: int
) -> tuple[_WriterLane, int, WalkResult, int, int, int]:
    """The drop for a span whose walk failed: when the failure is at a record (a bad length,
    or one running past the span) the whole records before it stay and are framed, and only
    the rest, from that record to ``head``, is dropped; a span whose lengths tile it into the
    wrong number of records is dropped whole (which of them would be the real ones?)."""
    outcome, k, pos, value = res
    if outcome in (WALK_COUNT, WALK_SPAN) or not k:
        return (lane, head, res, ncount, nbytes, 0)
    return (lane, head, (outcome, 0, 0, value), ncount - k, nbytes - pos, k)


def _nth(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class _WriterLane:
    """The writer's view of one lane, with local mirrors of the words only it writes (loaded
    once, when the writer side is made; from then on only this writer stores those words, so
    the mirror is what the word holds and the hot path never loads it from the ring)."""

    __slots__ = (
        "k", "bit", "ctl", "data", "spans", "tail", "written_count", "written_seq", "durable_count", "version",
        "span_head", "posted_w", "posted_d", "poison",
    )  # fmt: skip

    def __init__(self, ring: Ring, k: int) -> None:
        self.k = k
        self.bit = ring.wake_bit(k)
        self.ctl = ring.lane_ctl(k)
        self.data = ring.lane_data(k)
        self.spans = ring.span_log(k)
        c = self.ctl
        self.tail = c[L_TAIL]
        self.written_count = c[L_WRITTEN_COUNT]
        self.written_seq = c[L_WRITTEN_SEQ]
        self.durable_count = c[L_DURABLE_COUNT]
        self.version = c[L_VERSION]  # odd if a dead writer stopped mid-update: the next update evens it
        self.span_head = c[L_SPAN_HEAD]
        self.posted_w = 0
        self.posted_d = 0
        self.poison = c[L_POISON]  # the token of an owner whose span was dropped (0: none)


class WriterSide:
    """The writer's side of the ring: drain, the pending/finish/recover steps, written and
    durable progress, waking waiters, reclaiming dead lanes, truncation requests, stats words.

    Words it stores: every lane's ``tail``, ``pending tail``, progress words, span log,
    pending seq and poison words; the ring header's state, writer identity, pending words,
    resume words, seqs, wake and follow words, stats words and the truncation answer. Holding
    a lane's byte (taken without waiting) it also clears the owner words of a lane whose
    producer died. It holds the writer byte from ``publish_ready`` until ``close``. It never
    takes the claim lock and never waits for any lock. ``at(name)`` is called at each named
    crash point of a drain (the crash tests kill the process there).

    ``dropped`` collects (lane, pid, message) for every span a drain dropped as not records;
    the caller logs and clears it.
    """

    _closed = False  # the semaphore is closed (close() unmaps the ring every time)

    def __init__(self, ring: Ring, wsem: posix_ipc.Semaphore, at: Callable[[str], None]) -> None:
        self.ring = ring
        self.directory = ring.directory
        self._wsem = wsem
        self._at = at
        w = self._w = ring.words
        self._hist = ring.view_words(RH_FSYNC_HIST, FSYNC_BUCKETS)
        self.lanes = [_WriterLane(ring, k) for k in range(ring.slots)]
        base = RING_HEADER_SIZE // 8
        stop = base + ring.slots * LANE_WORDS
        self._heads = ring.keep(w[base + L_HEAD : stop : LANE_WORDS])
        self._owners = ring.keep(w[base + L_OWNER_TOKEN : stop : LANE_WORDS])
        self._wants_w = ring.keep(w[base + L_WANT_WRITTEN : stop : LANE_WORDS])
        self._wants_d = ring.keep(w[base + L_WANT_DURABLE : stop : LANE_WORDS])
        self._tails = [ln.tail for ln in self.lanes]
        self._dirty: set[_WriterLane] = set()
        self._rr = 0
        self._resume: tuple[int, int] | None = None  # (lane, head): mirrors words 22-23
        self._load_resume()
        self.dropped: list[tuple[int, int, str]] = []
        self._attach_gen = -1
        self.more = False  # the last drain stopped at its budget: more is published already

    @classmethod
    def open(
        cls,
        directory: str,
        slots: int,
        ring_size: int,
        max_record: int,
        serializer: str,
        at: Callable[[str], None],
        log_id: bytes | None = None,
    ) -> WriterSide:
        """Create the ring of the log in ``directory`` (``log_id``: its id; read from its
        segment headers when None) or reuse the one a dead writer of it left (call with the
        directory's writer lock held). Raises ConfigError when the existing ring was made for
        another serializer, ShmTooSmallError when ``/dev/shm`` has no room for a new one (what
        was created is removed again), AccessError or ForeignRingError when the object at its
        name is not to be trusted or not this log's (``Ring.create_or_reuse``)."""
        lid = read_log_id(directory) if log_id is None else log_id
        ring = Ring.create_or_reuse(directory, lid, slots, ring_size, max_record, serializer)
        try:
            if ring.serializer != serializer:
                raise ConfigError(
                    f"the ring of {directory} was created for serializer {ring.serializer!r} but the log uses "
                    f"{serializer!r}; stop its producers or remove /dev/shm{ring.name}"
                )
            try:
                wsem = ring.writer_sem(create=True)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                _spans, _data, size = ring_layout(ring.slots, ring.ring_size)
                raise _no_room(directory, ring.writer_sem_name, size + 4096, ring.slots, ring.ring_size) from None
        except BaseException:
            if ring.created:
                ring.unlink()
            ring.close()
            raise
        return cls(ring, wsem, at)

    # ------------------------------------------------------------------ start-up

    def recover(self, last_on_disk: int, first_seq: int, lost: tuple[int, int, int] | None = None) -> str | None:
        """Finish or undo a drain a dead writer left pending, then mark everything written as
        durable (the log fdatasynced it at open). Returns what was done, for the log, or None.

        ``last_on_disk`` is the last seq in the log after its recovery (a torn frame cut away).
        ``lost`` = (first, last, what): seqs the log recorded as lost to a failed fsync and
        continued after; the lanes holding them are told (``record_loss``) before anything
        is marked durable, and the header's failure words are cleared (the log has the hole).
        """
        w = self._w
        done = None
        if w[RH_PENDING]:
            first, plast = w[RH_PENDING_FIRST], w[RH_PENDING_LAST]
            if last_on_disk >= plast:
                done = f"finishing a drain of seqs {first}-{plast} left pending by a dead writer"
                for lane in self.lanes:
                    c = lane.ctl
                    if c[L_PENDING_TAIL] != c[L_TAIL]:
                        self._finish_lane(lane, c[L_PENDING_TAIL], c[L_PENDING_SEQ], redo=True)
                w[RH_RESUME_HEAD] = w[RH_PENDING_RESUME_HEAD]
                w[RH_RESUME] = w[RH_PENDING_RESUME]
            elif last_on_disk < first:
                done = f"seqs {first}-{plast} of a dead writer's last drain never reached disk; writing them again"
                for lane in self.lanes:
                    lane.ctl[L_PENDING_TAIL] = lane.ctl[L_TAIL]
            else:  # pragma: no cover - a frame is all or nothing
                raise LogFailedError(
                    f"{self.directory}: the log ends at seq {last_on_disk}, inside a pending drain {first}-{plast}"
                )
            w[RH_PENDING] = 0
        else:
            # A writer that died while dropping a span left the tail moved and maybe not the
            # pending tail; with no drain pending the pending tails mean nothing: realign them.
            for lane in self.lanes:
                lane.ctl[L_PENDING_TAIL] = lane.ctl[L_TAIL]
        if lost is not None:  # after a finished drain's written counts, before any durable count
            self._mark_lost(*lost)
        w[RH_FAILED_FIRST] = 0
        self._load_resume()
        for lane in self.lanes:
            self._publish_durable(lane)
            lane.posted_w = lane.posted_d = 0
        w[RH_NEXT_SEQ] = last_on_disk + 1
        w[RH_DURABLE_SEQ] = last_on_disk
        w[RH_FIRST_SEQ] = first_seq
        w[RH_TRUNC_DONE] = 0  # a request a dead writer left unserved is served (again) by this one
        return done

    def _mark_lost(self, first: int, last: int, what: int) -> int:
        """Store the lost words of every lane whose written but not durable records have seqs
        in ``first``..``last`` (the range first, the lost word last); the lanes marked."""
        n = 0
        for lane in self.lanes:
            c = lane.ctl
            wc = c[L_WRITTEN_COUNT]
            if c[L_DURABLE_COUNT] == wc or not first <= c[L_WRITTEN_SEQ] <= last:
                continue
            c[L_LOST_FIRST] = first
            c[L_LOST_LAST] = last
            c[L_LOST_WHAT] = what
            c[L_LOST] = 1 << 32 | wc  # last: a producer reads the range once it sees this
            n += 1
        return n

    def record_loss(self, first: int, last: int, what: int) -> int:
        """This writer's fsync failed after it wrote seqs ``first``..``last`` (none of them is
        durable): tell the lanes holding them, then store the header's failure words for the
        next writer (48 last). Call before ``stop``. Returns how many lanes were told."""
        n = self._mark_lost(first, last, what)
        w = self._w
        w[RH_FAILED_WHAT] = what
        w[RH_FAILED_LAST] = last
        w[RH_FAILED_FIRST] = first
        return n

    def stop(self) -> None:
        """Stop serving without draining (the log failed): STOPPED, and every waiter woken to
        look for a new writer (or to find its records lost)."""
        self._w[RH_STATE] = RING_STOPPED
        self.wake_all()

    def publish_ready(self) -> None:
        """Announce this process as the ring's writer (take the writer byte, then store READY);
        producers attach from now on. RingError if the writer byte stays held elsewhere."""
        w = self._w
        w[RH_STATE] = RING_INIT
        # Only a process that kept a dead writer's lock file open could hold it: we hold
        # wal.lock, so no other writer runs.
        self.ring._locks().lock(LOCK_WRITER, 1, WRITER_BYTE_PATIENCE, "the ring's writer lock")
        self.ring.store_path()  # where the log is now (its directory may have been moved)
        w[RH_WRITER_PID] = os.getpid()
        w[RH_WRITER_GEN] += 1
        w[RH_STARTED_NS] = time.time_ns()
        for i in range(FSYNC_BUCKETS):  # stats describe this writer, not the ring's earlier ones
            self._hist[i] = 0
        w[RH_FSYNC_COUNT] = w[RH_FSYNC_NS] = w[RH_RATE] = w[RH_RECORDS] = 0
        w[RH_STATE] = RING_READY  # last: producers attach only to a READY ring whose writer byte is held

    # ------------------------------------------------------------------ the drain

    def has_records(self) -> bool:
        """Some lane holds published records not yet drained."""
        return self._heads.tolist() != self._tails

    def drain(self, next_seq: int, budget: int, write: Callable[[bytes, int], int]) -> int:
        """Move published spans (round robin from a rotating start; the rest of a lane cut
        by the last drain first) into one body of at most ``budget`` bytes (or one record, when
        the first is larger) and ``write(body, count)`` it as one frame; return the records
        written (0: nothing was published, or all of it was dropped). ``write`` returns the
        frame's first seq, which must be ``next_seq``; it raises on failure and the drain stays
        pending (ring.py).

        Every span is checked as records before it is written (``walk_records``, on the
        writer's private copy, so a producer cannot change it after the check); what is not
        records is dropped after the frame and its producer poisoned (``_bad_rest``, ``_drop``).

        Lane words are read in bulk (a strided view's ``tolist``: one aligned 8-byte load per
        word, in C), so an idle pass costs well under a microsecond however many lanes exist.
        """
        heads = self._heads.tolist()
        tails = self._tails
        if heads == tails:
            self.more = False
            return 0
        size = self.ring.ring_size
        mask = size - 1
        lanes = self.lanes
        visit = self._visit_order(heads)
        maxrec = self.ring.max_record
        pieces: list[bytes | memoryview] = []
        # (lane, new tail, records, offset in body, bytes); all but a cut span still unchecked
        took: list[tuple[_WriterLane, int, int, int, int]] = []
        # (lane, head, what was wrong or None for a poisoned owner's span, records, bytes,
        # records of the span written before them)
        drops: list[tuple[_WriterLane, int, WalkResult | None, int, int, int]] = []
        cut: tuple[int, int] | None = None  # (lane, head): a span cut at a record boundary
        checked = 0  # took[-1] was checked as it was cut (1) or not (0)
        total = count = 0
        more = True  # unless the loop visits every span (its else below)
        for k, head in visit:
            lane = lanes[k]
            tail = tails[k]
            nbytes = (head - tail) & M32
            ncount = ((head >> 32) - (tail >> 32)) & M32
            if lane.poison and lane.poison == lane.ctl[L_OWNER_TOKEN]:
                drops.append((lane, head, None, ncount, nbytes, 0))  # a poisoned producer's later spans
                continue
            if nbytes > size or not nbytes or not ncount:
                drops.append((lane, head, (WALK_SPAN, 0, 0, size), ncount, nbytes, 0))
                continue
            room = budget - total
            off = tail & mask
            if nbytes <= room:
                end = off + nbytes
                if end <= size:
                    pieces.append(lane.data[off:end])
                else:
                    pieces.append(lane.data[off:])
                    pieces.append(lane.data[: end - size])
                took.append((lane, head, ncount, total, nbytes))
                total += nbytes
                count += ncount
                if total >= budget:
                    break
                continue
            # More than the budget has left: copy only what fits (at least one record when
            # the frame is still empty) and take the whole records in it. Rounded down to the
            # first record's size, so that records of one length fill the copy exactly: then
            # it is taken as it is (alone in the frame, it is the body, not copied again).
            first = 4 + _U32.unpack(self._copy(lane, off, 4))[0]
            if not took:
                room = max(room, min(first, nbytes))
            if first <= room:
                room -= room % first
            prefix = self._copy(lane, off, room)
            res = walk_records(prefix, ncount, maxrec, nbytes)
            kc, b = res[1], res[2]
            if res[0]:
                drop = _bad_rest(lane, head, res, ncount, nbytes)
                drops.append(drop)
                kc, b = drop[5], nbytes - drop[4]
                if not kc:
                    continue
            if kc:
                new_tail = _advance(tail, kc, b)
                pieces.append(prefix if b == len(prefix) else memoryview(prefix)[:b])
                took.append((lane, new_tail, kc, total, b))
                checked = 1
                total += b
                count += kc
                if new_tail != head and not res[0]:
                    cut = (k, head)
            break
        else:
            more = False  # every published span was visited: one drain took all there was
        self.more = more
        body = b"".join(pieces)
        del pieces
        if len(took) > checked:
            body, count = self._check_taken(body, count, took, len(took) - checked, drops, maxrec)
        if not took:
            if drops:
                self._drop_all(drops)
            return 0
        w = self._w
        s = next_seq
        for lane, new_tail, ncount, _off, _n in took:  # step 3: the drain becomes pending
            lane.ctl[L_PENDING_SEQ] = s
            lane.ctl[L_PENDING_TAIL] = new_tail
            s += ncount
        if cut is not None:
            w[RH_PENDING_RESUME_HEAD] = cut[1]
        w[RH_PENDING_RESUME] = 0 if cut is None else cut[0] + 1
        w[RH_PENDING_FIRST] = next_seq
        w[RH_PENDING_LAST] = s - 1
        w[RH_PENDING] = 1
        self._at("pending")
        got = write(body, count)  # step 4
        if got != next_seq:  # pragma: no cover - the log and the ring disagree on seqs
            raise LogFailedError(f"{self.directory}: the log wrote seqs from {got}, the ring drained from {next_seq}")
        self._at("written")
        s = next_seq
        dirty = self._dirty
        for lane, new_tail, ncount, _off, _n in took:  # step 5
            self._finish_lane(lane, new_tail, s, redo=False)
            dirty.add(lane)
            self._at("lane_finished")
            s += ncount
        if cut is not None:
            w[RH_RESUME_HEAD] = cut[1]
        w[RH_RESUME] = 0 if cut is None else cut[0] + 1
        self._resume = cut
        self._at("resume_set")
        w[RH_PENDING] = 0
        w[RH_NEXT_SEQ] = s  # after the frame's pwritev returned: the live-reader rule (RingView)
        w[RH_RECORDS] += count
        if drops:  # after the frame: a lane's good records before its bad ones are in it now
            self._drop_all(drops)
        return count

    def _visit_order(self, heads: list[int]) -> list[tuple[int, int]]:
        """(lane, head to drain up to) for every lane with records, in this drain's order:
        the lane the last drain cut first (up to the head it had then), then round robin."""
        tails = self._tails
        n = len(tails)
        start = self._rr
        self._rr = start + 1 if start + 1 < n else 0
        visit: list[tuple[int, int]] = []
        first = -1
        if self._resume is not None:
            k, head = self._resume
            nbytes = (head - tails[k]) & M32
            if 0 < nbytes <= self.ring.ring_size:
                visit.append((k, head))
                first = k
            else:  # drained (or dropped) up to its head since: nothing to resume
                self._resume = None
                self._w[RH_RESUME] = 0
        for k in range(start, n):
            if heads[k] != tails[k] and k != first:
                visit.append((k, heads[k]))
        for k in range(start):
            if heads[k] != tails[k] and k != first:
                visit.append((k, heads[k]))
        return visit

    def _copy(self, lane: _WriterLane, off: int, n: int) -> bytes:
        """A private copy of ``n`` bytes of the lane from byte ``off`` (wrapping at its end)."""
        size = self.ring.ring_size
        end = off + n
        if end <= size:
            return bytes(lane.data[off:end])
        return bytes(lane.data[off:]) + bytes(lane.data[: end - size])

    def _check_taken(
        self,
        body: bytes,
        count: int,
        took: list[tuple[_WriterLane, int, int, int, int]],
        unchecked: int,
        drops: list[tuple[_WriterLane, int, WalkResult | None, int, int, int]],
        maxrec: int,
    ) -> tuple[bytes, int]:
        """Walk the first ``unchecked`` spans of ``took`` (taken whole) in the body, the
        writer's private copy. A bad span keeps the whole records before its first bad one
        (``_bad_rest``); the rest goes to ``drops`` and the body is rebuilt without it.
        Returns (body, count)."""
        if unchecked > 1:
            # Often every record of every lane has one length: then one strided compare over
            # them all, and each span being a whole number of those records, is the whole check.
            last = took[unchecked - 1]
            end = last[3] + last[4]
            records = count - (took[-1][2] if unchecked < len(took) else 0)
            if all(t[4] * records == t[2] * end for t in took[:unchecked]):  # the same bytes per record
                run = same_length_run(body if end == len(body) else memoryview(body)[:end], records, maxrec, 2)
                if run == (records, end):
                    return body, count
        mv = memoryview(body)
        changed = False
        for i in range(unchecked):
            lane, head, ncount, off, nbytes = took[i]
            res = walk_records(mv[off : off + nbytes] if len(took) > 1 else body, ncount, maxrec)
            if res[0]:
                drop = _bad_rest(lane, head, res, ncount, nbytes)
                drops.append(drop)
                kept, b = drop[5], nbytes - drop[4]
                took[i] = (lane, _advance(lane.tail, kept, b), kept, off, b)
                changed = True
        if changed:
            body = b"".join([mv[t[3] : t[3] + t[4]] for t in took if t[2]])
            took[:] = [t for t in took if t[2]]
            count = sum(t[2] for t in took)
        mv.release()
        return body, count

    def _drop_all(self, drops: list[tuple[_WriterLane, int, WalkResult | None, int, int, int]]) -> None:
        """Drop each span (``_drop``), then wake the producers concerned (the _futex.py order:
        the words they check are stored before the wake word is bumped)."""
        bits = 0
        for lane, head, res, ncount, nbytes, kept in drops:
            self._drop(lane, head, res, ncount, nbytes, kept)
            bits |= lane.bit
        w = self._w
        w[RH_WAKE] = (w[RH_WAKE] + 1) & M32
        _futex.wake(self.ring.wake_addr, bits)

    def _drop(self, lane: _WriterLane, head: int, res: WalkResult | None, ncount: int, nbytes: int, kept: int) -> None:
        """Advance the lane's tail to ``head`` without writing what lies before it (``ncount``
        records in ``nbytes`` said to follow the ``kept`` good ones the drain just framed), and
        poison its owner so that the owner's handle raises instead of waiting for seqs.

        Runs after the drain's frame is finished (or with no frame), outside the pending
        protocol: nothing of the dropped bytes is in a frame. Crash windows: before the poison
        words, nothing changed and the next writer finds the same bytes (now at the lane's
        tail) and drops them again; between them and the tail store, the next writer drops
        them again (the owner is poisoned already, so as a poisoned owner's span); after the
        tail store, the pending tail may lag, and ``recover`` realigns pending tails when no
        drain is pending. The resume words are cleared last; a resume whose lane has reached
        its head is void anyway (``_visit_order``). No seq is given to a dropped record and no
        span-log entry names it: a receipt for one raises the poison error
        (``ProducerSide.wait_progress``).
        """
        c = lane.ctl
        k = lane.k
        tail = c[L_TAIL]
        if res is not None:
            token, pid = c[L_OWNER_TOKEN], c[L_OWNER_PID]
            if token and lane.poison != token:
                c[L_POISON_FROM] = (tail >> 32) & M32
                c[L_POISON_WHY] = res[0] << 32 | (res[1] & M32)
                c[L_POISON_AT] = res[2]
                c[L_POISON_VALUE] = res[3]
                c[L_POISON_SPAN] = (ncount & M32) << 32 | (nbytes & M32)
                c[L_POISON] = token  # last: the owner reads the details once it sees its token
                lane.poison = token
            who = f"pid {pid}" if pid else "no owner (its producer exited)"
            why = describe_walk(res, ncount, nbytes, self.ring.max_record)
            what = f"dropped {ncount} records ({nbytes} bytes) published in ring lane {k} by {who} without writing them"
            before = f" (the {kept} records before them were written)" if kept else ""
            self.dropped.append((k, pid, f"{what}: they are not whole records: {why}{before}"))
        self._at("poisoned")
        c[L_TAIL] = head
        c[L_PENDING_TAIL] = head
        lane.tail = head
        self._tails[k] = head
        if self._resume is not None and self._resume[0] == k:
            self._resume = None
            self._w[RH_RESUME] = 0

    def _load_resume(self) -> None:
        w = self._w
        k = w[RH_RESUME]
        self._resume = (k - 1, w[RH_RESUME_HEAD]) if 0 < k <= len(self.lanes) else None

    def _finish_lane(self, lane: _WriterLane, head: int, first_seq: int, *, redo: bool) -> None:
        """Log the span, publish written progress, advance the tail (step 5)."""
        c = lane.ctl
        end32 = head >> 32
        start32 = lane.tail >> 32
        last_seq = first_seq + ((end32 - start32) & M32) - 1
        sl = lane.spans
        h = lane.span_head
        entry = (start32 << 32) | end32
        # A redo after a crash between the span entry and the tail store must not log it twice.
        if not (redo and h and sl[((h - 1) % SPAN_LOG) * 2] == entry and sl[((h - 1) % SPAN_LOG) * 2 + 1] == first_seq):
            j = (h % SPAN_LOG) * 2
            sl[j] = entry
            sl[j + 1] = first_seq
            lane.span_head = h = h + 1
            c[L_SPAN_HEAD] = h
        v = lane.version | 1  # odd: changing
        c[L_VERSION] = v
        c[L_WRITTEN_COUNT] = end32
        c[L_WRITTEN_SEQ] = last_seq
        c[L_VERSION] = lane.version = v + 1
        c[L_TAIL] = head
        lane.tail = head
        self._tails[lane.k] = head
        lane.written_count = end32
        lane.written_seq = last_seq

    @staticmethod
    def _publish_durable(lane: _WriterLane) -> None:
        wc = lane.written_count
        if lane.durable_count == wc:
            return
        c = lane.ctl
        v = lane.version | 1
        c[L_VERSION] = v
        c[L_DURABLE_COUNT] = wc
        c[L_DURABLE_SEQ] = lane.written_seq
        c[L_VERSION] = lane.version = v + 1
        lane.durable_count = wc

    def mark_durable(self, durable_seq: int) -> None:
        """An fdatasync covering every record written so far returned: publish durable
        progress of every lane written since the last one. (Call ``notify`` next, then
        ``count_fsync``: the waiters' wake comes before the statistics.)"""
        # First: nothing above it is acknowledged (a next writer after an fsync failure at its
        # start-up cuts only above what a previous writer acknowledged: seglog.Prior).
        self._w[RH_DURABLE_SEQ] = durable_seq
        for lane in self._dirty:
            self._publish_durable(lane)
        self._dirty.clear()

    def count_fsync(self, fsync_ns: int) -> None:
        """Count an fdatasync that took ``fsync_ns`` in the stats words (``ringwal stats``)."""
        w = self._w
        w[RH_FSYNCS] += 1
        self._hist[fsync_bucket(fsync_ns // 1000)] += 1
        w[RH_FSYNC_COUNT] += 1
        w[RH_FSYNC_NS] += fsync_ns

    # ------------------------------------------------------------------ waking

    def sync_wanted(self) -> int:
        """How many lanes wait in ``sync`` for records not yet durable."""
        wants = self._wants_d.tolist()
        if not any(wants):
            return 0
        lanes = self.lanes
        n = 0
        for k in compress(range(len(wants)), wants):  # the lanes with a want, found in C
            if ((lanes[k].durable_count - wants[k]) & M32) >= _HALF:
                n += 1
        return n

    def notify(self, durable: bool) -> None:
        """Wake every producer whose wait is now satisfied (each once per want), in one syscall.

        The progress words were stored before this; the wake word is bumped after them and
        before the futex wake (the protocol in ``_futex.py``).
        """
        bits = self._satisfied(self._wants_d.tolist(), True) if durable else 0
        bits |= self._satisfied(self._wants_w.tolist(), False)
        w = self._w
        w[RH_WAKE] = (w[RH_WAKE] + 1) & M32
        if bits:
            _futex.wake(self.ring.wake_addr, bits)
        if durable and w[RH_FOLLOWERS]:
            self.wake_followers()

    def _satisfied(self, wants: list[int], durable: bool) -> int:
        if not any(wants):
            return 0
        bits = 0
        lanes = self.lanes
        for k in compress(range(len(wants)), wants):
            want = wants[k]
            lane = lanes[k]
            if durable:
                if want != lane.posted_d and ((lane.durable_count - want) & M32) < _HALF:
                    lane.posted_d = want
                    bits |= lane.bit
            elif want != lane.posted_w and ((lane.written_count - want) & M32) < _HALF:
                lane.posted_w = want
                bits |= lane.bit
        return bits

    def wake_all(self) -> None:
        """Wake every sleeping producer (they look for a new writer)."""
        w = self._w
        w[RH_WAKE] = (w[RH_WAKE] + 1) & M32
        _futex.wake(self.ring.wake_addr, M32)

    def wake_followers(self) -> None:
        """Bump the follow word and wake everyone sleeping on it (followers, truncate_before)."""
        w = self._w
        w[RH_FOLLOW_WAKE] = (w[RH_FOLLOW_WAKE] + 1) & M32
        _futex.wake(self.ring.follow_addr, M32)

    def wait_posted(self, timeout: float) -> None:
        """Sleep until a producer posts the writer semaphore or ``timeout`` seconds pass."""
        with contextlib.suppress(posix_ipc.BusyError, posix_ipc.SignalError):
            self._wsem.acquire(timeout)

    def clear_posts(self) -> None:
        """Swallow posts already made (the pass that follows serves them): one read of the
        value (no syscall) when there are none, as after most passes."""
        sem = self._wsem
        if sem.value:
            with contextlib.suppress(posix_ipc.BusyError):
                while True:
                    sem.acquire(0)

    # ------------------------------------------------------------------ lanes and owners

    def attachments_changed(self) -> bool:
        """A lane was claimed or released since the last call. A hint: claims and releases
        bump the word without a lock, so two at once may count as one (the writer also asks
        ``owned()`` whenever it is idle)."""
        gen = self._w[RH_ATTACH_GEN]
        if gen == self._attach_gen:
            return False
        self._attach_gen = gen
        return True

    def owned(self) -> bool:
        """Some lane has an owner (a live producer, or a dead one not yet reclaimed)."""
        return any(self._owners.tolist())

    def reclaim_dead(self) -> list[tuple[int, int]]:
        """Free the lanes whose owner died; their published records stay and are drained as
        usual. Returns (lane, pid) of each lane freed (the pid as the owner saw itself).

        A lane's owner died when its byte can be taken: a live owner holds it. Each byte is
        tried once, without waiting, and held only while the owner words are cleared.
        """
        freed: list[tuple[int, int]] = []
        owners = self._owners.tolist()
        if not any(owners):
            return freed
        locks = self.ring._locks()
        for k, token in enumerate(owners):
            if token and locks.try_lock(LOCK_LANE0 + k):
                try:
                    pid = self._free_lane(k)
                finally:
                    locks.unlock(LOCK_LANE0 + k)
                if pid is not None:
                    freed.append((k, pid))
        return freed

    def _free_lane(self, k: int) -> int | None:
        """Clear lane ``k``'s owner and want words (call holding its byte); the owner's pid, or
        None when it had no owner (released or never claimed)."""
        w = self._w
        base = self.ring.lane_base(k)
        if not w[base + L_OWNER_TOKEN]:
            return None
        pid = w[base + L_OWNER_PID]
        w[base + L_WANT_WRITTEN] = 0
        w[base + L_WANT_DURABLE] = 0
        w[base + L_OWNER_TOKEN] = 0
        w[base + L_OWNER_PID] = 0
        w[RH_ATTACH_GEN] += 1
        lane = self.lanes[k]
        lane.posted_w = lane.posted_d = 0
        return pid

    # ------------------------------------------------------------------ truncation, stats

    def truncation_requested(self) -> int:
        """The seq of an unserved ``truncate_before`` request, or 0."""
        w = self._w
        req = w[RH_TRUNC_REQ]
        return req if req > w[RH_TRUNC_DONE] else 0

    def truncation_served(self, before: int, first_seq: int) -> None:
        w = self._w
        w[RH_FIRST_SEQ] = first_seq
        w[RH_TRUNC_DONE] = before
        self.wake_followers()

    def set_first_seq(self, first_seq: int) -> None:
        """Retention removed segments: the log now starts at ``first_seq``."""
        self._w[RH_FIRST_SEQ] = first_seq

    def records_written(self) -> int:
        return self._w[RH_RECORDS]

    def set_rate(self, records_per_s: int) -> None:
        self._w[RH_RATE] = records_per_s

    # ------------------------------------------------------------------ shutdown

    def shutdown(self, grace: float = SHUTDOWN_GRACE) -> bool:
        """Stop serving: either mark the ring CLOSED and unlink it (no lane owned, every lane
        drained) and return True, or mark it STOPPED, wake every waiter so it looks for a new
        writer, and return False. Waits up to ``grace`` seconds for lanes to be let go.

        Call after the last drain and fsync. It takes every lane's byte in one non-blocking
        call: holding them all, no producer owns a lane or is claiming one, so any owner
        token still set belongs to a producer that died (killed just before our SIGTERM,
        say) and is cleared, and a claim that gets a byte after we drop them sees CLOSED.
        If some byte is held, a producer lives: STOPPED.
        """
        ring = self.ring
        locks = ring._locks()
        slots = ring.slots
        w = self._w
        every = locks.try_lock(LOCK_LANE0, slots)
        deadline = time.monotonic() + grace
        while not every and time.monotonic() < deadline:
            # Producers closing now give their lanes back and post the semaphore; a producer
            # being killed holds its lane's lock until the kernel has finished its exit (a few
            # ms after the signal, longer on a busy CPU): both are worth a short wait.
            self.wait_posted(0.01)
            every = locks.try_lock(LOCK_LANE0, slots)
        try:
            if every:
                for k in range(slots):
                    self._free_lane(k)
            in_use = not every or self.has_records()
            w[RH_STATE] = RING_STOPPED if in_use else RING_CLOSED
            if not in_use:
                ring.unlink()
        finally:
            if every:
                locks.unlock(LOCK_LANE0, slots)
        if in_use:
            self.reclaim_dead()  # the next writer would, but its owners may be gone by then
            self.wake_all()
        return not in_use

    def mark_gone(self) -> None:
        """The log directory is gone (the writer found it removed or moved): store GONE, so
        that attached producers raise LogGoneError at their next look instead of waiting for
        a writer, remove the ring by the name and object this writer opened, wake everyone."""
        self._w[RH_STATE] = RING_GONE
        self.ring.unlink()
        self.wake_all()

    def close(self) -> None:
        """Unmap and close the semaphore (the ring stays unless ``shutdown`` unlinked it). Idempotent."""
        self.lanes = []
        self._dirty = set()
        if not self._closed:
            self._closed = True
            self._wsem.close()
        self.ring.close()
