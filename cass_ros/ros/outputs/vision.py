"""The standard vision_msgs outputs (docs/ros-interface.md, "Standard
messages"): per camera a vision_msgs/Detection2DArray with one detection per
present class, and a latched vision_msgs/LabelInfo with the class map of the
label image.

``detections_fields`` and ``label_info_fields`` are plain dictionaries with
the message field names (as messages.objects_fields), so the bag tool can
write the same messages with rosbags; the ``*_msg`` functions fill rclpy
messages. vision_msgs is imported only inside them: the package is a
dependency on a robot, but a workspace may lack it, and then the node runs
without these two topics (``vision_msgs_missing`` says why).

Conventions (docs/ros-interface.md, "Standard messages"):

- one Detection2D per class that is ``present`` in ``result.objects``
  (the same rule and numbers as /cass/<cam>/objects), in label order;
- bbox: the class's tight pixel box (x, y, w, h) of the label image in
  pixel-edge coordinates (pixel (0, 0) covers [0, 1) x [0, 1)), so the
  centre is (x + w/2, y + h/2), size_x = w, size_y = h, theta = 0;
- results: one hypothesis, class_id = the class name (its first prompted
  name), score = the class's mean confidence; pose left at zero;
- id = "<prompt_id>:<class_id>" (label value): the same class keeps its id
  from frame to frame while its prompt set is in force, and the prompt_id
  ties the detection to /cass/classes;
- LabelInfo: class_map = every label value 0 .. K-1 with its name
  (0 = background), threshold = the prob_threshold in force.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from ...core.prompts import PromptSet
from ...core.result import SegmentationResult

DETECTIONS_TYPE = "vision_msgs/msg/Detection2DArray"
LABEL_INFO_TYPE = "vision_msgs/msg/LabelInfo"


def vision_msgs_missing() -> str | None:
    """None when vision_msgs' Python messages import, else a one-line reason
    that says how to get them. Not cached: a test may hide the package."""
    try:
        importlib.import_module("vision_msgs.msg")
    except ImportError as e:
        return (f"vision_msgs is not importable ({e}); install the ROS package "
                "ros-<distro>-vision-msgs (in this repository: `make build` with "
                "../shared/ros2 present), then source the workspace again")
    return None


def detection_id(prompt_id: int, class_id: int) -> str:
    """Detection2D.id of a class: "<prompt_id>:<class_id>"."""
    return f"{int(prompt_id)}:{int(class_id)}"


def detections_fields(result: SegmentationResult, min_pixels: int = 1) -> list[dict[str, Any]]:
    """One Detection2D (without header) per present class, as field
    dictionaries. Built from ``result.objects`` so the objects message and
    the detections cannot disagree on presence, box or confidence."""
    return [detection_fields(detection_id(result.prompt_id, obj["class_id"]), obj["label"],
                             obj["mean_confidence"], obj["bbox"])
            for obj in result.objects(min_pixels) if obj["present"]]


def detection_fields(det_id: str, label: str, score: float, box: Sequence[int]
                     ) -> dict[str, Any]:
    """One Detection2D (without header) as field dictionaries: a pixel box
    (x, y, w, h) in pixel-edge coordinates, one hypothesis (label, score)."""
    x, y, w, h = (int(v) for v in box)
    return {
        "results": [{"hypothesis": {"class_id": label, "score": float(score)}}],
        "bbox": {"center": {"position": {"x": x + w / 2.0, "y": y + h / 2.0}, "theta": 0.0},
                 "size_x": float(w), "size_y": float(h)},
        "id": det_id,
    }


def label_info_fields(prompt_set: PromptSet, prob_threshold: float) -> dict[str, Any]:
    """LabelInfo fields (without header): every label value with its name."""
    return {
        "class_map": [{"class_id": k, "class_name": name}
                      for k, name in enumerate(prompt_set.class_names)],
        "threshold": float(prob_threshold),
    }


def detections_msg(result: SegmentationResult, header: Any, min_pixels: int = 1) -> Any:
    """vision_msgs/Detection2DArray for one result; ``header`` (the image's)
    on the array and on every detection. The ids carry ``result.prompt_id``."""
    return detections_msg_from(detections_fields(result, min_pixels), header)


def detections_msg_from(fields: Sequence[dict[str, Any]], header: Any) -> Any:
    """vision_msgs/Detection2DArray of Detection2D field dictionaries (per
    class: ``detections_fields``; per track: instances.py)."""
    from vision_msgs.msg import BoundingBox2D, Detection2D, Detection2DArray, ObjectHypothesisWithPose

    msg = Detection2DArray()
    msg.header = header
    detections = []
    for f in fields:
        d = Detection2D()
        d.header = header
        d.id = f["id"]
        box = f["bbox"]
        bbox = BoundingBox2D()
        bbox.center.position.x = box["center"]["position"]["x"]
        bbox.center.position.y = box["center"]["position"]["y"]
        bbox.center.theta = box["center"]["theta"]
        bbox.size_x, bbox.size_y = box["size_x"], box["size_y"]
        d.bbox = bbox
        hyps = []
        for r in f["results"]:
            hyp = ObjectHypothesisWithPose()
            hyp.hypothesis.class_id = r["hypothesis"]["class_id"]
            hyp.hypothesis.score = r["hypothesis"]["score"]
            hyps.append(hyp)
        d.results = hyps
        detections.append(d)
    msg.detections = detections
    return msg


def label_info_msg(prompt_set: PromptSet, header: Any, prob_threshold: float) -> Any:
    """vision_msgs/LabelInfo of a prompt set (the class map of the label image)."""
    from vision_msgs.msg import LabelInfo, VisionClass

    f = label_info_fields(prompt_set, prob_threshold)
    msg = LabelInfo()
    msg.header = header
    msg.class_map = [VisionClass(class_id=c["class_id"], class_name=c["class_name"])
                     for c in f["class_map"]]
    msg.threshold = f["threshold"]
    return msg


__all__: Sequence[str] = (
    "vision_msgs_missing", "detection_id", "detection_fields", "detections_fields", "label_info_fields",
    "detections_msg", "detections_msg_from", "label_info_msg", "DETECTIONS_TYPE", "LABEL_INFO_TYPE",
)
