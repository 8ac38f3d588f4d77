"""A user's first hour (issue 14): Config as a Python user writes it, a handle sent to a spawn
child, the platform check, and the protobuf extra. Real files, real processes."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import subprocess
import sys
from datetime import timedelta

import pytest

import ringwal
from ringwal import Config, ConfigError, Record, UnsupportedPlatformError
from ringwal.ring import check_platform

from .conftest import ROOT, rec, run_child

# ---------------------------------------------------------------------- Config


def test_dir_accepts_any_path_like_and_reads_back_a_str(tmp_path):
    cfg = Config(dir=tmp_path / "wal")
    assert cfg.dir == str(tmp_path / "wal") and isinstance(cfg.dir, str)
    with ringwal.WAL(cfg) as w:
        w.append(rec(1))
    assert [r.seq for r in ringwal.replay(tmp_path / "wal")] == [1]


def test_durations_accept_timedelta_as_float_seconds():
    cfg = Config(
        segment_duration=timedelta(minutes=2),
        flush_interval=timedelta(milliseconds=250),
        append_timeout=timedelta(seconds=3),
        sync_timeout=timedelta(seconds=4),
        writer_wait=timedelta(seconds=5),
        writer_linger=timedelta(0),
        retention_max_age=timedelta(days=7),
    )
    assert (cfg.segment_duration, cfg.flush_interval, cfg.append_timeout) == (120.0, 0.25, 3.0)
    assert (cfg.sync_timeout, cfg.writer_wait, cfg.writer_linger, cfg.retention_max_age) == (4.0, 5.0, 0.0, 604800.0)
    cfg.segment_duration = timedelta(seconds=9)  # assigned later: converted too
    assert cfg.segment_duration == 9.0
    with pytest.raises(ConfigError, match="segment_duration must be a positive number"):
        Config(segment_duration=timedelta(seconds=-1))


@pytest.mark.parametrize(
    "given",
    [ringwal.JSONSerializer(), ringwal.JSONSerializer, "json"],
    ids=["instance", "class", "name"],
)
def test_serializer_accepts_an_instance_a_class_or_a_registered_name(tmp_path, given):
    cfg = Config(dir=tmp_path / "wal", serializer=given)
    assert isinstance(cfg.serializer, ringwal.JSONSerializer)
    with ringwal.WAL(cfg) as w:
        w.append(Record(3, 7, b"x"))  # a class used to fail here with a TypeError
    assert [(r.type, r.data) for r in ringwal.replay(cfg.dir)] == [(3, b"x")]


def test_unknown_serializer_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"serializer='yaml'.*known: binary, json, proto"):
        Config(serializer="yaml")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("segment_size", 0, "segment_size must be a positive int"),
        ("segment_size", 2**63, "segment_size=9223372036854775808 is more than the largest"),
        ("segment_duration", 1e300, r"segment_duration=1e\+300 seconds is more than the longest that can work, 3155760000"),
        ("sync_timeout", float("inf"), "sync_timeout"),
        ("writer_linger", 1e300, "writer_linger"),
        ("write_buffer_size", 1 << 32, "write_buffer_size=4294967296 is more than the largest"),
        ("retention_max_age", timedelta(days=365 * 200), "retention_max_age"),
        ("dir", "", "dir must be a non-empty path"),
        ("log_level", "verbose", "log_level must be one of debug, info, warning, error"),
        ("metrics_port", 70000, "metrics_port must be from 0 to 65535"),
    ],
)
def test_values_that_cannot_work_are_refused_when_the_config_is_made(field, value, match):
    with pytest.raises(ConfigError, match=match):
        Config(**{field: value})


def test_a_config_pickles_and_keeps_its_values(tmp_path):
    cfg = Config(dir=tmp_path, serializer="json", segment_duration=timedelta(seconds=5))
    back = pickle.loads(pickle.dumps(cfg))
    assert back == cfg and back.dir == str(tmp_path) and back.serializer.name == "json"


# ---------------------------------------------------------------------- a handle and spawn


def _child_appends(cfg: Config, q: multiprocessing.Queue) -> None:
    with ringwal.open(cfg) as h:
        h.append(Record(1, 1, b"from the child"))
        q.put(h.sync())


def _child_uses(handle: object) -> None:  # pragma: no cover - never runs: the handle cannot be sent
    pass


def test_a_handle_sent_to_a_spawn_child_says_to_open_one_there(wdir):
    cfg = Config(dir=wdir, writer_linger=0.5)
    ctx = multiprocessing.get_context("spawn")
    with ringwal.open(cfg) as h:
        with pytest.raises(TypeError, match=r"cannot be sent to another process.*open a handle in the child with ringwal\.open\(config\)"):
            ctx.Process(target=_child_uses, args=(h,)).start()
        # What the message says to do works: the Config goes, the child opens its own handle.
        q = ctx.Queue()
        p = ctx.Process(target=_child_appends, args=(cfg, q))
        p.start()
        try:
            assert q.get(timeout=60) == 1
        finally:
            p.join(60)
        assert p.exitcode == 0
        h.append(rec(2))
        assert h.sync() == 2


# ---------------------------------------------------------------------- the platform


@pytest.mark.parametrize(
    "system, machine, bits",
    [("Linux", "aarch64", 64), ("Linux", "i686", 32), ("Linux", "x86_64", 32), ("Darwin", "x86_64", 64),
     ("Darwin", "arm64", 64), ("FreeBSD", "amd64", 64)],
)  # fmt: skip
def test_every_platform_but_linux_x86_64_gets_one_typed_error_naming_what_is_supported(system, machine, bits):
    with pytest.raises(UnsupportedPlatformError, match="runs only on Linux on x86-64 with a 64-bit Python") as info:
        check_platform(system, machine, bits)
    assert (info.value.system, info.value.machine) == (system, machine)
    assert isinstance(info.value, ringwal.WALError)


def test_linux_x86_64_passes_the_check():
    check_platform("Linux", "x86_64", 64)
    check_platform()  # this machine: the suite runs on Linux x86-64


#: A child that believes it runs on an ARM Mac (platform values faked before ringwal is
#: imported; macOS has no os.fdatasync) and tries what a user would.
ON_ANOTHER_PLATFORM = """
import os, platform, sys
platform.system = lambda: "Darwin"
platform.machine = lambda: "arm64"
del os.fdatasync
import ringwal
from ringwal.cli import main
d = sys.argv[1]
try:
    ringwal.open(ringwal.Config(dir=d))
