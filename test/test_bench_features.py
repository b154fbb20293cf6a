"""benchmarks/bench_features.py runs (a few frames, small images) and
prints its table and summary line. Its times are not checked: they depend
on the machine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_features_prints_the_table_and_the_summary():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_features.py"),
                           "--frames", "3", "--size", "120", "160", "--discs", "8"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    number = r"\d+(?:\.\d+)?"
    for mode in ("whole", "sliding"):
        # 120 x 160 -> 336 x 448: 21 x 28 cells of 512 values, 4 or 2 bytes each (+ g)
        assert re.search(rf"^\| {mode} \| 21x28 \|" + rf" {number} \|" * 8
                         + rf" {(588 + 1) * 512 * 4} \| {(588 + 1) * 512 * 2} \|$", out, re.M), out
    # the topics' bytes: the fp16 grid is half the fp32 one, plus the same fields
    f16 = int(re.search(r"^\| /cass/<cam>/features \(float16\) \| (\d+) \|$", out, re.M)[1])
    f32 = int(re.search(r"^\| /cass/<cam>/features \(float32\) \| (\d+) \|$", out, re.M)[1])
    assert f32 - f16 == 588 * 512 * 2 and f16 > 588 * 512 * 2 + 512 * 4, (f16, f32)
    assert re.search(r"^\| instance_objects: added by instance_embeddings \((\d+) instances\) "
                     r"\| (\d+) \|$", out, re.M), out
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(rf"bench_features: whole_ms={number} sliding_ms={number} "
                        rf"instances=\d+", last), last
