"""ringwal against what a team would pick instead, measured side by side in one run.

Every system runs the same workload on the same disk, each producer a separate process
(forked), the systems interleaved run by run so that drift on a noisy machine hits all alike:

* ``ringwal``      ringwal.open handles and a ``ringwal serve`` writer (group commit) with
                   the default ``Config`` (``--ringwal-segment-size`` sets another
                   ``segment_size``); each producer builds a ``Record(1, time.time_ns(), data)``
                   per append, as a user writes it;
* ``sqlite``       stdlib sqlite3, WAL mode, ``busy_timeout`` 10 s, one row per record in an
                   ``INTEGER PRIMARY KEY`` table; ``synchronous=FULL`` when durable,
                   ``NORMAL`` when OS-buffered; ``BEGIN IMMEDIATE`` ... ``COMMIT`` per batch;
* ``redis``        Debian's redis-server with the append-only file (``appendfsync always``
                   when durable, ``everysec`` when OS-buffered), ``XADD`` to one stream, one
                   command per round trip;
* ``redis-pipe16`` the same, pipelined 16 commands deep (a sync flushes the pipeline);
* ``lmdb``         the ``lmdb`` package; one write transaction per sync point (so one per
                   record when syncing every record, per 100 otherwise), ``sync=True`` when
                   durable and ``sync=False`` when OS-buffered; keys are a global sequence
                   number read inside the transaction (a log, not a key-value table);
* ``mpqueue``      a multiprocessing.Queue into one writer process that writes what is
                   queued, fdatasyncs once for every producer waiting, and acks them on pipes;
* ``flock``        one file under ``fcntl.flock``; each producer appends and fdatasyncs itself;
* ``ceiling``      the bare group-commit skeleton of ``bench/ceiling.py`` (slots in a shared
                   mapping, one pwrite + one fdatasync per round, futex sleep and wake): the
                   ceiling of ringwal's design on this disk, durable modes only. Every durable
                   ringwal figure is also reported as a fraction of it, paired run by run
                   (``vs_ceiling`` lines: records/s over the ceiling's, p50/p99 over its p50/p99,
                   CPU seconds per million records of both);
* ``ringwal-yielding``, ``ringwal-busy-spin``: ringwal with ``Config.wait_strategy`` set so
                   (the default is ``blocking``), durable modes only: what the low-latency
                   strategies buy in p50/p99 and cost in CPU.

Workloads: producers x record size x durability mode. A mode is ``buffered`` (no waiting
for the disk; one final flush is counted), or ``sync`` every N records (the producer waits
until its records are durable: ``handle.sync()``, ``COMMIT``, the reply under ``always``,
fdatasync). Reported per run (JSON lines on stdout): records/s, MB/s of payload, p50 / p99 /
p99.9 of the durability wait, CPU seconds per million records (producers plus the writer or
server process), peak RSS of the writer or server, fairness (slowest producer's rate over the
fastest's). Then replay of 1,000,000 100-byte records (ringwal's ``replay``, a bare
read-and-check loop over the same segment files (``bench_log.bare_loop``: per record, unpack
the length, CRC32C the bytes, count), ``SELECT`` in SQLite, ``XRANGE`` in Redis),
and the disk's and memory's limits measured in the same run: one fdatasync, sequential write
bandwidth, and a C-speed copy into POSIX shared memory.

``--report DIR`` writes ``results.json``, ``README.md`` (the tables and the targets) and PNG
plots (with matplotlib, an optional bench extra) into DIR. Nothing here asserts a speed.

    python bench/compare.py --report docs/benchmarks          # the full run (~15 min)
    python bench/compare.py --quick                           # a smoke run (~1 min)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import mmap
import multiprocessing as mp
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import posix_ipc  # noqa: E402
import psutil  # noqa: E402

import ringwal  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_log  # noqa: E402  (its bare read-and-check loop is the replay floor)
import ceiling  # noqa: E402  (the bare group-commit skeleton: the ceiling of the durable modes)
from ringwal import Record  # noqa: E402

SYSTEMS = ["ringwal", "ringwal-yielding", "ringwal-busy-spin", "ceiling", "sqlite", "redis", "redis-pipe16", "lmdb", "mpqueue", "flock"]
#: Systems measured only when producers wait for durability (a sync every N records).
DURABLE_ONLY = {"ceiling", "ringwal-yielding", "ringwal-busy-spin"}
#: The ringwal variants: system name -> Config.wait_strategy.
RINGWAL_WAITS = {"ringwal": None, "ringwal-yielding": "yielding", "ringwal-busy-spin": "busy-spin"}
LAT_KEEP = 50_000  # latency samples kept per producer


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def peak_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ============================================================================ clients
# A client lives in one producer process: append(data) takes a record's payload; sync()
# returns once everything appended is durable (or, OS-buffered, committed/sent); finish()
# ends a buffered run (everything handed to the OS).


class RingwalClient:
    def __init__(self, cfg, idx, every):
        extra = {"wait_strategy": cfg["wait"]} if cfg.get("wait") else {}
        self.h = ringwal.open(ringwal.Config(dir=cfg["dir"], start_writer=False, **extra))
        self._append = self.h.append

    def append(self, data):
        self._append(Record(1, time.time_ns(), data))

    def sync(self):
        self.h.sync()

    def finish(self):
        self.h.flush()

    def close(self):
        self.h.close()


class SqliteClient:
    def __init__(self, cfg, idx, every):
        self.db = sqlite3.connect(cfg["path"], isolation_level=None, timeout=10)
        self.db.execute("PRAGMA busy_timeout = 10000")
        self.db.execute(f"PRAGMA synchronous = {cfg['synchronous']}")
        self.auto = 0 if every else 100  # OS-buffered: commit every 100 rows; else at each sync
        self.pending = []

    def append(self, data):
        self.pending.append((1, data))
        if len(self.pending) == self.auto:
            self.sync()

    def sync(self):
        if self.pending:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT INTO log (type, data) VALUES (?, ?)", self.pending)
            self.db.execute("COMMIT")
            self.pending.clear()

    finish = sync

    def close(self):
        self.db.close()


class Resp:
    """The few lines of the Redis protocol a benchmark needs (no client library)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.pos = 0

    @staticmethod
    def encode(*parts) -> bytes:
        out = [b"*%d\r\n" % len(parts)]
        for p in parts:
            p = p if isinstance(p, bytes) else str(p).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(p), p))
        return b"".join(out)

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                line, self.pos = self.buf[self.pos : i], i + 2
                return line
            self._fill()

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self.buf = self.buf[self.pos :] + chunk  # parsing moves a position; copy only on refill
        self.pos = 0

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b":"):
            return rest
        if kind == b"-":
            raise RuntimeError(f"redis: {rest.decode()}")
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) - self.pos < n + 2:
                self._fill()
            data = self.buf[self.pos : self.pos + n]
            self.pos += n + 2
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RuntimeError(f"redis: unexpected reply {line[:40]!r}")

    def call(self, *parts):
        self.sock.sendall(self.encode(*parts))
        return self.reply()

    def close(self):
        self.sock.close()


