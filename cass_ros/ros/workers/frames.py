"""The inference thread (docs/ros-interface.md, "Behaviour under load and
bad input": off the executor, shared model, unusable frames): take every
frame that is ready, convert them, run them through the segmenter in one
call, and publish labels, objects and (when wanted) the colour overlay and
the vision_msgs detections ("Standard messages"). Each camera's temporal
stream (docs/algorithm.md 5.6) lives here, fed only by this thread.
With a matched depth image it also publishes the 3D outputs ("Depth to 3D"),
and, while subscribed, the outputs for mappers (outputs/mappers.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from rclpy.impl.rcutils_logger import RcutilsLogger
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from ...core.depth import DepthError, ObjectGeometry, labelled_points, nearest_resize, object_geometry
from ...core.result import SegmentationResult
from ...core.temporal import StreamFrame, TemporalStreams, stamp_seconds
from ...core.visualize import draw_legend, outline_instances, overlay
from ..inputs.cameras import Batch, Camera, CameraBoard
from ..inputs.depth import DepthFrame, DepthInput, Found, stamp_ns
from ..inputs.image_conversion import ImageConversionError, to_rgb
from ..outputs import mappers as mapper_outputs
from ..outputs import semantic_inference
from ..outputs.depth import cloud_msg, detections_3d_from, detections_3d_msg
from ..outputs.features import features_fields, features_msg, frame_dense, needs_dense
from ..outputs.instances import (DepthForInstances, FrameObjects, frame_objects,
                                 instance_array_msg, instance_detection_fields, instances_msg)
from ..outputs.messages import color_image_msg, label_image_msg, objects_msg
from ..outputs.publishers import CameraOutputs
from ..outputs.semantic_inference import semantic_listened
from ..outputs.vision import detections_msg, detections_msg_from
from .in_force import Work
from .kept import KeptFrame, KeptFrames

if TYPE_CHECKING:   # torch: loaded with the segmenter, after the parameters are checked
    from ...core.queries.dense import DenseFeatures
    from ...core.queries.features import ImageFeatures

ImageMsg = Image | CompressedImage
STOP_WAIT_S = 1.0          # how long a stop waits for a batch in progress


@dataclass(frozen=True)
class _Frame:
    cam: Camera[ImageMsg]
    header: Header
    received: float
    rgb: np.ndarray


@dataclass(frozen=True)
class _Depth3D:
    """A frame's 3D: the matched depth and the labels at its size."""

    depth: DepthFrame
    labels: np.ndarray         # (H, W) the result's labels at the depth image's size
    geometry: ObjectGeometry


