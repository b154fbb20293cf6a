"""Bags and the ObjectPresence 3D fields: a bag recorded with the definition
from before them (no depth_pixel_count, centroid, box_min, box_max) still
reads, through its own embedded definition, where objects are read (the
harness's read_bag, the summary rows); bags written now carry the new
fields (zero without depth) in both storages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bag_harness import read_bag
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from cass_ros.bag import io as bag_io
from cass_ros.core.result import SegmentationResult, label_statistics

# msg/ObjectPresence.msg as it was before the 3D fields.
OLD_PRESENCE = """\
uint16 class_id
string label
float32 presence
bool present
uint32 pixel_count
float32 area_fraction
float32 mean_confidence
sensor_msgs/RegionOfInterest bbox
"""
TOPIC = "/cass/camera/objects"


def _old_typestore():
    store = get_typestore(Stores.ROS2_KILTED)
    types = get_types_from_msg(OLD_PRESENCE, bag_io.OBJECT)
    array = (bag_io.find_msg_dir() / "ObjectPresenceArray.msg").read_text()
    types.update(get_types_from_msg(array, bag_io.OBJECTS))
    store.register(types)
    return store


def _write_old_bag(path: Path, storage: str) -> None:
    ts = _old_typestore()
    Presence, Array = ts.types[bag_io.OBJECT], ts.types[bag_io.OBJECTS]
    Roi = ts.types["sensor_msgs/msg/RegionOfInterest"]
    obj = Presence(class_id=1, label="car", presence=0.75, present=True, pixel_count=12,
                   area_fraction=0.25, mean_confidence=0.5,
                   bbox=Roi(x_offset=1, y_offset=2, width=3, height=4, do_rectify=False))
    msg = Array(header=bag_io.header_msg(ts, 7_000_000_000, "cam"),
                class_names=["background", "car"], objects=[obj], prompt_id=3,
                inference_ms=12.5)
    writer = bag_io.open_writer(path, storage)
    try:
        conn = writer.add_connection(TOPIC, bag_io.OBJECTS, typestore=ts)
        writer.write(conn, 7_000_000_000, ts.serialize_cdr(msg, bag_io.OBJECTS))
    finally:
        writer.close()


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_bag_with_the_old_definition_still_reads(tmp_path: Path, storage: str) -> None:
    path = tmp_path / "old_bag"
    _write_old_bag(path, storage)
    (_, msg), = read_bag(path)[TOPIC]
    (o,) = msg.objects
    assert (o.class_id, o.label, o.pixel_count, o.bbox.height) == (1, "car", 12, 4)
    assert (msg.prompt_id, msg.inference_ms) == (3, 12.5)
    assert not hasattr(o, "depth_pixel_count")
    row = bag_io.summary_row(msg, image="x", topic="/cam", camera="camera", index=0)
    assert row["objects"][0]["bbox"] == [1, 2, 3, 4] and row["prompt_id"] == 3
    # the current definitions alone cannot read it: the embedded ones are needed
    from rosbags.rosbag2 import Reader

    with Reader(path) as reader:
        (_, _, raw), = list(reader.messages())
    with pytest.raises(Exception):  # noqa: B017 - rosbags raises its own deserialisation errors
        bag_io.make_typestore().deserialize_cdr(raw, bag_io.OBJECTS)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bags_written_now_carry_zero_3d_fields(tmp_path: Path, storage: str) -> None:
    ts = bag_io.make_typestore()
    labels = np.zeros((4, 6), np.uint8)
    labels[1:3, 2:5] = 1
    counts, conf, boxes = label_statistics(labels, np.full(labels.shape, 0.5, np.float32), 2)
    result = SegmentationResult(labels=labels, class_names=["background", "car"],
                                presence=np.ones(2, np.float32), pixel_counts=counts,
                                mean_confidence=conf, boxes=boxes, prompt_id=1)
    msg = bag_io.objects_msg(ts, bag_io.header_msg(ts, 1, "cam"), result)
    path = tmp_path / "new_bag"
    writer = bag_io.open_writer(path, storage)
    try:
        conn = writer.add_connection(TOPIC, bag_io.OBJECTS, typestore=ts)
        writer.write(conn, 1, ts.serialize_cdr(msg, bag_io.OBJECTS))
    finally:
        writer.close()
    (_, back), = read_bag(path)[TOPIC]
    (o,) = back.objects
    assert o.pixel_count == 6 and o.depth_pixel_count == 0
    assert (o.centroid.x, o.box_min.y, o.box_max.z) == (0.0, 0.0, 0.0)
