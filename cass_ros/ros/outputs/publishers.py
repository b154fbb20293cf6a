"""The node's per-camera publishers and the QoS of its outputs
(docs/ros-interface.md, Topics and QoS). The optional groups add theirs in
their own modules (wiring.depth, outputs.mappers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from cass_ros.msg import Features, InstanceArray, ObjectPresenceArray

from ..inputs.cameras import Camera

_RELIABLE = ReliabilityPolicy.RELIABLE
OUT_IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2, reliability=_RELIABLE)
OUT_OBJECTS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=_RELIABLE)
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=_RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
PROMPTS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=_RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)


@dataclass(frozen=True)
class CameraOutputs:
    """A camera's publishers: /cass/<cam>/segmentation, .../color, .../objects;
    .../detections and .../label_info (vision.py) are None without vision_msgs."""

    labels: Publisher
    color: Publisher
    objects: Publisher
    detections: Publisher | None = None
    label_info: Publisher | None = None
    detections_3d: Publisher | None = None   # cameras with depth, when vision_msgs is there
    points: Publisher | None = None          # cameras with depth
    # outputs for mappers (mappers.py), built only while subscribed
    camera_info: Publisher | None = None
    confidence: Publisher | None = None
    mask: Publisher | None = None
    # instances and tracks (instances.py)
    instances: Publisher | None = None
    instance_objects: Publisher | None = None
    # language features (features.py; semantic_inference.py while asked)
    features: Publisher | None = None
    feature_image: Publisher | None = None
    feature_vector: Publisher | None = None


def camera_outputs(node: Node, cam: Camera[Any], vision_off: str | None) -> CameraOutputs:
    """A camera's publishers: /cass/<cam>/segmentation, .../color, .../objects,
    .../instances, .../instance_objects, .../features, and the vision_msgs ones unless
    ``vision_off`` says why they cannot be."""
    base = f"cass/{cam.name}"
    return CameraOutputs(
        labels=node.create_publisher(Image, f"{base}/segmentation", OUT_IMAGE_QOS),
        color=node.create_publisher(Image, f"{base}/segmentation/color", OUT_IMAGE_QOS),
        objects=node.create_publisher(ObjectPresenceArray, f"{base}/objects", OUT_OBJECTS_QOS),
        instances=node.create_publisher(Image, f"{base}/instances", OUT_IMAGE_QOS),
        instance_objects=node.create_publisher(InstanceArray, f"{base}/instance_objects",
                                               OUT_OBJECTS_QOS),
        features=node.create_publisher(Features, f"{base}/features", OUT_IMAGE_QOS),
        **_vision_outputs(node, base, vision_off))


def _vision_outputs(node: Node, base: str, vision_off: str | None) -> dict[str, Any]:
    """The vision_msgs publishers of a camera (vision.py); none without it."""
    if vision_off is not None:
        return {}
    from vision_msgs.msg import Detection2DArray, LabelInfo

    return {"detections": node.create_publisher(Detection2DArray, f"{base}/detections",
                                                OUT_OBJECTS_QOS),
            "label_info": node.create_publisher(LabelInfo, f"{base}/label_info", LATCHED_QOS)}


__all__ = ["CameraOutputs", "camera_outputs", "OUT_IMAGE_QOS", "OUT_OBJECTS_QOS", "LATCHED_QOS",
           "PROMPTS_QOS"]