class RedisClient:
    def __init__(self, cfg, idx, every):
        self.r = Resp(cfg["port"])
        self.depth = cfg["depth"]
        self.out = []

    def append(self, data):
        if len(self.out) >= self.depth:  # the pipeline is full: send it and read the replies
            self.sync()
        self.out.append(b"*5\r\n$4\r\nXADD\r\n$3\r\nlog\r\n$1\r\n*\r\n$1\r\nd\r\n$%d\r\n%s\r\n" % (len(data), data))

    def sync(self):
        if self.out:
            self.r.sock.sendall(b"".join(self.out))
            for _ in range(len(self.out)):
                self.r.reply()
            self.out.clear()

    finish = sync

    def close(self):
        self.r.close()


class LmdbClient:
    _SEQ = struct.Struct(">Q")

    def __init__(self, cfg, idx, every):
        import lmdb

        self.env = lmdb.open(cfg["path"], map_size=cfg["map_size"], sync=cfg["sync"], metasync=cfg["sync"], lock=True)
        self.auto = 0 if every else 100  # OS-buffered: a transaction per 100 records
        self.pending = []

    def append(self, data):
        self.pending.append(data)
        if len(self.pending) == self.auto:
            self.sync()

    def sync(self):
        if not self.pending:
            return
        with self.env.begin(write=True) as txn:
            cur = txn.cursor()
            seq = self._SEQ.unpack(cur.key())[0] if cur.last() else 0
            pack = self._SEQ.pack
            for data in self.pending:
                seq += 1
                txn.put(pack(seq), data, append=True)
        self.pending.clear()

    finish = sync

    def close(self):
        self.env.close()