class FrameWorker:
    """One daemon thread; ``stop`` (an Event shared with the node) ends it.
    Daemon, so that a process that exits never waits for a batch."""

    def __init__(self, board: CameraBoard[ImageMsg], outputs: Sequence[CameraOutputs],
                 work: Callable[[], Work | None], logger: RcutilsLogger,
                 stop: threading.Event, depth: DepthInput | None = None,
                 infos: mapper_outputs.CameraInfos | None = None,
                 kept: KeptFrames | None = None) -> None:
        self._board = board
        self._depth = depth
        self._infos = infos
        self._kept = kept           # each camera's newest features, for queries
        self._outputs = list(outputs)
        self._work = work
        self._log = logger
        self._stop = stop
        self._thread = threading.Thread(target=self._loop, name="cass_inference", daemon=True)
        self._streams = TemporalStreams()   # per camera index

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
        # depth that is there already; otherwise looked for again after
        # inference, which gives a late depth image time to arrive
        early = [self._find_depth(f, work) for f in frames]
        t0 = time.perf_counter()
        results, features = work.segmenter.segment_keeping(
            [f.rgb for f in frames], prompts=work.prompts.prepared,
            output_size=work.runtime.output_size, streams=self._stream_frames(frames, work))
        batch_ms = (time.perf_counter() - t0) * 1000.0
        dense = self._dense(frames, features, work)
        for i, (frame, result, found) in enumerate(zip(frames, results, early)):
            if self._kept is not None:
                alone = features if len(frames) == 1 else features.image(i)
                self._kept.keep(frame.cam.index, KeptFrame(frame.header, alone,
                                                           work.runtime.output_size))
            result.prompt_id = work.prompts.prompt_id
            self._publish(frame, result, work, float(result.timings_ms.get("total", batch_ms)),
                          found or self._find_depth(frame, work), dense[i])
            frame.cam.done(time.monotonic(), frame.received, batch_ms)

    def _features_wanted(self, frame: _Frame, work: Work) -> bool:
        out = self._outputs[frame.cam.index]
        return out.features is not None and (work.runtime.publish_features
                                             or out.features.get_subscription_count() > 0)

    def _dense(self, frames: list[_Frame], features: ImageFeatures, work: Work
               ) -> list[DenseFeatures | None]:
        """Each frame's dense features (docs/algorithm.md 10.1) where one of
        its outputs needs them (outputs.features.needs_dense), else None."""
        wanted = [needs_dense(work.runtime, self._features_wanted(f, work),
                              semantic_listened(self._outputs[f.cam.index])) for f in frames]
        return frame_dense(features, work.segmenter.clip.patch, wanted)

    def _stream_frames(self, frames: list[_Frame], work: Work) -> list[StreamFrame] | None:
        """Each frame's place in its camera's temporal stream (None while off)."""
        runtime = work.runtime
        return self._streams.frames(
            [f.cam.index for f in frames],
            [stamp_seconds(f.header.stamp.sec, f.header.stamp.nanosec) for f in frames],
            runtime.temporal(), runtime.min_pixels)

    def _publish(self, frame: _Frame, result: SegmentationResult, work: Work,
                 inference_ms: float, found: Found | None = None,
                 dense: DenseFeatures | None = None) -> None:
        out = self._outputs[frame.cam.index]
        header, runtime = frame.header, work.runtime
        out.labels.publish(label_image_msg(result, header))
        if dense is not None and self._features_wanted(frame, work):
            models = work.segmenter.models
            out.features.publish(features_msg(features_fields(
                dense, result.labels.shape, models.clip_id, models.weights_sha256(),
                runtime.features_dtype), header))
        if self._infos is not None:
            mapper_outputs.publish(out, header, result, work.prompts, runtime, self._infos,
                                   frame.cam.index, self._log)
        d3 = self._geometry(frame, result, work, found)
        out.objects.publish(objects_msg(result, header, runtime.min_pixels, inference_ms,
                                        d3.geometry if d3 else None))
        objs = self._instances(frame, result, work, d3, dense)
        if d3 is not None:
            self._publish_3d(out, frame, result, work, d3, objs)
        # Built like the overlay: only when someone listens, or when asked to.
        if out.detections is not None and (runtime.publish_detections
                                           or out.detections.get_subscription_count() > 0):
            out.detections.publish(
                detections_msg_from(instance_detection_fields(objs, result.class_names), header)
                if objs is not None and runtime.detections_per == "instance"
                else detections_msg(result, header, runtime.min_pixels))
        # The overlay costs a full-image blend: only when someone looks.
        if runtime.publish_color or out.color.get_subscription_count() > 0:
            frame.cam.overlays += 1
            out.color.publish(color_image_msg(self._overlay(frame, result, work, objs), header))

    def _overlay(self, frame: _Frame, result: SegmentationResult, work: Work,
                 objs: FrameObjects | None) -> np.ndarray:
        runtime = work.runtime
        rgb = frame.rgb
        if rgb.shape[:2] != result.labels.shape:
            # preprocess imports torch: not at module level, so that
            # importing the node loads no torch before its parameters
            # are checked (one-second start-up failures)
            from ...core.preprocess import resize_short_side

            rgb = resize_short_side(rgb, work.segmenter.config.short_side)
        blended = overlay(rgb, result.labels, work.prompts.colors, runtime.color_alpha)
        if objs is not None and runtime.overlay_instance_outline:
            blended = outline_instances(blended, objs.index)
        if runtime.overlay_legend:
            blended = draw_legend(blended, work.prompts.class_names, work.prompts.colors)
        return blended

    # ------------------------------------------------------ instances and tracks

    def _instances(self, frame: _Frame, result: SegmentationResult, work: Work,
                   d3: _Depth3D | None, dense: DenseFeatures | None) -> FrameObjects | None:
        """The frame's instances and published tracks, and their two topics
        (docs/ros-interface.md, "Instances and tracks"); None while off."""
        runtime = work.runtime
        if not runtime.instances:
            self._streams.drop_trackers()       # off: no cost, and a fresh start when on
            return None
        tracker = self._streams.tracker(frame.cam.index, runtime.track_params())
        depth = None if d3 is None else DepthForInstances(d3.depth.depth_m, d3.depth.intrinsics,
                                                          d3.labels)
        objs = frame_objects(result, runtime, tracker,
                             stamp_seconds(frame.header.stamp.sec, frame.header.stamp.nanosec),
                             depth, runtime.depth_trim_percent, dense)
        out = self._outputs[frame.cam.index]
        if out.instance_objects is not None:
            out.instance_objects.publish(instance_array_msg(
                result, objs, frame.header, runtime.instance_embeddings and dense is not None))
        if dense is not None and semantic_listened(out):
            semantic_inference.publish(out, frame.header, objs, dense)
        if out.instances is not None and (runtime.publish_instances
                                          or out.instances.get_subscription_count() > 0):
            out.instances.publish(instances_msg(result.labels, objs, frame.header))
        return objs

    # ------------------------------------------------------------ depth to 3D

    def _find_depth(self, frame: _Frame, work: Work) -> Found | None:
        """(depth message, camera_info) matched to the frame's stamp, or None."""
        if self._depth is None:
            return None
        return self._depth.find(frame.cam.index, stamp_ns(frame.header.stamp),
                                work.runtime.depth_tolerance_s)

    def _geometry(self, frame: _Frame, result: SegmentationResult, work: Work,
                  found: Found | None) -> _Depth3D | None:
        """The frame's per-class 3D, or None (no depth for this camera, none
        matched, or unusable: counted, and the reason logged)."""
        cam = frame.cam
        if self._depth is None or self._depth.cameras[cam.index] is None:
            return None
        try:
            depth = self._depth.prepare(cam.index, found, frame.rgb.shape[:2])
        except DepthError as e:
            self._log.warning(f"{cam.topic}: depth rejected: {e}", throttle_duration_sec=5.0)
            return None
        if depth is None:
            return None
        # output_size model: labels at the inference size, depth at the camera's
        labels = nearest_resize(result.labels, depth.depth_m.shape)
        geometry = object_geometry(labels, depth.depth_m, depth.intrinsics,
                                   len(result.class_names), work.runtime.depth_trim_percent)
        return _Depth3D(depth, labels, geometry)

    def _publish_3d(self, out: CameraOutputs, frame: _Frame, result: SegmentationResult,
                    work: Work, d3: _Depth3D, objs: FrameObjects | None) -> None:
        runtime = work.runtime
        if out.detections_3d is not None:
            if objs is not None and runtime.detections_per == "instance":
                items = [(str(t.id), result.class_names[t.class_id],
                          float(objs.instances.mean_confidence[t.instance - 1]), t.instance)
                         for t in objs.tracks]
                msg = detections_3d_from(items, objs.instances.geometry, frame.header)
            else:
                msg = detections_3d_msg(result, d3.geometry, frame.header, runtime.min_pixels)
            out.detections_3d.publish(msg)
        # the cloud costs a pass over the image: only when someone listens
        if out.points is not None and out.points.get_subscription_count() > 0:
            conf = result.confidence
            if conf is not None:
                conf = nearest_resize(conf, d3.labels.shape)
            points = labelled_points(d3.labels, d3.depth.depth_m, conf, d3.depth.intrinsics,
                                     runtime.cloud_stride, work.prompts.colors)
            out.points.publish(cloud_msg(points, frame.header))
