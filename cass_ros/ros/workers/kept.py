"""The newest segmented frame of each camera, kept by the frame worker for
the services that answer on it (docs/ros-interface.md, "Queries")."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:   # torch: loaded by the segmenter, not by this module
    from ...core.queries.features import ImageFeatures


@dataclass(frozen=True)
class KeptFrame:
    """A camera's newest segmented frame, as far as queries need it."""

    header: Any                     # std_msgs/Header of the image
    features: ImageFeatures         # the frame's alone (one image)
    output_size: str                # what its label image was (runtime output_size)


class KeptFrames:
    """The newest KeptFrame per camera: written by the inference thread,
    read by the service handlers."""

    def __init__(self, count: int) -> None:
        self._frames: list[KeptFrame | None] = [None] * count
        self._lock = threading.Lock()

    def keep(self, index: int, frame: KeptFrame) -> None:
        with self._lock:
            self._frames[index] = frame

    def newest(self, index: int) -> KeptFrame | None:
        with self._lock:
            return self._frames[index]


__all__ = ["KeptFrame", "KeptFrames"]
