"""config/foxglove_layout.json (docs/ros-interface.md, Foxglove): a layout
Foxglove can load, whose every topic is one cass_node really has, with the
message type the panel needs. The node's topics come from the ROS graph of
a real node (tiny random weights, depth on, so that the 3D topics exist),
not from a list kept here."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from node_harness import CONFIG, REPO, Harness, ros_available, unique_namespace

LAYOUT = REPO / "config" / "foxglove_layout.json"
# The config keys of Foxglove's panels whose value is a topic (or a message
# path that starts with one); a relative name there would never match the
# bridge's absolute topics, so they must start with '/'.
TOPIC_KEYS = {"topicName", "topicPath", "topicToRender", "imageTopic", "diffTopicPath",
              "poseTopic", "pointTopic", "poseEstimateTopic", "topic"}
# What a panel needs on its topic, for the panels that read one message type.
PANEL_TYPES = {
    ("Image", "imageTopic"): {"sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"},
    ("DiagnosticSummary", "topicToRender"): {"diagnostic_msgs/msg/DiagnosticArray"},
    ("DiagnosticStatusPanel", "topicToRender"): {"diagnostic_msgs/msg/DiagnosticArray"},
}


def _topic_of(path: str) -> str:
    """The topic of a Foxglove message path (``/a/b.field[0]{x==1}`` -> ``/a/b``)."""
    return re.split(r"[.\[{]", path, maxsplit=1)[0]


def _walk(value: Any, where: str = "") -> Iterator[tuple[str, str | None, str]]:
    """(where, key, string) for every string of the JSON, dict keys included."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{where}/{key}", None, key
            if isinstance(item, str):
                yield f"{where}/{key}", key, item
            else:
                yield from _walk(item, f"{where}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                yield f"{where}[{i}]", None, item
            else:
                yield from _walk(item, f"{where}[{i}]")


def layout_topics(layout: dict[str, Any]) -> dict[str, list[str]]:
    """{topic: [where in the JSON]}: every string (value or key) that starts
    with '/', and every value of a topic key (which must start with '/')."""
    topics: dict[str, list[str]] = {}
    for where, key, text in _walk(layout["configById"]):
        if key in TOPIC_KEYS:
            if not text:
                continue  # an unset optional topic (diffTopicPath "")
            assert text.startswith("/"), f"{where}: topic {text!r} is not absolute"
        elif not text.startswith("/"):
            continue
        topics.setdefault(_topic_of(text), []).append(where)
    return topics


def _full_type(datatype: str) -> str:
    """``std_msgs/String`` (ROS 1 style, which Foxglove also takes) -> ``std_msgs/msg/String``."""
    parts = datatype.split("/")
    return f"{parts[0]}/msg/{parts[1]}" if len(parts) == 2 else datatype


def check_layout(layout: dict[str, Any], published: dict[str, set[str]],
                 subscribed: dict[str, set[str]]) -> list[str]:
    """What is wrong with ``layout`` for a node with these topics ({topic: types}), one line each."""
    problems = []
    known = {**published, **subscribed}
    for topic, wheres in sorted(layout_topics(layout).items()):
        if topic not in known:
            problems.append(f"{topic} ({', '.join(wheres)}): the node neither publishes nor "
                            f"subscribes it")
    for panel, config in layout["configById"].items():
        kind = panel.split("!", 1)[0]
        if kind == "Publish":
            topic, datatype = config.get("topicName", ""), _full_type(config.get("datatype", ""))
            if topic not in subscribed:
                problems.append(f"{panel}: publishes on {topic!r}, which the node does not "
                                "subscribe")
            elif datatype not in subscribed[topic]:
                problems.append(f"{panel}: datatype {datatype} but the node subscribes "
                                f"{topic} as {sorted(subscribed[topic])}")
        for (panel_kind, key), types in PANEL_TYPES.items():
            for where, k, text in _walk(config):
                if kind == panel_kind and k == key and text in published \
                        and not published[text] & types:
                    problems.append(f"{panel}{where}: {text} is {sorted(published[text])}, "
                                    f"the panel shows {sorted(types)}")
    return problems


def _panel_ids(tree: Any) -> Iterator[str]:
    if isinstance(tree, str):
        yield tree
    elif isinstance(tree, dict):
        yield from _panel_ids(tree["first"])
        yield from _panel_ids(tree["second"])


@pytest.fixture(scope="module")
def layout() -> dict[str, Any]:
    return json.loads(LAYOUT.read_text())


def test_layout_is_a_foxglove_layout(layout: dict[str, Any]) -> None:
    assert {"configById", "layout", "globalVariables", "userNodes", "playbackConfig"} <= set(layout)
    placed = list(_panel_ids(layout["layout"]))
    assert sorted(placed) == sorted(layout["configById"])  # every panel placed, once
    kinds = {panel.split("!", 1)[0] for panel in placed}
    assert {"Image", "3D", "DiagnosticSummary", "Publish"} <= kinds
    publish = next(c for p, c in layout["configById"].items() if p.startswith("Publish!"))
    assert json.loads(publish["value"])["data"]  # an example prompt, as JSON the panel sends
    topics = layout_topics(layout)
    assert {"/cass/camera/segmentation/color", "/cass/camera/points", "/cass/camera/detections_3d",
            "/diagnostics", "/cass/prompts"} <= set(topics)


def test_the_check_catches_a_topic_the_node_lacks(layout: dict[str, Any]) -> None:
    """The check below is not vacuous: a wrong topic, type or direction is reported."""
    published = {t: {"x/msg/Y"} for t in layout_topics(layout) if t != "/cass/prompts"}
    published["/cass/camera/segmentation/color"] = {"sensor_msgs/msg/Image"}
    published["/diagnostics"] = {"diagnostic_msgs/msg/DiagnosticArray"}
    subscribed = {"/cass/prompts": {"std_msgs/msg/String"}}
    assert check_layout(layout, published, subscribed) == []
    wrong = json.loads(json.dumps(layout))
    wrong["configById"]["3D!cass_cloud"]["topics"]["/cass/front/points"] = {"visible": True}
    assert any("/cass/front/points" in p for p in check_layout(wrong, published, subscribed))
    assert check_layout(layout, published, {"/cass/prompts": {"std_msgs/msg/Int32"}})
    assert check_layout(layout, {**published, "/cass/prompts": {"std_msgs/msg/String"}}, {})
    assert check_layout(layout, {**published, "/diagnostics": {"std_msgs/msg/String"}},
                        subscribed)


def _graph(node: Any) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """The node's own publishers and subscriptions, names without its namespace."""
    ns = node.get_namespace().rstrip("/")

    def strip(entries: list[tuple[str, list[str]]]) -> dict[str, set[str]]:
        return {(name[len(ns):] if ns and name.startswith(ns + "/") else name): set(types)
                for name, types in entries}

    return (strip(node.get_publisher_names_and_types_by_node(node.get_name(), ns or "/")),
            strip(node.get_subscriber_names_and_types_by_node(node.get_name(), ns or "/")))


_WHY = ros_available()


@pytest.mark.skipif(_WHY is not None, reason=_WHY or "")
def test_every_layout_topic_is_one_the_node_has(layout: dict[str, Any], ros_domain: int,
                                                tiny_weights: tuple[str, str]) -> None:
    from cass_ros.ros.wiring.node import CassNode
    from cass_ros.ros.outputs.vision import vision_msgs_missing

    missing = vision_msgs_missing()
    if missing is not None:
        pytest.skip(f"the node has no detections_3d without vision_msgs: {missing}")
    clip, dino = tiny_weights
    # The default camera (/camera/image_raw: camera name 'camera') with depth.
    args = ["--ros-args", "--params-file", str(CONFIG),
            "-p", f"clip_weights:={clip}", "-p", f"dino_weights:={dino}",
            "-p", "device:=cpu", "-p", "short_side:=48", "-p", 'prompts:=["person", "car"]',
            "-p", 'image_topics:=["camera/image_raw"]',
            "-p", 'depth_topics:=["camera/depth/image_raw"]']
    ns = unique_namespace("cass_foxglove")
    h = Harness(ros_domain, ns)
    node = CassNode(cli_args=args, context=h.context, namespace=ns)
    h.executor.add_node(node)
    try:
        wanted = set(layout_topics(layout))
        deadline = time.monotonic() + 20.0
        published, subscribed = _graph(node)
        # the graph cache can lag the node's own entities by a moment
        while not wanted <= set(published) | set(subscribed) and time.monotonic() < deadline:
            time.sleep(0.2)
            published, subscribed = _graph(node)
        assert "/cass/camera/points" in published  # the depth path is on: a real test
        assert check_layout(layout, published, subscribed) == []
    finally:
        h.executor.remove_node(node)
        node.destroy_node()
        h.close()


def test_installed_with_the_package() -> None:
    """setup.cfg installs the layout beside cass.yaml (CMakeLists installs config/ whole)."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    files = re.split(r"[,\s]+", cfg["options.data_files"]["share/cass_ros/config"].strip())
    assert "config/foxglove_layout.json" in files
    assert re.search(r"install\(DIRECTORY[^)]*\bconfig\b", (REPO / "CMakeLists.txt").read_text())
    assert Path(LAYOUT).is_file()
