"""A/B: ringwal at one git revision against another, with ``bench/compare.py``, in one run.

Each revision is checked out into a temporary worktree; every round runs ``compare.py``
(ringwal only, one run per cell) in the old tree, the new tree, and the old tree again, so
drift on a noisy machine hits all three alike. The second old run measures the noise between
two runs of the same code: a new/old ratio inside the old/old spread is no change.

    python bench/ab.py --old main~5 --new HEAD --rounds 5 -- --producers 16 4 --modes 1 buffered
    python bench/ab.py --old b77be1b --new WORKTREE            # the uncommitted tree as "new"

Prints JSON lines (each compare row tagged with ``side`` and ``round``) and then one summary
line per cell: medians of records/s per side, new/old and old/old ratios. Replay is measured
too unless ``--no-replay`` is given to compare.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worktree(rev: str, base: str) -> str:
    if rev == "WORKTREE":
        return ROOT
    path = os.path.join(base, rev.replace("/", "_").replace("~", "_"))
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-f", path, rev], check=True, capture_output=True)
    return path


def run(tree: str, extra: list[str]) -> list[dict]:
    """One compare.py run in ``tree`` (its cwd, so ``python -m ringwal serve`` is that tree's)."""
    cmd = [sys.executable, os.path.join(tree, "bench", "compare.py"), "--systems", "ringwal", "--runs", "1", *extra]
    out = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def key(row: dict) -> str | None:
    if row.get("bench") == "replay":
        return "replay"
    if row.get("bench") is None and "error" not in row:
        return f"{row['producers']}p {row['size']}B {row['mode']}"
    return None


def value(row: dict) -> float:
    """records/s of the cell; for replay, ringwal's replay rate."""
    return float(row["ringwal"] if row.get("bench") == "replay" else row["records_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="git revision of the baseline")
    ap.add_argument("--new", default="WORKTREE", help="git revision to compare (WORKTREE: this checkout as it is)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("extra", nargs="*", help="arguments for compare.py (after --)")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="ringwal-ab-")
    trees = {"old": worktree(args.old, base), "new": worktree(args.new, base)}
    samples: dict[str, dict[str, list[float]]] = {}
    try:
        for rnd in range(args.rounds):
            for side in ("old", "new", "old2"):
                for row in run(trees[side.rstrip("2")], args.extra):
                    row.update(side=side, round=rnd)
                    print(json.dumps(row), flush=True)
                    k = key(row)
                    if k is not None:
                        samples.setdefault(k, {}).setdefault(side, []).append(value(row))
    finally:
        for side, tree in trees.items():
            if tree != ROOT:
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], capture_output=True)
    for cell, by_side in samples.items():
        med = {s: statistics.median(v) for s, v in by_side.items()}
        summary = {"bench": "ab", "cell": cell, "old": args.old, "new": args.new, "rounds": args.rounds, "median_records_per_s": med}
        if med.get("old"):
            summary["new_over_old"] = round(med.get("new", 0) / med["old"], 3)
            summary["old2_over_old"] = round(med.get("old2", 0) / med["old"], 3)
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
