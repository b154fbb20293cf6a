"""The sample bag reads back as a camera recording, in both storage formats."""

from __future__ import annotations

import sqlite3

import cv2
import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Reader

from cass_ros.bag import io as bag_io


def _read_all(path):
    """{topic: [(log_time, msg)]} read with the types embedded in the bag,
    as any other reader (ros2 bag, Foxglove) has to."""
    out: dict[str, list] = {}
    with AnyReader([path]) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, reader.deserialize(raw, conn.msgtype)))
    return out, types


@pytest.mark.parametrize("which", ["sample_bag", "sample_bag_sqlite"])
def test_sample_bag_is_a_camera_recording(which, request, sample_bag_module):
    info = request.getfixturevalue(which)
    msgs, types = _read_all(info.path)
    m = sample_bag_module
    assert types == {m.IMAGE_TOPIC: bag_io.IMAGE, m.COMPRESSED_TOPIC: bag_io.COMPRESSED_IMAGE,
                     m.INFO_TOPIC: "sensor_msgs/msg/CameraInfo",
                     bag_io.PROMPTS_TOPIC: bag_io.STRING}
    raw, comp, cam_info = msgs[m.IMAGE_TOPIC], msgs[m.COMPRESSED_TOPIC], msgs[m.INFO_TOPIC]
    assert len(raw) == len(comp) == len(cam_info) == info.frames == 20

    stamps = [bag_io.stamp_ns(msg.header.stamp) for _, msg in raw]
    assert stamps == info.stamps_ns
    periods = np.diff(stamps) / 1e6
    assert np.all(periods > 90) and np.all(periods < 110)  # ~10 Hz with jitter
    for (t, msg), (_, cmsg), (_, imsg) in zip(raw, comp, cam_info):
        assert t > bag_io.stamp_ns(msg.header.stamp)  # logged after capture
        assert msg.header.frame_id == cmsg.header.frame_id == imsg.header.frame_id \
            == "camera_optical_frame"
        assert cmsg.header.stamp == msg.header.stamp  # same frame, two transports
        assert (msg.height, msg.width, msg.encoding, msg.step) == (480, 640, "bgr8", 640 * 3)
        assert len(msg.data) == 480 * 640 * 3
        assert cmsg.format.startswith("bgr8; jpeg")
        # The JPEG copy shows the same picture.
        dec = cv2.imdecode(np.asarray(cmsg.data, np.uint8), cv2.IMREAD_COLOR)
        pix = np.asarray(msg.data, np.uint8).reshape(480, 640, 3)
        assert dec.shape == pix.shape
        assert np.abs(dec.astype(int) - pix).mean() < 4.0
        assert (imsg.width, imsg.height) == (640, 480) and imsg.k[0] > 0

    # Distinct objects: frames hold many colours, and the scene moves.
    first = np.asarray(raw[0][1].data, np.uint8).reshape(480, 640, 3)
    last = np.asarray(raw[-1][1].data, np.uint8).reshape(480, 640, 3)
    assert len(np.unique((first // 32).reshape(-1, 3), axis=0)) >= 8
    assert np.abs(first.astype(int) - last).mean() > 3.0

    # One prompt message, between frame 9 and frame 10 in bag time.
    (t_prompt, prompt), = msgs[bag_io.PROMPTS_TOPIC]
    assert prompt.data == info.prompt_text == m.BAG_PROMPT_TEXT
    k = info.first_frame_after_prompt
    assert raw[k - 1][0] < t_prompt < raw[k][0]


def test_sample_bag_is_deterministic(tmp_path, sample_bag, sample_bag_module):
    again = sample_bag_module.write_sample_bag(tmp_path / "again", storage="mcap")
    with Reader(sample_bag.path) as a, Reader(again.path) as b:
        ma = [(c.topic, t, bytes(d)) for c, t, d in a.messages()]
        mb = [(c.topic, t, bytes(d)) for c, t, d in b.messages()]
    assert ma == mb


def test_sample_bag_metadata_for_ros2_bag(sample_bag, sample_bag_sqlite):
    """What `ros2 bag play` relies on: rosbag2 format 9 metadata with QoS
    and type hashes; the sqlite3 file has rosbag2's tables."""
    for info, storage in ((sample_bag, "mcap"), (sample_bag_sqlite, "sqlite3")):
        import yaml

        meta = yaml.safe_load((info.path / "metadata.yaml").read_text())
        bag = meta["rosbag2_bagfile_information"]
        assert bag["version"] == 9 and bag["storage_identifier"] == storage
        for entry in bag["topics_with_message_count"]:
            topic = entry["topic_metadata"]
            assert topic["serialization_format"] == "cdr"
            assert topic["type_description_hash"].startswith("RIHS01_")
            assert topic["offered_qos_profiles"][0]["reliability"] == "reliable"
    (db,) = sample_bag_sqlite.path.glob("*.db3")
    con = sqlite3.connect(db)
    tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
    con.close()
    assert {"topics", "messages", "metadata", "schema"} <= tables


def test_write_refuses_to_overwrite(tmp_path, sample_bag_module):
    out = tmp_path / "bag"
    sample_bag_module.write_sample_bag(out, frames=2)
    with pytest.raises(bag_io.BagError, match="already exists"):
        sample_bag_module.write_sample_bag(out, frames=2)
    sample_bag_module.write_sample_bag(out, frames=3, overwrite=True)
    with Reader(out) as reader:
        assert reader.topics["/camera/image_raw"].msgcount == 3


def test_typestore_has_the_cass_messages():
    ts = bag_io.make_typestore()
    for name in bag_io.CASS_MESSAGES:
        assert f"cass_ros/msg/{name}" in ts.types
    # The hashes ros2 computes for these definitions (checked against the
    # colcon-built package when it is sourced, in test_bag_tool).
    assert ts.hash_rihs01(bag_io.OBJECTS).startswith("RIHS01_")
