"""When a camera's frame continues its stream (docs/algorithm.md 5.6 and
11): the one restart rule of the temporal streams (core.temporal) and the
instance trackers (core.objects.tracks). A module of its own so that both
import it and neither imports the other's module for it (no import cycle).

Pure Python: no numpy, no torch, no ROS.
"""

from __future__ import annotations


def continues(last_key: object, last_stamp_s: float | None, key: object, stamp_s: float,
              reset_gap_s: float) -> bool:
    """Whether a frame (``key``, ``stamp_s``) continues a stream whose last
    frame had ``last_key`` and ``last_stamp_s`` (docs/algorithm.md 5.6 and
    11): the same key (prompt_id, size, ...), a stamp not going backwards
    and a gap of at most ``reset_gap_s``. The first frame (``last_key``
    None) has nothing to break: True. The one rule the temporal streams and
    the instance trackers (core.objects.tracks) restart by."""
    if last_key is None:
        return True
    gap = stamp_s - last_stamp_s  # type: ignore[operator]
    return not (key != last_key or gap < 0.0 or gap > reset_gap_s)


__all__ = ["continues"]
