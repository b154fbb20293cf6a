"""The vision_msgs builders (cass_ros.ros.outputs.vision; docs/ros-interface.md,
"Standard messages"): one detection per present class with its pixel box,
class name and mean confidence, the label-info class map, and the real
rclpy messages (serialized and read back). Expected boxes are computed here
from the label image with a plain numpy search, not from result.boxes."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from cass_ros.core.prompts import build_prompt_set, parse_prompt_text
from cass_ros.core.result import SegmentationResult, label_statistics
from cass_ros.ros.outputs.vision import (detection_id, detections_fields, label_info_fields,
                                 vision_msgs_missing)

_MISSING = vision_msgs_missing()
needs_vision = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")

NAMES = ["background", "person", "car", "dog", "pallet"]


def _result(prompt_id: int = 7) -> SegmentationResult:
    """A 30 x 40 label image: person a rectangle, car an L shape, dog three
    pixels, pallet absent; mean confidences set per class."""
    labels = np.zeros((30, 40), np.uint8)
    labels[2:12, 5:25] = 1                 # person: x 5..24, y 2..11
    labels[20:29, 30:33] = 2               # car: a column ...
    labels[27:29, 10:33] = 2               # ... and a foot: x 10..32, y 20..28
    labels[0, 39] = labels[1, 38] = labels[0, 38] = 3   # dog: 3 pixels in a corner
    counts, _, boxes = label_statistics(labels, None, len(NAMES))
    conf = np.array([0.9, 0.61, 0.42, 0.33, 0.0], np.float32)
    return SegmentationResult(labels=labels, class_names=list(NAMES),
                              presence=np.linspace(0.1, 0.5, len(NAMES)).astype(np.float32),
                              pixel_counts=counts, mean_confidence=conf, boxes=boxes,
                              prompt_id=prompt_id)


def _expected_box(labels: np.ndarray, k: int) -> tuple[float, float, float, float]:
    """(centre x, centre y, width, height) in pixel-edge coordinates."""
    ys, xs = np.nonzero(labels == k)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return (x0 + x1) / 2.0, (y0 + y1) / 2.0, float(x1 - x0), float(y1 - y0)


def _box(f: dict[str, Any]) -> tuple[float, float, float, float]:
    b = f["bbox"]
    return (b["center"]["position"]["x"], b["center"]["position"]["y"], b["size_x"], b["size_y"])


def test_one_detection_per_present_class_with_its_pixel_box() -> None:
    result = _result()
    fields = detections_fields(result)
    # pallet has no pixel: no detection; the rest in label order
    assert [f["results"][0]["hypothesis"]["class_id"] for f in fields] == ["person", "car", "dog"]
    for f, k in zip(fields, (1, 2, 3)):
        assert _box(f) == pytest.approx(_expected_box(result.labels, k))
        assert f["bbox"]["center"]["theta"] == 0.0
        assert f["results"][0]["hypothesis"]["score"] == pytest.approx(result.mean_confidence[k])
        assert len(f["results"]) == 1
        assert f["id"] == f"7:{k}"
    # the person rectangle, by hand: x 5..24, y 2..11 -> centre (15, 7), 20 x 10
    assert _box(fields[0]) == (15.0, 7.0, 20.0, 10.0)


def test_min_pixels_is_the_present_rule_of_the_objects() -> None:
    result = _result()
    fields = detections_fields(result, min_pixels=4)
    assert [f["id"] for f in fields] == ["7:1", "7:2"]       # the dog's 3 pixels are too few
    present = [o["class_id"] for o in result.objects(4) if o["present"]]
    assert [detection_id(7, k) for k in present] == [f["id"] for f in fields]
    assert detections_fields(result, min_pixels=10_000) == []


def test_no_class_present_gives_no_detection() -> None:
    labels = np.zeros((8, 8), np.uint8)
    counts, _, boxes = label_statistics(labels, None, 3)
    result = SegmentationResult(labels, ["background", "a", "b"], np.zeros(3, np.float32),
                                counts, np.zeros(3, np.float32), boxes)
    assert detections_fields(result) == []


def test_label_info_maps_every_label_value_to_its_name() -> None:
    prompt_set = build_prompt_set(parse_prompt_text("person|worker, car; forklift"), ["sky"])
    f = label_info_fields(prompt_set, 0.25)
    assert f["class_map"] == [{"class_id": 0, "class_name": "background"},
                              {"class_id": 1, "class_name": "person"},
                              {"class_id": 2, "class_name": "car"},
                              {"class_id": 3, "class_name": "forklift"}]
    assert f["threshold"] == 0.25


def test_missing_vision_msgs_gives_a_reason_with_the_way_to_get_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vision_msgs.msg", None)   # import raises ImportError
    reason = vision_msgs_missing()
    assert reason is not None and "\n" not in reason
    assert "vision_msgs" in reason and "ros-<distro>-vision-msgs" in reason
    assert "make build" in reason


@needs_vision
def test_rclpy_messages_carry_the_fields_and_the_header() -> None:
    from rclpy.serialization import deserialize_message, serialize_message
    from std_msgs.msg import Header
    from vision_msgs.msg import Detection2DArray, LabelInfo

    from cass_ros.ros.outputs.vision import detections_msg, label_info_msg

    result = _result(prompt_id=3)
    header = Header(frame_id="front_optical")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = deserialize_message(serialize_message(detections_msg(result, header)),
                              Detection2DArray)
    assert msg.header == header
    assert [d.id for d in msg.detections] == ["3:1", "3:2", "3:3"]
    for d, k in zip(msg.detections, (1, 2, 3)):
        assert d.header == header
        box = (d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.size_x, d.bbox.size_y)
        assert box == pytest.approx(_expected_box(result.labels, k))
        (hyp,) = d.results
        assert hyp.hypothesis.class_id == NAMES[k]
        assert hyp.hypothesis.score == pytest.approx(float(result.mean_confidence[k]))

    prompt_set = build_prompt_set(parse_prompt_text("person, car"), ["sky"])
    info = deserialize_message(serialize_message(label_info_msg(prompt_set, header, 0.1)),
                               LabelInfo)
    assert info.header == header
    assert [(c.class_id, c.class_name) for c in info.class_map] == [
        (0, "background"), (1, "person"), (2, "car")]
    assert info.threshold == pytest.approx(0.1)
