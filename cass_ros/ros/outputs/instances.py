"""Instances and tracks as the node's and cass_bag's outputs
(docs/ros-interface.md, "Instances and tracks"): the instance image
(/cass/<cam>/instances, 32SC1, ``class_id << 16 | instance`` with instance =
track id % 65535 + 1, semantic_inference's layout), the instance list
(/cass/<cam>/instance_objects, cass_ros/InstanceArray) and the vision_msgs
detections per track (``detections_per: instance``).

The instances come from core.objects (find_instances on the label image,
with depth at the depth image's size, as the per-class 3D), the tracks from
the camera's Tracker, kept in the one per-source registry
(core.temporal.TemporalStreams). ``*_fields`` are plain dictionaries (for
rclpy and the bag tool's rosbags types alike); ``*_msg`` fill rclpy messages.
"""

from __future__ import annotations

import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ...core.depth import Intrinsics, nearest_resize
from ...core.objects.instances import Instances, find_instances
from ...core.objects.tracks import Track, Tracker
from ...core.result import SegmentationResult
from .depth import geometry_fields
from .vision import detection_fields

if TYPE_CHECKING:   # torch: loaded by the segmenter, not by this module
    from ...core.queries.dense import DenseFeatures

INSTANCE_MODULO = 65535     # instance bits: track id % 65535 + 1 (0 = no instance)


@dataclass(frozen=True)
class FrameObjects:
    """One frame's instances and the tracks published for it."""

    instances: Instances
    tracks: list[Track]          # published tracks (seen this frame, min_hits reached), by id
    index: np.ndarray            # (H, W) int32 instance map at the label image's size
    embeddings: np.ndarray | None = None   # (count, E) float32 unit pooled features; row i - 1: instance i


@dataclass(frozen=True)
class DepthForInstances:
    """A frame's matched depth, as the per-class 3D uses it."""

    depth_m: np.ndarray          # (Hd, Wd) float32 metres
    intrinsics: Intrinsics
    labels: np.ndarray           # (Hd, Wd) the labels at the depth image's size


def frame_objects(result: SegmentationResult, runtime: Any, tracker: Tracker, stamp_s: float,
                  depth: DepthForInstances | None, trim_percent: float,
                  dense: DenseFeatures | None = None) -> FrameObjects:
    """The instances of ``result`` (with depth: cut and summarised in 3D at
    the depth image's size) and the tracker's update with them. With the
    frame's ``dense`` features, each instance's pooled embedding
    (core.queries.pooling.pool_regions over its pixels, at the size it was
    cut at), handed to the tracker for re-identification (docs/algorithm.md
    11) and kept for the outputs that carry it."""
    params = runtime.instance_params()
    if depth is None:
        instances = find_instances(result.labels, params, result.confidence)
    else:
        conf = (None if result.confidence is None
                else nearest_resize(result.confidence, depth.labels.shape))
        instances = find_instances(depth.labels, params, conf, depth.depth_m, depth.intrinsics,
                                   trim_percent)
    embeddings = None
    if dense is not None:
        from ...core.queries.pooling import pool_regions

        embeddings = pool_regions(dense, instances.index, instances.count,
                                  instances.boxes).cpu().numpy()               # (count, E)
    tracks = tracker.update(instances, result.prompt_id, stamp_s, embeddings)
    index = instances.index
    if index.shape != result.labels.shape:
        index = nearest_resize(index, result.labels.shape)
    return FrameObjects(instances, [t for t in tracks if t.published], index, embeddings)


def instance_image(labels: np.ndarray, objs: FrameObjects) -> np.ndarray:
    """(H, W) int32: ``label << 16 | (track id % 65535 + 1)`` on the pixels of
    published tracks' instances, ``label << 16`` elsewhere."""
    bits = np.zeros(objs.instances.count + 1, np.int32)        # per instance index
    for t in objs.tracks:
        bits[t.instance] = t.id % INSTANCE_MODULO + 1
    return (labels.astype(np.int32) << 16) | bits[objs.index]


