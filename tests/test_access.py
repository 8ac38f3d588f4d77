"""Other local users (issue 12 item 5): private files whatever the umask, a group setting,
and shared objects opened only after checking who made them (README, "Trust model")."""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import stat
import subprocess
import sys

import pytest

import ringwal
from ringwal import WAL, AccessError, Config, ConfigError

from .conftest import ROOT, rec

GROUP = "nogroup"  # a group this machine has and the test user is not in (root may give any group)


def gid_of(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def files(d: str) -> list[str]:
    return sorted(os.path.join(d, n) for n in os.listdir(d))


@contextlib.contextmanager
def umask(value: int):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def have_group():
    try:
        gid_of(GROUP)
    except KeyError:
        pytest.skip(f"no group {GROUP!r} on this machine")


@pytest.mark.parametrize("mask", [0o022, 0o000])
def test_new_log_is_private_whatever_the_umask(tmp_path, mask):
    d = str(tmp_path / "parent" / "wal")
    with umask(mask):
        with ringwal.open(Config(dir=d, segment_size=4096, writer_linger=0.0)) as h:
            for i in range(100):  # several rotations: completed segments and the index too
                h.append(rec(i))
            h.sync()
    names = {os.path.basename(p) for p in files(d)}
    assert {"wal.lock", "wal.ring.lock", "writer.log", "current.wal", "wal_index.json", "000001.wal"} <= names
    assert mode(d) == 0o700
    for p in files(d):
        assert mode(p) == 0o600, (p, oct(mode(p)))


def test_group_setting_shares_the_log_with_the_group(tmp_path, have_group):
    d = str(tmp_path / "wal")
    with umask(0o077):  # the strictest umask: the group must get access anyway
        with WAL(Config(dir=d, segment_size=2048, group=GROUP)) as w:
            for i in range(40):
                w.append(rec(i))
                w.flush()
    st = os.stat(d)
    assert stat.S_IMODE(st.st_mode) == 0o2770 and st.st_gid == gid_of(GROUP)
    for p in files(d):
        st = os.stat(p)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, gid_of(GROUP)), p


def test_serve_group_option_creates_a_shared_directory(tmp_path, have_group):
    from .ringhelp import start_serve

    d = str(tmp_path / "wal")
    p = start_serve(d, "--group", GROUP)
    try:
        st = os.stat(d)
        assert stat.S_IMODE(st.st_mode) == 0o2770 and st.st_gid == gid_of(GROUP)
        assert mode(os.path.join(d, "current.wal")) == 0o660
    finally:
        p.terminate()
        assert p.wait(30) == 0


def test_group_setting_on_a_private_directory_says_how_to_share_it(tmp_path, have_group):
    d = str(tmp_path / "wal")
    WAL(Config(dir=d)).close()
    with pytest.raises(ConfigError, match=f"chgrp -R {GROUP} {d}"):
        WAL(Config(dir=d, group=GROUP))


def test_directory_writable_by_everyone_is_refused(tmp_path):
    d = tmp_path / "wal"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(AccessError, match="writable by every local user") as info:
        WAL(Config(dir=str(d)))
    assert info.value.path == str(d) and info.value.mode == 0o777
    assert os.listdir(d) == []  # refused before anything was made in it


def test_directory_readable_by_everyone_is_used_with_a_warning(tmp_path, caplog):
    d = tmp_path / "wal"
    d.mkdir()
    os.chmod(d, 0o755)  # what ringwal made before it made logs private
    with caplog.at_level(logging.WARNING, logger="ringwal"), WAL(Config(dir=str(d))) as w:
        w.append(rec(0))
    assert any("readable by every local user" in r.getMessage() for r in caplog.records)
    assert mode(str(d / "current.wal")) == 0o640  # owner and group as the directory, never others


def test_cli_refuses_a_world_writable_directory_with_a_typed_message(tmp_path):
    d = tmp_path / "wal"
    d.mkdir()
    os.chmod(d, 0o777)
    r = subprocess.run(
        [sys.executable, "-m", "ringwal", "serve", "--dir", str(d)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert r.returncode == 2 and "writable by every local user" in r.stderr and "chmod 700" in r.stderr
