"""Temporal stability of one camera's stream (docs/algorithm.md 5.6): an
exponential moving average of the class probabilities before the threshold
and the labels, and hysteresis on ``present``.

A TemporalStream is one camera's state; the segmenter applies it inside
``Segmenter.segment`` (the ``streams`` argument), so the labels, their
confidences and the returned probabilities are the smoothed ones. The
smoothed probabilities stay on the segmenter's device: smoothing adds one
element-wise operation per frame and no host transfer.

No torch import at module level: the node's parameters (ros/params.py)
import TemporalParams before torch may load.
"""

from __future__ import annotations

from collections.abc import Sequence

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .config import ConfigError
from .continuity import continues  # the restart rule, shared with core.objects.tracks

if TYPE_CHECKING:
    import torch

    from .objects.tracks import Tracker, TrackParams


@dataclass(frozen=True)
class TemporalParams:
    """How a stream is stabilised; the defaults change nothing.

    ``smoothing``: weight of the history in the average, in [0, 1);
    p_t = (1 - smoothing) * x_t + smoothing * p_(t-1); 0 = off.
    ``reset_gap_s``: a gap between two stamps longer than this starts the
    average over (as do a prompt change, a size change and a stamp going
    backwards).
    ``present_on_frames`` / ``present_off_frames``: consecutive frames a
    class must be over / under ``min_pixels`` before ``present`` turns
    on / off; 1 / 1 = no hysteresis.
    """

    smoothing: float = 0.0
    reset_gap_s: float = 1.0
    present_on_frames: int = 1
    present_off_frames: int = 1

    @property
    def smooths(self) -> bool:
        return self.smoothing > 0.0

    @property
    def hysteresis(self) -> bool:
        return self.present_on_frames > 1 or self.present_off_frames > 1

    @property
    def active(self) -> bool:
        """Whether a stream with these parameters changes anything."""
        return self.smooths or self.hysteresis

    def validate(self, prefix: str = "") -> TemporalParams:
        """Raise ConfigError naming the parameter (``prefix`` + field name,
        e.g. the node's ``temporal_smoothing``)."""
        def need(ok: bool, name: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"parameter '{prefix}{name}' {why}")

        need(isinstance(self.smoothing, (int, float)) and 0.0 <= self.smoothing < 1.0,
             "smoothing", f"must be in [0, 1) (0 = off), not {self.smoothing!r}")
        need(isinstance(self.reset_gap_s, (int, float)) and math.isfinite(self.reset_gap_s)
             and self.reset_gap_s > 0.0, "reset_gap_s", f"must be > 0 s, not {self.reset_gap_s!r}")
        for name in ("present_on_frames", "present_off_frames"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name,
                 f"must be an integer >= 1 (1 = no hysteresis), not {value!r}")
        return self


