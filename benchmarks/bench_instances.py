#!/usr/bin/env python3
"""Per-frame cost of instances and tracks (docs/algorithm.md 11) at 640 x 480.

A synthetic moving sequence: N frames of discs of 3 classes drifting across
the image (10 or 30 of them, a few touching their class's neighbours), with
a confidence image, and a depth image where the right half of the scene is
2 m nearer (a step that the depth cut splits discs at). Per frame it times
find_instances, Tracker.update and both, without depth, with depth (the 3D
summary per instance) and with depth and the depth cut (instance_depth_jump
0.1); ms median and p99 over the frames. No model runs.

    .venv/bin/python benchmarks/bench_instances.py [--frames 200] [--size 480 640]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cass_ros.core.depth import Intrinsics  # noqa: E402
from cass_ros.core.objects.instances import InstanceParams, find_instances  # noqa: E402
from cass_ros.core.objects.tracks import Tracker, TrackParams  # noqa: E402


def sequence(count: int, frames: int, size: tuple[int, int], seed: int = 0
             ) -> list[np.ndarray]:
    """``frames`` (H, W) uint8 label images of ``count`` moving discs."""
    h, w = size
    rng = np.random.default_rng(seed)
    pos = rng.uniform([0, 0], [h, w], (count, 2))            # (n, 2) row, column
    vel = rng.normal(0.0, 2.0, (count, 2))                   # pixels per frame
    radius = rng.uniform(0.03, 0.06, count) * min(h, w)
    cls = 1 + np.arange(count) % 3
    out = []
    for _ in range(frames):
        labels = np.zeros((h, w), np.uint8)
        for (y, x), r, c in zip(pos, radius, cls):          # a few discs per frame: small
            y0, y1 = max(0, int(y - r)), min(h, int(y + r) + 1)
            x0, x1 = max(0, int(x - r)), min(w, int(x + r) + 1)
            yy, xx = np.ogrid[y0:y1, x0:x1]
            labels[y0:y1, x0:x1][(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = c
        out.append(labels)
        pos = pos + vel
        bounce = (pos < 0) | (pos > [h, w])
        vel[bounce] *= -1
        pos = np.clip(pos, 0, [h, w])
    return out


def run(labels_seq: list[np.ndarray], conf: np.ndarray, depth: np.ndarray | None,
        intrinsics: Intrinsics | None, params: InstanceParams
        ) -> tuple[list[float], list[float], int]:
    """Per frame ms of find_instances and Tracker.update; mean instances."""
    tracker = Tracker(TrackParams())
    t_inst, t_track, found = [], [], 0
    for i, labels in enumerate(labels_seq):
        t0 = time.perf_counter()
        inst = find_instances(labels, params, conf, depth, intrinsics)
        t1 = time.perf_counter()
        tracker.update(inst, 1, i * 0.1)
        t2 = time.perf_counter()
        t_inst.append((t1 - t0) * 1000.0)
        t_track.append((t2 - t1) * 1000.0)
        found += inst.count
    return t_inst, t_track, round(found / max(1, len(labels_seq)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=200, help="frames of the sequence (N)")
    p.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    p.add_argument("--counts", type=int, nargs="+", default=[10, 30], help="discs per frame")
    args = p.parse_args(argv)
    if args.frames < 2 or min(args.size) < 16 or min(args.counts) < 1:
        p.error("--frames must be >= 2, --size >= 16, --counts >= 1")
    h, w = args.size
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.3, 1.0, (h, w)).astype(np.float32)
    depth = rng.uniform(3.8, 4.2, (h, w)).astype(np.float32)
    depth[:, w // 2:] -= 2.0                                  # the nearer half
    depth[rng.random((h, w)) < 0.05] = 0.0                    # holes
    k = Intrinsics(525.0, 525.0, (w - 1) / 2, (h - 1) / 2)
    modes = [("no depth", None, None, 0.0), ("depth (3D)", depth, k, 0.0),
             ("depth, cut 0.1", depth, k, 0.1)]

    def stat(v: list[float]) -> str:
        return f"{np.median(v):.2f} | {np.percentile(v, 99):.2f}"

    print(f"{w} x {h}, {args.frames} frames of a moving sequence, 3 classes; "
          f"instance_min_pixels auto ({InstanceParams().min_pixels_for((h, w))}); "
          "ms median (p50) and p99\n")
    print("| discs | input | instances | find_instances p50 | p99 | Tracker.update p50 | p99 "
          "| both p50 | p99 |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary: dict[str, float] = {}
    for n in args.counts:
        seq = sequence(n, args.frames + 2, (h, w), seed=n)
        for name, d, intr, jump in modes:
            params = InstanceParams(depth_jump=jump)
            run(seq[:2], conf, d, intr, params)                  # warm-up
            ti, tt, found = run(seq[2:], conf, d, intr, params)
            both = [a + b for a, b in zip(ti, tt)]
            print(f"| {n} | {name} | {found} | {stat(ti)} | {stat(tt)} | {stat(both)} |")
            if d is None:
                summary[f"inst{n}"] = float(np.median(ti))
                summary[f"track{n}"] = float(np.median(tt))
                summary[f"total{n}"] = float(np.median(both))
    last = max(args.counts)
    print(f"\nbench_instances: inst{last}_ms={summary[f'inst{last}']:.2f} "
          f"track{last}_ms={summary[f'track{last}']:.2f} "
          f"total{last}_ms={summary[f'total{last}']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
