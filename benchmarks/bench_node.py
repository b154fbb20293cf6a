#!/usr/bin/env python3
"""What cass_node adds per frame, next to the segmenter's own time.

Node overhead = receiving the image (CDR -> Python message), converting it
to RGB, building the label image and objects messages from the
SegmentationResult, and publishing them; the colour overlay is listed
apart (it is only computed while someone subscribes). Goal: < 3 ms at
640 x 480 without the overlay.

    export AMENT_PREFIX_PATH=$PWD/.venv; source install/setup.bash
    .venv/bin/python benchmarks/bench_node.py            # tiny random models
    .venv/bin/python benchmarks/bench_node.py --clip-weights openai --dino-weights hub \
        --short-side 336                                  # the real models, if present
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
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--clip-weights", default="", help="default: tiny random checkpoints")
    ap.add_argument("--dino-weights", default="")
    ap.add_argument("--short-side", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompts", default="person|pedestrian, car, forklift, pallet")
    args = ap.parse_args(argv)

    import rclpy
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Header

    from cass_ros.core.config import build_config
    from cass_ros.ros.inputs.image_conversion import to_rgb
    from cass_ros.msg import ObjectPresenceArray
    from cass_ros.core.prompts import build_prompt_set, parse_prompt_text
    from cass_ros.ros.outputs.messages import (color_image_msg, image_from_rgb, label_image_msg,
                                       objects_msg)
    from cass_ros.core.segmenter import Segmenter
    from cass_ros.core.visualize import overlay, palette

    clip, dino = args.clip_weights, args.dino_weights
    if not clip or not dino:
        from cass_ros.core.models import save_tiny_random_checkpoints

        clip, dino = save_tiny_random_checkpoints(tempfile.mkdtemp(prefix="cass_bench_"))
    config = build_config({"clip_weights": clip, "dino_weights": dino, "device": args.device,
                           "short_side": args.short_side, "background_classes": ["sky"]})
    seg = Segmenter(config)
    prompt_set = build_prompt_set(parse_prompt_text(args.prompts), ["sky"])
    prepared = seg.prepare_prompts(prompt_set, prompt_id=1)
    colors = palette(prompt_set.num_labels)

    h, w = args.height, args.width
    rng = np.random.default_rng(0)
    rgb = cv2.resize(rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8), (w, h),
                     interpolation=cv2.INTER_LINEAR)
    header = Header(frame_id="camera")
    bgr_msg = image_from_rgb(rgb, "bgr8", header)
    rgb_msg = image_from_rgb(rgb, "rgb8", header)
    bgr_cdr = serialize_message(bgr_msg)
    jpeg = CompressedImage(header=header, format="jpeg")
    jpeg.data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()

    rclpy.init()
    node = rclpy.create_node("cass_bench")
    pub_labels = node.create_publisher(Image, "bench/segmentation", 2)
    pub_objects = node.create_publisher(ObjectPresenceArray, "bench/objects", 10)
    pub_color = node.create_publisher(Image, "bench/segmentation/color", 2)
    # subscribers in this process, so publishing really serializes and sends
    node.create_subscription(Image, "bench/segmentation", lambda m: None, 2)
    node.create_subscription(ObjectPresenceArray, "bench/objects", lambda m: None, 10)
    node.create_subscription(Image, "bench/segmentation/color", lambda m: None, 2)

    n = args.repeat
    rows: list[tuple[str, float, bool]] = []   # (stage, ms, counts as node overhead)
    t, _ = _time(lambda: deserialize_message(bgr_cdr, Image), n)
    rows.append(("receive bgr8 (CDR -> message)", t, True))
    t, conv = _time(lambda: to_rgb(bgr_msg), n)
    rows.append(("convert bgr8 -> RGB", t, True))
    t, _ = _time(lambda: to_rgb(rgb_msg), n)
    rows.append(("  (rgb8 instead: no copy)", t, False))
    t, _ = _time(lambda: to_rgb(jpeg), n)
    rows.append(("  (JPEG instead: decode)", t, False))
    t_seg, results = _time(lambda: seg.segment([conv], prompts=prepared), max(3, n // 5))
    result = results[0]
    result.prompt_id = 1
    t, lm = _time(lambda: label_image_msg(result, header), n)
    rows.append(("build label image msg", t, True))
    t, om = _time(lambda: objects_msg(result, header, 1, t_seg), n)
    rows.append(("build objects msg", t, True))
    t, _ = _time(lambda: (pub_labels.publish(lm), pub_objects.publish(om)), n)
    rows.append(("publish label + objects", t, True))
    t, cm = _time(lambda: color_image_msg(overlay(conv, result.labels, colors, 0.5), header), n)
    rows.append(("overlay + msg (only when subscribed)", t, False))
    t, _ = _time(lambda: pub_color.publish(cm), n)
    rows.append(("publish overlay (only when subscribed)", t, False))

    overhead = sum(ms for _, ms, counted in rows if counted)
    width = max(len(r[0]) for r in rows) + 2
    print(f"cass_node per-frame cost at {w}x{h}, median of {n} "
          f"(segmenter: {seg.describe()})")
    print(f"{'stage':<{width}}{'ms':>9}")
    print("-" * (width + 9))
    for name, ms, _ in rows:
        print(f"{name:<{width}}{ms:>9.3f}")
    print("-" * (width + 9))
    print(f"{'node overhead (receive..publish)':<{width}}{overhead:>9.3f}")
    print(f"{'segmenter.segment (one image)':<{width}}{t_seg:>9.3f}")
    print(f"{'overhead / segmenter':<{width}}{overhead / t_seg:>9.1%}")
    print(f"goal < 3 ms node overhead: {'met' if overhead < 3.0 else 'NOT met'}")
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
