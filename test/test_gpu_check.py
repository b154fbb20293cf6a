"""benchmarks/gpu_check.sh --dry-run: the GPU check runs end to end on the
CPU with the tiny random models (its figures mean nothing here) and prints
its table and the final line the issue specifies. Its comparisons are
cass_ros.core.agreement (test/core/test_precision.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FINAL = re.compile(r"^gpu_check: p50_ms=(\d+\.\d+) p99_ms=(\d+\.\d+) cams8_fps=(\d+\.\d) "
                   r"agree_fp32=(\d+\.\d+)% agree_fp16=(\d+\.\d+)%$")


def test_dry_run_prints_the_table_and_the_final_line(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path))
    proc = subprocess.run([str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--frames", "2",
                           "--bag-frames", "2", "--text-names", "2"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    final = FINAL.match(lines[-1])
    assert final, lines[-1]
    p50, p99, fps, agree32, agree16 = map(float, final.groups())
    assert 0 < p50 <= p99 and fps > 0
    assert agree32 == 100.0 and 99.0 <= agree16 <= 100.0  # cpu fp32 vs itself; bf16 vs fp32
    out = proc.stdout
    for row in ("agree fp32 cpu vs fp32 cpu, whole", "agree fp32 cpu vs fp32 cpu, sliding",
                "agree bf16 cpu vs fp32 cpu", "1 camera p50 (fp32)", "1 camera p99",
                "8 cameras in one call", "sliding 224/112 p50", "1 camera p50, compile",
                "text: 2 new names x 80 templates", "cass_bag --batch 1", "cass_bag --batch 8",
                "node overhead (bench_node)", "stages of one camera"):
        assert row in out, row
    assert "heads differ 0/1" in out and "heads differ 0/6" in out
    # every timed row carries the achieved TFLOP/s, from counted FLOPs
    timed = [line for line in lines
             if line.startswith(("1 camera p50 (", "8 cameras", "sliding", "cass_bag --batch"))]
    assert len(timed) == 5
    for line in timed:
        tflops = re.search(r" (?:ms|frames/s)\s+(\d[\d.e+-]*) ", line)
        assert tflops and float(tflops.group(1)) > 0, line
    assert re.search(r"0\.\d+ TFLOP a frame", out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device exists: the full check runs")
def test_without_cuda_the_full_check_says_so() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("gpu_check: error: no CUDA device here")
