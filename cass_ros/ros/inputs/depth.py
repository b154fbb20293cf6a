"""Depth input of the node (docs/ros-interface.md, "Depth to 3D"): per
camera the last few depth images and the latest camera_info, the matching
rule (closest stamp within the tolerance), the decoding of 16UC1 / 32FC1
images to metres, and the matched / unmatched / rejected counters that the
diagnostics show.

No rclpy import: the subscription callbacks hand messages in (rclpy or any
object with the sensor_msgs fields), the inference thread takes a matched
pair out, so the rules are unit-tested without DDS.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...core.depth import DepthError, Intrinsics
from .image_conversion import _as_bytes_view as as_bytes_view

DEPTH_BUFFER = 10          # depth images kept per camera (the newest)
Found = tuple[Any, Any]    # (depth sensor_msgs/Image, its latest CameraInfo or None)

# encoding -> (numpy dtype of a pixel, little endian; metres per unit)
DEPTH_ENCODINGS: dict[str, tuple[str, float]] = {"16UC1": ("<u2", 0.001), "32FC1": ("<f4", 1.0)}


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def depth_to_metres(encoding: str, height: int, width: int, step: int, data: Any,
                    is_bigendian: int | bool = False) -> np.ndarray:
    """The fields of a depth sensor_msgs/Image to (H, W) float32 metres:
    ``16UC1`` millimetres (0 = no measurement) or ``32FC1`` metres (NaN,
    inf, 0 = none); rows padded beyond ``width * 2 or 4`` (``step``) and
    big-endian data are handled. Raises DepthError with the reason."""
    layout = DEPTH_ENCODINGS.get(encoding)
    if layout is None:
        raise DepthError(f"unsupported depth encoding {encoding!r} (supported: "
                         f"{', '.join(DEPTH_ENCODINGS)})")
    dtype = np.dtype(layout[0]).newbyteorder(">" if is_bigendian else "<")
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise DepthError(f"empty depth image ({width}x{height})")
    row_bytes = width * dtype.itemsize
    if step < row_bytes:
        raise DepthError(f"depth step {step} is shorter than a row of {width} {encoding} "
                         f"pixels ({row_bytes} bytes)")
    buf = as_bytes_view(data)
    if buf.size < height * step:
        raise DepthError(f"depth data holds {buf.size} bytes, height x step needs "
                         f"{height * step}")
    rows = buf[: height * step].reshape(height, step)[:, :row_bytes]
    values = np.ascontiguousarray(rows).view(dtype).reshape(height, width)
    if layout[1] == 1.0:
        return values.astype(np.float32)
    return values.astype(np.float32) * np.float32(layout[1])


def closest_within(stamps: Sequence[int], stamp: int, tolerance_ns: int) -> int | None:
    """Index of the stamp closest to ``stamp`` when it is at most
    ``tolerance_ns`` away, else None; of equally close ones the first
    (stamps in arrival order, a handful: a scan is enough)."""
    best = None
    for j, t in enumerate(stamps):
        gap = abs(t - stamp)
        if gap <= tolerance_ns and (best is None or gap < abs(stamps[best] - stamp)):
            best = j
    return best


@dataclass(frozen=True)
class DepthFrame:
    """A decoded depth image matched to a colour frame."""

    depth_m: np.ndarray        # (H, W) float32 metres, invalid: 0 / NaN / inf
    intrinsics: Intrinsics
    stamp_ns: int


@dataclass
class DepthCamera:
    """One camera's depth slot: topics, the newest depth images (arrival
    order), the latest camera_info, and the counters."""

    depth_topic: str
    info_topic: str
    images: collections.deque[tuple[int, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=DEPTH_BUFFER))
    info: Any = None
    matched: int = 0           # frames published with 3D
    unmatched: int = 0         # no depth image within the tolerance
    rejected: int = 0          # a matched depth image that could not be used

    def stats(self) -> dict[str, object]:
        return {"depth_topic": self.depth_topic, "depth_matched": self.matched,
                "depth_unmatched": self.unmatched, "depth_rejected": self.rejected}


class DepthInput:
    """Depth slots of all cameras (None for a camera without depth), shared
    by the subscription callbacks and the inference thread."""

    def __init__(self, inputs: Sequence[tuple[str, str] | None]) -> None:
        self.cameras: list[DepthCamera | None] = [
            DepthCamera(*pair) if pair else None for pair in inputs]
        self._lock = threading.Lock()

    def offer_depth(self, index: int, msg: Any) -> None:
        """A depth image from the subscription; the oldest beyond
        DEPTH_BUFFER is forgotten."""
        cam = self.cameras[index]
        t = stamp_ns(msg.header.stamp)
        with self._lock:
            cam.images.append((t, msg))

    def offer_info(self, index: int, msg: Any) -> None:
        with self._lock:
            self.cameras[index].info = msg

    def find(self, index: int, stamp: int, tolerance_s: float) -> Found | None:
        """(depth message, latest camera_info or None) closest to ``stamp``
        within the tolerance; None when there is none (or no depth here)."""
        cam = self.cameras[index]
        if cam is None:
            return None
        with self._lock:
            stamps = [t for t, _ in cam.images]
            j = closest_within(stamps, stamp, int(round(tolerance_s * 1e9)))
            return None if j is None else (cam.images[j][1], cam.info)

    def prepare(self, index: int, found: Found | None,
                size: tuple[int, int]) -> DepthFrame | None:
        """Decode and check a found pair for a colour frame of ``size`` (H,
        W), counting the outcome: None when nothing was found (unmatched);
        DepthError with the reason when it is unusable (rejected)."""
        cam = self.cameras[index]
        if found is None:
            cam.unmatched += 1
            return None
        try:
            frame = _decode(found, size, cam.info_topic)
        except DepthError:
            cam.rejected += 1
            raise
        cam.matched += 1
        return frame

    def stats(self, index: int) -> dict[str, object]:
        """The camera's depth counters for the diagnostics ({} without depth)."""
        cam = self.cameras[index]
        return cam.stats() if cam is not None else {}


def _decode(found: Found, size: tuple[int, int], info_topic: str) -> DepthFrame:
    msg, info = found
    h, w = int(msg.height), int(msg.width)
    if (h, w) != tuple(size):
        raise DepthError(f"depth image is {w}x{h}, the colour image {size[1]}x{size[0]}: "
                         "depth must be aligned to the colour image")
    if info is None:
        raise DepthError(f"no camera_info received yet on {info_topic}")
    iw, ih = int(info.width), int(info.height)
    if (iw or ih) and (ih, iw) != (h, w):
        raise DepthError(f"camera_info on {info_topic} is for {iw}x{ih}, the depth image "
                         f"is {w}x{h}")
    intrinsics = Intrinsics.from_matrix(list(info.k))
    depth = depth_to_metres(msg.encoding, h, w, msg.step, msg.data, msg.is_bigendian)
    return DepthFrame(depth, intrinsics, stamp_ns(msg.header.stamp))


__all__ = ["DEPTH_BUFFER", "DEPTH_ENCODINGS", "DepthCamera", "DepthFrame", "DepthInput", "Found",
           "closest_within", "depth_to_metres", "stamp_ns"]
