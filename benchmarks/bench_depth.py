#!/usr/bin/env python3
"""Per-frame cost of depth to 3D at 640 x 480 (docs/ros-interface.md,
"Depth to 3D"): decoding the depth image, the per-class centroids and
percentile boxes, the 3D messages, and the labelled cloud (only computed
while /cass/<cam>/points has a subscriber).

Synthetic frame: K classes in blocks over the image (about 40 % background),
a 16UC1 depth image with 5 % holes; no model runs (the 3D step does not
depend on the weights).

    export AMENT_PREFIX_PATH=$PWD/.venv; source install/setup.bash
    .venv/bin/python benchmarks/bench_depth.py
    .venv/bin/python benchmarks/bench_depth.py --repeat 3 --classes 20 --stride 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    out = fn()  # warm-up
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(samples), out


def _scene(h: int, w: int, classes: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, classes + 1, (12, 16))
    blocks[rng.random(blocks.shape) < 0.4] = 0                  # background
    labels = np.kron(blocks, np.ones((h // 12 + 1, w // 16 + 1), np.int64))[:h, :w]
    labels = labels.astype(np.uint8)
    mm = rng.integers(500, 6000, (h, w)).astype(np.uint16)
    mm[rng.random((h, w)) < 0.05] = 0                           # holes
    conf = rng.random((h, w)).astype(np.float32)
    return labels, mm, conf


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--classes", type=int, default=10, help="prompted classes (K - 1)")
    ap.add_argument("--trim", type=float, default=5.0, help="depth_trim_percent")
    ap.add_argument("--stride", type=int, default=4, help="cloud_stride")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args(argv)

    from cass_ros.core.depth import Intrinsics, labelled_points, object_geometry
    from cass_ros.core.result import SegmentationResult, label_statistics
    from cass_ros.ros.inputs.depth import depth_to_metres

    h, w, n = args.height, args.width, args.repeat
    k = args.classes + 1
    labels, mm, conf = _scene(h, w, args.classes)
    cam = Intrinsics(fx=0.9 * w, fy=0.9 * w, cx=(w - 1) / 2, cy=(h - 1) / 2)
    data = mm.astype("<u2").tobytes()
    rows: list[tuple[str, float]] = []

    t, depth = _time(lambda: depth_to_metres("16UC1", h, w, w * 2, data), n)
    rows.append(("decode 16UC1 -> metres", t))
    t, geo = _time(lambda: object_geometry(labels, depth, cam, k, args.trim), n)
    rows.append((f"object_geometry ({k - 1} classes, trim {args.trim:g} %)", t))
    three_d = rows[0][1] + rows[1][1]

    counts, mean_conf, boxes = label_statistics(labels, conf, k)
    result = SegmentationResult(labels=labels, class_names=["background"] + [
        f"class{i}" for i in range(1, k)], presence=np.ones(k, np.float32),
        pixel_counts=counts, mean_confidence=mean_conf, boxes=boxes, confidence=conf)
    cloud_rows: list[tuple[str, float]] = []
    try:
        from std_msgs.msg import Header

        from cass_ros.ros.outputs.depth import cloud_msg, detections_3d_msg
        from cass_ros.ros.outputs.vision import vision_msgs_missing
        from cass_ros.ros.outputs.messages import objects_msg
    except ImportError as e:
        print(f"(ROS messages not importable, message building skipped: {e})")
        header = None
    else:
        header = Header(frame_id="camera_optical")
        t, _ = _time(lambda: objects_msg(result, header, 1, 0.0, geo), n)
        rows.append(("objects message with 3D fields", t))
        three_d += t
        if vision_msgs_missing() is None:
            t, _ = _time(lambda: detections_3d_msg(result, geo, header), n)
            rows.append(("Detection3DArray message", t))
            three_d += t
    for stride in sorted({args.stride, 1}):
        t, pts = _time(lambda s=stride: labelled_points(labels, depth, conf, cam, s), n)
        total = t
        cloud_rows.append((f"labelled_points stride {stride} ({pts.size} points)", t))
        if header is not None:
            t, _ = _time(lambda p=pts: cloud_msg(p, header), n)
            cloud_rows.append((f"PointCloud2 message stride {stride}", t))
            total += t
        cloud_rows.append((f"cloud total, stride {stride}", total))

    width = max(len(r[0]) for r in rows + cloud_rows) + 2
    print(f"depth to 3D per frame at {w}x{h}, median of {n} (ms; CPU)")
    print(f"{'stage':<{width}}{'ms':>9}")
    print("-" * (width + 9))
    for name, ms in rows:
        print(f"{name:<{width}}{ms:>9.3f}")
    print("-" * (width + 9))
    print(f"{'3D step (decode + geometry + messages)':<{width}}{three_d:>9.3f}")
    print("-" * (width + 9))
    for name, ms in cloud_rows:
        print(f"{name:<{width}}{ms:>9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
