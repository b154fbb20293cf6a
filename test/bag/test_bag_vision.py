"""cass_bag writes the node's vision_msgs topics (docs/ros-interface.md,
"Standard messages"): /cass/<cam>/detections per frame, with the frame's
header and one detection per present class of its label image, and
/cass/<cam>/label_info beside each class table; the definitions travel in
the bag; without vision_msgs' definitions the tool says so and writes the
rest. Tiny random models, the sample bag."""

from __future__ import annotations

import numpy as np
import pytest
from bag_harness import read_bag
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore, get_types_from_msg

from cass_ros.bag import io as bag_io
from cass_ros.cli import bag as bag_cli

_WHY = bag_io.vision_missing(bag_io.make_typestore())
needs_vision = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")


@needs_vision
def test_detections_follow_the_label_images(offline_run, sample_bag):
    out = read_bag(offline_run.out)
    labels = out["/cass/camera/segmentation"]
    objects = out["/cass/camera/objects"]
    detections = out["/cass/camera/detections"]
    assert len(detections) == len(objects) == sample_bag.frames
    seen = 0
    for (t_l, lab), (t_o, obj), (t_d, det) in zip(labels, objects, detections):
        assert t_l == t_o == t_d
        assert det.header == obj.header == lab.header
        arr = bag_io.image_array(lab)
        present = [o for o in obj.objects if o.present]
        assert [d.id for d in det.detections] == [f"{obj.prompt_id}:{o.class_id}"
                                                  for o in present]
        for d, o in zip(det.detections, present):
            assert d.header == obj.header
            ys, xs = np.nonzero(arr == o.class_id)
            x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
            assert (d.bbox.center.position.x, d.bbox.center.position.y) == pytest.approx(
                ((x0 + x1) / 2, (y0 + y1) / 2))
            assert (d.bbox.size_x, d.bbox.size_y) == (x1 - x0, y1 - y0)
            (hyp,) = d.results
            assert (hyp.hypothesis.class_id, hyp.hypothesis.score) == (
                o.label, pytest.approx(o.mean_confidence, rel=1e-6))
            assert hyp.pose.pose.orientation.w == 1.0
            seen += 1
    assert seen > 0


@needs_vision
def test_label_info_beside_each_class_table(offline_run, bag_settings):
    out = read_bag(offline_run.out)
    tables, infos = out["/cass/classes"], out["/cass/camera/label_info"]
    assert len(infos) == len(tables) == 2
    for (t_t, table), (t_i, info) in zip(tables, infos):
        assert t_t == t_i and info.header == table.header
        assert [(c.class_id, c.class_name) for c in info.class_map] == \
            list(enumerate(table.class_names))
        assert info.threshold == pytest.approx(bag_settings.get("prob_threshold", 0.1))
    with Reader(offline_run.out) as reader:
        (conn,) = [c for c in reader.connections if c.topic == "/cass/camera/label_info"]
        (qos,) = conn.ext.offered_qos_profiles
        assert qos.durability.name == "TRANSIENT_LOCAL"


@needs_vision
def test_the_bag_carries_the_vision_definitions(offline_run):
    """A reader without vision_msgs (Foxglove, another machine) decodes the
    detections from the definitions embedded in the bag."""
    with Reader(offline_run.out) as reader:
        conns = [c for c in reader.connections if c.topic == "/cass/camera/detections"]
        store = get_typestore(Stores.ROS2_KILTED)
        assert bag_io.DETECTIONS_TYPE not in store.types
        store.register(get_types_from_msg(conns[0].msgdef.data, bag_io.DETECTIONS_TYPE))
        _, _, raw = next(reader.messages(conns))
        msg = store.deserialize_cdr(raw, bag_io.DETECTIONS_TYPE)
        assert msg.header.frame_id == "camera_optical_frame"


def test_without_vision_definitions_the_rest_is_written(tmp_path, sample_bag_module,
                                                        bag_params_file, monkeypatch, capfd):
    small = sample_bag_module.write_sample_bag(tmp_path / "small", frames=2)
    monkeypatch.setattr(bag_io, "find_vision_msg_dir", lambda: None)
    bag_io.make_typestore.cache_clear()
    try:
        code = bag_cli.main([str(small.path), "--out", str(tmp_path / "out"), "--params-file",
                             str(bag_params_file), "--no-progress"])
        with Reader(tmp_path / "out") as reader:
            topics = {c.topic for c in reader.connections}
        objects = read_bag(tmp_path / "out")["/cass/camera/objects"]
    finally:
        bag_io.make_typestore.cache_clear()     # the next make_typestore sees vision_msgs again
    assert code == 0
    assert topics == {"/cass/classes", "/cass/camera/segmentation",
                      "/cass/camera/segmentation/color", "/cass/camera/objects"}
    assert len(objects) == 2
    notes = [line for line in capfd.readouterr().err.splitlines() if "are not written" in line]
    assert len(notes) == 1 and "vision-msgs" in notes[0]
