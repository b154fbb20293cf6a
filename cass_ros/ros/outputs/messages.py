"""SegmentationResult -> the node's output messages (rclpy message types).

``objects_fields`` and ``class_table_fields`` are plain dictionaries with
the message field names, so other writers (the bag tool's rosbags types)
can build the same messages; the ``*_msg`` functions fill rclpy messages.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...core.depth import ObjectGeometry
from ...core.prompts import PromptSet
from ...core.result import SegmentationResult
from ...core.visualize import palette
from ..inputs.image_conversion import labels_to_fields, rgb_to_fields
from .depth import geometry_fields


def objects_fields(result: SegmentationResult, min_pixels: int = 1,
                   geometry: ObjectGeometry | None = None) -> list[dict[str, Any]]:
    """One ObjectPresence per prompted class, as field dictionaries (bbox:
    RegionOfInterest fields; centroid, box_min, box_max: Point fields, zero
    without ``geometry``). Built from ``result.objects`` so the JSON
    output and the messages cannot disagree."""
    out = []
    for obj in result.objects(min_pixels):
        x, y, w, h = obj["bbox"]
        out.append({
            "class_id": obj["class_id"], "label": obj["label"],
            "presence": obj["presence"], "present": obj["present"],
            "pixel_count": obj["pixel_count"], "area_fraction": obj["area_fraction"],
            "mean_confidence": obj["mean_confidence"],
            "bbox": {"x_offset": x, "y_offset": y, "width": w, "height": h,
                     "do_rectify": False},
            **geometry_fields(geometry, obj["class_id"]),
        })
    return out


POINT_FIELDS = ("centroid", "box_min", "box_max")   # the geometry_msgs/Point fields


def class_table_fields(prompt_set: PromptSet, prompt_id: int) -> dict[str, Any]:
    """ClassTable fields (without header) of a prompt set."""
    names = prompt_set.class_names
    return {
        "prompt_id": int(prompt_id),
        "class_names": list(names),
        "synonyms": ["|".join(group) for group in prompt_set.synonyms],
        "colors": palette(len(names)).reshape(-1).tolist(),
    }


def _image_msg(fields: dict[str, Any], header: Any) -> Any:
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header = header
    msg.height = fields["height"]
    msg.width = fields["width"]
    msg.encoding = fields["encoding"]
    msg.is_bigendian = fields["is_bigendian"]
    msg.step = fields["step"]
    # array('B') is taken as is by the generated setter; a bytes object
    # would be checked element by element.
    msg.data = array.array("B", fields["data"])
    return msg


def label_image_msg(result: SegmentationResult, header: Any) -> Any:
    """sensor_msgs/Image, mono8 (mono16 beyond 255 classes), ``header`` copied."""
    return _image_msg(labels_to_fields(result.labels), header)


def float_image_msg(values: np.ndarray, header: Any) -> Any:
    """sensor_msgs/Image 32FC1 (little endian) of (H, W) float values."""
    data = np.ascontiguousarray(values, "<f4")
    h, w = data.shape
    return _image_msg({"height": h, "width": w, "encoding": "32FC1", "is_bigendian": 0,
                       "step": w * 4, "data": data.tobytes()}, header)


def mono8_msg(values: np.ndarray, header: Any) -> Any:
    """sensor_msgs/Image mono8 of (H, W) uint8 values (a mask)."""
    data = np.ascontiguousarray(values, np.uint8)
    h, w = data.shape
    return _image_msg({"height": h, "width": w, "encoding": "mono8", "is_bigendian": 0,
                       "step": w, "data": data.tobytes()}, header)


def color_image_msg(rgb: np.ndarray, header: Any) -> Any:
    """sensor_msgs/Image rgb8 of an overlay."""
    return _image_msg(rgb_to_fields(rgb), header)


def objects_msg(result: SegmentationResult, header: Any, min_pixels: int = 1,
                inference_ms: float = 0.0, geometry: ObjectGeometry | None = None) -> Any:
    """cass_ros/ObjectPresenceArray for one result, ``header`` copied; the
    3D fields from ``geometry`` (zero without)."""
    from geometry_msgs.msg import Point
    from sensor_msgs.msg import RegionOfInterest

    from cass_ros.msg import ObjectPresence, ObjectPresenceArray

    msg = ObjectPresenceArray()
    msg.header = header
    msg.class_names = list(result.class_names)
    msg.prompt_id = int(result.prompt_id)
    msg.inference_ms = float(inference_ms)
    objs = []
    for f in objects_fields(result, min_pixels, geometry):
        o = ObjectPresence()
        o.class_id = f["class_id"]
        o.label = f["label"]
        o.presence = f["presence"]
        o.present = f["present"]
        o.pixel_count = f["pixel_count"]
        o.area_fraction = f["area_fraction"]
        o.mean_confidence = f["mean_confidence"]
        o.bbox = RegionOfInterest(**f["bbox"])
        o.depth_pixel_count = f["depth_pixel_count"]
        o.centroid, o.box_min, o.box_max = (Point(**f[k]) for k in POINT_FIELDS)
        objs.append(o)
    msg.objects = objs
    return msg


def class_table_msg(prompt_set: PromptSet, prompt_id: int, header: Any) -> Any:
    """cass_ros/ClassTable of the prompt set in force."""
    from cass_ros.msg import ClassTable

    f = class_table_fields(prompt_set, prompt_id)
    msg = ClassTable()
    msg.header = header
    msg.prompt_id = f["prompt_id"]
    msg.class_names = f["class_names"]
    msg.synonyms = f["synonyms"]
    msg.colors = array.array("B", f["colors"])
    return msg


def image_from_rgb(rgb: np.ndarray, encoding: str, header: Any, step_padding: int = 0) -> Any:
    """An Image message in ``encoding`` showing ``rgb`` (tests, benchmarks)."""
    from ..inputs.image_conversion import fields_from_rgb

    return _image_msg(fields_from_rgb(rgb, encoding, step_padding), header)


def labels_from_msg(msg: Any) -> np.ndarray:
    """The label array of a mono8/mono16 label image message (H, W)."""
    dtype = np.dtype(">u2" if msg.is_bigendian else "<u2") if msg.encoding == "mono16" \
        else np.dtype(np.uint8)
    buf = np.frombuffer(msg.data, np.uint8)
    rows = buf[: msg.height * msg.step].reshape(msg.height, msg.step)
    rows = rows[:, : msg.width * dtype.itemsize]
    return np.ascontiguousarray(rows).view(dtype).reshape(msg.height, msg.width)


__all__: Sequence[str] = (
    "objects_fields", "class_table_fields", "label_image_msg", "color_image_msg",
    "objects_msg", "class_table_msg", "image_from_rgb", "labels_from_msg",
)
