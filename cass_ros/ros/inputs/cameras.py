"""Per-camera bookkeeping of the node: the latest-frame slot and the counters
(docs/ros-interface.md, "Behaviour under load and bad input").

No ROS import: the subscription callbacks hand frames in, the inference
thread takes them out, and the statistics are plain data, so the rules
(newest frame wins, throttling, waiting for prompts, missed sequence
numbers) are unit-tested without DDS.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

STATS_WINDOW_S = 5.0       # rate and latency are averaged over this window
MAX_PUBLISHERS = 64        # sequence numbers remembered per camera

Msg = TypeVar("Msg")       # the image message type (Image or CompressedImage)


@dataclass(frozen=True)
class Pending(Generic[Msg]):
    """A frame waiting for inference."""

    msg: Msg
    received: float                     # time.monotonic() at the callback


@dataclass
class Camera(Generic[Msg]):
    """One camera: its slot and counters. Written under the board's lock
    (callbacks) or by the inference thread (processed, rejected, failed,
    overlays, window)."""

    index: int
    name: str
    topic: str
    pending: Pending[Msg] | None = None
    last_accepted: float = -1e9
    last_image: float = 0.0
    received: int = 0
    processed: int = 0
    dropped: int = 0          # replaced by a newer frame before inference took it
    missed: int = 0           # never reached the callback (gaps in the publishers'
                              # sequence numbers: DDS kept only the newest, or lost it)
    throttled: int = 0        # skipped for max_rate_hz
    waiting: int = 0          # arrived while no prompt set was in force
    rejected: int = 0         # unusable frames (encoding, size, data)
    failed: int = 0           # inference raised
    overlays: int = 0         # colour overlays computed
    last_seq: dict[bytes, int] = field(default_factory=dict)  # publisher gid -> sequence
    # (done time, receipt-to-publication ms, inference ms) of recent frames
    window: collections.deque[tuple[float, float, float]] = field(
        default_factory=lambda: collections.deque(maxlen=1000))

    def offer(self, msg: Msg, now: float, max_rate_hz: float, waiting: bool) -> bool:
        """A frame from the subscription: counted, then kept as the newest
        (True) or skipped for ``max_rate_hz`` (False). While the node waits
        for prompts a frame counts as waiting and replaces the held one
        without counting as dropped; throttling starts with the first set."""
        self.received += 1
        self.last_image = now
        if waiting:
            self.waiting += 1
        else:
            if max_rate_hz > 0 and now - self.last_accepted < 1.0 / max_rate_hz:
                self.throttled += 1
                return False
            if self.pending is not None:
                self.dropped += 1       # never queue: the newest frame wins
            self.last_accepted = now
        self.pending = Pending(msg, now)
        return True

    def count_missed(self, info: Mapping[str, object]) -> None:
        """Frames DDS replaced before the callback saw them, from the gaps in
        a publisher's ``publication_sequence_number`` (rclpy's MessageInfo)."""
        seq = info.get("publication_sequence_number")
        gid = info.get("publisher_gid")
        if not isinstance(seq, int) or not seq:
            return
        # Jazzy's MessageInfo has no publisher_gid: one sequence per topic,
        # exact with the usual single camera driver per topic.
        key = (b"" if not gid else
               bytes(gid.get("data", b"")) if isinstance(gid, Mapping) else bytes(gid))
        last = self.last_seq.get(key)
        if last is not None and seq > last + 1:
            self.missed += seq - last - 1
        if last is None or seq > last:
            self.last_seq[key] = seq
        if len(self.last_seq) > MAX_PUBLISHERS:  # publishers come and go: forget old ones
            self.last_seq.pop(next(iter(self.last_seq)))

    def done(self, now: float, received: float, inference_ms: float) -> None:
        """A frame published: counted, and its latency remembered."""
        self.processed += 1
        self.window.append((now, (now - received) * 1000.0, inference_ms))

    def stats(self, now: float) -> dict[str, object]:
        """Counters, and rate / latency over the last STATS_WINDOW_S seconds
        (the keys of docs/ros-interface.md, "Diagnostics and log")."""
        recent = [w for w in list(self.window) if now - w[0] <= STATS_WINDOW_S]
        n = len(recent)
        return {
            "camera": self.name, "topic": self.topic, "rate_hz": n / STATS_WINDOW_S,
            "latency_ms": sum(w[1] for w in recent) / n if n else 0.0,
            "inference_ms": sum(w[2] for w in recent) / n if n else 0.0,
            "received": self.received, "processed": self.processed,
            "dropped": self.dropped + self.missed, "dropped_in_node": self.dropped,
            "dropped_in_dds": self.missed, "throttled": self.throttled,
            "waiting": self.waiting, "rejected": self.rejected, "failed": self.failed,
            "overlays": self.overlays,
            "silent_s": (now - self.last_image) if self.last_image else None,
        }


Batch = list[tuple[Camera[Msg], Pending[Msg]]]


class CameraBoard(Generic[Msg]):
    """All cameras and the lock between the callbacks and the inference
    thread. ``take`` hands out every frame that is ready, so the cameras'
    frames go through one batched call."""

    def __init__(self, names: Sequence[str], topics: Sequence[str]) -> None:
        self.cameras: list[Camera[Msg]] = [Camera(i, n, t)
                                           for i, (n, t) in enumerate(zip(names, topics))]
        self._cond = threading.Condition()

    def offer(self, cam: Camera[Msg], msg: Msg, now: float, max_rate_hz: float,
              waiting: bool, info: Mapping[str, object] | None = None) -> None:
        with self._cond:
            if info:
                cam.count_missed(info)
            if cam.offer(msg, now, max_rate_hz, waiting):
                self._cond.notify()

    def take(self, stop: Callable[[], bool], ready: Callable[[], bool],
             poll_s: float = 1.0) -> Batch[Msg] | None:
        """Block until frames are there and ``ready()`` (a prompt set is in
        force); None once ``stop()``. ``wake`` interrupts the wait; ``poll_s``
        bounds it for a stop nobody announced (a context shut down in C)."""
        with self._cond:
            while not stop() and not (ready() and any(c.pending for c in self.cameras)):
                self._cond.wait(poll_s)
            if stop():
                return None
            batch = [(c, c.pending) for c in self.cameras if c.pending is not None]
            for c in self.cameras:
                c.pending = None
            return batch

    def clear(self) -> None:
        """Forget the frames not taken yet (a managed node deactivated:
        they are stale when it activates again)."""
        with self._cond:
            for c in self.cameras:
                c.pending = None

    def wake(self) -> None:
        """Re-check stop and readiness now (a stop, a first prompt set)."""
        with self._cond:
            self._cond.notify_all()

    def stats(self, now: float) -> list[dict[str, object]]:
        with self._cond:
            return [c.stats(now) for c in self.cameras]
