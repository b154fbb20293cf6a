"""The node's depth subscriptions and 3D publishers (docs/ros-interface.md,
"Depth to 3D"), created next to the image subscriptions when
``depth_topics`` names a depth image for at least one camera.

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

from .cameras import Camera
from .depth_input import DepthInput
from .vision import vision_msgs_missing
from .frame_worker import CameraOutputs
from .params import RuntimeParams

DETECTIONS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                            reliability=ReliabilityPolicy.RELIABLE)
CLOUD_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2,
                       reliability=ReliabilityPolicy.RELIABLE)


def attach(node: Node, runtime: RuntimeParams, cameras: Sequence[Camera[Any]],
           outputs: Sequence[CameraOutputs], qos: QoSProfile
           ) -> tuple[DepthInput | None, list[CameraOutputs]]:
    """Subscribe the depth inputs (``qos``: the image subscriptions') and
    add the 3D publishers to the cameras' outputs. (None, outputs) while
    depth_topics is empty."""
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
        depth_topic, info_topic = pair
        node.create_subscription(Image, depth_topic,
                                 lambda m, i=cam.index: depth.offer_depth(i, m), qos)
        node.create_subscription(CameraInfo, info_topic,
                                 lambda m, i=cam.index: depth.offer_info(i, m), qos)
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
