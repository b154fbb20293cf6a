"""/diagnostics and the summary line (docs/ros-interface.md, "Diagnostics
and log") built by cass_ros.ros.outputs.diagnostics from plain statistics: the
level table in order, the key/value pairs, no DDS needed."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("diagnostic_msgs")

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402

from cass_ros.ros.inputs.cameras import Camera  # noqa: E402
from cass_ros.ros.outputs.diagnostics import (Facts, diagnostic_array, level_and_message,  # noqa: E402
                                      summary_line)

FACTS = Facts(device="cpu", model="tiny", prompt_id=3, classes=2)
WAITING = Facts(device="cpu", model="tiny", prompt_id=None, classes=0)


def _stats(**changes: Any) -> dict[str, Any]:
    s = Camera(0, "front", "/front/image_raw").stats(10.0)
    s.update({"silent_s": 0.5, "rate_hz": 4.0, "latency_ms": 120.0, "processed": 5, **changes})
    return s


@pytest.mark.parametrize("changes,waiting,level,message", [
    ({}, True, DiagnosticStatus.WARN, "waiting for prompts"),
    ({"silent_s": None}, True, DiagnosticStatus.WARN, "waiting for prompts"),
    ({"silent_s": None}, False, DiagnosticStatus.WARN, "no images yet on /front/image_raw"),
    ({"silent_s": 7.2}, False, DiagnosticStatus.WARN, "no images for 7 s on /front/image_raw"),
    ({"failed": 2, "processed": 0}, False, DiagnosticStatus.ERROR, "inference fails"),
    ({"failed": 2}, False, DiagnosticStatus.OK, "4.0 Hz, 120 ms"),
    ({}, False, DiagnosticStatus.OK, "4.0 Hz, 120 ms"),
])
def test_levels_follow_the_interface_table(changes: dict[str, Any], waiting: bool,
                                           level: bytes, message: str) -> None:
    assert level_and_message(_stats(**changes), waiting) == (level, message)


def test_array_has_one_status_per_camera_with_the_documented_values() -> None:
    stamp = Time(sec=12, nanosec=5)
    arr = diagnostic_array([_stats(), _stats(camera="rear", topic="/rear/image_raw")],
                           "/ns/cass_node", FACTS, stamp)
    assert arr.header.stamp == stamp
    assert [s.name for s in arr.status] == ["/ns/cass_node: camera front",
                                           "/ns/cass_node: camera rear"]
    values = {kv.key: kv.value for kv in arr.status[1].values}
    assert arr.status[1].hardware_id == "cpu"
    for key in ("topic", "rate_hz", "latency_ms", "inference_ms", "received", "processed",
                "dropped", "dropped_in_node", "dropped_in_dds", "throttled", "waiting",
                "rejected", "failed", "overlays", "device", "model", "prompt_id", "classes"):
        assert key in values, key
    assert "silent_s" not in values and "camera" not in values
    assert values["topic"] == "/rear/image_raw" and values["rate_hz"] == "4.00"
    assert (values["prompt_id"], values["classes"], values["model"]) == ("3", "2", "tiny")


def test_waiting_node_reports_warn_and_prompt_id_zero() -> None:
    (status,) = diagnostic_array([_stats(waiting=4)], "/cass_node", WAITING, Time()).status
    assert (status.level, status.message) == (DiagnosticStatus.WARN, "waiting for prompts")
    values = {kv.key: kv.value for kv in status.values}
    assert (values["prompt_id"], values["classes"], values["waiting"]) == ("0", "0", "4")


def test_summary_line() -> None:
    line = summary_line([_stats(dropped=2, rejected=1, waiting=3)], FACTS)
    assert line == ("front: 4.0 Hz, 120 ms latency, 5 done, 2 dropped, 1 rejected "
                    "| cpu, prompt_id 3")
    waiting = summary_line([_stats(waiting=7, processed=0, rate_hz=0.0)], WAITING)
    assert waiting.endswith("0 rejected, 7 waiting | cpu, no prompts yet")