except ringwal.UnsupportedPlatformError as exc:
    print("open:", exc.machine, exc)
rc = main(["serve", "--dir", d])
print("serve exit", rc)
print("replay", [r.seq for r in ringwal.replay(sys.argv[2])])
"""


def test_open_and_serve_refuse_another_platform_while_reading_still_works(tmp_path, wdir):
    from .conftest import write_log

    log = write_log(str(tmp_path / "readable"), 3).dir
    r = run_child(ON_ANOTHER_PLATFORM, wdir, log)
    out = r.stdout.splitlines()
    assert out[0].startswith("open: arm64 ringwal's shared-memory ring runs only on Linux on x86-64"), out
    assert out[1:] == ["serve exit 1", "replay [1, 2, 3]"], (out, r.stderr)
    assert " ERROR ringwal[" in r.stderr and "UnsupportedPlatformError: ringwal's shared-memory ring" in r.stderr
    from .ringhelp import ring_objects

    assert ring_objects(wdir) == [] and not os.path.exists(os.path.join(wdir, "current.wal"))


# ---------------------------------------------------------------------- the proto extra


#: protobuf made unimportable, as in an environment installed without ringwal[proto].
WITHOUT_PROTOBUF = """
import sys
class NoProtobuf:
    def find_spec(self, name, path=None, target=None):
        if name == "google.protobuf" or name.startswith("google.protobuf."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoProtobuf())
import ringwal
print("imported", ringwal.__version__)
with ringwal.WAL(ringwal.Config(dir=sys.argv[1])) as w:
    w.append(ringwal.Record(1, 1, b"binary needs no protobuf"))
print("binary ok", [r.data for r in ringwal.replay(sys.argv[1])])
for make in (ringwal.ProtoSerializer, lambda: ringwal.Config(serializer="proto")):
    try:
        make()
    except ringwal.MissingExtraError as exc:
        print("missing", exc.extra, isinstance(exc, ImportError), exc)
