"""How the cass_node process stops (docs/ros-interface.md, Executables:
exit status 0 on a normal shutdown): promptly at any moment of its life,
on SIGINT or SIGTERM, quietly.

- Our handlers are installed first and rclpy's after them
  (``rclpy.init(signal_handler_options=SignalHandlerOptions.ALL)``): rclpy's
  C handler shuts the contexts down and wakes every executor, then calls
  the handler it replaced, ours, in the main thread.
- During start-up ours raises StopRequested, which unwinds whatever the
  main thread is doing (loading models, encoding prompts) at once.
- Once the node spins (``note_only``) ours only notes the signal: the
  executor, woken by rclpy, ends with ExternalShutdownException at a clean
  point, and nothing interrupts the clean-up after it.
- SIGINT is handled even where the shell set it to SIG_IGN (a background
  job of a script), as rclpy does: a stop asked for is a stop.
- The installed ``cass_node`` script creates StopSignals before it imports
  the node (rclpy, torch) and hands them to ``main``; only interpreter
  start-up itself runs under the inherited disposition.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterable, Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(BaseException):
    """A requested stop (a signal, or the ROS context shut down). A
    BaseException, like KeyboardInterrupt, so that ``except Exception``
    in start-up code does not swallow it."""


class StopSignals:
    """Handlers for STOP_SIGNALS for the life of the process's ``main``."""

    def __init__(self, signals: Iterable[signal.Signals] = STOP_SIGNALS) -> None:
        self.received: signal.Signals | None = None
        self._interrupt = True
        self._previous = {s: signal.signal(s, self._handle) for s in signals}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)
        # Raised again for a repeated signal: a first StopRequested may be
        # lost (raised inside a finaliser, which Python only reports).
        if self._interrupt:
            raise StopRequested(signal.Signals(signum).name)

    def note_only(self) -> None:
        """From here on a signal is only noted (spinning, cleaning up)."""
        self._interrupt = False

    @contextlib.contextmanager
    def interrupting(self) -> Iterator[None]:
        """Signals raise StopRequested again during the block (a managed
        node's configure: model loading runs while it spins)."""
        before, self._interrupt = self._interrupt, True
        try:
            yield
        finally:
            self._interrupt = before

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def quick_exit(status: int) -> None:
    """End the process after the node and its context are shut down,
    skipping the interpreter's finalisation: tearing down torch and its
    CUDA libraries takes about 2 s (measured on the build machine) and
    nothing of the node needs it. ROS console logging writes whole lines
    (unbuffered or line-buffered stderr); Python's streams are flushed."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):   # a closed or broken stream
            stream.flush()
    os._exit(status)
