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
            from ringwal.ring import ring_names

            name, sem = ring_names(d)
            for obj in ("/dev/shm" + name, "/dev/shm/sem." + sem.lstrip("/")):
                assert mode(obj) == 0o600, (obj, oct(mode(obj)))
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
        [sys.executable, "-m", "ringwal", "serve", "--dir", str(d)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 1 and "writable by every local user" in r.stderr and "chmod 700" in r.stderr


# ---------------------------------------------------------------- shared objects of other users

NOBODY = "nobody"


def as_nobody(*cmd: str, group: str = GROUP) -> list[str]:
    """``cmd`` run as user nobody with only ``group`` (util-linux setpriv)."""
    import shutil

    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to act as another user")
    if os.geteuid() != 0:
        pytest.skip("only root can run a command as another user here")
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={group}", "--clear-groups", *cmd]


@pytest.mark.parametrize(
    "owner, group, bits, shared, refused",
    [
        ("root", "root", 0o600, False, ""),
        ("nobody", "nogroup", 0o600, False, "belongs to nobody"),
        ("root", "root", 0o666, False, "open to every local user"),
        ("root", "root", 0o604, False, "open to every local user"),
        ("root", "root", 0o660, False, "may write it"),
        ("nobody", "nogroup", 0o660, True, ""),  # a member of the directory's group made it
        ("nobody", "daemon", 0o660, True, "belongs to nobody"),
        ("root", "daemon", 0o660, True, "may write it"),
    ],
)
def test_which_shared_objects_a_log_trusts(tmp_path, have_group, owner, group, bits, shared, refused):
    import pwd

    from ringwal._fileutil import Access

    d = tmp_path / "wal"
    d.mkdir()
    os.chown(d, 0, gid_of(GROUP))
    os.chmod(d, 0o2770 if shared else 0o700)
    obj = tmp_path / "object"
    obj.write_bytes(b"")
    os.chown(obj, pwd.getpwnam(owner).pw_uid, gid_of(group))
    os.chmod(obj, bits)
    why = Access.of(str(d)).problem(os.stat(obj))
    assert (why == "") == (refused == "") and refused in why, why


def test_a_ring_planted_by_another_user_is_refused_and_never_read(tmp_path):
    """Another local user creates the ring's name in /dev/shm before a root producer opens the
    log (a fake writer could ack syncs while nothing reaches disk, or inject records): the
    producer and the writer refuse it, naming it, its owner and mode, and what to do."""
    from ringwal.ring import ring_names

    d = str(tmp_path / "wal")
    WAL(Config(dir=d)).close()
    name, _sem = ring_names(d)
    path = "/dev/shm" + name
    plant = as_nobody("sh", "-c", f"umask 0; head -c 65536 /dev/zero > {path}")
    subprocess.run(plant, check=True, timeout=60)
    try:
        assert os.stat(path).st_uid != 0
        with pytest.raises(AccessError, match="belongs to nobody") as info:
            ringwal.open(Config(dir=d, writer_wait=2))
        assert info.value.path == path and info.value.mode == 0o666
        assert "rm " + path in str(info.value)
        r = subprocess.run(
            [sys.executable, "-m", "ringwal", "serve", "--dir", d], capture_output=True, text=True, cwd=ROOT, timeout=60
        )
        assert r.returncode == 1 and "cannot be trusted" in r.stderr and "belongs to nobody" in r.stderr
        assert os.stat(path).st_size == 65536  # left as it was: nothing read, nothing written
    finally:
        os.unlink(path)


def test_a_writer_semaphore_planted_by_another_user_is_refused(tmp_path):
    from ringwal.ring import ring_names

    d = str(tmp_path / "wal")
    WAL(Config(dir=d)).close()
    name, sem = ring_names(d)
    path = "/dev/shm/sem." + sem.lstrip("/")
    subprocess.run(as_nobody("sh", "-c", f"umask 0; head -c 32 /dev/zero > {path}"), check=True, timeout=60)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "ringwal", "serve", "--dir", d], capture_output=True, text=True, cwd=ROOT, timeout=60
        )
        assert r.returncode == 1 and "the writer's semaphore" in r.stderr and "belongs to nobody" in r.stderr
        assert not os.path.exists("/dev/shm" + name)  # the writer removed the ring it had made
    finally:
        os.unlink(path)


@pytest.fixture
def shared_tmp():
    """A directory other users can reach (the test's tmp_path lies under pytest's 0700 one)."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="ringwal-access-")
    os.chmod(d, 0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_writer_and_a_producer_of_two_users_share_a_log_through_its_group(shared_tmp, have_group):
    from ringwal.ring import ring_names

    from .ringhelp import kill_writers, start_serve

    d = os.path.join(shared_tmp, "wal")
    probe = subprocess.run(as_nobody(sys.executable, "-c", "import ringwal"), capture_output=True, text=True, cwd="/")
    if probe.returncode != 0:
        # The checkout (and the editable install pointing at it) must be readable by others: a
        # clone under a 0700 directory (mktemp -d) is not, and nobody cannot even import ringwal.
        pytest.skip(f"user {NOBODY} cannot import ringwal from {ROOT}: {probe.stderr.strip().splitlines()[-1:]}")
    w = start_serve(d, "--group", GROUP)  # root
    try:
        name, sem = ring_names(d)
        for obj in ("/dev/shm" + name, "/dev/shm/sem." + sem.lstrip("/")):
            st = os.stat(obj)
            assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, gid_of(GROUP)), obj
        producer = """
import sys, ringwal
with ringwal.open(ringwal.Config(dir=sys.argv[1], start_writer=False)) as h:
    h.append(ringwal.Record(1, 1, b"from nobody"))
    print(h.sync())
"""
        r = subprocess.run(
            as_nobody(sys.executable, "-c", producer, d), capture_output=True, text=True, cwd=ROOT, timeout=120
        )
        assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
    finally:
        w.terminate()
        w.wait(30)
        kill_writers(d)
    assert [(x.seq, x.data) for x in ringwal.replay(d)] == [(1, b"from nobody")]