"""


def test_without_protobuf_everything_but_proto_works_and_proto_names_the_extra(tmp_path):
    r = run_child(WITHOUT_PROTOBUF, str(tmp_path / "wal"))
    out = r.stdout.splitlines()
    assert out[0].startswith("imported ") and out[1] == "binary ok [b'binary needs no protobuf']", out
    assert len(out) == 4, out
    for line in out[2:]:
        assert line.startswith("missing proto True ProtoSerializer needs protobuf>=7.35.1,<8"), line
        assert "pip install 'ringwal[proto]'" in line


def test_protobuf_is_not_a_runtime_dependency():
    from importlib.metadata import requires

    reqs = requires("ringwal") or []
    base = [r for r in reqs if "extra ==" not in r]
    assert not any(r.startswith("protobuf") for r in base), base
    assert any(r.startswith("protobuf") and 'extra == "proto"' in r for r in reqs), reqs


def test_proto_serializer_round_trips_with_the_extra_installed(tmp_path):
    pytest.importorskip("google.protobuf")
    cfg = Config(dir=tmp_path / "wal", serializer="proto")
    with ringwal.WAL(cfg) as w:
        w.append(Record(2, -5, b"p"))
    assert [(r.type, r.time, r.data) for r in ringwal.replay(cfg.dir)] == [(2, -5, b"p")]


def test_console_script_version_matches_the_package():
    r = subprocess.run([sys.executable, "-m", "ringwal", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.split()[:2] == ["ringwal", ringwal.__version__], r.stdout + r.stderr


# ---------------------------------------------------------------------- CLI


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ringwal", *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
        env=dict(os.environ, **(env or {})), **kw,
    )  # fmt: skip


def test_dir_comes_from_ringwal_dir_when_not_given(tmp_path):
    from .conftest import write_log

    d = write_log(str(tmp_path / "wal"), 20).dir
    env = {k: v for k, v in os.environ.items() if k != "RINGWAL_DIR"}
    r = cli("dump", "--after", "18", env={"RINGWAL_DIR": d})
    assert r.returncode == 0 and [json_seq(x) for x in r.stdout.splitlines()] == [19, 20], r.stderr
    r = subprocess.run([sys.executable, "-m", "ringwal", "verify"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 2 and "--dir is required (or set RINGWAL_DIR)" in r.stderr


def json_seq(line: str) -> int:
    import json

    return json.loads(line)["seq"]


@pytest.mark.parametrize("command", ["verify", "dump", "replay", "tail", "stats", "repair", "truncate"])
@pytest.mark.parametrize("where", ["empty", "missing"])
def test_a_directory_without_a_log_fails_every_reading_command_with_exit_1(tmp_path, command, where):
    d = tmp_path / "etc"
    if where == "empty":
        d.mkdir()
        (d / "passwd").write_text("root:x:0:0\n")
    extra = ["--before", "5"] if command == "truncate" else []
    r = cli(command, "--dir", str(d), *extra)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == "" and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert ("holds no ringwal log" if where == "empty" else "does not exist") in r.stderr, r.stderr
    assert sorted(os.listdir(d)) == (["passwd"] if where == "empty" else []) if d.exists() else True


def test_replay_verify_and_follow_of_a_directory_without_a_log_raise_no_log_error(tmp_path):
    for fn in (ringwal.replay, ringwal.verify, lambda d: next(ringwal.follow(d))):
        with pytest.raises(ringwal.NoLogError, match="holds no ringwal log") as info:
            fn(tmp_path)
        assert info.value.path == str(tmp_path)


@pytest.mark.parametrize(
    "args, says",
    [
        (["serve", "--segment-size", "0"], "segment_size must be a positive int"),
        (["serve", "--segment-duration", "1e300"], "segment_duration=1e+300 seconds is more than the longest"),
        (["serve", "--log-level", "loud"], "log_level must be one of"),
        (["append", "--type", "0"], "--type"),
        (["tail", "--poll", "0"], "--poll"),
        (["dump", "--after", "-1"], "--after"),
        (["dump", "--since", "0", "--clock-skew", "-1"], "--clock-skew: must be a number of seconds >= 0"),
        (["tail", "--since", "0", "--clock-skew", "nan"], "--clock-skew: must be a number of seconds >= 0"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(wdir, args, says):
    r = cli(*args[:1], "--dir", wdir, *args[1:]) if args[0] != "frobnicate" else cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(wdir, "current.wal"))


def test_append_and_truncate_print_json_on_request(wdir, tmp_path):
    import json

    r = cli("append", "--dir", wdir, "--json", input="a\nb\nc\n")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"records": 3, "first_seq": 1, "last_seq": 3, "durable": True}
    from .conftest import write_log

    d = write_log(str(tmp_path / "wal2"), 100).dir
    r = cli("truncate", "--dir", d, "--before", "40", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["by_writer"] is False and doc["before"] == 40
    assert doc["removed"] and all(x["last_seq"] < 40 for x in doc["removed"]) and doc["first_seq"] <= 40
    assert set(doc["removed"][0]) == {"file", "first_seq", "last_seq", "bytes"}


def test_a_lost_start_race_is_logged_at_debug_not_as_an_error(wdir):
    """What a writer started by ``open`` does when another writer won the lock: its stderr
    is writer.log, and losing is the normal outcome of several producers starting at once."""
    import json
    import re

    from .ringhelp import start_serve

    winner = start_serve(wdir)
    try:
        for level, expect_line in (("info", False), ("debug", True)):
            log_path = os.path.join(wdir, f"race-{level}.log")
            r, w = os.pipe()
            with open(log_path, "wb") as logf:
                subprocess.run(
                    [sys.executable, "-m", "ringwal", "serve", "--dir", wdir, "--detach", "--ready-fd", str(w),
                     "--log-level", level],
                    pass_fds=(w,), stderr=logf, stdout=subprocess.DEVNULL, timeout=60, check=True,
                )  # fmt: skip
            os.close(w)
            with os.fdopen(r, "rb") as pipe:
                report = json.loads(pipe.readline())  # the loser reports, then exits
            assert report["type"] == "LockedError"
            from .ringhelp import wait_until

            text = ""

            def logged() -> bool:
                nonlocal text
                text = open(log_path).read()
                return text.endswith("\n") or not expect_line

            wait_until(logged, what="the loser's log line")
            assert "ERROR" not in text and "error:" not in text, text
            if expect_line:
                assert re.fullmatch(
                    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z DEBUG ringwal\[\d+\]: another writer won the start race: .*\n",
                    text,
                ), text
    finally:
        winner.send_signal(__import__("signal").SIGTERM)
        assert winner.wait(30) == 0
    # the winner's own lines: timestamped, with their level
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO ringwal\[\d+\]: pid \d+ serving ", winner.startup_lines[-1])


def test_writer_log_of_a_writer_started_by_open_has_timestamps_and_levels(wdir):
    import re

    with ringwal.open(Config(dir=wdir, writer_linger=0.2, log_level="debug")) as h:
        h.append(rec(1))
        h.sync()
    from .ringhelp import ring_objects, wait_until

    wait_until(lambda: ring_objects(wdir) == [], what="the writer to exit")
    lines = open(os.path.join(wdir, "writer.log")).read().splitlines()
    assert lines, "a debug-level writer logs at least its start"
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) ringwal\[\d+\]: ")
    assert all(stamp.match(line) for line in lines), lines
    assert any(" serving " in line for line in lines), lines


# ---------------------------------------------------------------------- systemd, metrics, stats


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_serve_tells_a_systemd_notify_socket_it_is_ready_and_then_stopping(wdir, tmp_path, kind):
    import signal
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if kind == "path":
        address = bind = str(tmp_path / "notify")
    else:
        name = f"ringwal-test-{os.getpid()}-{tmp_path.name}"
        address, bind = "@" + name, "\0" + name
    sock.bind(bind)
    sock.settimeout(60)
    p = subprocess.Popen(
        [sys.executable, "-m", "ringwal", "serve", "--dir", wdir], stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ, NOTIFY_SOCKET=address),
    )  # fmt: skip
    try:
        ready = sock.recv(4096).decode().splitlines()
        assert ready[0] == "READY=1" and f"MAINPID={p.pid}" in ready and f"STATUS=serving {wdir}" in ready, ready
        # Ready means serving: a producer that will not start a writer attaches at once.
        with ringwal.open(Config(dir=wdir, start_writer=False, writer_wait=5)) as h:
            h.append(rec(1))
            assert h.sync() == 1
        p.send_signal(signal.SIGTERM)
        assert sock.recv(4096).decode() == "STOPPING=1\n"
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
        sock.close()


def test_a_writer_started_by_open_does_not_speak_for_the_producers_systemd_service(wdir, tmp_path):
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    code = """
import sys, ringwal
with ringwal.open(ringwal.Config(dir=sys.argv[1], writer_linger=0.2)) as h:
    h.append(ringwal.Record(1, 1, b"x"))
    print(h.sync())
