"""A user's first hour (issue 14): Config as a Python user writes it, a handle sent to a spawn
child, the platform check, and the protobuf extra. Real files, real processes."""

from __future__ import annotations

import multiprocessing
import os
import pathlib
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


def test_path_objects_work_in_the_reading_api(tmp_path):
    from .conftest import write_log

    d = pathlib.Path(write_log(str(tmp_path / "wal"), 5).dir)
    assert [r.seq for r in ringwal.replay(d, 2)] == [3, 4, 5]
    assert ringwal.verify(d).ok
