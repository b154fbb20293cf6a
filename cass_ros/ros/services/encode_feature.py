"""semantic_inference's EncodeFeature service (docs/ros-interface.md,
"semantic_inference (Hydra, Khronos, Clio)"): a phrase's text embedding
through the segmenter in force, its CLIP text tower and 80 templates
(core.queries.pooling.phrase_embeddings, docs/algorithm.md 1.2), so that
the text features a map is asked with and the image features it was built
from come from one CLIP.

The name is ``cass/semantic/embed``, relative: semantic_inference's
PromptEncoder serves ``semantic/embed`` under its node's namespace, and
Hydra-ROS's RosEmbeddingGroup calls ``embed`` under its configured ``ns``
(``ns: /cass/semantic`` here). The handler runs on the executor thread; a
phrase not seen before costs one text encoding (cached, core.text).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rclpy.node import Node

from ..workers.in_force import InForce

EMBED_SERVICE = "cass/semantic/embed"


class EncodeFeatureService:
    """The node's EncodeFeature service. The response has no error field:
    a request that cannot be answered gets an empty feature and one warning
    line saying why."""

    def __init__(self, node: Node, in_force: Callable[[], InForce | None]) -> None:
        from semantic_inference_msgs.srv import EncodeFeature

        self._node = node
        self._in_force = in_force
        self.service = node.create_service(EncodeFeature, EMBED_SERVICE, self._on_encode)

    def _on_encode(self, request: Any, response: Any) -> Any:
        from ...core.queries.pooling import phrase_embeddings
        from ..outputs.semantic_inference import feature_vector_fields

        feature = response.feature
        feature.header.stamp = self._node.get_clock().now().to_msg()
        prompt = request.prompt.strip()
        in_force = self._in_force()
        try:
            if in_force is None:
                raise ValueError("the node is not configured")
            if not prompt:
                raise ValueError("the prompt is empty: give a phrase, e.g. 'red mug'")
            vec = phrase_embeddings(in_force.segmenter.text_embedder, [prompt])[0]
        except Exception as e:  # noqa: BLE001 - the caller gets an answer, the log one line
            self._node.get_logger().warning(
                f"{self.service.srv_name}: no embedding for {request.prompt!r}: "
                + " ".join(str(e).split()))
            return response
        data = feature_vector_fields(vec)["feature"]["data"]
        feature.feature.data = data.tolist()
        return response


__all__ = ["EncodeFeatureService", "EMBED_SERVICE"]
