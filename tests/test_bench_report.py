"""bench/report.py turns medians into docs/benchmarks: tables, the targets, met or missed."""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))

from report import write_report  # noqa: E402

META = {"date": "2026-11-25", "cpus": 2, "kernel": "x", "python": "3.11", "runs": 3, "seconds": 1.0}
LIMITS = {"fdatasync_p50_us": 120.0, "fdatasync_p99_us": 200.0, "seq_write_mb_per_s": 1000.0, "shm_copy_mb_per_s": 5000.0}


def row(system, producers, mode, rps, p99=None):
    return {
        "system": system, "producers": producers, "size": 100, "mode": mode, "runs": 3,
        "records_per_s": rps, "mb_per_s": rps * 100 / 1e6,
        "wait_p50_us": None if p99 is None else p99 / 2, "wait_p99_us": p99, "wait_p999_us": None if p99 is None else p99 * 2,
        "cpu_s_per_m_records": 3.0, "writer_peak_rss_mb": 30.0 if system == "ringwal" else None, "fairness": 0.9,
    }  # fmt: skip


def test_report_states_each_target_with_its_figure(tmp_path):
    summary = [
        row("ringwal", 4, "buffered", 1_200_000),
        row("sqlite", 4, "buffered", 300_000),
        row("ringwal", 16, "sync_every_1", 50_000, 800.0),
        row("sqlite", 16, "sync_every_1", 2_000, 9000.0),
        row("redis", 16, "sync_every_1", 25_000, 700.0),
        row("ringwal", 16, "sync_every_100", 700_000, 3000.0),
        row("redis-pipe16", 16, "sync_every_100", 100_000, 900.0),
        row("sqlite", 16, "sync_every_100", 800_000, 500.0),  # ahead of ringwal here
    ]
    replay = {"bench": "replay", "records": 1_000_000, "ringwal": 3_300_000, "bare_read_and_check": 3_500_000}
    write_report(str(tmp_path), META, LIMITS, summary, replay)
    text = (tmp_path / "README.md").read_text()
    assert "| 16 producers, sync every record: ≥ 75,000 records/s | 50.0k | **missed** |" in text
    assert "| … and ≥ 9× sqlite | 25.0× | met |" in text
    assert "| … and ≥ 4.5× redis | 2.0× | **missed** |" in text
    assert "| 16 producers, sync every 100: ≥ 3× Redis pipelined 16 deep | 7.0× | met |" in text
    assert "| 4 producers, OS-buffered, 100 B: ≥ 1,000,000 records/s | 1.20M | met |" in text
    assert "sqlite at 16p/100 B/sync_every_100 (800.0k vs 700.0k)" in text
    assert "| replay ≥ 0.9× a bare read-and-check loop | 0.94× | met |" in text
    assert "400 µs / 800 µs / 1.60 ms" in text  # ringwal's p50 / p99 / p99.9 cell
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["limits"] == LIMITS and len(saved["summary"]) == len(summary)


def test_report_gives_ringwal_as_a_fraction_of_the_ceiling(tmp_path):
    summary = [
        row("ringwal", 16, "sync_every_1", 30_000, 900.0),
        row("ceiling", 16, "sync_every_1", 32_000, 300.0),  # faster, but not an alternative a team would pick
        row("flock", 16, "sync_every_1", 9_000, 2000.0),
        row("ringwal", 1, "sync_every_1", 3_000, 400.0),
        row("flock", 1, "sync_every_1", 3_500, 300.0),
    ]
    ratio = {"size": 100, "mode": "sync_every_1", "runs": 3, "cpu_s_per_m_records": 60.0, "ceiling_cpu_s_per_m_records": 35.0}
    ceiling = [
        {"system": "ringwal", "producers": 16, "records_ratio": 0.93, "p50_ratio": 1.5, "p99_ratio": 3.5, **ratio},
        {"system": "ringwal", "producers": 1, "records_ratio": 0.85, "p50_ratio": 1.1, "p99_ratio": 1.2, **ratio},
        {"system": "ringwal-yielding", "producers": 1, "records_ratio": 0.97, "p50_ratio": 0.8, "p99_ratio": 0.9, **ratio},
    ]
    write_report(str(tmp_path), META, LIMITS, summary, {}, ceiling)
    text = (tmp_path / "README.md").read_text()
    assert "| 16 producers, sync every record: ≥ 0.9× the ceiling (bench/ceiling.py) | 0.93× | met |" in text
    assert "| … and p99 of sync() ≤ 3× the ceiling's p99 | 3.5× | **missed** |" in text
    assert "| 1 producer, sync every record: ≥ 0.9× the ceiling (bench/ceiling.py) | 0.85× | **missed** |" in text
    assert "≤ 1.5× flock's | 3 s = 1.00× flock's 3 s | met |" in text
    assert "| 100 | 1 | sync() every record | ringwal-yielding | 0.97× | 0.80× | 0.90× | 60.0 | 35.0 | 3.0 |" in text
    assert "| ahead of every alternative in every durable workload with ≥ 4 producers | ahead in all | met |" in text
    assert json.loads((tmp_path / "results.json").read_text())["vs_ceiling"] == ceiling
