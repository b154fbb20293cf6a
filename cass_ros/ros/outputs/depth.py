"""The 3D outputs as messages (docs/ros-interface.md, "Depth to 3D"): the
ObjectPresence 3D fields, vision_msgs/Detection3DArray on
/cass/<cam>/detections_3d and the labelled sensor_msgs/PointCloud2 on
/cass/<cam>/points.

``geometry_fields`` gives plain dictionaries (for rclpy and the bag tool's
rosbags types alike); the ``*_msg`` functions fill rclpy messages.
vision_msgs is optional (no PyPI wheel): ``vision.vision_msgs_missing`` says
why detections_3d is off where it is not installed; ids follow
``vision.detection_id``, as in the 2D detections.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...core.depth import POINT_DTYPE, ObjectGeometry
from ...core.result import SegmentationResult
from .vision import detection_id

_ZERO = {"x": 0.0, "y": 0.0, "z": 0.0}


def _point(v: np.ndarray) -> dict[str, float]:
    return {"x": float(v[0]), "y": float(v[1]), "z": float(v[2])}


def geometry_fields(geometry: ObjectGeometry | None, label: int) -> dict[str, Any]:
    """ObjectPresence's 3D fields of one label (all zero without 3D)."""
    if geometry is None or geometry.counts[label] == 0:
        return {"depth_pixel_count": 0, "centroid": dict(_ZERO), "box_min": dict(_ZERO),
                "box_max": dict(_ZERO)}
    return {"depth_pixel_count": int(geometry.counts[label]),
            "centroid": _point(geometry.centroid[label]),
            "box_min": _point(geometry.box_min[label]),
            "box_max": _point(geometry.box_max[label])}


def detections_3d_msg(result: SegmentationResult, geometry: ObjectGeometry, header: Any,
                      min_pixels: int = 1) -> Any:
    """vision_msgs/Detection3DArray: one Detection3D per present class with
    valid depth; bbox = the percentile box (orientation identity), one
    hypothesis (class name, mean confidence) posed at the centroid."""
    items = [(detection_id(result.prompt_id, o["class_id"]), o["label"],
              float(o["mean_confidence"]), o["class_id"])
             for o in result.objects(min_pixels) if o["present"]]
    return detections_3d_from(items, geometry, header)


def detections_3d_from(items: Sequence[tuple[str, str, float, int]], geometry: ObjectGeometry,
                       header: Any) -> Any:
    """vision_msgs/Detection3DArray of (id, class name, score, row of
    ``geometry``) items; those without valid depth are left out. Serves the
    per-class detections and the per-instance ones (outputs.instances)."""
    from geometry_msgs.msg import Point, Vector3
    from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

    out = Detection3DArray()
    out.header = header
    center, size = geometry.center, geometry.size
    for det_id, label, score, k in items:
        if geometry.counts[k] == 0:
            continue
        det = Detection3D()
        det.header = header
        det.id = det_id
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = label
        hyp.hypothesis.score = float(score)
        hyp.pose.pose.position = Point(**_point(geometry.centroid[k]))
        hyp.pose.pose.orientation.w = 1.0
        det.results = [hyp]
        det.bbox.center.position = Point(**_point(center[k]))
        det.bbox.center.orientation.w = 1.0
        det.bbox.size = Vector3(**_point(size[k]))
        out.detections.append(det)
    return out


def cloud_msg(points: np.ndarray, header: Any) -> Any:
    """sensor_msgs/PointCloud2 of labelled points (core.depth.POINT_DTYPE:
    x, y, z float32, label uint32, confidence float32, rgb float32 packed
    as PCL packs it; 24 bytes a point),
    unorganised (height 1), little endian, dense (only valid depth)."""
    from sensor_msgs.msg import PointCloud2, PointField

    types = {"<f4": PointField.FLOAT32, "<u4": PointField.UINT32}
    msg = PointCloud2()
    msg.header = header
    msg.height = 1
    msg.width = int(points.size)
    msg.fields = [PointField(name=name, offset=POINT_DTYPE.fields[name][1],
                             datatype=types[POINT_DTYPE.fields[name][0].str], count=1)
                  for name in POINT_DTYPE.names]
    msg.is_bigendian = False
    msg.point_step = POINT_DTYPE.itemsize
    msg.row_step = msg.point_step * msg.width
    msg.is_dense = True
    msg.data = array.array("B", np.ascontiguousarray(points, POINT_DTYPE).tobytes())
    return msg


def cloud_points(msg: Any) -> np.ndarray:
    """The points of a cloud written by ``cloud_msg`` (tests, tools)."""
    return np.frombuffer(bytes(msg.data), POINT_DTYPE, count=msg.width * msg.height)


__all__ = ["geometry_fields", "detections_3d_msg", "detections_3d_from",
           "cloud_msg", "cloud_points"]
