"""The command line, driven as a user would: subprocess, real files, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from ringwal.segment import list_segments

from .conftest import write_log


def ringwal_cli(*args):
    return subprocess.run([sys.executable, "-m", "ringwal", *args], capture_output=True, text=True, timeout=60)


def make_log(tmp_path):
    return write_log(str(tmp_path / "wal"), 100).dir


def test_verify_clean_log_exits_zero(tmp_path):
    d = make_log(tmp_path)
    r = ringwal_cli("verify", "--dir", d)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert "OK:" in r.stderr and "100 record(s), seqs 1-100" in r.stderr


def test_verify_reports_each_problem_with_file_and_offset(tmp_path):
    d = make_log(tmp_path)
    seg = os.path.join(d, list_segments(d)[1][1])
    with open(seg, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0x40]))
    os.unlink(os.path.join(d, "wal_index.json"))
    r = ringwal_cli("verify", "--dir", d)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert any(line.startswith(f"{seg}:") and "corrupt frame at offset" in line for line in lines), lines
    assert any("wal_index.json" in line and "missing" in line for line in lines), lines
    assert "problem(s)" in r.stderr


def test_replay_command_prints_json_lines(tmp_path):
    d = make_log(tmp_path)
    r = ringwal_cli("replay", "--dir", d, "--after", "95")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["seq"] for x in rows] == [96, 97, 98, 99, 100]
    assert rows[0]["text"].startswith("rec-95|")


def test_errors_are_one_line_without_traceback(tmp_path):
    r = ringwal_cli("replay", "--dir", str(tmp_path / "nope"))
    assert r.returncode == 1  # a runtime failure (no log there), not a usage error
    assert r.stderr.strip().count("\n") == 0 and "error:" in r.stderr and "Traceback" not in r.stderr


def test_console_script_is_installed():
    exe = shutil.which("ringwal", path=os.path.dirname(sys.executable))
    assert exe, "the ringwal console script is not installed next to this python"
    r = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "verify" in r.stdout