"""
    r = run_child(code, wdir, env=dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify")))
    assert r.stdout.strip() == "1"
    from .ringhelp import ring_objects, wait_until

    wait_until(lambda: ring_objects(wdir) == [], what="the writer to exit")
    with pytest.raises(BlockingIOError):
        sock.recv(4096)
    sock.close()


def _scrape(url: str) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=30) as resp:  # loopback only: the writer we started
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def test_metrics_endpoint_of_a_real_writer(wdir):
    import re
    import signal

    pytest.importorskip("prometheus_client")
    from .ringhelp import start_serve

    p = start_serve(wdir, "--metrics-port", "0", "--segment-size", "65536", "--retention-max-bytes", "200000")
    try:
        m = re.search(r"Prometheus metrics at (http://\S+)", read_stderr_line(p))
        assert m, "serve logs where its metrics are"
        url = m.group(1)
        assert url.startswith("http://127.0.0.1:")
        with ringwal.open(Config(dir=wdir, start_writer=False)) as h:
            before = _scrape(url)
            for i in range(3000):
                h.append(rec(i, 200))
            assert h.sync() == 3000
            from .ringhelp import wait_until

            wait_until(lambda: _scrape(url)["ringwal_retention_removed_segments_total"] >= 1, what="retention")
            m = _scrape(url)
        assert before["ringwal_writer_up"] == 1 and before["ringwal_producers"] == 1
        assert m["ringwal_records_written_total"] == 3000 and m["ringwal_durable_seq"] == 3000
        assert m["ringwal_written_seq"] == 3000 and m["ringwal_bytes_written_total"] >= 3000 * (4 + 10 + 200)
        assert m["ringwal_fsyncs_total"] >= 1 and m["ringwal_fsync_seconds_count"] == m["ringwal_fsyncs_total"]
        assert m["ringwal_fsync_seconds_bucket{le=+Inf}"] == m["ringwal_fsyncs_total"] and m["ringwal_fsync_seconds_sum"] > 0
        assert m["ringwal_fsync_seconds_bucket{le=10.0}"] <= m["ringwal_fsyncs_total"]
        assert m["ringwal_segments"] >= 1 and m["ringwal_disk_bytes"] >= 65536
        assert m["ringwal_retention_removed_bytes_total"] > 0
        assert "ringwal_ring_fill_ratio{lane=0}" in m and m["ringwal_ring_bytes_used"] >= 0
        assert m[f"ringwal_info{{dir={wdir},serializer=binary,version={ringwal.__version__}}}"] == 1
        assert _scrape(url)["ringwal_producers"] == 0  # the handle closed
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0


def read_stderr_line(p) -> str:
    from .ringhelp import read_line

    return read_line(p, stream="stderr")


def test_serve_with_metrics_but_without_prometheus_client_names_the_extra(wdir):
    code = """
