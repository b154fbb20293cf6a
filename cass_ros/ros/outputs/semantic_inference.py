"""semantic_inference's open-set contract, for Hydra, Khronos and Clio
(docs/ros-interface.md, "semantic_inference (Hydra, Khronos, Clio)").

With ``semantic_inference: true`` (and ``instances: true``) and the message
package ``semantic_inference_msgs`` in the workspace, each camera publishes
what MIT-SPARK's open-set node publishes, under the names Hydra-ROS's image
receiver subscribes to (relative to the camera's namespace, so remappable):

- ``cass/<cam>/semantic/image_raw``: semantic_inference_msgs/FeatureImage,
  a 16UC1 image of instance ids (track id % 65535 + 1, the instance bits of
  /cass/<cam>/instances; 0: no published instance) at the depth image's
  size when the frame's depth matched (Hydra refuses other sizes), else at
  the label image's; ``mask_ids`` those ids and ``features`` each one's
  pooled CLIP embedding, in the same order;
- ``cass/<cam>/semantic/feature``: semantic_inference_msgs/FeatureVectorStamped,
  the image-level embedding (core.queries.dense.DenseFeatures.image).

The EncodeFeature service is services/encode_feature.py. ``*_fields`` are
plain dictionaries (for rclpy and cass_bag's rosbags types alike); ``*_msg``
fill rclpy messages. The package is never a dependency of cass_ros: it is
looked up when the node is configured, and its absence is one log line.
"""

from __future__ import annotations

import array
import dataclasses
import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .instances import INSTANCE_MODULO, FrameObjects

if TYPE_CHECKING:   # torch loads with the models; rclpy only where a node publishes
    from rclpy.node import Node

    from ...core.queries.dense import DenseFeatures
    from ..inputs.cameras import Camera
    from ..params import RuntimeParams
    from .publishers import CameraOutputs

# Hydra-ROS (hydra_ros/src/input/image_receiver.cpp) subscribes to these two
# relative to a sensor's namespace, beside rgb/image_raw and
# depth_registered/image_rect; semantic_inference's open_set_node publishes
# them under its own name.
FEATURE_IMAGE_TOPIC = "semantic/image_raw"
FEATURE_VECTOR_TOPIC = "semantic/feature"
PACKAGE = "semantic_inference_msgs"
HOW_TO_GET = ("build semantic_inference_msgs from source beside cass_ros "
              "(https://github.com/MIT-SPARK/semantic_inference, folder semantic_inference_msgs: "
              "colcon build --packages-select semantic_inference_msgs) and source its "
              "install/setup.bash before starting the node")


def semantic_inference_missing() -> str | None:
    """None when semantic_inference_msgs' messages and service import with
    their type support, else a one-line reason that says how to get them.
    Not cached: a test may hide the package."""
    try:
        from rclpy.type_support import check_for_type_support

        msg = importlib.import_module(f"{PACKAGE}.msg")
        srv = importlib.import_module(f"{PACKAGE}.srv")
        for t in (msg.FeatureImage, msg.FeatureVectorStamped, srv.EncodeFeature):
            check_for_type_support(t)   # the generated C libraries load, not only the Python
    except Exception as e:  # noqa: BLE001 - any failure means the same: not usable
        why = " ".join(f"{type(e).__name__}: {e}".split())
        return f"{PACKAGE} is not usable ({why}); {HOW_TO_GET}"
    return None


def instance_ids(objs: FrameObjects) -> np.ndarray:
    """(count + 1,) int32 per instance index: the published id (track id %
    65535 + 1) of its track, 0 for index 0 and unpublished instances. The
    same ids as /cass/<cam>/instances (outputs/instances.instance_image)."""
    ids = np.zeros(objs.instances.count + 1, np.int32)
    for t in objs.tracks:
        ids[t.instance] = t.id % INSTANCE_MODULO + 1
    return ids


def feature_image_fields(objs: FrameObjects) -> dict[str, Any]:
    """FeatureImage fields without header: ``image`` (sensor_msgs/Image
    fields, 16UC1 little endian, at ``objs.instances.index``'s size: the
    depth image's when depth matched), ``mask_ids`` (the published tracks'
    ids, by track id) and ``features`` (one {"data": (E,) float32} per id,
    the instance's pooled embedding). Raises ValueError without embeddings:
    Hydra requires as many features as mask ids."""
    if objs.embeddings is None:
        raise ValueError("the frame's instances have no embeddings")
    ids = instance_ids(objs)
    image = np.ascontiguousarray(ids[objs.instances.index], "<u2")  # ids <= 65535 fit
    h, w = image.shape
    emb = np.asarray(objs.embeddings, np.float32)
    return {
        "mask_ids": [int(ids[t.instance]) for t in objs.tracks],
        "image": {"height": h, "width": w, "encoding": "16UC1", "is_bigendian": 0,
                  "step": w * 2, "data": image.tobytes()},
        "features": [{"data": np.ascontiguousarray(emb[t.instance - 1])} for t in objs.tracks],
    }


