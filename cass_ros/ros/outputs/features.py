"""Dense language features as the node's and cass_bag's output
(docs/ros-interface.md, "Language features"; docs/algorithm.md 10.1):
cass_ros/Features on /cass/<cam>/features, and when a frame needs them at
all. ``features_fields`` is a plain dictionary (for rclpy and the bag tool's
rosbags types alike); ``features_msg`` fills the rclpy message."""

from __future__ import annotations

import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:   # torch: loaded by the segmenter, not by this module
    from ...core.queries.dense import DenseFeatures
    from ...core.queries.features import ImageFeatures

LAYOUT = "HWC"


def needs_dense(runtime: Any, features_wanted: bool, semantic_wanted: bool | None = None
                ) -> bool:
    """Whether a frame's dense features are computed at all: for the
    features topic (``features_wanted``: published always, or subscribed),
    or for what pools them per instance (instance embeddings,
    re-identification, semantic_inference's outputs: ``semantic_wanted``,
    by default ``runtime.semantic_inference``; the node passes whether its
    publishers exist and are listened to). Nothing is added to a frame
    that needs none of these."""
    if semantic_wanted is None:
        semantic_wanted = runtime.semantic_inference
    pooled = runtime.instances and (runtime.instance_embeddings or semantic_wanted
                                    or runtime.track_reid_seconds > 0)
    return bool(features_wanted or pooled)


def frame_dense(features: ImageFeatures, patch: int, wanted: Sequence[bool]
                ) -> list[DenseFeatures | None]:
    """Each image's dense features (core.queries.dense) where ``wanted``
    (``needs_dense`` per image), else None; nothing is computed when no
    image wants them. The node's frame worker and cass_bag both call this."""
    if not any(wanted):
        return [None] * len(wanted)
    from ...core.queries.dense import dense_features  # torch: loaded with the segmenter

    return [d if w else None for d, w in zip(dense_features(features, patch), wanted)]


def features_fields(dense: DenseFeatures, label_size: tuple[int, int], model: str,
                    weights_sha256: str, dtype: str) -> dict[str, Any]:
    """Fields of cass_ros/Features (without header): the grid (gh, gw, E)
    in ``dtype`` (float16 | float32, little endian, HWC) and its placement
    in the label image of ``label_size`` (H, W), the half-pixel rule of
    core.queries.dense.Placement."""
    grid = np.ascontiguousarray(dense.patches.detach().to("cpu").float().numpy(),
                                np.dtype(dtype).newbyteorder("<"))          # (gh, gw, E)
    gh, gw, e = grid.shape
    h, w = (int(v) for v in label_size)
    sy, sx = gh / h, gw / w
    return {"model": model, "weights_sha256": weights_sha256, "height": gh, "width": gw,
            "channels": e, "dtype": dtype, "layout": LAYOUT, "data": grid.tobytes(),
            "image_height": h, "image_width": w, "scale": [sy, sx],
            "offset": [0.5 * (sy - 1.0), 0.5 * (sx - 1.0)],
            "image_embedding": dense.image.detach().to("cpu").float().numpy().tolist()}


def features_msg(fields: dict[str, Any], header: Any) -> Any:
    """cass_ros/Features from ``features_fields``."""
    from cass_ros.msg import Features

    msg = Features(header=header, **{k: v for k, v in fields.items()
                                     if k not in ("data", "image_embedding")})
    msg.data = array.array("B", fields["data"])
    msg.image_embedding = array.array("f", fields["image_embedding"])
    return msg


def features_array(fields_or_msg: Any) -> np.ndarray:
    """(gh, gw, E) float32 of a Features message or its fields: what a
    consumer does with the bytes (tests and tools)."""
    get = (fields_or_msg.get if isinstance(fields_or_msg, dict)
           else lambda k: getattr(fields_or_msg, k))
    data = np.frombuffer(bytes(get("data")), np.dtype(get("dtype")).newbyteorder("<"))
    return data.reshape(get("height"), get("width"), get("channels")).astype(np.float32)


__all__ = ["needs_dense", "frame_dense", "features_fields", "features_msg", "features_array", "LAYOUT"]