def instance_image_fields(labels: np.ndarray, objs: FrameObjects) -> dict[str, Any]:
    """Fields of the 32SC1 (little endian) sensor_msgs/Image."""
    data = np.ascontiguousarray(instance_image(labels, objs), "<i4")
    h, w = data.shape
    return {"height": h, "width": w, "encoding": "32SC1", "is_bigendian": 0, "step": w * 4,
            "data": data.tobytes()}


def instance_fields(objs: FrameObjects, class_names: list[str],
                    with_embeddings: bool = False) -> list[dict[str, Any]]:
    """One cass_ros/Instance per published track, as field dictionaries;
    ``embedding`` (float32 array) is the instance's pooled embedding with
    ``with_embeddings`` (instance_embeddings: true), empty otherwise."""
    inst = objs.instances
    none = np.zeros(0, np.float32)
    if with_embeddings and objs.embeddings is None:
        raise ValueError("instance embeddings asked for a frame without dense features")
    out = []
    for t in objs.tracks:
        i = t.instance
        x, y, w, h = (int(v) for v in inst.boxes[i - 1])
        out.append({
            "id": int(t.id), "class_id": int(t.class_id), "label": class_names[t.class_id],
            "pixel_count": int(inst.pixel_counts[i - 1]),
            "mean_confidence": float(inst.mean_confidence[i - 1]),
            "bbox": {"x_offset": x, "y_offset": y, "width": w, "height": h,
                     "do_rectify": False},
            "age": int(t.age), "frames_since_seen": int(t.missed),
            **geometry_fields(inst.geometry, i),
            "embedding": (np.ascontiguousarray(objs.embeddings[i - 1], np.float32)
                          if with_embeddings else none),
        })
    return out


def instance_detection_fields(objs: FrameObjects, class_names: list[str]
                              ) -> list[dict[str, Any]]:
    """One vision_msgs Detection2D (fields, without header) per published
    track: id = the track id (vision_msgs' tracking id), the instance's box,
    class name and mean confidence."""
    return [detection_fields(str(f["id"]), f["label"], f["mean_confidence"],
                             (f["bbox"]["x_offset"], f["bbox"]["y_offset"], f["bbox"]["width"],
                              f["bbox"]["height"]))
            for f in instance_fields(objs, class_names)]


def instances_msg(labels: np.ndarray, objs: FrameObjects, header: Any) -> Any:
    """sensor_msgs/Image 32SC1 of ``instance_image``."""
    from sensor_msgs.msg import Image

    f = instance_image_fields(labels, objs)
    msg = Image(header=header, height=f["height"], width=f["width"], encoding=f["encoding"],
                is_bigendian=f["is_bigendian"], step=f["step"])
    msg.data = array.array("B", f["data"])
    return msg


def instance_array_msg(result: SegmentationResult, objs: FrameObjects, header: Any,
                       with_embeddings: bool = False) -> Any:
    """cass_ros/InstanceArray of the published tracks."""
    from geometry_msgs.msg import Point
    from sensor_msgs.msg import RegionOfInterest

    from cass_ros.msg import Instance, InstanceArray

    msg = InstanceArray(header=header, prompt_id=int(result.prompt_id),
                        class_names=list(result.class_names))
    items = []
    for f in instance_fields(objs, result.class_names, with_embeddings):
        f = dict(f, bbox=RegionOfInterest(**f["bbox"]),
                 **{k: Point(**f[k]) for k in ("centroid", "box_min", "box_max")},
                 embedding=array.array("f", f["embedding"].tobytes()))
        items.append(Instance(**f))
    msg.instances = items
    return msg


__all__ = ["FrameObjects", "DepthForInstances", "frame_objects", "instance_image",
           "instance_image_fields", "instance_fields", "instance_detection_fields",
           "instances_msg", "instance_array_msg", "INSTANCE_MODULO"]
