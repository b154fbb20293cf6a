#!/usr/bin/env python3
"""Per-frame cost of temporal stability (docs/algorithm.md 5.6) at 640 x 480.

Times, per device, the moving average of the class probabilities (K, H, W),
the ``present`` hysteresis (K,), and the segmenter's whole labels step
(softmax, per-class max, threshold, argmax, statistics) without a stream and
with smoothing and hysteresis on, run alternately: the difference is what a
frame pays (on a loaded machine it is noise around the first row). The
labels step does not depend on the weights: it runs on tiny random models
with random logits.

    .venv/bin/python benchmarks/bench_temporal.py [--iters 50] [--labels 10] [--devices cpu cuda]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cass_ros.core.config import build_config  # noqa: E402
from cass_ros.core.models import save_tiny_random_checkpoints  # noqa: E402
from cass_ros.core.prompts import build_prompt_set  # noqa: E402
from cass_ros.core.segmenter import Segmenter  # noqa: E402
from cass_ros.core.temporal import StreamFrame, TemporalParams, TemporalStream  # noqa: E402

ON = TemporalParams(smoothing=0.7, present_on_frames=3, present_off_frames=3)


def time_it(fn: Callable[[], object], iters: int, sync: Callable[[], None]) -> float:
    """Median wall time in ms over ``iters`` runs after two warm-ups."""
    fn()
    fn()
    sync()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(samples)


def time_pair(a: Callable[[], object], b: Callable[[], object], iters: int,
              sync: Callable[[], None]) -> tuple[float, float]:
    """Medians in ms of ``a`` and ``b`` run alternately, so that a shared
    machine's drifting load weighs on both alike."""
    for fn in (a, b, a, b):
        fn()
    sync()
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(iters):
        for fn, out in ((a, samples[0]), (b, samples[1])):
            t0 = time.perf_counter()
            fn()
            sync()
            out.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(samples[0]), statistics.median(samples[1])


def bench_device(device: str, weights: tuple[str, str], iters: int, k: int,
                 size: tuple[int, int]) -> list[tuple[str, float]]:
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    h, w = size
    seg = Segmenter(build_config({"clip_weights": weights[0], "dino_weights": weights[1],
                                  "device": device}))
    # K labels: K - 1 classes and one background name, so C = K names
    prompts = seg.prepare_prompts(build_prompt_set([(f"class{i}",) for i in range(1, k)],
                                                   background=["sky"]))
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(k, h, w, generator=gen).mul_(0.05).to(dev)  # (C, H, W)
    r = torch.randn(k, generator=gen).to(dev)                         # (C,)
    probs = torch.softmax(torch.randn(k, h, w, generator=gen), 0).to(dev)  # (K, H, W)
    counts = np.random.default_rng(0).integers(0, 50, k)
    clock = iter(range(10**9))

    stream = TemporalStream(ON)
    smooth = time_it(lambda: stream.smooth(probs, 1, next(clock) * 0.1), iters, sync)
    present = time_it(lambda: stream.present(counts, 10), iters, sync)
    with torch.inference_mode():
        labelled = TemporalStream(ON)
        plain, with_stream = time_pair(
            lambda: seg._labels(logits, r, prompts, False),
            lambda: seg._labels(logits, r, prompts, False,
                                StreamFrame(labelled, next(clock) * 0.1, 10)), iters, sync)
    return [("moving average (K, H, W)", smooth), ("present hysteresis (K,)", present),
            ("labels step, no stream", plain), ("labels step, stream on", with_stream),
            ("added per frame", with_stream - plain)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--labels", type=int, default=10, help="K, labels incl. background (>= 2)")
    p.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    p.add_argument("--devices", nargs="*", default=None, help="default: cpu, and cuda when present")
    args = p.parse_args()
    if args.labels < 2 or args.iters < 1 or min(args.size) < 1:
        p.error("--labels must be >= 2, --iters >= 1, --size positive")
    logging.basicConfig(level=logging.WARNING)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    h, w = args.size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"K = {args.labels} labels, {w} x {h}; smoothing {ON.smoothing}, hysteresis "
          f"{ON.present_on_frames}/{ON.present_off_frames}; ms, median of {args.iters}\n")
    print(f"{'step':<28}" + "".join(f"{d:>12}" for d in devices))
    with tempfile.TemporaryDirectory() as tmp:
        weights = save_tiny_random_checkpoints(tmp, seed=0)
        columns = [bench_device(d, weights, args.iters, args.labels, (h, w)) for d in devices]
    for i, (name, _) in enumerate(columns[0]):
        print(f"{name:<28}" + "".join(f"{col[i][1]:>12.2f}" for col in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
