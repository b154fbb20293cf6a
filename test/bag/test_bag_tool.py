"""cass_bag on the sample bag: the node's output topics, prompts from the bag,
overlays, summaries, and clear errors. Tiny random models, real pipeline."""

from __future__ import annotations

import dataclasses
import csv
import json
import logging
import shutil

import cv2
import numpy as np
import pytest
from bag_harness import read_bag

from cass_ros.bag import io as bag_io
from cass_ros.bag import tool as bag_tool
from cass_ros.cli import bag as bag_cli
from cass_ros.core.visualize import overlay, palette

TOPICS = {"/cass/classes", "/cass/camera/segmentation", "/cass/camera/segmentation/color",
          "/cass/camera/objects"}
if bag_io.vision_missing(bag_io.make_typestore()) is None:   # test_bag_vision.py
    TOPICS |= {"/cass/camera/detections", "/cass/camera/label_info"}


def _labels(msg):
    return bag_io.image_array(msg)


def test_outputs_follow_the_input_frames(offline_run, sample_bag):
    out = read_bag(offline_run.out)
    assert set(out) == TOPICS
    n = sample_bag.frames
    labels, colors, objects = (out["/cass/camera/segmentation"], out["/cass/camera/segmentation/color"],
                               out["/cass/camera/objects"])
    assert len(labels) == len(colors) == len(objects) == n
    assert offline_run.report.frames_out == n and offline_run.report.frames_in == n
    inputs = read_bag(sample_bag.path)["/camera/image_raw"]
    for (t_in, img), (t_l, lab), (t_c, col), (t_o, obj) in zip(inputs, labels, colors, objects):
        # Outputs sit at the input's bag time and carry its header.
        assert t_in == t_l == t_c == t_o
        for msg in (lab, col, obj):
            assert msg.header.stamp == img.header.stamp
            assert msg.header.frame_id == "camera_optical_frame"
        assert (lab.encoding, lab.height, lab.width) == ("mono8", 480, 640)
        assert (col.encoding, col.height, col.width) == ("rgb8", 480, 640)
        arr = _labels(lab)
        k = len(obj.class_names)
        assert arr.max() < k
        # The objects message describes exactly this label image.
        counts = np.bincount(arr.reshape(-1), minlength=k)
        for o in obj.objects:
            assert o.pixel_count == counts[o.class_id]
            assert o.present == (counts[o.class_id] >= 1)
            assert o.label == obj.class_names[o.class_id]
            if o.present:
                ys, xs = np.nonzero(arr == o.class_id)
                assert (o.bbox.x_offset, o.bbox.y_offset) == (xs.min(), ys.min())
                assert (o.bbox.width, o.bbox.height) == (xs.max() - xs.min() + 1,
                                                         ys.max() - ys.min() + 1)
        assert [o.class_id for o in obj.objects] == list(range(1, k))
        assert obj.inference_ms > 0
        # The overlay is the palette blended over the decoded input.
        rgb = np.asarray(img.data, np.uint8).reshape(480, 640, 3)[..., ::-1]
        assert np.array_equal(_labels(col), overlay(rgb, arr, palette(k), 0.5))
    # Random weights still put several classes in the picture.
    assert len(np.unique(_labels(labels[0][1]))) >= 2


def test_prompt_message_in_the_bag_applies_from_the_next_frame(offline_run, sample_bag,
                                                               sample_bag_module):
    out = read_bag(offline_run.out)
    tables = [m for _, m in out["/cass/classes"]]
    assert [t.prompt_id for t in tables] == [1, 2]
    first = ["background"] + sample_bag_module.INITIAL_PROMPTS
    second = ["background", "car", "sun", "wheel", "roof"]
    assert list(tables[0].class_names) == first and list(tables[1].class_names) == second
    assert tables[1].synonyms[1] == "car|vehicle"
    assert list(tables[1].colors) == palette(5).reshape(-1).tolist()
    k = sample_bag.first_frame_after_prompt
    objects = [m for _, m in out["/cass/camera/objects"]]
    assert [o.prompt_id for o in objects] == [1] * k + [2] * (sample_bag.frames - k)
    assert all(list(o.class_names) == first for o in objects[:k])
    assert all(list(o.class_names) == second for o in objects[k:])
    # The table is latched in the bag's metadata, for ros2 bag play.
    from rosbags.rosbag2 import Reader

    with Reader(offline_run.out) as reader:
        (conn,) = [c for c in reader.connections if c.topic == "/cass/classes"]
        assert conn.ext.offered_qos_profiles[0].durability.name == "TRANSIENT_LOCAL"


