"""Stopping cass_node (docs/ros-interface.md, Executables: exit status 0 on a
normal shutdown): promptly at any moment, quietly, whichever way the stop
comes.

- The installed executable gets SIGINT or SIGTERM while it encodes its
  prompts (start-up) and while it runs; SIGINT also with the disposition
  SIG_IGN that the shell gives a background job of a script.
- In-process: the ROS context shut down by its owner stops the node's
  threads, in steady state and during start-up (no "context is invalid"
  error escapes).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from node_harness import (CONFIG, Harness, ros_available, start_node, stop_node,
                          unique_namespace, wait_log)

from cass_ros.ros.wiring.launch_args import ros_args

READY = "]: ready: "   # the node's ready line (not the segmenter's "CASS segmenter ready")
_WHY = ros_available()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")

# Enough class names that encoding them takes many seconds (about 50 ms a
# name with the tiny text tower, 80 templates each, no cache): a stop during
# start-up must not wait for it.
MANY = [f"thing{i}" for i in range(300)]
STEADY_BOUND_S = 1.5
STARTUP_BOUND_S = 3.0

CASES = [
    (signal.SIGINT, False),
    (signal.SIGINT, True),      # background job: SIGINT inherited as SIG_IGN
    (signal.SIGTERM, False),
]
IDS = ["SIGINT", "SIGINT-ignored-at-exec", "SIGTERM"]


def _args(tiny_weights: tuple[str, str], prompts: list[str], ns: str) -> list[str]:
    clip, dino = tiny_weights
    return ros_args({"clip_weights": clip, "dino_weights": dino, "device": "cpu",
                     "short_side": 64, "prompts": prompts}) + ["-r", f"__ns:={ns}"]


def _stop_and_time(proc: Any, sig: signal.Signals, bound: float) -> float:
    t0 = time.monotonic()
    proc.send_signal(sig)
    rc = proc.wait(timeout=bound + 30)
    elapsed = time.monotonic() - t0
    assert rc == 0, f"exit status {rc}"
    return elapsed


def _quiet(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]
    assert "RCLError" not in text and "context is invalid" not in text, text[-3000:]


@pytest.mark.parametrize("sig,ignored", CASES, ids=IDS)
def test_stop_while_encoding_prompts(tiny_weights: tuple[str, str], tmp_path: Path,
                                     ros_domain: int, sig: signal.Signals,
                                     ignored: bool) -> None:
    log = tmp_path / "node.log"
    proc = start_node(_args(tiny_weights, MANY, unique_namespace("cass_stop")), log,
                      ignore_sigint=ignored)
    try:
        wait_log(proc, log, "encoding")     # the library's line as the encoding begins
        time.sleep(0.3)
        elapsed = _stop_and_time(proc, sig, STARTUP_BOUND_S)
    finally:
        stop_node(proc)
    text = log.read_text()
    _quiet(text)
    assert READY not in text, "the encoding finished before the stop"
    assert elapsed < STARTUP_BOUND_S, f"took {elapsed:.2f} s to stop during start-up"
    assert len([ln for ln in text.splitlines() if "stopped" in ln]) <= 1


@pytest.mark.parametrize("sig,ignored", CASES, ids=IDS)
def test_stop_when_running(tiny_weights: tuple[str, str], tmp_path: Path, ros_domain: int,
                           sig: signal.Signals, ignored: bool) -> None:
    log = tmp_path / "node.log"
    proc = start_node(_args(tiny_weights, ["car"], unique_namespace("cass_stop")), log,
                      ignore_sigint=ignored)
    try:
        wait_log(proc, log, READY)
        time.sleep(1.2)                     # spinning: a diagnostics period has passed
        before = log.read_text()
        elapsed = _stop_and_time(proc, sig, STEADY_BOUND_S)
    finally:
        stop_node(proc)
    text = log.read_text()
    _quiet(text)
    assert elapsed < STEADY_BOUND_S, f"took {elapsed:.2f} s to stop"
    assert len(text[len(before):].strip().splitlines()) <= 1, text[len(before):]


def _node_threads() -> set[str]:
    return {t.name for t in threading.enumerate()} & {"cass_inference", "cass_prompts"}


def _node_args(tiny_weights: tuple[str, str], prompts: list[str]) -> list[str]:
    clip, dino = tiny_weights
    return ["--ros-args", "--params-file", str(CONFIG),
            "-p", f"clip_weights:={clip}", "-p", f"dino_weights:={dino}",
            "-p", "device:=cpu", "-p", "short_side:=64",
            "-p", "prompts:=[" + ", ".join(f'"{p}"' for p in prompts) + "]"]


def test_context_shutdown_stops_the_threads(ros_domain: int,
                                            tiny_weights: tuple[str, str]) -> None:
    from cass_ros.ros.wiring.node import CassNode

    ns = unique_namespace("cass_ctx")
    h = Harness(ros_domain, ns)
    try:
        node = CassNode(cli_args=_node_args(tiny_weights, ["car"]), context=h.context,
                        namespace=ns)
        assert _node_threads() == {"cass_inference", "cass_prompts"}
        h.context.try_shutdown()            # the owner shuts the context down
        t0 = time.monotonic()
        h.wait_for(lambda: not _node_threads(), 5, "the node's threads to end")
        assert time.monotonic() - t0 < STEADY_BOUND_S
        node.destroy_node()                 # and destroying it again is harmless
    finally:
        h.close()


def test_context_shutdown_during_startup_is_a_stop(ros_domain: int,
                                                   tiny_weights: tuple[str, str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from cass_ros.core.segmenter import Segmenter
    from cass_ros.ros.wiring.node import CassNode
    from cass_ros.ros.wiring.stopping import StopRequested

    ns = unique_namespace("cass_ctx")
    h = Harness(ros_domain, ns)
    prepare = Segmenter.prepare_prompts

    def prepare_then_shutdown(self, *args, **kwargs):
        # The context goes down while the start-up prompts are encoded (not
        # after a fixed delay, which a warm text cache can outrun).
        prepared = prepare(self, *args, **kwargs)
        h.context.try_shutdown()
        return prepared

    try:
        monkeypatch.setattr(Segmenter, "prepare_prompts", prepare_then_shutdown)
        # in-process there is no signal to cut the encoding short: the
        # context is found shut down after it, instead of an RCLError
        with pytest.raises(StopRequested):
            CassNode(cli_args=_node_args(tiny_weights, MANY[:60]), context=h.context,
                     namespace=ns)
        assert not _node_threads()
    finally:
        h.close()


def test_importing_the_node_loads_no_torch(tmp_path: Path) -> None:
    """The entry module stays light: torch loads with the models, after the
    parameter checks and after the stop handlers are installed."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import sys, cass_ros.ros.wiring.node; "
                           "print('torch' in sys.modules)"], cwd=tmp_path, env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"
