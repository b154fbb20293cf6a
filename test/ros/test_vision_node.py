"""cass_node's vision_msgs topics over real DDS (docs/ros-interface.md,
"Standard messages"): /cass/<cam>/detections with the image's header and
one detection per present class of the label image, /cass/<cam>/label_info
latched and renewed with every prompt set (and prob_threshold change), the
detections built only while subscribed unless publish_detections, and,
with vision_msgs made unimportable, one warning and every other output.
In-process with the real segmenter on tiny random weights."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from node_harness import (CONFIG, Harness, image_msg, ros_available, stamp_ns,
                          unique_namespace)

from cass_ros.ros.outputs.vision import vision_msgs_missing

_WHY = ros_available()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")

H, W = 48, 64
RNG = np.random.default_rng(5)


_NO_VISION = vision_msgs_missing()
needs_vision = pytest.mark.skipif(_NO_VISION is not None, reason=_NO_VISION or "")


def _frame() -> np.ndarray:
    small = RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.kron(small, np.ones((H // 4, W // 4, 1), np.uint8))


def _start(h: Harness, tiny_weights: tuple[str, str], ns: str) -> Any:
    from cass_ros.ros.wiring.node import CassNode

    clip, dino = tiny_weights
    args = ["--ros-args", "--params-file", str(CONFIG),
            "-p", f"clip_weights:={clip}", "-p", f"dino_weights:={dino}",
            "-p", "device:=cpu", "-p", "short_side:=64",
            "-p", 'prompts:=["person|pedestrian", "car"]', "-p", 'background_classes:=["sky"]',
            "-p", 'image_topics:=["front/image_raw"]']
    node = CassNode(cli_args=args, context=h.context, namespace=ns)
    h.executor.add_node(node)
    return node


@pytest.fixture(scope="module")
def live(ros_domain: int, tiny_weights: tuple[str, str]) -> Any:
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from cass_ros.msg import ClassTable, ObjectPresenceArray

    ns = unique_namespace("cass_vision")
    h = Harness(ros_domain, ns)
    node = _start(h, tiny_weights, ns)
    h.subscribe(Image, "cass/front/segmentation")
    h.subscribe(ObjectPresenceArray, "cass/front/objects")
    h.subscribe(ClassTable, "cass/classes", h.latched_qos())
    pub = h.node.create_publisher(Image, "front/image_raw", 10)
    prompt_pub = h.node.create_publisher(String, "cass/prompts", 10)
    h.wait_subscribers(pub)
    h.wait_subscribers(prompt_pub)
    yield SimpleNamespace(h=h, node=node, pub=pub, prompt_pub=prompt_pub, stamp=[5_000_000_000])
    node.destroy_node()
    h.close()


def _send(live: Any) -> int:
    live.stamp[0] += 1_000_000
    live.pub.publish(image_msg(_frame(), live.stamp[0], "front_optical"))
    return live.stamp[0]


def _matching(live: Any, topic: str, stamp: int) -> Any:
    return live.h.wait_message(topic, lambda m: stamp_ns(m.header) == stamp)


def _subscribe_detections(live: Any) -> Any:
    from vision_msgs.msg import Detection2DArray

    sub = live.h.subscribe(Detection2DArray, "cass/front/detections")
    publisher = live.node._outputs[0].detections
    live.h.wait_for(lambda: publisher.get_subscription_count() > 0, 20,
                    "the node to see the detections subscriber")
    return sub


def _check_detections(det: Any, labels_msg: Any, objects: Any) -> None:
    """The detections say what the label image shows (boxes found here)."""
    from cass_ros.ros.outputs.messages import labels_from_msg

    labels = labels_from_msg(labels_msg)
    present = [o for o in objects.objects if o.pixel_count > 0]
    assert present, "the test frame should show at least one class"
    assert [d.id for d in det.detections] == [f"{objects.prompt_id}:{o.class_id}" for o in present]
    for d, o in zip(det.detections, present):
        assert d.header == det.header
        ys, xs = np.nonzero(labels == o.class_id)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        assert (d.bbox.center.position.x, d.bbox.center.position.y) == pytest.approx(
            ((x0 + x1) / 2, (y0 + y1) / 2))
        assert (d.bbox.size_x, d.bbox.size_y) == (x1 - x0, y1 - y0)
        (hyp,) = d.results
        assert hyp.hypothesis.class_id == o.label
        assert hyp.hypothesis.score == pytest.approx(o.mean_confidence, rel=1e-6)


def _label_infos(live: Any) -> list[Any]:
    """Every LabelInfo of a new latched subscriber, after it got one."""
    from vision_msgs.msg import LabelInfo

    got: list[Any] = []
    sub = live.h.node.create_subscription(LabelInfo, "cass/front/label_info", got.append,
                                          live.h.latched_qos())
    try:
        live.h.wait_for(lambda: got, 20, "the latched label_info")
    finally:
        live.h.node.destroy_subscription(sub)
    return got


def _latest_table(live: Any) -> Any:
    return max(live.h.got("cass/classes"), key=lambda m: m.prompt_id)


@needs_vision
def test_detections_carry_the_image_header_and_the_label_image(live: Any) -> None:
    sub = _subscribe_detections(live)
    try:
        stamp = _send(live)
        det = _matching(live, "cass/front/detections", stamp)
        labels = _matching(live, "cass/front/segmentation", stamp)
        objects = _matching(live, "cass/front/objects", stamp)
        assert det.header == labels.header == objects.header
        assert det.header.frame_id == "front_optical"
        _check_detections(det, labels, objects)
    finally:
        live.h.node.destroy_subscription(sub)


@needs_vision
def test_late_subscriber_gets_the_label_info_with_the_class_table_header(live: Any) -> None:
    table = live.h.wait_message("cass/classes")
    (info,) = _label_infos(live)
    assert [(c.class_id, c.class_name) for c in info.class_map] == \
        list(enumerate(table.class_names)) == [(0, "background"), (1, "person"), (2, "car")]
    assert info.header == table.header
    assert info.threshold == pytest.approx(0.1)


@needs_vision
def test_a_new_prompt_set_renews_label_info_and_detection_ids(live: Any) -> None:
    from std_msgs.msg import String

    old = _latest_table(live).prompt_id
    live.prompt_pub.publish(String(data="dog; cat|kitten; forklift"))
    table = live.h.wait_message("cass/classes", lambda m: m.prompt_id > old, 60)
    (info,) = _label_infos(live)
    assert [c.class_name for c in info.class_map] == ["background", "dog", "cat", "forklift"]
    assert info.header == table.header
    sub = _subscribe_detections(live)
    try:
        stamp = _send(live)
        det = _matching(live, "cass/front/detections", stamp)
        objects = _matching(live, "cass/front/objects", stamp)
        assert objects.prompt_id == table.prompt_id
        _check_detections(det, _matching(live, "cass/front/segmentation", stamp), objects)
        assert all(d.id.startswith(f"{table.prompt_id}:") for d in det.detections)
    finally:
        live.h.node.destroy_subscription(sub)


@needs_vision
def test_label_info_follows_prob_threshold(live: Any) -> None:
    from rclpy.parameter import Parameter

    table = _latest_table(live)
    live.node.set_parameters([Parameter("prob_threshold", value=0.3)])
    try:
        live.h.wait_for(lambda: _label_infos(live)[-1].threshold == pytest.approx(0.3), 30,
                        "label_info with the new threshold")
        info = _label_infos(live)[-1]
        assert info.header == table.header                  # same prompt set, same key
        assert _latest_table(live).prompt_id == table.prompt_id
    finally:
        live.node.set_parameters([Parameter("prob_threshold", value=0.1)])


@needs_vision
def test_detections_are_built_only_when_wanted(live: Any, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    from rclpy.parameter import Parameter

    from cass_ros.ros.workers import frames as frame_worker

    built: list[int] = []
    real = frame_worker.detections_msg

    def counting(*args: Any, **kw: Any) -> Any:
        built.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(frame_worker, "detections_msg", counting)
    publisher = live.node._outputs[0].detections
    live.h.wait_for(lambda: publisher.get_subscription_count() == 0, 20, "no subscriber")
    # one inference thread: the second frame's objects arrive after the
    # first frame's outputs are all done
    for _ in range(2):
        _matching(live, "cass/front/objects", _send(live))
    assert built == []
    live.node.set_parameters([Parameter("publish_detections", value=True)])
    try:
        _matching(live, "cass/front/objects", _send(live))
        live.h.wait_for(lambda: built, 20, "the detections built without a subscriber")
    finally:
        live.node.set_parameters([Parameter("publish_detections", value=False)])


def test_without_vision_msgs_the_node_says_so_once_and_runs(
        ros_domain: int, tiny_weights: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    import sys

    from sensor_msgs.msg import Image

    from cass_ros.msg import ObjectPresenceArray

    monkeypatch.setitem(sys.modules, "vision_msgs.msg", None)   # import raises ImportError
    ns = unique_namespace("cass_novision")
    h = Harness(ros_domain, ns)
    node = None
    try:
        node = _start(h, tiny_weights, ns)
        h.subscribe(Image, "cass/front/segmentation")
        h.subscribe(ObjectPresenceArray, "cass/front/objects")
        pub = h.node.create_publisher(Image, "front/image_raw", 10)
        h.wait_subscribers(pub)
        live = SimpleNamespace(h=h, pub=pub, stamp=[9_000_000_000])
        for _ in range(2):
            stamp = _send(live)
            _matching(live, "cass/front/segmentation", stamp)
            _matching(live, "cass/front/objects", stamp)
        assert node._outputs[0].detections is None and node._outputs[0].label_info is None
        topics = {name for name, _ in h.node.get_topic_names_and_types()}
        assert f"{ns}/cass/front/segmentation" in topics
        assert not {f"{ns}/cass/front/detections", f"{ns}/cass/front/label_info"} & topics
        time.sleep(0.2)
        err = capfd.readouterr().err
        lines = [line for line in err.splitlines() if "label_info are off" in line]
        assert len(lines) == 1, err[-2000:]
        assert "WARN" in lines[0] and "ros-<distro>-vision-msgs" in lines[0]
    finally:
        if node is not None:
            node.destroy_node()
        h.close()
