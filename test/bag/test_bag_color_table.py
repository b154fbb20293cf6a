"""cass_bag's colour tables beside the output bag and its overlay legend
(docs/ros-interface.md, the colour table; cass_ros/bag/tool.py names the
files). Tiny random models, the real pipeline."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
from bag_harness import read_bag
from rosbags.rosbag2 import Reader

from cass_ros.bag import io as bag_io
from cass_ros.cli import bag as bag_cli
from cass_ros.core.visualize import legend_panel, overlay, palette

HEADER = ["name", "red", "green", "blue", "alpha", "id"]


def _table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == HEADER
        return list(reader)


def _names_and_colors(rows: list[dict[str, str]]) -> tuple[list[str], list[list[int]]]:
    assert [int(r["id"]) for r in rows] == list(range(len(rows)))
    assert {r["alpha"] for r in rows} == {"255"}
    return [r["name"] for r in rows], [[int(r[c]) for c in ("red", "green", "blue")] for r in rows]


def test_one_table_per_prompt_set_and_the_latest_beside_the_bag(offline_run):
    out = Path(offline_run.out)
    tables = [m for _, m in read_bag(out)["/cass/classes"]]  # rosbags still opens the folder
    assert [t.prompt_id for t in tables] == [1, 2]
    assert sorted(p.name for p in out.glob("*.csv")) == [
        "color_table.csv", "color_table_1.csv", "color_table_2.csv"]
    for table in tables:
        names, colors = _names_and_colors(_table(out / f"color_table_{table.prompt_id}.csv"))
        assert names == list(table.class_names)
        # the class table message's colours, and independently the palette
        assert sum(colors, []) == list(table.colors)
        assert colors == palette(len(names)).tolist()
    assert ((out / "color_table.csv").read_text()
            == (out / f"color_table_{tables[-1].prompt_id}.csv").read_text())
    # the extra files do not disturb rosbags' reader or cass_bag's own input
    with Reader(out) as reader:
        assert reader.message_count == sum(len(v) for v in read_bag(out).values())
    with bag_io.open_input_bag(out) as bag:
        assert not bag.cut_short and bag.message_count > 0


def test_legend_on_topic_and_pngs_when_asked_and_overwrite_keeps_working(
        tmp_path, sample_bag_module, bag_params_file):
    small = sample_bag_module.write_sample_bag(tmp_path / "small", frames=2)
    out, pngs = tmp_path / "out", tmp_path / "pngs"
    args = [str(small.path), "--out", str(out), "--params-file", str(bag_params_file),
            "--overlays", str(pngs), "--no-progress", "--storage", "sqlite3",
            "--set", "overlay_legend=true"]
    assert bag_cli.main(args) == 0
    assert bag_cli.main(args) == 2  # the CSVs do not change the refusal ...
    (out / "color_table_1.csv").write_text("stale\n")
    assert bag_cli.main(args + ["--overwrite"]) == 0  # ... nor the replacement
    assert "stale" not in (out / "color_table_1.csv").read_text()
    assert list(out.glob("*.db3"))
    bag = read_bag(out)
    inputs = read_bag(small.path)["/camera/image_raw"]
    colors_topic = bag["/cass/camera/segmentation/color"]
    assert len(colors_topic) == len(inputs) == 2
    for i, ((_, img), (_, lab), (_, col), (_, obj)) in enumerate(zip(
            inputs, bag["/cass/camera/segmentation"], colors_topic, bag["/cass/camera/objects"])):
        names = list(obj.class_names)
        assert _names_and_colors(_table(out / f"color_table_{obj.prompt_id}.csv"))[0] == names
        rgb = np.asarray(img.data, np.uint8).reshape(img.height, img.width, 3)[..., ::-1]
        plain = overlay(rgb, bag_io.image_array(lab), palette(len(names)), 0.5)
        got = bag_io.image_array(col)
        panel = legend_panel(names, palette(len(names)), *rgb.shape[:2])
        h, w = panel.keep.shape
        inside = np.zeros(rgb.shape[:2], bool)
        inside[panel.y:panel.y + h, panel.x:panel.x + w] = True
        assert np.array_equal(got[~inside], plain[~inside])
        assert not np.array_equal(got[inside], plain[inside])
        png = cv2.imread(str(pngs / "camera" / f"{i:06d}_overlay.png"))[..., ::-1]
        assert np.array_equal(png, got)