def feature_vector_fields(vec: Any) -> dict[str, Any]:
    """FeatureVectorStamped fields without header: ``feature`` = {"data":
    (E,) float32} of ``vec`` (a torch tensor or array, e.g. DenseFeatures.image;
    float16 is widened)."""
    if hasattr(vec, "detach"):      # torch, imported by whoever made the tensor
        vec = vec.detach().float().cpu().numpy()
    return {"feature": {"data": np.ascontiguousarray(np.asarray(vec, np.float32).reshape(-1))}}


def _vector_msg(data: np.ndarray) -> Any:
    from semantic_inference_msgs.msg import FeatureVector

    # array('f') is the generated setter's fast path; a numpy array is refused
    return FeatureVector(data=array.array("f", np.asarray(data, "=f4").tobytes()))


def feature_image_msg(objs: FrameObjects, header: Any) -> Any:
    """semantic_inference_msgs/FeatureImage of ``feature_image_fields``."""
    from semantic_inference_msgs.msg import FeatureImage
    from sensor_msgs.msg import Image

    f = feature_image_fields(objs)
    img = f["image"]
    image = Image(header=header, height=img["height"], width=img["width"],
                  encoding=img["encoding"], is_bigendian=img["is_bigendian"], step=img["step"])
    image.data = array.array("B", img["data"])
    return FeatureImage(header=header, mask_ids=array.array("i", f["mask_ids"]), image=image,
                        features=[_vector_msg(v["data"]) for v in f["features"]])


def feature_vector_msg(vec: Any, header: Any) -> Any:
    """semantic_inference_msgs/FeatureVectorStamped of ``feature_vector_fields``."""
    from semantic_inference_msgs.msg import FeatureVectorStamped

    return FeatureVectorStamped(header=header,
                                feature=_vector_msg(feature_vector_fields(vec)["feature"]["data"]))


def attach(node: Node, runtime: RuntimeParams, cameras: Sequence[Camera[Any]],
           outputs: Sequence[CameraOutputs]) -> list[CameraOutputs]:
    """Each camera's outputs with its two publishers, when
    ``semantic_inference`` is on and the package is usable; unchanged
    otherwise (on but missing: one warning says why and how to get it)."""
    if not runtime.semantic_inference:
        return list(outputs)
    why = semantic_inference_missing()
    if why is not None:
        node.get_logger().warning(f"semantic_inference: true, but its outputs are off: {why}")
        return list(outputs)
    from semantic_inference_msgs.msg import FeatureImage, FeatureVectorStamped

    from .publishers import OUT_IMAGE_QOS

    # Hydra subscribes reliable or best effort: the label image's reliable
    # keep-last QoS serves both
    return [dataclasses.replace(
        out,
        feature_image=node.create_publisher(FeatureImage, f"cass/{cam.name}/{FEATURE_IMAGE_TOPIC}",
                                            OUT_IMAGE_QOS),
        feature_vector=node.create_publisher(FeatureVectorStamped,
                                             f"cass/{cam.name}/{FEATURE_VECTOR_TOPIC}",
                                             OUT_IMAGE_QOS))
        for cam, out in zip(cameras, outputs)]


def _listened(pub: Any) -> bool:
    return pub is not None and pub.get_subscription_count() > 0


def semantic_listened(out: CameraOutputs) -> bool:
    """Whether a camera's semantic_inference outputs exist (asked for, the
    package there) and someone listens: only then are the frame's dense
    features and instance embeddings computed for them."""
    return _listened(out.feature_image) or _listened(out.feature_vector)


def publish(out: CameraOutputs, header: Any, objs: FrameObjects, dense: DenseFeatures) -> None:
    """A frame's FeatureImage and image embedding, each built only while
    someone listens."""
    if _listened(out.feature_image):
        out.feature_image.publish(feature_image_msg(objs, header))
    if _listened(out.feature_vector):
        out.feature_vector.publish(feature_vector_msg(dense.image, header))


__all__ = ["FEATURE_IMAGE_TOPIC", "FEATURE_VECTOR_TOPIC", "semantic_inference_missing",
           "instance_ids", "feature_image_fields", "feature_vector_fields", "feature_image_msg",
           "feature_vector_msg", "attach", "publish", "semantic_listened"]
