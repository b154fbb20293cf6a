"""A node started without prompts waits for them (docs/ros-interface.md,
"No prompts at start-up"): over real DDS with the real segmenter on tiny
random weights, in-process, and the installed executable for its log line.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from node_harness import (CONFIG, Harness, image_msg, ros_available, stamp_ns, start_node,
                          stop_node, unique_namespace, wait_log)

from cass_ros.ros.wiring.launch_args import ros_args

READY = "]: ready: "   # the node's ready line (not the segmenter's "CASS segmenter ready")
_WHY = ros_available()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")


@pytest.fixture()
def waiting(ros_domain: int, tiny_weights: tuple[str, str]) -> Any:
    """A node with config/cass.yaml's empty prompts, one camera."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from cass_ros.msg import ClassTable, ObjectPresenceArray
    from cass_ros.ros.wiring.node import CassNode

    ns = unique_namespace("cass_wait")
    h = Harness(ros_domain, ns)
    clip, dino = tiny_weights
    args = ["--ros-args", "--params-file", str(CONFIG), "-p", f"clip_weights:={clip}",
            "-p", f"dino_weights:={dino}", "-p", "device:=cpu", "-p", "short_side:=64",
            "-p", 'image_topics:=["front/image_raw"]']
    node = CassNode(cli_args=args, context=h.context, namespace=ns)
    h.executor.add_node(node)
    h.subscribe(Image, "cass/front/segmentation")
    h.subscribe(ObjectPresenceArray, "cass/front/objects")
    h.subscribe(ClassTable, "cass/classes", h.latched_qos())
    h.subscribe(DiagnosticArray, "/diagnostics")
    pub = h.node.create_publisher(Image, "front/image_raw", 10)
    prompt_pub = h.node.create_publisher(String, "cass/prompts", 10)
    h.wait_subscribers(pub)
    h.wait_subscribers(prompt_pub)
    yield SimpleNamespace(h=h, node=node, pub=pub, prompt_pub=prompt_pub,
                          fqn=node.get_fully_qualified_name())
    node.destroy_node()
    h.close()


def _frames_while_waiting(w: Any, n: int = 3) -> list[int]:
    rng = np.random.default_rng(3)
    stamps = []
    for i in range(n):
        stamp = 7_000_000_000 + i * 1_000_000
        rgb = np.kron(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), np.ones((12, 16, 1),
                                                                                np.uint8))
        w.pub.publish(image_msg(rgb, stamp, "front_optical"))
        stamps.append(stamp)
        time.sleep(0.05)
    w.h.wait_for(lambda: w.node.camera_stats()[0]["waiting"] >= n, 20, "frames counted waiting")
    return stamps


def _check_waiting(w: Any) -> None:
    from diagnostic_msgs.msg import DiagnosticStatus

    def ours() -> Any:
        for arr in reversed(w.h.got("/diagnostics")):
            mine = [s for s in arr.status if s.name.startswith(w.fqn + ":")]
            if mine and int({kv.key: kv.value for kv in mine[0].values}["waiting"]) > 0:
                return mine[0]
        return None

    status = w.h.wait_for(ours, 20, "diagnostics counting waiting frames")
    assert status.level == DiagnosticStatus.WARN
    assert status.message == "waiting for prompts"
    values = {kv.key: kv.value for kv in status.values}
    assert values["prompt_id"] == "0" and values["classes"] == "0"
    assert values["processed"] == "0" and values["dropped"] == "0"
    stats = w.node.camera_stats()[0]
    assert stats["waiting"] >= 3 and stats["processed"] == 0
    assert stats["dropped"] == 0 and stats["rejected"] == 0
    # nothing was published: no class table, no per-frame output
    assert not w.h.got("cass/classes")
    assert not w.h.got("cass/front/segmentation") and not w.h.got("cass/front/objects")


def _check_first_set(w: Any, last: int, names: list[str]) -> None:
    table = w.h.wait_message("cass/classes", timeout=60)
    assert table.prompt_id == 1
    assert list(table.class_names) == ["background", *names]
    # the newest waiting frame is segmented without another frame
    objects = w.h.wait_message("cass/front/objects", lambda m: stamp_ns(m.header) == last, 60)
    assert objects.prompt_id == 1
    assert list(objects.class_names) == ["background", *names]
    labels = w.h.wait_message("cass/front/segmentation", lambda m: stamp_ns(m.header) == last)
    assert (labels.height, labels.width) == (48, 64)
    time.sleep(0.5)
    assert [stamp_ns(m.header) for m in w.h.got("cass/front/objects")] == [last]
    assert w.node.camera_stats()[0]["processed"] == 1