import sys
class NoProm:
    def find_spec(self, name, path=None, target=None):
        if name == "prometheus_client" or name.startswith("prometheus_client."):
            raise ModuleNotFoundError(name, name=name)
sys.meta_path.insert(0, NoProm())
from ringwal.cli import main
sys.exit(main(["serve", "--dir", sys.argv[1], "--metrics-port", "0"]))
"""
    r = run_child(code, wdir, check=False)
    assert r.returncode == 1 and "pip install 'ringwal[metrics]'" in r.stderr, r.stderr
    from .ringhelp import ring_objects

    assert ring_objects(wdir) == []  # the writer it had opened shut down cleanly


@pytest.mark.parametrize(
    "exc",
    [
        ringwal.MissingExtraError("no prometheus_client: pip install 'ringwal[metrics]'", extra="metrics"),
        UnsupportedPlatformError("not here", system="Darwin", machine="arm64"),
        ringwal.errors.RecordsRemovedError("gone", directory="/d", first_gone=3, first_available=9),
        ringwal.errors.ShipError("nats said no", stream="S", seq=7, path="/d/seg"),
        ringwal.errors.LanePoisonedError("poisoned", lane=2, first_dropped=5, reason="torn"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_writers_error_line_rebuilds_its_own_type_with_its_coordinates(exc):
    """A writer started by open reports its error as a JSON line; the producer raises that
    type with the same keyword attributes, not WriterGoneError."""
    import json

    from ringwal._launch import _rebuild, report_error

    r, w = os.pipe()
    report_error(w, exc)
    with os.fdopen(r, "rb") as f:
        message = json.loads(f.readline())
    got = _rebuild(message, "/d")
    assert type(got) is type(exc) and str(got) == str(exc)
    assert vars(got) == vars(exc)


def test_fsync_buckets_become_cumulative_prometheus_buckets_never_below_the_truth():
    from ringwal.format import FSYNC_BUCKETS, fsync_bucket
    from ringwal.metrics import FSYNC_BOUNDS, fsync_buckets

    hist = [0] * FSYNC_BUCKETS
    for us in (50, 90, 100, 101, 3000, 9_000_000, 12_000_000, 60_000_000):
        hist[fsync_bucket(us)] += 1
    got = dict(fsync_buckets(hist))
    assert list(got) == [repr(b) for b in FSYNC_BOUNDS] + ["+Inf"]
    # 100 us sits in the ring bucket 94-111 us, so it counts at 250 us; 9 s (bucket up to 10.5 s) at +Inf
    assert got["0.0001"] == 2 and got["0.00025"] == 4 and got["0.005"] == 5 and got["10.0"] == 5 and got["+Inf"] == 8


def test_stats_counts_only_live_followers(wdir):
    import json
    import signal

    from .ringhelp import ctrl_c_able, start_serve, wait_exit, wait_until

    p = start_serve(wdir)
    tails = []
    try:
        with ringwal.open(Config(dir=wdir, start_writer=False)) as h:
            h.append(rec(1))
            h.sync()
        followers = lambda: json.loads(cli("stats", "--dir", wdir, "--json").stdout)["writer"]["followers"]  # noqa: E731
        for _ in range(2):
            tails.append(
                subprocess.Popen(ctrl_c_able("tail", "--dir", wdir, "-f"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, cwd=ROOT)
            )  # fmt: skip
        wait_until(lambda: followers() == 2, what="two followers")
        tails[0].kill()  # SIGKILL: no chance to unregister
        tails[0].wait(30)
        wait_until(lambda: followers() == 1, what="the killed follower to go uncounted")
        tails[1].send_signal(signal.SIGINT)
        assert wait_exit(tails[1], 30) == 130
        wait_until(lambda: followers() == 0, what="no follower left")
    finally:
        for t in tails:
            if t.poll() is None:
                t.kill()
                t.wait(30)
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0


@pytest.mark.parametrize("writer", ["in-process WAL", "ring writer"])
def test_stats_and_verify_agree_on_bytes(wdir, writer):
    import json

    if writer == "in-process WAL":
        with ringwal.WAL(Config(dir=wdir, segment_size=8192)) as w:
            for i in range(100):
                w.append(rec(i))
    else:
        with ringwal.open(Config(dir=wdir, segment_size=8192, writer_linger=30)) as h:
            for i in range(100):
                h.append(rec(i))
            h.sync()
    st = json.loads(cli("stats", "--dir", wdir, "--json").stdout)
    vr = json.loads(cli("verify", "--dir", wdir, "--json").stdout)
    assert st["bytes"] == vr["bytes"] == ringwal.verify(wdir).bytes
    cur = st["segment_files"][-1]
    assert cur["file"] == "current.wal"
    if writer == "in-process WAL":  # closed: current.wal was cut to its last frame
        assert cur["bytes"] == cur["allocated_bytes"]
    else:  # the writer still runs (writer_linger): its preallocated zeros are not counted
        assert cur["bytes"] < cur["allocated_bytes"]