def test_overlays_and_summary(offline_run, sample_bag):
    out = read_bag(offline_run.out)
    pngs = sorted((offline_run.overlays / "camera").glob("*_overlay.png"))
    assert len(pngs) == sample_bag.frames
    last_color = _labels(out["/cass/camera/segmentation/color"][-1][1])
    assert np.array_equal(cv2.imread(str(pngs[-1]))[..., ::-1], last_color)
    last_labels = cv2.imread(str(offline_run.overlays / "camera" / "000019_labels.png"),
                             cv2.IMREAD_UNCHANGED)
    assert np.array_equal(last_labels, _labels(out["/cass/camera/segmentation"][-1][1]))

    rows = json.loads(offline_run.summary.read_text())
    assert len(rows) == sample_bag.frames
    for i, (row, (_, obj)) in enumerate(zip(rows, out["/cass/camera/objects"])):
        for key in ("image", "size", "class_names", "objects", "prompt_id", "timings_ms"):
            assert key in row
        assert row["size"] == [480, 640] and row["frame_index"] == i
        assert row["class_names"] == list(obj.class_names)
        assert row["prompt_id"] == obj.prompt_id
        assert row["timings_ms"]["total"] > 0 and len(row["timings_ms"]) > 1
        assert row["image"].startswith("/camera/image_raw@")
        assert row["stamp_ns"] == sample_bag.stamps_ns[i]
        for o_row, o in zip(row["objects"], obj.objects):
            assert set(o_row) == {"class_id", "label", "presence", "present", "pixel_count",
                                  "area_fraction", "mean_confidence", "bbox"}
            assert o_row["pixel_count"] == o.pixel_count
            assert o_row["bbox"] == [o.bbox.x_offset, o.bbox.y_offset, o.bbox.width,
                                     o.bbox.height]


def test_compressed_topic_sqlite_input_and_csv(tmp_path, sample_bag_sqlite, bag_params_file):
    """The JPEG variant from a sqlite3 bag, output in sqlite3, summary as CSV."""
    code = bag_cli.main([str(sample_bag_sqlite.path), "--out", str(tmp_path / "out"),
                          "--params-file", str(bag_params_file), "--topics",
                          "/camera/image_raw/compressed", "--storage", "sqlite3",
                          "--summary", str(tmp_path / "s.csv"), "--no-color", "--no-progress"])
    assert code == 0
    assert list((tmp_path / "out").glob("*.db3"))
    out = read_bag(tmp_path / "out")
    assert set(out) == TOPICS - {"/cass/camera/segmentation/color"}
    assert len(out["/cass/camera/segmentation"]) == sample_bag_sqlite.frames
    with open(tmp_path / "s.csv") as f:
        rows = list(csv.DictReader(f))
    # one row per frame and class: 10 frames x 3 classes, then 10 x 4
    assert len(rows) == 10 * 3 + 10 * 4
    assert rows[0]["topic"] == "/camera/image_raw/compressed"
    assert rows[0]["stamp"] == bag_io.stamp_text(sample_bag_sqlite.stamps_ns[0])


def test_same_result_from_sqlite3_and_mcap(tmp_path, offline_run, sample_bag_sqlite,
                                           bag_params_file):
    code = bag_cli.main([str(sample_bag_sqlite.path), "--out", str(tmp_path / "out"),
                          "--params-file", str(bag_params_file), "--topics", "/camera/image_raw",
                          "--no-progress", "--copy-input"])
    assert code == 0
    a, b = read_bag(offline_run.out), read_bag(tmp_path / "out")
    for (_, la), (_, lb) in zip(a["/cass/camera/segmentation"], b["/cass/camera/segmentation"]):
        assert np.array_equal(_labels(la), _labels(lb))
    # --copy-input: the input topics travel along, unchanged.
    assert len(b["/camera/image_raw"]) == len(b["/camera/camera_info"]) == 20
    assert b["/cass/prompts"][0][1].data == sample_bag_sqlite.prompt_text


def test_errors_are_one_clear_line(tmp_path, sample_bag, bag_params_file, capsys):
    def run(*args):
        code = bag_cli.main([*map(str, args), "--no-progress"])
        return code, capsys.readouterr().err.strip().splitlines()

    # a topic the bag does not have: the message lists the image topics it has
    code, err = run(sample_bag.path, "--out", tmp_path / "o1", "--params-file", bag_params_file,
                    "--topics", "/front/image_raw")
    assert code == 2 and "/front/image_raw" in err[-1] and "/camera/image_raw (Image)" in err[-1]
    assert not (tmp_path / "o1").exists()
    # not a bag
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "metadata.yaml").write_text("this: is not a bag\n")
    code, err = run(junk, "--out", tmp_path / "o2")
    assert code == 2 and err[-1].startswith("cass_bag: error: cannot read bag")
    code, err = run(tmp_path / "missing", "--out", tmp_path / "o3")
    assert code == 2 and "does not exist" in err[-1]
    # an existing output is never replaced without --overwrite
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    code, err = run(sample_bag.path, "--out", existing, "--params-file", bag_params_file)
    assert code == 2 and "--overwrite" in err[-1]
    assert (existing / "keep.txt").read_text() == "mine"
    # writing into the input bag is refused even with --overwrite
    code, err = run(sample_bag.path, "--out", sample_bag.path, "--overwrite")
    assert code == 2 and "input bag" in err[-1]
    # a bad parameter names itself
    code, err = run(sample_bag.path, "--out", tmp_path / "o4", "--params-file", bag_params_file,
                    "--set", "short_side=4")
    assert code == 2 and "short_side" in err[-1]
    code, err = run(sample_bag.path, "--out", tmp_path / "o5", "--set", "no_such_param=1")
    assert code == 2 and "no_such_param" in err[-1]


