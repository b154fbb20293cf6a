"""cass_bag on recordings other tools wrote (docs/ros-interface.md, cass_bag,
"Input kinds"): types named without ``/msg/`` (sqlite3 and MCAP), a bare
``.db3``, Foxglove MCAP (protobuf and JSON), ROS 1 ``.bag``; rosbag2
metadata versions 4 to 8, split bags, file and message compression. Each
gives the frames (and prompt messages) of the same recording written as a
rosbag2 of today's form, and so cass_bag's outputs equal that bag's; each
unreadable one is one line and a failure status; a run that segments no
frame exits 1. Bags written here with the writers those tools use
(foreign_bags.py), tiny random models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bag_harness import read_bag
from foreign_bags import (COMPRESSED, RAW, Recording, recording, undecodable,
                          with_metadata_version, write_bad_protobuf_schema, write_bare_db3,
                          write_foxglove_json, write_foxglove_protobuf, write_mcap_cdr,
                          write_ros1, write_rosbag2, write_split)
from rosbags.rosbag2 import CompressionFormat, CompressionMode

from cass_ros.bag import io as bag_io
from cass_ros.bag import tool as bag_tool
from cass_ros.cli import bag as bag_cli


@pytest.fixture(scope="module")
def rec(sample_bag_module) -> Recording:
    """Two cameras (raw, PNG), three frames each, a prompt message before the last."""
    return recording(sample_bag_module.render_frame)


@pytest.fixture(scope="module")
def rec_plain(sample_bag_module) -> Recording:
    """The same frames without the prompt message (Foxglove files hold images only)."""
    return recording(sample_bag_module.render_frame, prompt=False)


@pytest.fixture(scope="module")
def segmenter(bag_params_file):
    """One model for the runs of this module (cass_fleet's way: tool.run(opts, segmenter))."""
    return bag_tool.load_segmenter(bag_tool.BagToolOptions(
        input_bag=Path("."), out=Path("."), params_file=bag_params_file))


def _run(src: Path, out: Path, params: Path, segmenter: Any) -> bag_tool.BagToolReport:
    return bag_tool.run(bag_tool.BagToolOptions(input_bag=src, out=out, params_file=params,
                                                progress=False), segmenter)


def _outputs(out: Path) -> dict[str, list[tuple]]:
    """What cass_bag wrote, comparable: per topic, each message's bag time,
    header and content (label images as bytes, objects' classes and prompt_id)."""
    got: dict[str, list[tuple]] = {}
    for topic, msgs in read_bag(out).items():
        rows = []
        for t, m in msgs:
            row: tuple = (t, bag_io.stamp_ns(m.header.stamp), m.header.frame_id)
            if topic.endswith("/segmentation"):
                labels = bag_io.image_array(m)
                row += (labels.shape, labels.tobytes())
            elif topic.endswith("/objects"):
                row += (int(m.prompt_id), tuple(m.class_names),
                        tuple(int(o.pixel_count) for o in m.objects))
            elif topic == bag_io.CLASSES_TOPIC:
                row += (int(m.prompt_id), tuple(m.class_names))
            else:
                continue
            rows.append(row)
        if rows:
            got[topic] = rows
    return got


def _messages(path: Path) -> list[tuple[str, str, int, bytes]]:
    with bag_io.open_input_bag(path) as bag:
        return [(c.topic, c.msgtype, t, bytes(raw)) for c, t, raw in bag.messages(bag.connections)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, rec, rec_plain, bag_params_file, segmenter) -> dict[str, Any]:
    """Both recordings as rosbag2 of today's form, and cass_bag's outputs of them."""
    base = tmp_path_factory.mktemp("reference")
    refs: dict[str, Any] = {}
    for name, r in (("prompts", rec), ("plain", rec_plain)):
        bag = write_rosbag2(base / name, r)
        report = _run(bag, base / f"out_{name}", bag_params_file, segmenter)
        assert report.frames_out == report.frames_in == len(r.frames)
        refs[name] = {"bag": bag, "messages": _messages(bag), "outputs": _outputs(base / f"out_{name}")}
    assert [row[3] for row in refs["prompts"]["outputs"]["/cass/front/objects"]] == [1, 1, 2]
    return refs


# name -> (which reference, how the other tool writes the recording)
FOREIGN = {
    "sqlite3, types without /msg/": (
        "prompts", lambda d, r: write_rosbag2(d / "bag", r, storage="sqlite3", old_names=True)),
    "mcap, types without /msg/": (
        "prompts", lambda d, r: write_rosbag2(d / "bag", r, old_names=True)),
    "bare .db3 (no metadata.yaml)": ("prompts", lambda d, r: write_bare_db3(d / "rec.db3", r)),
    "MCAP without profile, CDR, types without /msg/": (
        "prompts", lambda d, r: write_mcap_cdr(d / "rec.mcap", r)),
    "ROS 1 .bag": ("prompts", lambda d, r: write_ros1(d / "rec.bag", r)),
    "Foxglove MCAP, protobuf": ("plain", lambda d, r: write_foxglove_protobuf(d / "rec.mcap", r)),
    "Foxglove MCAP, JSON": ("plain", lambda d, r: write_foxglove_json(d / "rec.mcap", r)),
}


@pytest.mark.parametrize("kind", FOREIGN)
def test_a_foreign_recording_segments_as_todays_bag(kind, tmp_path, rec, rec_plain, reference,
                                                   bag_params_file, segmenter):
    which, write = FOREIGN[kind]
    src = write(tmp_path, rec if which == "prompts" else rec_plain)
    ref = reference[which]
    with bag_io.open_input_bag(src) as bag:
        types = {c.topic: c.msgtype for c in bag.connections}
    assert types[RAW] == bag_io.IMAGE and types[COMPRESSED] == bag_io.COMPRESSED_IMAGE
    if which == "prompts":
        assert types[bag_io.PROMPTS_TOPIC] == bag_io.STRING
    assert set(types) == {t for t, *_ in ref["messages"]}  # other channels are left out
    # the messages are today's, byte for byte: header stamp, frame_id, bag time
    assert _messages(src) == ref["messages"]
    report = _run(src, tmp_path / "out", bag_params_file, segmenter)
    assert report.frames_out == report.frames_in == 6
    assert report.prompts_accepted == (1 if which == "prompts" else 0)
    assert _outputs(tmp_path / "out") == ref["outputs"]


@pytest.mark.parametrize("version", [4, 5, 6, 7, 8])
def test_metadata_versions_4_to_8(version, tmp_path_factory, rec, reference):
    """A sqlite3 bag with metadata.yaml as each rosbag2 version wrote it
    (rosbags writes 8 and 9: the older ones by hand, a field less each)."""
    base = tmp_path_factory.mktemp(f"v{version}")
    v8 = write_rosbag2(base / "v8", rec, storage="sqlite3", version=8)
    bag = v8 if version == 8 else with_metadata_version(v8, base / f"v{version}", version)
    assert f"version: {version}" in (bag / "metadata.yaml").read_text()
    with bag_io.open_input_bag(bag) as opened:
        assert opened.notes == [] and opened.cut_short == []  # read through its metadata
    assert _messages(bag) == reference["prompts"]["messages"]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_split_bag_is_read_in_order(storage, tmp_path, rec, reference):
    bag = write_split(tmp_path / "split", rec, storage)
    assert len(list(bag.glob("split_*"))) == 2
    with bag_io.open_input_bag(bag) as opened:
        assert opened.notes == []
        assert opened.message_count == len(reference["prompts"]["messages"])
    assert _messages(bag) == reference["prompts"]["messages"]


@pytest.mark.parametrize("mode", [CompressionMode.FILE, CompressionMode.MESSAGE],
                         ids=["file", "message"])
def test_zstd_compressed_bags(mode, tmp_path, rec, reference, bag_params_file, segmenter):
    bag = write_rosbag2(tmp_path / "bag", rec, storage="sqlite3",
                        compression=(mode, CompressionFormat.ZSTD))
    meta = (bag / "metadata.yaml").read_text()
    assert "compression_format: zstd" in meta and f"compression_mode: {mode.name.lower()}" in meta
    assert _messages(bag) == reference["prompts"]["messages"]
    if mode == CompressionMode.FILE:
        assert list(bag.glob("*.db3.zstd"))
        report = _run(bag, tmp_path / "out", bag_params_file, segmenter)
        assert report.frames_out == 6
        assert _outputs(tmp_path / "out") == reference["prompts"]["outputs"]


# ---------------------------------------------------------------- what cannot be read


def _cli(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, list[str], str]:
    code = bag_cli.main([*map(str, args), "--no-progress"])
    cap = capsys.readouterr()
    return code, cap.err.strip().splitlines(), cap.out


def _cut(path: Path, dst: Path, fraction: float) -> Path:
    data = path.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def test_unreadable_foreign_recordings_get_one_line(tmp_path, rec, rec_plain, bag_params_file,
                                                    capsys):
    ros1 = write_ros1(tmp_path / "whole.bag", rec)
    fox = write_foxglove_protobuf(tmp_path / "whole.mcap", rec_plain)
    (tmp_path / "noise.bag").write_bytes(np.random.default_rng(0).bytes(4096))
    cases = {
        "random .bag": (tmp_path / "noise.bag", "not a readable ROS 1 bag"),
        "ROS 1 bag cut in half": (_cut(ros1, tmp_path / "cut.bag", 0.5),
                                  "not a readable ROS 1 bag"),
        "Foxglove MCAP cut in half": (_cut(fox, tmp_path / "cut.mcap", 0.5),
                                      "not a readable MCAP file"),
        "a protobuf schema that is none": (write_bad_protobuf_schema(tmp_path / "schema.mcap"),
                                           "the protobuf schema foxglove.RawImage cannot be "
                                           "read"),
        "a Foxglove message that is not JSON": (
            write_foxglove_json(tmp_path / "bad.mcap", rec_plain, bad_message=2),
            "a message cannot be read"),
    }
    for case, (path, why) in cases.items():
        out = tmp_path / f"out_{case.replace(' ', '_')}"
        code, err, _ = _cli(capsys, path, "--out", out, "--params-file", bag_params_file)
        assert code == 2, (case, err)
        assert len(err) == 1, (case, err)  # no traceback, no second line
        assert err[0].startswith(f"cass_bag: error: cannot read bag {path}: "), (case, err)
        assert why in err[0], (case, err)


def test_a_foxglove_file_without_images_says_so(tmp_path, rec_plain, bag_params_file, capsys):
    path = write_foxglove_json(tmp_path / "log.mcap", rec_plain, images=False)
    code, err, _ = _cli(capsys, path, "--out", tmp_path / "out", "--params-file",
                        bag_params_file)
    assert code == 2 and err == ["cass_bag: error: the bag has no sensor_msgs/Image or "
                                 "CompressedImage topic"]


def test_a_run_that_segments_no_frame_exits_1(tmp_path, bag_params_file, capsys):
    bag = undecodable(tmp_path / "broken")
    code, err, out = _cli(capsys, bag, "--out", tmp_path / "out", "--params-file",
                          bag_params_file)
    assert code == bag_cli.EXIT_NOTHING_SEGMENTED == 1
    assert "0/3 frames segmented" in out
    errors = [e for e in err if "error" in e]
    assert errors == ["cass_bag: error: no frame segmented: of 3 frame(s), 3 could not be "
                      "decoded"], err
    assert err[-1] == errors[0] and not any("Traceback" in e for e in err)


def test_nothing_segmented_says_why():
    assert bag_tool.nothing_segmented(0, 0, 0) == \
        "no frame segmented: the chosen image topics hold no message"
    assert bag_tool.nothing_segmented(5, 2, 3) == \
        "no frame segmented: of 5 frame(s), 2 could not be decoded and 3 came before the " \
        "first prompt set"


def test_cass_fleet_fails_a_bag_that_segments_no_frame(tmp_path, rec, reference, bag_params_file,
                                                      capsys):
    """cass_fleet over a folder holding a ROS 1 .bag file and an undecodable
    bag: the first done (cass_bag's outputs), the second failed with
    cass_bag's line; exit status 1."""
    ray = pytest.importorskip("ray")
    from cass_ros.cli import fleet as fleet_cli

    root = tmp_path / "bags"
    root.mkdir()
    write_ros1(root / "robot1.bag", rec)
    undecodable(root / "broken")
    out = tmp_path / "fleet"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 1024 * 1024, logging_level="ERROR")
    try:
        code = fleet_cli.main([str(root), "--out", str(out), "--params-file",
                               str(bag_params_file), "--no-progress"])
    finally:
        ray.shutdown()
    capsys.readouterr()
    assert code == 1
    bags = {b["output"]: b for b in json.loads((out / "fleet.json").read_text())["bags"]}
    assert set(bags) == {"robot1", "broken"}
    broken = bags["broken"]
    assert broken["status"] == "failed" and broken["frames"] == 0
    assert broken["reason"] == "no frame segmented: of 3 frame(s), 3 could not be decoded"
    assert not (out / "broken").exists()
    assert bags["robot1"]["status"] == "done" and bags["robot1"]["frames"] == 6
    assert _outputs(out / "robot1") == reference["prompts"]["outputs"]
