"""The node's depth subscriptions and 3D publishers (docs/ros-interface.md,
"Depth to 3D"), when ``depth_topics`` names a depth image for at least
one camera: the publishers with the node's other outputs (configure), the
subscriptions next to the image subscriptions (activate).

Per camera with depth: the depth image and its camera_info go into a
DepthInput slot; /cass/<cam>/detections_3d (vision_msgs/Detection3DArray,
when vision_msgs is installed; else one warning says why it is off) and
/cass/<cam>/points (sensor_msgs/PointCloud2) are published by the frame
worker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from ..inputs.cameras import Camera
from ..inputs.depth import DepthInput
from ..outputs.publishers import CameraOutputs
from ..outputs.vision import vision_msgs_missing
from ..params import RuntimeParams

DETECTIONS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                            reliability=ReliabilityPolicy.RELIABLE)
CLOUD_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2,
                       reliability=ReliabilityPolicy.RELIABLE)


def attach(node: Node, runtime: RuntimeParams, cameras: Sequence[Camera[Any]],
           outputs: Sequence[CameraOutputs]) -> tuple[DepthInput | None, list[CameraOutputs]]:
    """The depth slots, and the 3D publishers added to the cameras' outputs
    (at configure); ``subscribe`` adds the depth subscriptions (at
    activate). (None, outputs) while depth_topics is empty."""
    inputs = runtime.depth_inputs()
    if not any(inputs):
        return None, list(outputs)
    depth = DepthInput(inputs)
    missing = vision_msgs_missing()
    if missing is not None:
        node.get_logger().warning(f"/cass/<cam>/detections_3d is off: {missing}; the objects "
                                  "3D fields and /cass/<cam>/points still work")
    new_outputs = []
    for cam, out, pair in zip(cameras, outputs, inputs):
        if pair is None:
            new_outputs.append(out)
            continue
        base = f"cass/{cam.name}"
        detections = None
        if missing is None:
            from vision_msgs.msg import Detection3DArray

            detections = node.create_publisher(Detection3DArray, f"{base}/detections_3d",
                                               DETECTIONS_QOS)
        new_outputs.append(dataclasses.replace(
            out, detections_3d=detections,
            points=node.create_publisher(PointCloud2, f"{base}/points", CLOUD_QOS)))
    node.get_logger().info("depth to 3D: " + ", ".join(
        f"{c.name} <- {p[0]} + {p[1]}" for c, p in zip(cameras, inputs) if p))
    return depth, new_outputs


def subscribe(node: Node, depth: DepthInput, qos: QoSProfile) -> None:
    """Each depth camera's image and camera_info subscriptions (``qos``: the
    image subscriptions')."""
    for index, cam in enumerate(depth.cameras):
        if cam is None:
            continue
        node.create_subscription(Image, cam.depth_topic,
                                 lambda m, i=index: depth.offer_depth(i, m), qos)
        node.create_subscription(CameraInfo, cam.info_topic,
                                 lambda m, i=index: depth.offer_info(i, m), qos)
