"""benchmarks/bench_fleet.py runs (tiny models, two small bags) and prints
its table and summary line. Its times are not checked: they depend on the
machine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_bench_fleet_prints_the_table_and_the_summary():
    pytest.importorskip("ray")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_fleet.py"), "--tiny",
                           "--bags", "2", "--frames", "2"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    number = r"-?\d+(?:\.\d+)?"
    for name, workers in (("cass_bag \\(model per bag\\)", "-"),
                          ("cass_bag pipeline \\(model once\\)", "-"),
                          ("cass_fleet --workers 1", "1"), ("cass_fleet --workers 2", "2")):
        assert re.search(rf"^\| {name} \| {workers} \| 4 \| {number} \| {number} \| {number} "
                         rf"\| [+-]{number} % \|$", out, re.M), out
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(rf"bench_fleet: cass_bag_fps={number} fleet1_fps={number} "
                        rf"fleet2_fps={number} overhead1_pct={number}", last), last
