"""/cass/query and /cass/describe (docs/ros-interface.md, "Queries"): any
prompt set, or a vocabulary, answered on the newest segmented frame of a
camera from the features the frame worker kept (docs/algorithm.md 10), with
no new forward pass. A query prepares its own prompts (prompt_id 0): the
prompt set in force, the class table, prompt_id, the temporal streams and
every topic stay as they are.

The handlers run on the executor thread, beside the inference thread: a
decode is a few matrix products; phrases not seen before add their text
encoding (cached, core.text).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rclpy.node import Node

from cass_ros.srv import Describe, Query

from ...core.config import ConfigError
from ...core.prompts import PromptError, check_prompt_set, prompt_set_from_settings, read_classes_file
from ..outputs.messages import float_image_msg, label_image_msg, objects_msg
from ..workers.in_force import InForce
from ..workers.kept import KeptFrame, KeptFrames

if TYPE_CHECKING:   # torch: imported where a query needs it, after the parameter checks
    from ...core.queries.vocabulary import VocabularyEncoder
    from ..inputs.cameras import Camera

DEFAULT_TOP_K = 10


class QueryError(ValueError):
    """A query that cannot be answered (one line for the response)."""


class QueryServices:
    """The two services of one node and what they answer with."""

    def __init__(self, node: Node, cameras: Sequence[Camera[Any]], in_force: Callable[[], InForce | None],
                 background: Callable[[], Sequence[str]], vocabulary_file: str) -> None:
        self._cameras = list(cameras)
        self._in_force = in_force
        self._background = background
        self._vocabulary_file = vocabulary_file
        if vocabulary_file:         # a bad file fails at start-up, not at the first call
            try:
                read_classes_file(vocabulary_file)
            except PromptError as e:
                raise ConfigError(f"parameter 'vocabulary_file': {e}") from None
        self._vocabulary: VocabularyEncoder | None = None
        self.frames = KeptFrames(len(self._cameras))
        node.create_service(Query, "cass/query", self._on_query)
        node.create_service(Describe, "cass/describe", self._on_describe)

    # ------------------------------------------------------------- handlers

    def _on_query(self, request: Any, response: Any) -> Any:
        try:
            frame, in_force = self._frame(request.camera)
            if not request.prompts.strip():
                raise QueryError("prompts is empty: give class names, e.g. "
                                 "'red box|crimson block, green ball'")
            background = (list(request.background_classes) if request.set_background
                          else list(self._background()))
            prompt_set = check_prompt_set(prompt_set_from_settings(request.prompts, "",
                                                                   background))
            seg = in_force.segmenter
            prepared = seg.prepare_prompts(prompt_set, prompt_id=0)
            result = seg.decode(frame.features, prepared, output_size=frame.output_size)[0]
        except (QueryError, PromptError) as e:
            return _failed(response, e)
        response.success = True
        response.header = frame.header
        response.class_names = list(result.class_names)
        response.objects = objects_msg(result, frame.header, in_force.runtime.min_pixels).objects
        if request.return_labels:
            response.labels = label_image_msg(result, frame.header)
        if request.return_similarity:
            response.similarity = _similarity(frame, seg, prepared, result.labels.shape)
        return response

    def _on_describe(self, request: Any, response: Any) -> Any:
        from ...core.queries.describe import describe

        try:
            frame, in_force = self._frame(request.camera)
            entries, text = self._entries(request, response, in_force)
            ranked = describe(frame.features, entries, text, int(request.top_k) or DEFAULT_TOP_K)
        except (QueryError, PromptError) as e:
            return _failed(response, e)
        response.success = True
        response.header = frame.header
        response.names = [r.name for r in ranked[0]]
        response.presence = [r.presence for r in ranked[0]]
        return response

    # ------------------------------------------------------------- helpers

    def _frame(self, camera: str) -> tuple[KeptFrame, InForce]:
        in_force = self._in_force()
        if in_force is None:
            raise QueryError("the node is not configured")
        cam = self._camera(camera)
        frame = self.frames.newest(cam.index)
        if frame is None:
            why = " (waiting for prompts)" if in_force.waiting else ""
            raise QueryError(f"no frame of camera '{cam.name}' has been segmented yet{why}")
        return frame, in_force

    def _camera(self, name: str) -> Camera[Any]:
        names = [c.name for c in self._cameras]
        if not name:
            if len(self._cameras) == 1:
                return self._cameras[0]
            raise QueryError(f"name the camera: one of {', '.join(names)}")
        for cam in self._cameras:
            if cam.name == name:
                return cam
        raise QueryError(f"no camera '{name}': the cameras are {', '.join(names)}")

    def _entries(self, request: Any, response: Any, in_force: InForce
                 ) -> tuple[list[tuple[str, ...]], Any]:
        """The vocabulary to rank and its text embeddings."""
        from ...core.queries.describe import name_labels
        from ...core.queries.vocabulary import VOCABULARY_FILE, VocabularyEncoder, read_vocabulary

        embedder = in_force.segmenter.text_embedder
        if request.names:
            entries = [tuple(n.strip() for n in e.split("|") if n.strip()) for e in request.names]
            if not all(entries):
                raise QueryError("names holds an empty entry")
            names, _ = name_labels(entries)
            response.encoded = response.total = len(set(names))
            return entries, embedder.encode(names)
        if self._vocabulary is None:      # encoded once, at the first call
            self._vocabulary = VocabularyEncoder(
                embedder, read_vocabulary(self._vocabulary_file or VOCABULARY_FILE))
            self._vocabulary.start()
        vocabulary = self._vocabulary
        response.encoded, response.total = vocabulary.progress()
        if vocabulary.error is not None:
            raise QueryError(f"cannot encode the vocabulary: {vocabulary.error}")
        text = vocabulary.text()
        if text is None:
            raise QueryError(f"still encoding the vocabulary ({response.encoded} of "
                             f"{response.total} names); ask again")
        return vocabulary.entries, text


def _similarity(frame: KeptFrame, segmenter: Any, prepared: Any, size: tuple[int, int]
                ) -> list[Any]:
    """One 32FC1 image per class 1 .. K - 1 (core.queries.similarity)."""
    from ...core.queries.dense import dense_features
    from ...core.queries.similarity import class_similarity

    dense = dense_features(frame.features, segmenter.clip.patch)[0]
    maps = class_similarity(dense, prepared, size).cpu().numpy()          # (K - 1, H, W)
    return [float_image_msg(m, frame.header) for m in maps]


def _failed(response: Any, error: Exception) -> Any:
    response.success = False
    response.error = " ".join(str(error).split())
    return response


__all__ = ["QueryServices", "QueryError"]