def test_overwrite_replaces_the_output(tmp_path, sample_bag, sample_bag_module, bag_params_file):
    small = sample_bag_module.write_sample_bag(tmp_path / "small", frames=2)
    out = tmp_path / "out"
    args = [str(small.path), "--out", str(out), "--params-file", str(bag_params_file),
            "--no-progress"]
    assert bag_cli.main(args) == 0
    assert bag_cli.main(args) == 2
    assert bag_cli.main(args + ["--overwrite"]) == 0
    assert len(read_bag(out)["/cass/camera/objects"]) == 2


def test_frames_before_the_first_prompt_are_skipped(tmp_path, sample_bag, bag_params_file):
    """Without prompts in the parameters, the bag's prompt message starts it."""
    import yaml

    params = yaml.safe_load(bag_params_file.read_text())
    params["/**"]["ros__parameters"]["prompts"] = []
    pf = tmp_path / "noprompts.yaml"
    pf.write_text(yaml.safe_dump(params))
    opts = bag_tool.BagToolOptions(input_bag=sample_bag.path, out=tmp_path / "out",
                                   params_file=pf, settings={"classes_file": ""}, progress=False)
    report = bag_tool.run(opts)
    k = sample_bag.first_frame_after_prompt
    assert report.frames_without_prompts == k
    assert report.frames_out == sample_bag.frames - k
    objects = read_bag(tmp_path / "out")["/cass/camera/objects"]
    assert [o.prompt_id for _, o in objects] == [1] * (sample_bag.frames - k)


def test_output_messages_deserialize_with_the_built_package(offline_run):
    """The bag's CDR is what rclpy's generated cass_ros messages read (the
    colcon-built package; skipped without it)."""
    pytest.importorskip("rclpy")
    try:
        from cass_ros.msg import ClassTable, ObjectPresenceArray
    except ImportError:
        pytest.skip("cass_ros.msg not built: run make build and source install/setup.bash")
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    with Reader(offline_run.out) as reader:
        for conn, _, raw in reader.messages():
            if conn.msgtype == bag_io.OBJECTS:
                msg = deserialize_message(bytes(raw), ObjectPresenceArray)
                assert msg.class_names[0] == "background" and len(msg.objects) >= 3
            elif conn.msgtype == bag_io.CLASS_TABLE:
                msg = deserialize_message(bytes(raw), ClassTable)
                assert len(msg.colors) == 3 * len(msg.class_names)


def test_sample_bag_tool_cli_entry(tmp_path, sample_bag, bag_params_file):
    """The installed cass_bag executable runs (when the install tree is sourced)."""
    import os
    import subprocess
    from pathlib import Path

    exe = None
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        cand = Path(prefix) / "lib" / "cass_ros" / "cass_bag"
        if prefix and cand.is_file():
            exe = cand
            break
    if exe is None:
        pytest.skip("no installed cass_bag (make build, source install/setup.bash)")
    small = tmp_path / "small"
    shutil.copytree(sample_bag.path, small)
    proc = subprocess.run([str(exe), str(small), "--out", str(tmp_path / "o"), "--params-file",
                           str(bag_params_file), "--topics", "/camera/image_raw"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "20/20 frames segmented" in proc.stdout
    assert "cass_bag" in proc.stderr  # the progress bar


def test_a_setting_that_needs_another_is_warned(tmp_path, sample_bag, bag_params_file):
    """cass_bag reads the node's parameters, and says as the node does when
    one of them does nothing without another (issue 22). A handler of its
    own, not caplog: launch's logger class keeps cass_bag's logger from
    propagating (test/cli/test_cli.py, error_lines)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("cass_bag").addHandler(handler)
    opts = bag_tool.BagToolOptions(input_bag=sample_bag.path, out=tmp_path / "o",
                                   params_file=bag_params_file,
                                   settings={"publish_instances": True})
    try:
        bag_tool._read_settings(opts)
        assert [r.getMessage() for r in records] == [
            "parameter 'publish_instances' is set (True) but does nothing without instances: true"]
        records.clear()
        bag_tool._read_settings(dataclasses.replace(
            opts, settings={"publish_instances": True, "instances": True}))
        assert not records
    finally:
        logging.getLogger("cass_bag").removeHandler(handler)
