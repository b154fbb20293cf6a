"""benchmarks/bench_query.py runs (tiny models, a few queries) and prints
its table and summary line. Its times are not checked: they depend on the
machine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_query_tiny_prints_the_table_and_the_summary():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_query.py"), "--tiny",
                           "--iters", "3", "--frames", "1"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    number = r"\d+(?:\.\d+)?"
    for mode in ("whole", "sliding 32/16"):
        for what in ("segment, full frame, 3 phrases", "encode"):
            assert re.search(rf"^\| {mode} \| {what} \| {number} \|  \|$", out, re.M), out
        for n in ("1 phrase", "3 phrases", "10 phrases"):
            for size in ("input", "model"):
                assert re.search(rf"^\| {mode} \| decode {n}, output {size} \| {number} \| "
                                 rf"{number} \|$", out, re.M), out
        assert re.search(rf"^\| {mode} \| features per camera \(MB\) \| {number} \|", out, re.M)
    for what in ("1 new phrase", "3 new phrases"):
        assert re.search(rf"^\| prepare \| {what} \(text encoding\) \| {number} \|", out, re.M)
    assert re.search(rf"^\| prepare \| 3 phrases already encoded \| {number} \| {number} \|$",
                     out, re.M), out
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(rf"bench_query: whole_p50_ms_3={number} sliding_p50_ms_3={number}",
                        last), last
