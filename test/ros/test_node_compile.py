"""cass_node with ``compile`` on (docs/ros-interface.md, Model): it warms
the compiled trunks up before it logs ready, and says how long that took.
The installed executable with tiny random weights on the CPU; the
compilation of one input shape takes some 20 s on two cores."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from node_harness import ros_available, start_node, stop_node, unique_namespace, wait_log

from cass_ros.ros.wiring.launch_args import ros_args

_WHY = ros_available()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")


def test_node_warms_up_before_ready(tiny_weights: tuple[str, str], tmp_path: Path) -> None:
    clip, dino = tiny_weights
    args = ros_args({"clip_weights": clip, "dino_weights": dino, "device": "cpu",
                     "short_side": 64, "prompts": ["car"], "compile": "default"})
    log_path = tmp_path / "node.log"
    proc = start_node(args + ["-r", f"__ns:={unique_namespace('cass_compile')}"], log_path)
    try:
        log = wait_log(proc, log_path, "]: ready: ", timeout=300.0)
    finally:
        stop_node(proc)
    assert "(fp32, compile default)" in log  # the model line
    start = log.index("compile default: warming up")
    done = re.search(r"warm-up done in (\d+\.\d) s", log)
    assert done is not None, log[-2000:]
    assert float(done.group(1)) > 0
    assert start < done.start() < log.index("]: ready: ")
