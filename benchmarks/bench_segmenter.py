#!/usr/bin/env python3
"""Benchmark of the CASS segmenter: a per-stage table, and the fast spectral
step against a straightforward N x N eigendecomposition version.

Full-size CLIP ViT-B/16 + DINO ViT-B/8 with RANDOM weights (speed does not
depend on the weights) on a 336 x 448 image, whole image and sliding window,
on the CPU and on CUDA when present. The last line is
``spectral_speedup_n588=<ratio>``.

    .venv/bin/python benchmarks/bench_segmenter.py [--iters 3] [--devices cpu cuda]
        [--cpu-kernels torch onednn]

``--cpu-kernels`` gives the CPU rows one per value of the ``cpu_kernels``
setting (default: auto only, the product's default, which times both kernel
sets and logs its choice). ``torch`` rows run first: ``onednn`` and ``auto``
also switch the process's C heap to keeping freed memory, which cannot be
switched back.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cass_ros.core.config import CPU_KERNELS, CassConfig, build_config  # noqa: E402
from cass_ros.core.models import load_models  # noqa: E402
from cass_ros.core.prompts import build_prompt_set  # noqa: E402
from cass_ros.core.segmenter import STAGES, Segmenter  # noqa: E402
from cass_ros.core.spectral import SpectralParams, cass_attention, gaussian_prior  # noqa: E402

CLASSES = ["person", "car", "bicycle", "dog", "cat", "chair", "table", "bottle", "tree", "road",
           "building", "sky", "forklift", "pallet", "box", "door", "window", "floor", "wall", "truck"]


def naive_spectral(q, k, v, kd, grid, params: SpectralParams):
    """Section 3 written the straightforward way: full N x N eigendecompositions
    per head (float64), per-head loops. One crop: tensors (h, N, d)."""
    h, n, d = k.shape
    s = d ** -0.5
    kd = (kd - kd.min()) / (kd.max() - kd.min()) * (k.max() - k.min()) + k.min()
    a = (k @ k.transpose(-1, -2)) * s
    g = (kd @ kd.transpose(-1, -2)) * s
    ev_c = torch.stack([torch.linalg.eigvalsh(a[t].double()).flip(0)[:params.k_eigen] for t in range(h)])
    ev_d = torch.stack([torch.linalg.eigvalsh(g[t].double()).flip(0)[:params.k_eigen] for t in range(h)])

    def prep(e):
        e = torch.nn.functional.normalize(e, p=2, dim=-1)
        return torch.nn.functional.normalize(e, p=1, dim=-1).sort(-1).values

    pd, pc = prep(ev_d), prep(ev_c)
    cost = np.array([[1 - (pd[i] - pc[j]).abs().sum().item() for j in range(h)] for i in range(h)])
    _, col = linear_sum_assignment(cost)
    prior = gaussian_prior(grid, params.gaussian_std, torch.float64)
    out = []
    for t in range(h):
        w = 1 - cost[t, col[t]]
        evals, evecs = torch.linalg.eigh(g[col[t]].double())
        u, sv = evecs[:, -params.low_rank:], evals[-params.low_rank:]
        if params.eigenvalue_scaling:
            sv = (sv - sv.min()) / (sv.max() - sv.min()) * (1.5 * sv.max() - 0.5 * sv.min()) + 0.5 * sv.min()
        dmat = u @ torch.diag(sv) @ u.T
        dmat.fill_diagonal_(0)
        at = a[t].double()
        dmat = (dmat - dmat.min()) / (dmat.max() - dmat.min()) * (at.max() - at.min()) + at.min()
        fused = (w * params.fusion_weight * dmat + at) / (w * params.fusion_weight + 1)
        out.append(torch.softmax(fused + prior, -1) @ v[t].double())
    return torch.stack(out)


def time_it(fn, iters: int, sync=lambda: None) -> float:
    """Median wall time in ms over ``iters`` runs after one warm-up."""
    fn()
    sync()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(samples)


def bench_spectral(n_side: tuple[int, int], device: torch.device, iters: int) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(0)
    h, d = 12, 64
    n = n_side[0] * n_side[1]
    q, k, v, kd = (torch.randn(h, n, d, generator=gen) for _ in range(4))
    params = SpectralParams.from_config(CassConfig())
    prior = gaussian_prior(n_side, params.gaussian_std, torch.float32, device)
    qb, kb, vb, kdb = (x[None].to(device) for x in (q, k, v, kd))
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    fast = time_it(lambda: cass_attention(qb, kb, vb, kdb, n_side, params, prior=prior), iters, sync)
    naive = time_it(lambda: naive_spectral(q, k, v, kd, n_side, params), max(1, iters // 2))
    return fast, naive


def bench_pipeline(device: str, iters: int, num_classes: int, kernels: str = "auto"
                   ) -> list[tuple[str, dict[str, float]]]:
    rows = []
    base = {"clip_weights": "random", "dino_weights": "random", "device": device, "short_side": 336,
            "cpu_kernels": kernels}
    label = f"{device} {kernels}" if device == "cpu" else device
    models = load_models(build_config(base))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (336, 448, 3), dtype=np.uint8)
    prompt_set = build_prompt_set([(c,) for c in CLASSES[:num_classes]], ())
    for mode, extra in (("whole image", {"slide_crop": 0}),
                        ("sliding 224/112", {"slide_crop": 224, "slide_stride": 112})):
        seg = Segmenter(build_config({**base, **extra}), models)
        t0 = time.perf_counter()
        prepared = seg.prepare_prompts(prompt_set)
        cold = (time.perf_counter() - t0) * 1000.0
        t0 = time.perf_counter()
        seg.prepare_prompts(prompt_set)
        cached = (time.perf_counter() - t0) * 1000.0
        seg.segment([image], prepared)  # warm-up
        runs = [seg.segment([image], prepared)[0].timings_ms for _ in range(iters)]
        row = {s: statistics.median(r[s] for r in runs) for s in (*STAGES, "total")}
        row["text_cold"], row["text_cached"] = cold, cached
        row["fps"] = 1000.0 / row["total"]
        rows.append((f"{label} {mode}", row))
        models = seg.models
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--classes", type=int, default=20, help="number of class names (<= 20)")
    p.add_argument("--devices", nargs="*", default=None, help="default: cpu, and cuda when present")
    p.add_argument("--skip-pipeline", action="store_true", help="only the spectral comparison")
    p.add_argument("--cpu-kernels", nargs="+", default=["auto"], choices=CPU_KERNELS,
                   help="cpu_kernels values for the CPU rows (torch rows run first)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("cass_ros.core.cpu_kernels").setLevel(logging.INFO)  # the auto choice
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, devices: {', '.join(devices)}")
    print("CLIP ViT-B/16 + DINO ViT-B/8, RANDOM weights, image 336 x 448, "
          f"{args.classes} class names; times in ms, median of {args.iters}\n")
    if not args.skip_pipeline:
        cols = ("text_cold", "text_cached", *STAGES, "total", "fps")
        print(f"{'config':<33}" + "".join(f"{c:>12}" for c in cols))
        kernels = sorted(dict.fromkeys(args.cpu_kernels), key=lambda k: k != "torch")
        for dev in devices:
            for kern in (kernels if dev == "cpu" else ["auto"]):
                for name, row in bench_pipeline(dev, args.iters, args.classes, kern):
                    print(f"{name:<33}" + "".join(f"{row[c]:>12.1f}" for c in cols), flush=True)
        print()
    header = ("device", "fast ms", "naive N x N ms", "speedup")
    print(f"{'spectral step (h=12, d=64)':<30}" + "".join(f"{c:>16}" for c in header))
    speedup_588 = None
    for grid in ((21, 28), (28, 42)):
        n = grid[0] * grid[1]
        for dev in devices:
            fast, naive = bench_spectral(grid, torch.device(dev), args.iters)
            print(f"{'N = ' + str(n):<30}{dev:>16}{fast:>16.1f}{naive:>16.1f}{naive / fast:>16.1f}")
            if n == 588 and dev == "cpu":
                speedup_588 = naive / fast
    print(f"spectral_speedup_n588={speedup_588:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
