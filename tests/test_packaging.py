"""The package as a user gets it: build the sdist and the wheel (from the sdist), install the
wheel in a fresh venv next to ``protobuf<6``, run ``ringwal --version`` and a round trip.

Needs pip to reach a package index (the build backend and the dependencies are installed from
it): marked ``network``, and it skips itself, saying why, where pip cannot download. About
30-50 s on the 2-core machine (the build's isolated environments and the install dominate).
"""

from __future__ import annotations

import email
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import pytest

import ringwal

from .conftest import ROOT

pytestmark = pytest.mark.network


def _run(*cmd: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(tmp / "probe"), "protobuf<6"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"pip cannot download from a package index here: {probe.stderr.strip()[-300:]}")
    out = tmp / "out"
    # sdist first, then the wheel built from the unpacked sdist: both must work.
    _run(sys.executable, "-m", "build", "--outdir", str(out), ROOT, cwd=str(tmp))
    (sdist,) = out.glob("ringwal-*.tar.gz")
    (wheel,) = out.glob("ringwal-*-py3-none-any.whl")
    return tmp, sdist, wheel


def test_sdist_leaves_the_tests_out_and_carries_the_license_and_docs(dist):
    _, sdist, _ = dist
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert "LICENSE" in names and "README.md" in names and "docs/DURABILITY.md" in names and "docs/DEPLOY.md" in names
    assert not any(n.startswith(("tests/", "bench/", "scripts/")) for n in names), sorted(names)


def test_wheel_metadata_reads_well_on_a_package_index(dist):
    _, _, wheel = dist
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(zf.read(meta_name))
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in zf.namelist())
    assert meta["License-Expression"] == "Apache-2.0" and meta["Version"] == ringwal.__version__
    classifiers = meta.get_all("Classifier")
    assert "Operating System :: POSIX :: Linux" in classifiers and "Programming Language :: Python :: 3.11" in classifiers
    assert {u.split(",")[0] for u in meta.get_all("Project-URL")} >= {"Homepage", "Source", "Issues", "Documentation"}
    requires = meta.get_all("Requires-Dist")
    assert not [r for r in requires if r.startswith("protobuf") and "extra ==" not in r], requires
    body = meta.get_payload()
    assert "Linux" in body and "x86-64" in body
    relative = re.findall(r"\]\((?!https?://|#)([^)]+)\)|<img[^>]+src=\"(?!https?://)([^\"]+)", body)
    assert not relative, f"links that break on a package index: {relative}"


ROUND_TRIP = """
import sys, time, ringwal
d = sys.argv[1]
cfg = ringwal.Config(dir=d, writer_linger=0.2)
with ringwal.open(cfg) as h:
    for i in range(100):
        h.append(ringwal.Record(1, i, b"record %d" % i))
    print("synced", h.sync())
print("replayed", sum(1 for _ in ringwal.replay(d)))
try:
    ringwal.ProtoSerializer()
except ringwal.MissingExtraError as exc:
    print("proto needs", exc.extra)
"""


def test_wheel_installs_next_to_old_protobuf_and_round_trips(dist, wdir):
    tmp, _, wheel = dist
    venv = tmp / "venv"
    # Without pip of its own (ensurepip takes ~20 s here): this suite's pip installs into it.
    _run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    py = str(venv / "bin" / "python")
    _run(sys.executable, "-m", "pip", "--python", py, "install", "-q", str(wheel), "protobuf<6")
    r = _run(str(venv / "bin" / "ringwal"), "--version")
    assert r.stdout.startswith(f"ringwal {ringwal.__version__} "), r.stdout
    r = _run(py, "-c", textwrap.dedent(ROUND_TRIP), wdir, cwd=str(tmp))  # not ROOT: the installed copy runs
    assert r.stdout.splitlines() == ["synced 100", "replayed 100", "proto needs proto"], r.stdout + r.stderr
    r = _run(str(venv / "bin" / "ringwal"), "verify", "--dir", wdir)
    assert "OK: " in r.stderr and "100 record(s)" in r.stderr
    assert os.path.exists(os.path.join(wdir, "writer.log"))
