"""benchmarks/bench_instances.py runs (a few frames, small images) and
prints its table and summary line. Its times are not checked: they depend
on the machine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_instances_prints_the_table_and_the_summary():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_instances.py"),
                           "--frames", "3", "--size", "120", "160", "--counts", "4", "8"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    number = r"\d+(?:\.\d+)?"
    for n in (4, 8):
        for mode in ("no depth", r"depth \(3D\)", "depth, cut 0.1"):
            assert re.search(rf"^\| {n} \| {mode} \| \d+ \|" + rf" {number} \|" * 6 + "$",
                             out, re.M), out
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(rf"bench_instances: inst8_ms={number} track8_ms={number} "
                        rf"total8_ms={number}", last), last