class TemporalStream:
    """One camera's temporal state: the smoothed class probabilities (K, H, W)
    on the device, the key they belong to (prompt_id, size, number of
    labels), the last stamp, and the per-class ``present`` hysteresis.

    Not thread-safe: one stream is fed by one thread, frames in stamp order.
    """

    def __init__(self, params: TemporalParams | None = None) -> None:
        self.params = (params or TemporalParams()).validate()
        self.resets = 0                       # how often the stream started over
        self.reset()

    def reset(self) -> None:
        """Forget the history: the next frame starts the stream."""
        self._prob: torch.Tensor | None = None  # (K, H, W) smoothed class probabilities
        self._key: tuple[int, tuple[int, int], int] | None = None
        self._stamp: float | None = None
        self._present: np.ndarray | None = None  # (K,) bool, the held decision
        self._streak: np.ndarray | None = None   # (K,) int, frames disagreeing with it
        self._frames = 0

    def set_params(self, params: TemporalParams) -> None:
        """New parameters; a change starts the stream over."""
        params.validate()
        if params != self.params:
            self.params = params
            self.reset()

    @property
    def frames(self) -> int:
        """Frames since the last reset (0 before the first)."""
        return self._frames

    def _start_frame(self, key: tuple[int, tuple[int, int], int], stamp_s: float) -> None:
        """Reset when the frame does not continue the stream."""
        if not continues(self._key, self._stamp, key, stamp_s, self.params.reset_gap_s):
            self.reset()
            self.resets += 1
        self._key, self._stamp = key, stamp_s
        self._frames += 1

    def smooth(self, class_prob: torch.Tensor, prompt_id: int, stamp_s: float) -> torch.Tensor:
        """The frame's class probabilities (K, H, W) -> the smoothed ones, on
        the same device. Every frame of the stream goes through here, in
        order, also with smoothing 0 (the resets drive the hysteresis)."""
        k, h, w = class_prob.shape
        self._start_frame((int(prompt_id), (int(h), int(w)), int(k)), float(stamp_s))
        a = self.params.smoothing
        if a > 0.0 and self._prob is not None:
            # lerp: x + a * (p - x) = (1 - a) x + a p, one kernel, a new tensor
            # (the caller may keep the returned one)
            class_prob = class_prob.lerp(self._prob, a)
        self._prob = class_prob if a > 0.0 else None
        return class_prob

    def present(self, pixel_counts: np.ndarray, min_pixels: int) -> np.ndarray:
        """(K,) bool ``present`` for this frame's pixel counts: a class turns
        present after ``present_on_frames`` consecutive frames with
        ``min_pixels`` or more, absent after ``present_off_frames``
        consecutive frames under. After a reset every class starts absent.
        Call once per frame, after ``smooth``."""
        over = np.asarray(pixel_counts) >= max(1, int(min_pixels))  # (K,)
        if self._present is None or self._present.shape != over.shape:
            self._present = np.zeros(over.shape, bool)
            self._streak = np.zeros(over.shape, np.int64)
        p = self.params
        disagree = over != self._present
        self._streak = np.where(disagree, self._streak + 1, 0)
        need = np.where(self._present, p.present_off_frames, p.present_on_frames)
        flip = disagree & (self._streak >= need)
        self._present = self._present ^ flip
        self._streak[flip] = 0
        return self._present.copy()


def stamp_seconds(sec: int, nanosec: int) -> float:
    """A header stamp (sec, nanosec) in seconds: the one conversion the node
    and cass_bag share, so that both see the same gaps."""
    return (int(sec) * 1_000_000_000 + int(nanosec)) / 1e9


@dataclass(frozen=True)
class StreamFrame:
    """One image's place in its stream, for ``Segmenter.segment``: the
    stream, the image's stamp in seconds (its header stamp) and the
    ``min_pixels`` that ``present`` is decided with."""

    stream: TemporalStream
    stamp_s: float
    min_pixels: int = 1


class TemporalStreams:
    """One TemporalStream per source (a node's camera, a bag's image topic),
    created on its first frame: the one place the node's frame worker and
    cass_bag keep their streams."""

    def __init__(self) -> None:
        self._streams: dict[object, TemporalStream] = {}
        # instance trackers (core.objects.tracks, docs/algorithm.md 11): per
        # source, and each dropped source's next track id, so that ids are
        # never reused while the registry lives
        self._trackers: dict[object, Tracker] = {}
        self._next_track_ids: dict[object, int] = {}

    def frames(self, sources: Sequence[object], stamps_s: Sequence[float],
               params: TemporalParams, min_pixels: int) -> list[StreamFrame] | None:
        """Each frame's StreamFrame, in the order given (a source's frames in
        stream order); None while ``params`` are inactive, and the streams are
        dropped then, so turning it on again starts afresh. New parameters
        restart every stream (TemporalStream.set_params)."""
        if not params.active:
            self._streams.clear()
            return None
        out = []
        for source, stamp in zip(sources, stamps_s):
            stream = self._streams.get(source)
            if stream is None:
                stream = self._streams[source] = TemporalStream(params)
            stream.set_params(params)
            out.append(StreamFrame(stream, stamp, min_pixels))
        return out

    def tracker(self, source: object, params: TrackParams) -> Tracker:
        """The source's instance Tracker, created on first use (its ids go
        on from those of a tracker the source had before drop_trackers);
        new ``params`` are handed to it (Tracker.set_params)."""
        from .objects.tracks import Tracker

        tracker = self._trackers.get(source)
        if tracker is None:
            tracker = self._trackers[source] = Tracker(
                params, first_id=self._next_track_ids.pop(source, 1))
        else:
            tracker.set_params(params)
        return tracker

    def drop_trackers(self) -> None:
        """Forget every source's tracks (instances turned off); a tracker
        made later for the source starts over, with ids that go on."""
        for source, tracker in self._trackers.items():
            self._next_track_ids[source] = tracker.next_id
        self._trackers.clear()
