"""The node's outputs for mapping stacks (docs/ros-interface.md, "Outputs for
mappers"): per camera /cass/<cam>/camera_info (the camera's CameraInfo for
the label image: its header, K and P scaled to its size), /cass/<cam>/confidence
(32FC1, the probability of each pixel's own label) and /cass/<cam>/mask
(mono8, 255 on the ``mask_classes``: nvblox's convention). Each is built
only while subscribed. The publishers come with the node's other outputs
(configure), the camera_info subscriptions with the image subscriptions
(activate); the frame worker calls ``publish`` after the label image.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

from rclpy.impl.rcutils_logger import RcutilsLogger
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from ...core.mapping import class_mask, mask_label_ids, scale_camera_matrices
from ...core.prompt_session import ActivePrompts
from ...core.result import SegmentationResult
from ..inputs.cameras import Camera
from ..params import RuntimeParams
from .messages import float_image_msg, mono8_msg
from .publishers import CameraOutputs


class CameraInfos:
    """The newest CameraInfo of each camera (written by the executor's
    callbacks, read by the inference thread)."""

    def __init__(self, topics: Sequence[str]) -> None:
        self.topics = list(topics)
        self._latest: list[Any] = [None] * len(self.topics)
        self._lock = threading.Lock()

    def offer(self, index: int, msg: Any) -> None:
        with self._lock:
            self._latest[index] = msg

    def latest(self, index: int) -> Any:
        with self._lock:
            return self._latest[index]


def attach(node: Node, runtime: RuntimeParams, cameras: Sequence[Camera[Any]],
           outputs: Sequence[CameraOutputs], qos: QoSProfile
           ) -> tuple[CameraInfos, list[CameraOutputs]]:
    """The camera_info slots, and the three publishers added to each
    camera's outputs (``qos``: the label image's)."""
    infos = CameraInfos(runtime.image_info_topics())
    new_outputs = []
    for cam, out in zip(cameras, outputs):
        base = f"cass/{cam.name}"
        new_outputs.append(dataclasses.replace(
            out, camera_info=node.create_publisher(CameraInfo, f"{base}/camera_info", qos),
            confidence=node.create_publisher(Image, f"{base}/confidence", qos),
            mask=node.create_publisher(Image, f"{base}/mask", qos)))
    return infos, new_outputs


# Best effort matches drivers that publish camera_info reliable and those
# that publish it best effort; one is enough, the newest is kept.
INFO_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                      reliability=ReliabilityPolicy.BEST_EFFORT)


def subscribe(node: Node, infos: CameraInfos) -> None:
    """Each camera's camera_info subscription."""
    for index, topic in enumerate(infos.topics):
        node.create_subscription(CameraInfo, topic, lambda m, i=index: infos.offer(i, m),
                                 INFO_QOS)


def _listened(pub: Any) -> bool:
    return pub is not None and pub.get_subscription_count() > 0


def publish(out: CameraOutputs, header: Any, result: SegmentationResult,
            active: ActivePrompts, runtime: RuntimeParams, infos: CameraInfos, index: int,
            log: RcutilsLogger) -> None:
    """The three outputs of camera ``index``'s frame, each only while
    someone listens; camera_info from the camera's newest CameraInfo."""
    if _listened(out.camera_info):
        info = infos.latest(index)
        if info is None:
            log.warning(f"{out.camera_info.topic_name}: no CameraInfo received on "
                        f"{infos.topics[index]} yet (parameter camera_info_topics)",
                        throttle_duration_sec=5.0)
        else:
            out.camera_info.publish(camera_info_msg(info, header, result.size))
    if _listened(out.confidence) and result.confidence is not None:
        out.confidence.publish(float_image_msg(result.confidence, header))
    if runtime.mask_classes and _listened(out.mask):
        ids, missing = mask_label_ids(active.prompt_set.synonyms, runtime.mask_classes)
        if missing:
            log.warning(f"mask_classes {missing} name no class of prompt_id "
                        f"{active.prompt_id}", throttle_duration_sec=10.0)
        out.mask.publish(mono8_msg(class_mask(result.labels, ids, len(active.class_names)),
                                   header))


def camera_info_msg(info: Any, header: Any, size: tuple[int, int]) -> Any:
    """``info`` for an image of ``size`` (height, width) under ``header``:
    K and P scaled when the size differs from the CameraInfo's (an unset
    0 x 0 CameraInfo is taken as being of ``size``)."""
    out = CameraInfo()
    out.header = header
    out.distortion_model = info.distortion_model
    out.d = list(info.d)
    out.r = list(info.r)
    out.binning_x, out.binning_y = info.binning_x, info.binning_y
    src = (int(info.height), int(info.width))
    if src == size or 0 in src:
        out.k, out.p, out.roi = list(info.k), list(info.p), info.roi
    else:
        out.k, out.p = scale_camera_matrices(info.k, info.p, src, size)
        # the label image is the whole (resized) image: no region of interest
    out.height, out.width = size
    return out


__all__ = ["CameraInfos", "attach", "subscribe", "publish", "camera_info_msg"]
