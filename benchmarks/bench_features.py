#!/usr/bin/env python3
"""Per-frame cost of the dense features and the per-instance embeddings
(docs/algorithm.md 10.1) at 640 x 480.

The features of a frame as Segmenter.encode leaves them for CLIP ViT-B/16
(E = 512) at short side 336, random values (the cost does not depend on
them): whole image (one crop, 21 x 28 patches) and sliding window 224 / 112
(six crops of 14 x 14). Per frame it times dense_features (float32 and
float16), pool_regions over the instances of a label image of discs
(benchmarks/bench_instances.py's scene, 30 discs by default, with the
instances' boxes) and both; ms
median and p99; the bytes of one frame's dense features; and the bytes per
frame of each topic that carries them (serialized by rclpy as published:
/cass/<cam>/features in both dtypes, the embeddings instance_objects gains
with ``instance_embeddings``, a /cass/query similarity image per class).
No model runs.

    .venv/bin/python benchmarks/bench_features.py [--frames 200] [--discs 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_instances import sequence  # noqa: E402

from cass_ros.core.objects.instances import InstanceParams, find_instances  # noqa: E402
from cass_ros.core.preprocess import resize_short_side, slide_windows  # noqa: E402
from cass_ros.core.queries.dense import dense_features  # noqa: E402
from cass_ros.core.queries.features import CropFeatures, ImageFeatures  # noqa: E402
from cass_ros.core.queries.pooling import pool_regions  # noqa: E402

PATCH, WIDTH = 16, 512          # CLIP ViT-B/16


def frame_features(size: tuple[int, int], short_side: int, crop: int, stride: int
                   ) -> ImageFeatures:
    """One frame's ImageFeatures of the shapes encode gives (crop 0: whole image)."""
    resized = resize_short_side(np.zeros((*size, 3), np.uint8), short_side).shape[:2]
    boxes = [(0, resized[0], 0, resized[1])] if not crop else slide_windows(*resized, crop, stride)
    ch, cw = boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2]
    grid = (ch // PATCH, cw // PATCH)
    gen = torch.Generator().manual_seed(0)
    patches = torch.randn(len(boxes), grid[0] * grid[1], WIDTH, generator=gen)
    g = torch.randn(1, WIDTH, generator=gen).expand(len(boxes), WIDTH).contiguous()
    grp = CropFeatures((ch, cw), grid, (0,) * len(boxes), tuple(boxes), patches, g, ())
    return ImageFeatures((size,), (resized,), (grp,))


def timed(fn, frames: int) -> list[float]:
    out = []
    for _ in range(frames):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    p.add_argument("--discs", type=int, default=30)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    size = tuple(args.size)
    inst = find_instances(sequence(args.discs, 1, size)[0], InstanceParams())
    index, boxes, n = inst.index, inst.boxes, inst.count

    def stat(v: list[float]) -> str:
        return f"{np.median(v):.2f} | {np.percentile(v, 99):.2f}"

    print(f"{size[1]} x {size[0]}, short side 336, E = {WIDTH}, {n} instances "
          f"({args.discs} discs), {args.frames} frames, 1 thread; ms\n")
    print("| mode | grid | dense fp32 p50 | p99 | dense fp16 p50 | p99 | pool p50 | p99 "
          "| dense + pool p50 | p99 | bytes fp32 | bytes fp16 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for mode, crop in (("whole", 0), ("sliding", 224)):
        feats = frame_features(size, 336, crop, 112)
        d32 = dense_features(feats, PATCH)[0]
        d16 = dense_features(feats, PATCH, torch.float16)[0]
        t32 = timed(lambda f=feats: dense_features(f, PATCH), args.frames)
        t16 = timed(lambda f=feats: dense_features(f, PATCH, torch.float16), args.frames)
        tpool = timed(lambda d=d32: pool_regions(d, index, n, boxes), args.frames)
        both = timed(lambda f=feats: pool_regions(dense_features(f, PATCH)[0], index, n, boxes),
                     args.frames)
        summary[mode] = float(np.median(both))
        grid = "x".join(map(str, d32.placement.grid))
        print(f"| {mode} | {grid} | {stat(t32)} | {stat(t16)} | {stat(tpool)} | {stat(both)} "
              f"| {d32.nbytes} | {d16.nbytes} |")
    topic_bytes(d32, size, n)
    print(f"\nbench_features: whole_ms={summary['whole']:.2f} "
          f"sliding_ms={summary['sliding']:.2f} instances={n}")
    return 0


def topic_bytes(dense, size: tuple[int, int], instances: int) -> None:
    """Bytes per frame of the topics the features add (docs/ros-interface.md,
    "Language features"), CDR-serialized as they go on the wire and into
    bags (rosbags, with the repository's msg/ definitions)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    from cass_ros.ros.outputs.features import features_fields

    ts = get_typestore(Stores.ROS2_JAZZY)
    msg_dir = Path(__file__).resolve().parents[1] / "msg"
    for name in ("Features", "Instance"):
        ts.register(get_types_from_msg((msg_dir / f"{name}.msg").read_text(),
                                       f"cass_ros/msg/{name}"))
    t = ts.types
    header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=0, nanosec=0),
                                      frame_id="camera_optical")
    print("\n| topic | bytes per frame |\n|---|---|")
    for dtype in ("float16", "float32"):
        f = features_fields(dense, size, "ViT-B-16:openai", "0" * 64, dtype)
        msg = t["cass_ros/msg/Features"](
            header=header, **{k: v for k, v in f.items() if k not in ("data", "image_embedding",
                                                                      "scale", "offset")},
            data=np.frombuffer(f["data"], np.uint8), scale=np.asarray(f["scale"]),
            offset=np.asarray(f["offset"]),
            image_embedding=np.asarray(f["image_embedding"], np.float32))
        n = len(ts.serialize_cdr(msg, "cass_ros/msg/Features"))
        print(f"| /cass/<cam>/features ({dtype}) | {n} |")
    # semantic_inference's FeatureImage, from its field list (docs/ros-interface.md,
    # "semantic_inference"): 16UC1 ids at the image size, one embedding per id
    si = "semantic_inference_msgs/msg/"
    ts.register({**get_types_from_msg("float32[] data", si + "FeatureVector"),
                 **get_types_from_msg("std_msgs/Header header\nint32[] mask_ids\n"
                                      "sensor_msgs/Image image\nFeatureVector[] features",
                                      si + "FeatureImage")})
    image = t["sensor_msgs/msg/Image"](header=header, height=size[0], width=size[1],
                                       encoding="16UC1", is_bigendian=0, step=size[1] * 2,
                                       data=np.zeros(size[0] * size[1] * 2, np.uint8))
    vectors = [t[si + "FeatureVector"](data=np.zeros(WIDTH, np.float32))] * instances
    fimg = t[si + "FeatureImage"](header=header, mask_ids=np.arange(1, instances + 1,
                                                                    dtype=np.int32),
                                  image=image, features=vectors)
    print(f"| semantic/image_raw FeatureImage ({instances} instances) "
          f"| {len(ts.serialize_cdr(fimg, si + 'FeatureImage'))} |")
    print(f"| instance_objects: added by instance_embeddings ({instances} instances) "
          f"| {instances * (4 + 4 * WIDTH)} |")     # a float32[] adds its length and values
    print(f"| /cass/query similarity, per class (32FC1 {size[1]} x {size[0]}) "
          f"| {size[0] * size[1] * 4} |")


if __name__ == "__main__":
    sys.exit(main())
