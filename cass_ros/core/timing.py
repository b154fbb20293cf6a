"""Wall-clock time per stage of a segment call (``SegmentationResult.timings_ms``).

The segmenter owns one StageTimer and opens a stage around each step
(``with self._timer("clip"): ...``), so the maths does not carry a dict of
times around. CUDA runs kernels asynchronously: a stage ends with the
device synchronised, else its time would show up in whichever later stage
first waits for the device. The timer is handed that synchronisation
(``sync``) only on a CUDA device; on the CPU a stage costs two clock reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager


class StageTimer:
    """Seconds spent in each named stage since ``start``, plus the total."""

    def __init__(self, stages: Sequence[str], sync: Callable[[], None] | None = None) -> None:
        self.stages = tuple(stages)
        self._sync = sync
        self._seconds = dict.fromkeys(self.stages, 0.0)
        self._t_start = time.perf_counter()

    def start(self) -> None:
        """Zero every stage and start the total's clock (one segment call)."""
        self._seconds = dict.fromkeys(self.stages, 0.0)
        self._t_start = time.perf_counter()

    @contextmanager
    def __call__(self, stage: str, sync: bool = True) -> Iterator[None]:
        """Add the time of the ``with`` body to ``stage``. ``sync=False``
        leaves queued device work to the next stage that waits for it (the
        upload of the images, whose cost shows up in the first ViT pass)."""
        if stage not in self._seconds:
            raise KeyError(f"unknown stage {stage!r}; known: {', '.join(self.stages)}")
        t0 = time.perf_counter()
        yield
        if sync and self._sync is not None:
            self._sync()
        self._seconds[stage] += time.perf_counter() - t0

    def timings_ms(self) -> dict[str, float]:
        """Milliseconds per stage (3 decimals), then ``total`` since ``start``."""
        total = time.perf_counter() - self._t_start
        timings = {k: round(v * 1000.0, 3) for k, v in self._seconds.items()}
        timings["total"] = round(total * 1000.0, 3)
        return timings