class MpQueueClient:
    def __init__(self, cfg, idx, every):
        self.q = cfg["queue"]
        self.ack = cfg["acks"][idx][0]
        self.idx = idx
        self.n = 0

    def append(self, data):
        self.n += 1
        self.q.put((self.idx, self.n, len(data).to_bytes(4, "little") + data, 0))

    def _wait(self, kind):
        self.q.put((self.idx, self.n, None, kind))
        while self.ack.recv() < self.n:
            pass

    def sync(self):
        self._wait(2)

    def finish(self):
        self._wait(1)

    def close(self):
        self.q.put((self.idx, -1, None, 0))


def mpqueue_writer(path, q, acks, ready):
    """Writes whatever is queued, one fdatasync for every producer waiting on durability."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    ready.set()
    while True:
        batch = [q.get()]
        while True:
            try:
                batch.append(q.get_nowait())
            except Exception:
                break
        if None in batch:  # Setup.stop: every producer is done
            break
        chunks, written, durable = [], {}, {}
        for idx, n, data, kind in batch:
            if n < 0:
                pass  # a producer closed
            elif data is not None:
                chunks.append(data)
            elif kind == 2:
                durable[idx] = n
            else:
                written[idx] = n
        if chunks:
            os.write(fd, b"".join(chunks))
        if durable:
            os.fdatasync(fd)
        for idx, n in {**written, **durable}.items():
            acks[idx][1].send(n)
    os.close(fd)


class FlockClient:
    def __init__(self, cfg, idx, every):
        self.fd = os.open(cfg["path"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append(self, data):
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.write(self.fd, len(data).to_bytes(4, "little") + data)
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def sync(self):
        os.fdatasync(self.fd)

    def finish(self):
        pass

    def close(self):
        os.close(self.fd)


CLIENTS = {
    "ringwal": RingwalClient,
    "ringwal-yielding": RingwalClient,
    "ringwal-busy-spin": RingwalClient,
    "ceiling": lambda cfg, idx, every: ceiling.CeilingClient(cfg["ceiling"], idx),
    "sqlite": SqliteClient,
    "redis": RedisClient,
    "redis-pipe16": RedisClient,
    "lmdb": LmdbClient,
    "mpqueue": MpQueueClient,
    "flock": FlockClient,
}


def producer_main(system, cfg, idx, every, size, seconds, start, out):
    try:
        client = CLIENTS[system](cfg, idx, every)
        data = bytes([65 + idx % 26]) * size
        append, sync, clock = client.append, client.sync, time.perf_counter
        lat: list[float] = []
        n = 0
        start.wait()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = clock()
        end = t0 + seconds
        if every:
            while clock() < end:
                for _ in range(every):
                    append(data)
                n += every
                t = clock()
                sync()
                lat.append(clock() - t)
        else:
            step = 200 if size <= 1024 else 20
            while clock() < end:
                for _ in range(step):
                    append(data)
                n += step
            client.finish()
        elapsed = clock() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        client.close()
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        out.put((n, elapsed, lat[:: max(1, len(lat) // LAT_KEEP)], cpu, None))
    except BaseException as exc:  # report instead of hanging the parent
        out.put((0, 0.0, [], 0.0, f"{type(exc).__name__}: {exc}"))


# ============================================================================ servers


class Setup:
    """Starts what a system needs for one run; ``cfg`` goes to every producer."""

    segment_size: int | None = None  # None: the default Config's

    def __init__(self, system, base, every, producers, size=100):
        self.system = system
        self.dir = tempfile.mkdtemp(dir=base)
        self.durable = bool(every)
        self.every = every
        self.size = size
        self.server: subprocess.Popen | None = None
        self.proc = None
        self.ceiling = None
        self.pid: int | None = None
        if system in RINGWAL_WAITS:
            self._start_ringwal(producers, RINGWAL_WAITS[system])
        else:
            getattr(self, "_start_" + system.replace("-pipe16", "").replace("-", "_"))(producers)

    def _start_ringwal(self, producers, wait=None):
        from ringwal.ring import unlink_names

        unlink_names(self.dir)  # a ring left by a deleted directory that had this one's inode (a killed run)
        size = [] if self.segment_size is None else ["--segment-size", str(self.segment_size)]
        self.server = subprocess.Popen(
            [sys.executable, "-m", "ringwal", "serve", "--dir", self.dir, *size,
             "--producer-slots", str(max(16, producers))],  # the default (16) is sized for a 64 MiB /dev/shm
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = self.server.stderr.readline()
        if "serving" not in line:
            raise RuntimeError(f"ringwal serve did not start: {line}")
        self.pid = self.server.pid
        self.cfg = {"dir": self.dir, "wait": wait}

    def _start_ceiling(self, producers):
        self.ceiling = ceiling.Ceiling(self.dir, producers, self.size * max(1, self.every))
        self.pid = self.ceiling.pid
        self.cfg = {"ceiling": self.ceiling}

    def _start_sqlite(self, producers):
        path = os.path.join(self.dir, "log.db")
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, type INTEGER NOT NULL, data BLOB NOT NULL)")
        db.close()
        self.cfg = {"path": path, "synchronous": "FULL" if self.durable else "NORMAL"}

    def _start_redis(self, producers):
        port = free_port()
        self.server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", "",
             "--appendonly", "yes", "--appendfsync", "always" if self.durable else "everysec", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                r = Resp(port)
                r.call("PING")
                r.close()
                break
            except OSError:
                if time.monotonic() > deadline or self.server.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        self.pid = self.server.pid
        self.cfg = {"port": port, "depth": 16 if self.system == "redis-pipe16" else 1}

    def _start_lmdb(self, producers):
        self.cfg = {"path": os.path.join(self.dir, "lmdb"), "map_size": 8 << 30, "sync": self.durable}

    def _start_mpqueue(self, producers):
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        acks = [ctx.Pipe(duplex=False) for _ in range(producers)]
        ready = ctx.Event()
        self.proc = ctx.Process(target=mpqueue_writer, args=(os.path.join(self.dir, "log"), q, [(None, a[1]) for a in acks], ready))
        self.proc.start()
        ready.wait(10)
        self.pid = self.proc.pid
        self.cfg = {"queue": q, "acks": [(a[0], None) for a in acks]}

    def _start_flock(self, producers):
        self.cfg = {"path": os.path.join(self.dir, "log")}

    def syncs(self):
        """fdatasyncs the system's writer has done so far (ringwal and the ceiling), else None."""
        if self.ceiling is not None:
            return self.ceiling.syncs()
        if self.system in RINGWAL_WAITS:
            from ringwal.ring import RingView

            view = RingView.attach(self.dir)
            if view is None:
                return None
            with view:
                stats = view.writer_stats()
            return stats["fsyncs"] if stats else None
        return None

    def stop(self):
        if self.server is not None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        if self.ceiling is not None:
            self.ceiling.stop()
        if self.proc is not None:
            self.cfg["queue"].put(None)
            self.proc.join(30)
            if self.proc.is_alive():
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_one(system, producers, size, every, seconds, base):
    ctx = mp.get_context("fork")
    setup = Setup(system, base, every, producers, size)
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=producer_main, args=(system, setup.cfg, i, every, size, seconds, start, out)) for i in range(producers)]
    try:
        for p in procs:
            p.start()
        time.sleep(0.5)  # every producer connected/attached before the gun
        server_cpu0 = cpu_seconds(setup.pid) if setup.pid else 0.0
        syncs0 = setup.syncs()
        start.set()
        results = [out.get(timeout=seconds * 20 + 120) for _ in procs]
        server_cpu = (cpu_seconds(setup.pid) - server_cpu0) if setup.pid else 0.0
        syncs = None if syncs0 is None else setup.syncs() - syncs0
        rss = peak_rss_mb(setup.pid) if setup.pid else None
        for p in procs:
            p.join(30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        setup.stop()
    errors = [r[4] for r in results if r[4]]
    if errors:
        raise RuntimeError(f"{system}: {errors[0]}")
    total = sum(r[0] for r in results)
    elapsed = max(r[1] for r in results)
    rates = [r[0] / r[1] for r in results]
    lats = [x for r in results for x in r[2]]
    rps = total / elapsed
    return {
        "system": system,
        "producers": producers,
        "size": size,
        "mode": mode_name(every),
        "records_per_s": rps,
        "mb_per_s": rps * size / 1e6,
        "wait_p50_us": _us(pct(lats, 0.50)),
        "wait_p99_us": _us(pct(lats, 0.99)),
        "wait_p999_us": _us(pct(lats, 0.999)),
        "cpu_s_per_m_records": (sum(r[3] for r in results) + server_cpu) / total * 1e6,
        "writer_peak_rss_mb": rss,
        "fairness": min(rates) / max(rates),
        "records_per_fsync": total / syncs if syncs else None,
        "records": total,
    }


def _us(x):
    return None if x is None else x * 1e6


def mode_name(every: int) -> str:
    return "buffered" if not every else f"sync_every_{every}"


# ============================================================================ replay


def replay_bench(base, n, runs, have_redis):
    """Read back ``n`` 100-byte records: ringwal vs a bare loop, SQLite SELECT, Redis XRANGE."""
    from ringwal import WAL, Config, replay

    d = tempfile.mkdtemp(dir=base)
    out = {}
    data = b"r" * 100
    try:
        wdir = os.path.join(d, "wal")
        with WAL(Config(dir=wdir)) as w:  # the default Config (16 MiB segments)
            recs = [Record(1, 0, data)] * 10_000
            for _ in range(n // 10_000):
                w.append_many(recs)
        db_path = os.path.join(d, "log.db")
        db = sqlite3.connect(db_path, isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, type INTEGER NOT NULL, data BLOB NOT NULL)")
        db.execute("BEGIN")
        db.executemany("INSERT INTO log (type, data) VALUES (1, ?)", ((data,) for _ in range(n)))
        db.execute("COMMIT")
        db.close()

        def ringwal_replay():
            k = 0
            for r in replay(wdir):
                k += 1
            return k

        def bare_loop():
            return bench_log.bare_loop(wdir)[1]

        def sqlite_select():
            con = sqlite3.connect(db_path)
            k = 0
            for _row in con.execute("SELECT seq, type, data FROM log ORDER BY seq"):
                k += 1
            con.close()
            return k

        tests = {"ringwal": ringwal_replay, "bare_read_and_check": bare_loop, "sqlite_select": sqlite_select}
        redis = None
        if have_redis:
            redis = Setup("redis", d, 0, 1)
            r = Resp(redis.cfg["port"])
            cmd = Resp.encode("XADD", "log", "*", "d", data)
            for _ in range(n // 1000):
                r.sock.sendall(cmd * 1000)
                for _ in range(1000):
                    r.reply()

            def redis_xrange():
                k, start = 0, "-"
                while True:
                    got = r.call("XRANGE", "log", start, "+", "COUNT", 10_000)
                    if start != "-":
                        got = got[1:]
                    if not got:
                        return k
                    k += len(got)
                    start = got[-1][0].decode()

            tests["redis_xrange"] = redis_xrange
        for name, fn in tests.items():
            rates = []
            for _ in range(runs):
                t = time.perf_counter()
                k = fn()
                rates.append(k / (time.perf_counter() - t))
                if k != n:
                    raise RuntimeError(f"replay {name} read {k} records, expected {n}")
            out[name] = statistics.median(rates)
        if redis is not None:
            r.close()
            redis.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return out


# ============================================================================ physical limits


def limits(base, runs):
    """One fdatasync, sequential write bandwidth, C-speed copy into shared memory."""
    fs50, fs99, seq, copy = [], [], [], []
    for _ in range(runs):
        fd, path = tempfile.mkstemp(dir=base)
        lat = []
        try:
            for _ in range(1000):
                os.write(fd, b"x" * 104)
                t = time.perf_counter()
                os.fdatasync(fd)
                lat.append(time.perf_counter() - t)
            fs50.append(pct(lat, 0.5) * 1e6)
            fs99.append(pct(lat, 0.99) * 1e6)
            chunk = os.urandom(1 << 20)
            t = time.perf_counter()
            for _ in range(256):
                os.write(fd, chunk)
            os.fdatasync(fd)
            seq.append(256 * (1 << 20) / (time.perf_counter() - t) / 1e6)
        finally:
            os.close(fd)
            os.unlink(path)
        name = f"/ringwal-bench-{os.getpid()}"
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=64 << 20)
        try:
            mm = mmap.mmap(shm.fd, 64 << 20)
            view = memoryview(mm)
            src = os.urandom(1 << 20)
            t = time.perf_counter()
            for _ in range(4):
                for off in range(0, 64 << 20, 1 << 20):
                    view[off : off + (1 << 20)] = src
            copy.append(4 * (64 << 20) / (time.perf_counter() - t) / 1e6)
            view.release()
            mm.close()
        finally:
            shm.close_fd()
            posix_ipc.unlink_shared_memory(name)
    return {
        "fdatasync_p50_us": med(fs50),
        "fdatasync_p99_us": med(fs99),
        "seq_write_mb_per_s": med(seq),
        "shm_copy_mb_per_s": med(copy),
    }


# ============================================================================ main


def summarize(rows):
    """Median over runs of every metric, per (system, producers, size, mode)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["system"], r["producers"], r["size"], r["mode"]), []).append(r)
    out = []
    for (system, producers, size, mode), rs in groups.items():
        s = {"system": system, "producers": producers, "size": size, "mode": mode, "runs": len(rs)}
        for key in METRICS:
            s[key] = med([r[key] for r in rs])
        out.append(s)
    return out


def vs_ceiling(run_rows):
    """Each ringwal variant's figures over the ceiling's of the same run (adjacent in time)."""
    c = run_rows.get("ceiling")
    out = []
    if c is None:
        return out
    for system in RINGWAL_WAITS:
        r = run_rows.get(system)
        if r is None:
            continue
        out.append({
            "bench": "vs_ceiling", "system": system, "producers": r["producers"], "size": r["size"], "mode": r["mode"],
            "records_ratio": r["records_per_s"] / c["records_per_s"],
            "p50_ratio": r["wait_p50_us"] / c["wait_p50_us"] if c["wait_p50_us"] else None,
            "p99_ratio": r["wait_p99_us"] / c["wait_p99_us"] if c["wait_p99_us"] else None,
            "cpu_s_per_m_records": r["cpu_s_per_m_records"],
            "ceiling_cpu_s_per_m_records": c["cpu_s_per_m_records"],
        })  # fmt: skip
    return out


RATIO_METRICS = ["records_ratio", "p50_ratio", "p99_ratio", "cpu_s_per_m_records", "ceiling_cpu_s_per_m_records"]


def summarize_ratios(ratios):
    """Median over runs of each paired ratio, per (system, producers, size, mode)."""
    groups: dict[tuple, list[dict]] = {}
    for r in ratios:
        groups.setdefault((r["system"], r["producers"], r["size"], r["mode"]), []).append(r)
    out = []
    for (system, producers, size, mode), rs in groups.items():
        s = {"system": system, "producers": producers, "size": size, "mode": mode, "runs": len(rs)}
        for key in RATIO_METRICS:
            s[key] = med([r[key] for r in rs])
        out.append(s)
    return out


METRICS = ["records_per_s", "mb_per_s", "wait_p50_us", "wait_p99_us", "wait_p999_us", "cpu_s_per_m_records", "writer_peak_rss_mb", "fairness"]


def rebuild(path, report_dir):
    """Report from saved JSON lines; a cell counts only if every run of it finished."""
    from report import write_report

    meta, lim, rep, rows, ratios = {}, {}, {}, [], []
    for line in open(path):
        d = json.loads(line)
        kind = d.get("bench")
        if kind == "meta":
            meta = d
        elif kind == "vs_ceiling":
            ratios.append(d)
        elif kind == "limits":
            lim = d
        elif kind == "replay":
            rep = d
        elif kind is None and "error" not in d:
            rows.append(d)
    summary = [s for s in summarize(rows) if s["runs"] == meta.get("runs")]
    ceil = [s for s in summarize_ratios(ratios) if s["runs"] == meta.get("runs")]
    write_report(report_dir or "docs/benchmarks", meta, lim, summary, rep, ceil)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS)
    ap.add_argument("--producers", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 4096])
    ap.add_argument("--modes", nargs="+", default=["buffered", "100", "1"], help="buffered, or sync every N records")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--replay-records", type=int, default=1_000_000)
    ap.add_argument("--no-replay", action="store_true")
    ap.add_argument("--quick", action="store_true", help="1 run, 0.5 s, 100-byte records, 4 and 16 producers")
    ap.add_argument("--report", metavar="DIR", help="write results.json, README.md and PNG plots here")
    ap.add_argument("--ringwal-segment-size", type=int, default=None, help="segment_size of the ringwal writer (bytes; default: the default Config's)")
    ap.add_argument("--from-jsonl", metavar="FILE", help="rebuild the report from a saved run's JSON lines (complete cells only)")
    ap.add_argument("--dir", help="where the logs go (default: a temp dir on the project's disk)")
    args = ap.parse_args()
    if args.from_jsonl:
        rebuild(args.from_jsonl, args.report)
        return
    if args.quick:
        args.runs, args.seconds, args.sizes, args.producers = 1, 0.5, [100], [4, 16]
        args.replay_records = 100_000
    Setup.segment_size = args.ringwal_segment_size
    have_redis = shutil.which("redis-server") is not None
    systems = list(args.systems)
    if not have_redis:
        dropped = [s for s in systems if s.startswith("redis")]
        if dropped:
            print(f"# skipping {', '.join(dropped)}: redis-server is not installed (scripts/bench installs it with apt-get)", file=sys.stderr)
        systems = [s for s in systems if not s.startswith("redis")]
    if "lmdb" in systems:
        import importlib.util

        if importlib.util.find_spec("lmdb") is None:
            print("# skipping lmdb: the lmdb package is not installed (pip install -e '.[bench]')", file=sys.stderr)
            systems.remove("lmdb")
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    base = args.dir or tempfile.mkdtemp(prefix="ringwal-compare-", dir=root)
    os.makedirs(base, exist_ok=True)
    rows, ratios, meta = [], [], {}
    try:
        meta = {
            "bench": "meta",
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "runs": args.runs,
            "seconds": args.seconds,
            "systems": systems,
            "ringwal_segment_size": args.ringwal_segment_size or ringwal.Config().segment_size,
        }
        print(json.dumps(meta), flush=True)
        lim = {"bench": "limits", **limits(base, args.runs)}
        print(json.dumps(lim), flush=True)
        for size in args.sizes:
            for producers in args.producers:
                for mode in args.modes:
                    every = 0 if mode == "buffered" else int(mode)
                    for run in range(args.runs):
                        run_rows = {}
                        for system in systems:  # interleaved: drift hits every system alike
                            if system in DURABLE_ONLY and not every:
                                continue
                            try:
                                r = run_one(system, producers, size, every, args.seconds, base)
                            except Exception as exc:
                                r = {"system": system, "producers": producers, "size": size, "mode": mode_name(every), "error": str(exc)}
                            r["run"] = run
                            print(json.dumps(r), flush=True)
                            if "error" not in r:
                                rows.append(r)
                                run_rows[system] = r
                        for v in vs_ceiling(run_rows):
                            v["run"] = run
                            print(json.dumps(v), flush=True)
                            ratios.append(v)
        rep = {}
        if not args.no_replay:
            rep = {"bench": "replay", "records": args.replay_records, **replay_bench(base, args.replay_records, args.runs, have_redis and "redis" in systems)}
            print(json.dumps(rep), flush=True)
        summary = summarize(rows)
        for s in summary:
            print(json.dumps({"bench": "summary", **s}), flush=True)
        ceil = summarize_ratios(ratios)
        for s in ceil:
            print(json.dumps({"bench": "vs_ceiling_summary", **s}), flush=True)
        if args.report:
            from report import write_report

            write_report(args.report, meta, lim, summary, rep, ceil)
            print(f"# report written to {args.report}", file=sys.stderr)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
