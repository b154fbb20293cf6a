#!/usr/bin/env python3
"""What the vision_msgs outputs add per frame (docs/ros-interface.md,
"Standard messages"): building the Detection2DArray from a
SegmentationResult and publishing it to a subscriber in this process; the
LabelInfo is listed apart (it is sent once per prompt set, not per frame).
The segmenter's own time is printed for scale.

    export AMENT_PREFIX_PATH=$PWD/.venv; source install/setup.bash
    .venv/bin/python benchmarks/bench_vision.py            # 640 x 480, tiny random models
    .venv/bin/python benchmarks/bench_vision.py --prompts "$(seq -s, 1 40)"   # 40 classes
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np


def _time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    out = fn()  # warm-up
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(samples), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--short-side", type=int, default=64)
    ap.add_argument("--prompts", default="person|pedestrian, car, forklift, pallet")
    args = ap.parse_args(argv)

    import rclpy
    from std_msgs.msg import Header

    from cass_ros.core.config import build_config
    from cass_ros.core.models import save_tiny_random_checkpoints
    from cass_ros.core.prompts import build_prompt_set, parse_prompt_text
    from cass_ros.core.segmenter import Segmenter
    from cass_ros.ros.outputs.vision import (detections_fields, detections_msg, label_info_msg,
                                     vision_msgs_missing)

    missing = vision_msgs_missing()
    if missing:
        print(f"bench_vision: {missing}", file=sys.stderr)
        return 2
    from vision_msgs.msg import Detection2DArray, LabelInfo

    clip, dino = save_tiny_random_checkpoints(tempfile.mkdtemp(prefix="cass_bench_"))
    config = build_config({"clip_weights": clip, "dino_weights": dino, "device": "cpu",
                           "short_side": args.short_side, "background_classes": ["sky"]})
    seg = Segmenter(config)
    prompt_set = build_prompt_set(parse_prompt_text(args.prompts), ["sky"])
    prepared = seg.prepare_prompts(prompt_set, prompt_id=1)
    h, w = args.height, args.width
    rng = np.random.default_rng(0)
    rgb = cv2.resize(rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8), (w, h),
                     interpolation=cv2.INTER_LINEAR)
    t_seg, results = _time(lambda: seg.segment([rgb], prompts=prepared), 3)
    result = results[0]
    header = Header(frame_id="camera")

    rclpy.init()
    node = rclpy.create_node("cass_bench_vision")
    pub_det = node.create_publisher(Detection2DArray, "bench/detections", 10)
    pub_info = node.create_publisher(LabelInfo, "bench/label_info", 1)
    # subscribers in this process, so publishing really serializes and sends
    node.create_subscription(Detection2DArray, "bench/detections", lambda m: None, 10)
    node.create_subscription(LabelInfo, "bench/label_info", lambda m: None, 1)

    n = args.repeat
    rows: list[tuple[str, float, bool]] = []   # (stage, ms, per frame)
    t, _ = _time(lambda: detections_fields(result, 1), n)
    rows.append(("  (of which: field dictionaries)", t, False))
    t, det = _time(lambda: detections_msg(result, header, 1), n)
    rows.append(("build detections msg", t, True))
    t, _ = _time(lambda: pub_det.publish(det), n)
    rows.append(("publish detections", t, True))
    t, info = _time(lambda: label_info_msg(prompt_set, header, 0.1), n)
    rows.append(("build label_info msg (per prompt set)", t, False))
    t, _ = _time(lambda: pub_info.publish(info), n)
    rows.append(("publish label_info (per prompt set)", t, False))

    per_frame = sum(ms for _, ms, counted in rows if counted)
    width = max(len(r[0]) for r in rows) + 8
    print(f"vision_msgs outputs at {w}x{h}, {len(result.class_names) - 1} classes, "
          f"{len(det.detections)} present, median of {n}")
    print(f"{'stage':<{width}}{'ms':>9}")
    print("-" * (width + 9))
    for name, ms, _ in rows:
        print(f"{name:<{width}}{ms:>9.3f}")
    print("-" * (width + 9))
    print(f"{'per frame (build + publish detections)':<{width}}{per_frame:>9.3f}")
    print(f"{'segmenter.segment (tiny models, for scale)':<{width}}{t_seg:>9.3f}")
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
