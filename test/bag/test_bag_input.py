"""cass_bag's input (docs/ros-interface.md, cass_bag): what is not a readable
bag gets one line; a bag cut short by a crash is read up to its last intact
message; prompt messages found in a bag pass the node's checks. Real bags
written and truncated here, tiny random models."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from bag_harness import read_bag

from cass_ros.bag import io as bag_io
from cass_ros.bag import tool as bag_tool
from cass_ros.cli import bag as bag_cli
from cass_ros.core.prompts import PromptError

RAW = "/camera/image_raw"


def _cli(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, list[str]]:
    code = bag_cli.main([*map(str, args), "--no-progress"])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory: pytest.TempPathFactory, sample_bag_module):
    """The sample scene, 6 frames, mcap: a raw frame is most of a 1 MiB chunk,
    so a cut anywhere in the file leaves whole chunks before it."""
    return sample_bag_module.write_sample_bag(tmp_path_factory.mktemp("small") / "bag", frames=6)


def _copy_cut(src: Path, dst: Path, size: int | float) -> Path:
    """A copy of bag ``src`` whose .mcap keeps ``size`` bytes (a fraction
    when < 1): what a crash or power loss leaves of a recording."""
    shutil.copytree(src, dst)
    (mcap,) = dst.glob("*.mcap")
    keep = int(mcap.stat().st_size * size) if size < 1 else int(size)
    with open(mcap, "r+b") as f:
        f.truncate(keep)
    return mcap


def _by_topic(bag: bag_io.InputBag) -> dict[str, list[tuple[int, bytes]]]:
    out: dict[str, list[tuple[int, bytes]]] = {}
    for conn, t_ns, raw in bag.messages(bag.connections):
        out.setdefault(conn.topic, []).append((t_ns, bytes(raw)))
    return out


def _summary_start(mcap: Path) -> int:
    """The footer's summary_start: where an MCAP file's data section ends."""
    data = mcap.read_bytes()
    return struct.unpack("<Q", data[-37 + 9:-37 + 17])[0]


# ---------------------------------------------------------------- not a bag


def _not_bags(tmp: Path, small_bag) -> dict[str, tuple[Path, str]]:
    empty = tmp / "empty"
    empty.mkdir()
    pngs = tmp / "pngs"
    pngs.mkdir()
    for i in range(3):
        cv2.imwrite(str(pngs / f"{i:06d}.png"), np.full((8, 8, 3), i * 40, np.uint8))
    rng = np.random.default_rng(0)
    (tmp / "notes.bin").write_bytes(rng.bytes(4096))
    (tmp / "noise.mcap").write_bytes(rng.bytes(4096))
    (tmp / "noise.db3").write_bytes(rng.bytes(8192))
    return {
        "empty dir": (empty, "not a rosbag2 directory: no metadata.yaml and no .mcap or .db3 "
                             "file (it is empty)"),
        "dir of PNGs": (pngs, "no metadata.yaml and no .mcap or .db3 file (it holds 3 other"),
        "random file": (tmp / "notes.bin", "not a rosbag2: expected a bag directory, an "
                                           ".mcap or .db3 file or a ROS 1 .bag file, not .bin"),
        "random .mcap": (tmp / "noise.mcap", "not an MCAP file"),
        "random .db3": (tmp / "noise.db3", "file is not a database"),
        "folder of bags": (small_bag.path.parent, "not a rosbag2 directory, but it holds the "
                                                  "bag(s) bag: pass one of them"),
        "cut before any message": (_copy_cut(small_bag.path, tmp / "stub", 0.02).parent,
                                   "no message is intact in it (bag.mcap: cut short at byte"),
    }


def test_what_is_not_a_readable_bag_gets_one_line(tmp_path, small_bag, capsys):
    for case, (path, why) in _not_bags(tmp_path, small_bag).items():
        out = tmp_path / f"out_{case.replace(' ', '_')}"
        code, err = _cli(capsys, path, "--out", out)
        assert code == 2, case
        assert len(err) == 1, (case, err)  # no traceback, no second line
        assert err[0].startswith(f"cass_bag: error: cannot read bag {path}: "), (case, err)
        assert why in err[0], (case, err)
        assert not out.exists(), case


def test_a_sqlite3_bag_cut_short_gets_one_line(tmp_path, sample_bag_module, capsys):
    bag = sample_bag_module.write_sample_bag(tmp_path / "sq", frames=3, storage="sqlite3")
    (db,) = bag.path.glob("*.db3")
    with open(db, "r+b") as f:
        f.truncate(db.stat().st_size // 2)
    code, err = _cli(capsys, bag.path, "--out", tmp_path / "out")
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"cass_bag: error: cannot read bag {bag.path}: ")
    assert "malformed" in err[0]


# ---------------------------------------------------------------- bags cut short


def test_a_truncated_mcap_yields_its_intact_messages(tmp_path, small_bag):
    with bag_io.open_input_bag(small_bag.path) as whole:
        full = _by_topic(whole)
        total = whole.message_count
    assert whole.cut_short == [] and total == 3 * small_bag.frames
    mcap = _copy_cut(small_bag.path, tmp_path / "cut", 0.7)
    size = mcap.stat().st_size
    # the bag directory (metadata.yaml still there) and the .mcap file itself
    for path in (mcap.parent, mcap):
        with bag_io.open_input_bag(path) as bag:
            got = _by_topic(bag)
            assert len(bag.cut_short) == 1
            assert bag.cut_short[0].startswith("bag.mcap: cut short at byte ")
            assert bag.cut_short[0].endswith(f" of {size}")
            assert 0 < bag.message_count < total
            assert bag.message_count == sum(map(len, got.values()))
            assert {c.topic: c.msgcount for c in bag.connections if c.msgcount} == \
                {t: len(m) for t, m in got.items()}
            assert bag.start_time == min(t for m in full.values() for t, _ in m)
        # each topic's messages are the first ones of the whole bag, unchanged
        for topic, msgs in got.items():
            assert msgs == full[topic][: len(msgs)]
        assert 0 < len(got[RAW]) < small_bag.frames


def test_missing_or_broken_metadata_reads_the_storage_file(tmp_path, small_bag):
    with bag_io.open_input_bag(small_bag.path) as whole:
        full = _by_topic(whole)
    # a recording that was never closed: no metadata.yaml, the .mcap cut short
    nometa = _copy_cut(small_bag.path, tmp_path / "nometa", 0.7).parent
    (nometa / "metadata.yaml").unlink()
    with bag_io.open_input_bag(nometa) as bag:
        assert bag.notes == [f"{nometa} has no metadata.yaml: read bag.mcap directly"]
        assert bag.cut_short and 0 < len(_by_topic(bag)[RAW]) < small_bag.frames
    # metadata.yaml cut in half, the storage whole: every message is there
    halfmeta = tmp_path / "halfmeta"
    shutil.copytree(small_bag.path, halfmeta)
    text = (halfmeta / "metadata.yaml").read_text()
    (halfmeta / "metadata.yaml").write_text(text[: len(text) // 2])
    with bag_io.open_input_bag(halfmeta) as bag:
        assert bag.cut_short == []
        assert len(bag.notes) == 1 and "metadata.yaml cannot be used" in bag.notes[0]
        assert "\n" not in bag.notes[0]
        assert _by_topic(bag) == full


def test_an_mcap_cut_in_its_summary_keeps_every_message(tmp_path, small_bag):
    (whole,) = small_bag.path.glob("*.mcap")
    mcap = _copy_cut(small_bag.path, tmp_path / "cut", _summary_start(whole) + 20)
    with bag_io.open_input_bag(mcap.parent) as bag:
        assert bag.cut_short == ["bag.mcap: its summary section is cut short"]
        assert bag.message_count == 3 * small_bag.frames
        assert len(_by_topic(bag)[RAW]) == small_bag.frames


def test_a_split_recording_without_metadata_is_read_in_order(tmp_path, small_bag):
    """rosbag2 splits a long recording (name_0.mcap, name_1.mcap, ...); a
    crash leaves no metadata.yaml and the last file cut short."""
    frames = _raw_frames(small_bag.path)
    split = tmp_path / "split"
    split.mkdir()
    for name, part in (("rec_9", frames[:3]), ("rec_10", frames[3:])):  # 9 before 10
        _write_frames(tmp_path / name, part)
        (tmp_path / name / f"{name}.mcap").rename(split / f"{name}.mcap")
    last = split / "rec_10.mcap"
    with open(last, "r+b") as f:
        f.truncate(int(last.stat().st_size * 0.8))
    with bag_io.open_input_bag(split) as bag:
        got = _by_topic(bag)[RAW]
        (conn,) = [c for c in bag.connections if c.topic == RAW]
        assert conn.msgcount == len(got)
        assert bag.notes == [f"{split} has no metadata.yaml: read rec_9.mcap, rec_10.mcap "
                             "directly"]
        assert len(bag.cut_short) == 1 and bag.cut_short[0].startswith("rec_10.mcap: cut short")
    assert 3 < len(got) < len(frames) and got == frames[: len(got)]


def test_cass_bag_segments_what_a_crash_left(tmp_path, small_bag, bag_params_file, capsys):
    """cass_bag on a truncated bag without metadata.yaml: one line says what
    was recovered; the recovered frames come out as from the whole bag."""
    cut = _copy_cut(small_bag.path, tmp_path / "crashed", 0.7).parent
    (cut / "metadata.yaml").unlink()
    with bag_io.open_input_bag(cut) as bag:
        n_messages, n_frames = bag.message_count, len(_by_topic(bag)[RAW])
    code, err = _cli(capsys, cut, "--out", tmp_path / "out", "--params-file", bag_params_file)
    assert code == 0, err
    (line,) = [e for e in err if "truncated" in e]
    assert (f"input bag is truncated: recovered {n_messages} messages ({n_frames} frames); "
            "bag.mcap: cut short at byte ") in line
    assert code == bag_cli.main([str(small_bag.path), "--out", str(tmp_path / "whole"),
                                 "--params-file", str(bag_params_file), "--no-progress"])
    got = read_bag(tmp_path / "out")["/cass/camera/segmentation"]
    whole = read_bag(tmp_path / "whole")["/cass/camera/segmentation"]
    assert len(got) == n_frames and len(whole) == small_bag.frames
    for (t_a, a), (t_b, b) in zip(got, whole):
        assert t_a == t_b and a.header.stamp == b.header.stamp
        assert np.array_equal(bag_io.image_array(a), bag_io.image_array(b))


def test_the_report_counts_what_was_recovered(tmp_path, small_bag, bag_params_file):
    cut = _copy_cut(small_bag.path, tmp_path / "cut", 0.7)
    report = bag_tool.run(bag_tool.BagToolOptions(
        input_bag=cut, out=tmp_path / "out", params_file=bag_params_file, progress=False))
    with bag_io.open_input_bag(cut) as bag:
        assert report.input_messages == bag.message_count
        assert report.input_cut_short == bag.cut_short
        assert report.frames_in == report.frames_out == len(_by_topic(bag)[RAW])


# ---------------------------------------------------------------- prompts in the bag


def _raw_frames(source: Path) -> list[tuple[int, bytes]]:
    with bag_io.open_input_bag(source) as src:
        return _by_topic(src)[RAW]


def _write_frames(path: Path, frames: list[tuple[int, bytes]],
                  prompts: dict[int, list[str]] | None = None) -> Path:
    """A bag of raw frames (bag time, CDR) with /cass/prompts messages just
    before frame i (prompts[i], in that order)."""
    prompts = prompts or {}
    ts = bag_io.make_typestore()
    writer = bag_io.open_writer(path)
    try:
        images = writer.add_connection(RAW, bag_io.IMAGE, typestore=ts)
        texts = writer.add_connection(bag_io.PROMPTS_TOPIC, bag_io.STRING, typestore=ts)
        for i, (t_ns, raw) in enumerate(frames):
            before = prompts.get(i, [])
            for j, text in enumerate(before):
                msg = ts.types[bag_io.STRING](data=text)
                writer.write(texts, t_ns - 1000 * (len(before) - j),
                             ts.serialize_cdr(msg, bag_io.STRING))
            writer.write(images, t_ns, raw)
    finally:
        writer.close()
    return path


def test_bag_prompts_are_checked_numbered_and_repeats_ignored(tmp_path, small_bag,
                                                              bag_params_file, sample_bag_module):
    """The node's rules (PromptSession): a set failing check_prompt_set is
    rejected like an unparsable one; a repeat of the set last asked for is
    ignored; prompt_id counts accepted sets only, with no gap."""
    initial = ", ".join(sample_bag_module.INITIAL_PROMPTS)
    bag = _write_frames(tmp_path / "in", _raw_frames(small_bag.path), {
        1: [initial],                                # the starting set again: ignored
        2: ["car, tr\x1bee", "car, " + "x" * 201],   # control character, > 200 characters
        3: ["car, sun"],                             # prompt_id 2
        4: ["car, sun", " , ,"],                     # a repeat; no class names
        5: [initial],                                # not the last asked for: prompt_id 3
    })
    report = bag_tool.run(bag_tool.BagToolOptions(
        input_bag=bag, out=tmp_path / "out", params_file=bag_params_file, progress=False))
    assert (report.prompts_accepted, report.prompts_rejected) == (2, 3)
    out = read_bag(tmp_path / "out")
    tables = [m for _, m in out["/cass/classes"]]
    assert [t.prompt_id for t in tables] == [1, 2, 3]
    assert list(tables[1].class_names) == ["background", "car", "sun"]
    assert list(tables[2].class_names) == list(tables[0].class_names)
    objects = [m for _, m in out["/cass/camera/objects"]]
    assert [o.prompt_id for o in objects] == [1, 1, 1, 2, 2, 3]
    assert [len(o.class_names) for o in objects] == [4, 4, 4, 3, 3, 4]


def test_unusable_starting_prompts_are_an_error_before_the_model_loads(tmp_path, small_bag,
                                                                       bag_params_file):
    """As the node refuses to start with them (not "no prompts, wait for the bag's")."""
    opts = bag_tool.BagToolOptions(input_bag=small_bag.path, out=tmp_path / "out",
                                   params_file=bag_params_file, progress=False,
                                   settings={"prompts": ["car", "tr\x07ee"]})
    with pytest.raises(PromptError, match="control characters"):
        bag_tool.run(opts)
    assert not (tmp_path / "out").exists()


def test_input_module_needs_no_torch():
    """bag.io (used by the sample-bag writer and the bag player) and the
    cass_bag command line up to its checks do not import torch."""
    import subprocess
    import sys

    code = ("import sys, cass_ros.bag.io, cass_ros.bag.tool, cass_ros.cli.bag; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"
