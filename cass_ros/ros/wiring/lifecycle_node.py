"""cass_lifecycle_node: the managed (lifecycle) variant of cass_node
(docs/ros-interface.md, "Managed node").

The same node (node.CassNodeBase: parameters, prompt handling, workers),
its steps mapped to the lifecycle transitions instead of run in the
constructor:

- construction: the parameters are declared (``ros2 param get/set`` work in
  every state), /cass/prompts is subscribed; changes are checked and stored;
- configure: read the parameters, load the models, encode the prompt set,
  create the publishers; a failure is logged in one line and the node stays
  unconfigured;
- activate: subscribe to the cameras, start inference, publish the class
  table in force; deactivate: stop inference, unsubscribe, empty the CUDA
  cache; cleanup: drop the models and the publishers;
- shutdown (from any state) and errors: everything down, threads ended.

Nothing is published while the node is not active.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, NoReturn

from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from ...core.config import ConfigError
from ...core.prompts import PromptError
from . import node as plain
from .model_setup import StartupError, one_line
from .node import NODE_NAME, CassNodeBase
from .stopping import StopRequested, StopSignals

FLUSH_S = 0.5     # after the shutdown transition: time for its service reply to go out


class CassLifecycleNode(CassNodeBase, LifecycleNode):
    """CASS as a managed node; starts unconfigured. ``signals``: the
    process's StopSignals (cass_lifecycle_node), so that a stop interrupts
    a configure in progress (model loading) as it does the plain node's
    start-up; in-process users leave it None."""

    def __init__(self, node_name: str = NODE_NAME, signals: StopSignals | None = None,
                 **kwargs: Any) -> None:
        self._signals = signals
        self.finalized = False
        super().__init__(node_name, **kwargs)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            with self._interruptible():
                self._configure()
        except (ConfigError, PromptError, StartupError) as e:
            self.get_logger().error(f"configure failed: {one_line(str(e))}")
            self._cleanup()
            return TransitionCallbackReturn.FAILURE
        except StopRequested:
            self._cleanup()
            raise
        except Exception as e:  # noqa: BLE001 - one line, the node stays unconfigured
            self.get_logger().error(f"configure failed: {type(e).__name__}: "
                                    f"{one_line(str(e))}")
            self._cleanup()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._activate()
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self.get_logger().info("inactive: inference stopped, cameras unsubscribed")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        self.get_logger().info("unconfigured: models unloaded")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        self.stop()
        self.finalized = True
        self.get_logger().info(f"finalized (shut down from {state.label})")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        # A transition raised (rclpy logs nothing): back to unconfigured, clean.
        self.get_logger().error(f"transition from {state.label} failed; unconfigured")
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS

    @contextlib.contextmanager
    def _interruptible(self) -> Iterator[None]:
        """A signal during the block raises StopRequested (as in the plain
        node's start-up); transitions run on the main thread under ``serve``."""
        if self._signals is None:
            yield
            return
        with self._signals.interrupting():
            yield

    def serve(self) -> None:
        """Process callbacks until the context shuts down or the node is
        finalized (the process then exits)."""
        executor = SingleThreadedExecutor(context=self.context)
        executor.add_node(self)
        try:
            while self.context.ok() and not self.finalized:
                executor.spin_once(timeout_sec=0.25)
            end = time.monotonic() + FLUSH_S
            while self.context.ok() and time.monotonic() < end:
                executor.spin_once(timeout_sec=0.05)
        finally:
            executor.remove_node(self)
            executor.shutdown(timeout_sec=1.0)


def _make(signals: StopSignals) -> CassLifecycleNode:
    return CassLifecycleNode(signals=signals)


def run(args: list[str] | None = None, signals: StopSignals | None = None) -> int:
    """node.run with the managed node: 0 for a stop or a shutdown
    transition, 1 when the parameters cannot even be declared."""
    return plain.run(args, signals, _make)


def main(args: list[str] | None = None, signals: StopSignals | None = None) -> NoReturn:
    """Entry point of ``cass_lifecycle_node``."""
    plain.main(args, signals, _make)


if __name__ == "__main__":
    main()
