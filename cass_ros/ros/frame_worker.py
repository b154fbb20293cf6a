"""The inference thread (docs/ros-interface.md, "Behaviour under load and
bad input": off the executor, shared model, unusable frames): take every
frame that is ready, convert them, run them through the segmenter in one
call, and publish labels, objects and (when wanted) the colour overlay.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from rclpy.impl.rcutils_logger import RcutilsLogger
from rclpy.publisher import Publisher
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from ..core.result import SegmentationResult
from ..core.visualize import overlay
from .cameras import Batch, Camera, CameraBoard
from .image_conversion import ImageConversionError, to_rgb
from .in_force import Work
from .messages import color_image_msg, label_image_msg, objects_msg

ImageMsg = Image | CompressedImage
STOP_WAIT_S = 1.0          # how long a stop waits for a batch in progress


@dataclass(frozen=True)
class CameraOutputs:
    """A camera's publishers: /cass/<cam>/segmentation, .../color, .../objects."""

    labels: Publisher
    color: Publisher
    objects: Publisher


@dataclass(frozen=True)
class _Frame:
    cam: Camera[ImageMsg]
    header: Header
    received: float
    rgb: np.ndarray


class FrameWorker:
    """One daemon thread; ``stop`` (an Event shared with the node) ends it.
    Daemon, so that a process that exits never waits for a batch."""

    def __init__(self, board: CameraBoard[ImageMsg], outputs: Sequence[CameraOutputs],
                 work: Callable[[], Work | None], logger: RcutilsLogger,
                 stop: threading.Event) -> None:
        self._board = board
        self._outputs = list(outputs)
        self._work = work
        self._log = logger
        self._stop = stop
        self._thread = threading.Thread(target=self._loop, name="cass_inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float = STOP_WAIT_S) -> None:
        """After ``stop`` is set: wait a moment for the batch in progress,
        never longer (a CPU batch of full-size models takes seconds; a
        managed node's deactivate waits longer, so nothing is published after it)."""
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            batch = self._board.take(self._stop.is_set, lambda: self._work() is not None)
            if batch is None:
                return
            work = self._work()     # the prompt set and settings for this whole batch
            if work is None:        # pragma: no cover - a prompt set is never withdrawn
                continue
            try:
                self._process(batch, work)
            except Exception as e:  # noqa: BLE001 - the node must keep running
                if self._stop.is_set():
                    return          # publishers destroyed under us: the node is stopping
                for cam, _ in batch:
                    cam.failed += 1
                self._log.error(f"inference failed: {type(e).__name__}: {e}",
                                throttle_duration_sec=5.0)

    def _convert(self, batch: Batch[ImageMsg]) -> list[_Frame]:
        frames = []
        for cam, pending in batch:
            try:
                rgb = to_rgb(pending.msg)
            except ImageConversionError as e:
                cam.rejected += 1
                self._log.warning(f"{cam.topic}: frame rejected: {e}", throttle_duration_sec=5.0)
                continue
            frames.append(_Frame(cam, pending.msg.header, pending.received, rgb))
        return frames

    def _process(self, batch: Batch[ImageMsg], work: Work) -> None:
        frames = self._convert(batch)
        if not frames:
            return
        t0 = time.perf_counter()
        results = work.segmenter.segment([f.rgb for f in frames], prompts=work.prompts.prepared,
                                         output_size=work.runtime.output_size)
        batch_ms = (time.perf_counter() - t0) * 1000.0
        for frame, result in zip(frames, results):
            result.prompt_id = work.prompts.prompt_id
            self._publish(frame, result, work, float(result.timings_ms.get("total", batch_ms)))
            frame.cam.done(time.monotonic(), frame.received, batch_ms)

    def _publish(self, frame: _Frame, result: SegmentationResult, work: Work,
                 inference_ms: float) -> None:
        out = self._outputs[frame.cam.index]
        header, runtime = frame.header, work.runtime
        out.labels.publish(label_image_msg(result, header))
        out.objects.publish(objects_msg(result, header, runtime.min_pixels, inference_ms))
        # The overlay costs a full-image blend: only when someone looks.
        if runtime.publish_color or out.color.get_subscription_count() > 0:
            rgb = frame.rgb
            if rgb.shape[:2] != result.labels.shape:
                # preprocess imports torch: not at module level, so that
                # importing the node loads no torch before its parameters
                # are checked (one-second start-up failures)
                from ..core.preprocess import resize_short_side

                rgb = resize_short_side(rgb, work.segmenter.config.short_side)
            frame.cam.overlays += 1
            out.color.publish(color_image_msg(
                overlay(rgb, result.labels, work.prompts.colors, runtime.color_alpha), header))