def test_waits_then_takes_prompts_from_the_topic(waiting: Any) -> None:
    from std_msgs.msg import String

    stamps = _frames_while_waiting(waiting)
    _check_waiting(waiting)
    waiting.prompt_pub.publish(String(data="person|worker, forklift"))
    _check_first_set(waiting, stamps[-1], ["person", "forklift"])
    assert list(waiting.node.get_parameter("prompts").value) == ["person|worker", "forklift"]


def test_waits_then_takes_prompts_from_the_parameter(waiting: Any) -> None:
    from rclpy.parameter import Parameter

    stamps = _frames_while_waiting(waiting)
    _check_waiting(waiting)
    # background names first: noted while waiting, not an error
    bg = Parameter("background_classes", Parameter.Type.STRING_ARRAY, ["sky", "floor"])
    assert waiting.node.set_parameters([bg])[0].successful
    assert waiting.node.camera_stats()[0]["processed"] == 0
    prompts = Parameter("prompts", Parameter.Type.STRING_ARRAY, ["pallet", "car|truck"])
    result = _set_through_service(waiting, prompts)
    assert result.successful, result.reason
    _check_first_set(waiting, stamps[-1], ["pallet", "car"])
    table = waiting.h.got("cass/classes")[-1]
    assert list(table.synonyms) == ["sky|floor", "pallet", "car|truck"]


def _set_through_service(w: Any, param: Any) -> Any:
    """As ``ros2 param set`` does: the node's set_parameters service."""
    from rcl_interfaces.srv import SetParameters

    client = w.h.node.create_client(SetParameters, f"{w.fqn}/set_parameters")
    try:
        assert client.wait_for_service(timeout_sec=20.0)
        future = client.call_async(SetParameters.Request(parameters=[param.to_parameter_msg()]))
        w.h.wait_for(future.done, 20, "the set_parameters answer")
        return future.result().results[0]
    finally:
        w.h.node.destroy_client(client)


def test_rejected_prompts_keep_it_waiting(waiting: Any) -> None:
    from std_msgs.msg import String

    waiting.prompt_pub.publish(String(data=" ,; |"))
    stamps = _frames_while_waiting(waiting, 2)
    time.sleep(0.5)
    assert not waiting.h.got("cass/classes")
    assert waiting.node.camera_stats()[0]["processed"] == 0
    waiting.prompt_pub.publish(String(data="tree"))
    _check_first_set(waiting, stamps[-1], ["tree"])


def _log_until_ready(tiny_weights: tuple[str, str], log: Path, ns: str,
                     **params: object) -> str:
    """The installed node's log from start until ready (plus half a second),
    then stopped with SIGINT; it must exit 0."""
    clip, dino = tiny_weights
    args = ros_args({"clip_weights": clip, "dino_weights": dino, "device": "cpu",
                     "short_side": 64, **params}) + ["-r", f"__ns:={ns}"]
    proc = start_node(args, log)
    try:
        wait_log(proc, log, READY)
        time.sleep(0.5)
    finally:
        rc = stop_node(proc)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    return text


def test_the_executable_logs_one_waiting_line(tiny_weights: tuple[str, str],
                                              tmp_path: Path, ros_domain: int) -> None:
    ns = unique_namespace("lt")
    text = _log_until_ready(tiny_weights, tmp_path / "node.log", ns)
    lines = [ln for ln in text.splitlines() if "waiting for prompts" in ln]
    assert len(lines) == 1, text
    assert f"waiting for prompts on {ns}/cass/prompts or the 'prompts' parameter" in lines[0]
    assert "FATAL" not in text and "Traceback" not in text


def test_a_parameter_set_alone_is_warned_in_one_line(tiny_weights: tuple[str, str],
                                                      tmp_path: Path, ros_domain: int) -> None:
    """publish_instances: true without instances: true (issue 22): the node
    starts and says in one warning line that it does nothing."""
    text = _log_until_ready(tiny_weights, tmp_path / "node.log", unique_namespace("idle"),
                            publish_instances=True)
    lines = [ln for ln in text.splitlines() if "'publish_instances'" in ln]
    assert len(lines) == 1, text
    assert "WARN" in lines[0] and lines[0].endswith(
        "parameter 'publish_instances' is set (True) but does nothing without instances: true")
