"""SIGTERM as Ctrl-C for cass_fleet's driver (docs/ros-interface.md,
cass_fleet): a scheduler's ``kill`` stops a run as Ctrl-C does (exit 130,
the manifest "interrupted", the running bags left to the next run).

Light on purpose: the command line installs it before it searches the
inputs or imports Ray, so that a SIGTERM at any moment ends the same way.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


def sigterm_interrupts() -> Callable[[], None]:
    """SIGTERM raises KeyboardInterrupt from now on. Ray's driver handler,
    which ``ray.init`` sets (``sys.exit``), would skip the run's cleanup and
    leave the manifest saying "finished": set this again after it. Returns
    what puts the previous handler back; in a thread other than the main
    one nothing is changed."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)
