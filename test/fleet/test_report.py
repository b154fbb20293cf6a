"""cass_fleet --report (cass_ros/fleet/report.py): DIR/report.html for two
real output bags of cass_bag (one whole with overlays, one from a truncated
input without them) and a failed bag; the page's structure and links, the
timeline plots, and the data behind them against the messages read
independently. Tiny random models."""

from __future__ import annotations

import importlib.util
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from html import unescape
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np
import pytest
from bag_harness import read_bag

from cass_ros.bag import io as bag_io
from cass_ros.bag import tool as bag_tool
from cass_ros.core.visualize import overlay
from cass_ros.fleet import report

needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="matplotlib is not installed (the report's plots)")
OBJECTS = "/cass/camera/objects"
# min_pixels this high makes the random model's classes come and go (a
# class is present with at least this many of 640 x 480 pixels), so first
# appearances fall on different frames.
MIN_PIXELS = 90000
FAILED_REASON = "cannot read bag /data/c: not a rosbag2 <dir> & more"


@pytest.fixture(scope="module")
def report_run(tmp_path_factory: pytest.TempPathFactory, sample_bag: Any, sample_bag_module: Any,
               bag_params_file: Path) -> SimpleNamespace:
    """DIR with two output bags, the manifest, and the written page."""
    base = tmp_path_factory.mktemp("fleet_report")
    out_dir = base / "out dir"   # a space: links must be URL-quoted
    whole = bag_tool.run(bag_tool.BagToolOptions(
        input_bag=sample_bag.path, out=out_dir / "bags" / "whole", params_file=bag_params_file,
        settings={"min_pixels": MIN_PIXELS}, progress=False))
    # What a crash leaves of a 6-frame recording: 70 % of its .mcap.
    small = sample_bag_module.write_sample_bag(base / "small", frames=6)
    cut = base / "cut"
    shutil.copytree(small.path, cut)
    (mcap,) = cut.glob("*.mcap")
    with open(mcap, "r+b") as f:
        f.truncate(int(mcap.stat().st_size * 0.7))
    trunc = bag_tool.run(bag_tool.BagToolOptions(
        input_bag=cut, out=out_dir / "bags" / "cut", params_file=bag_params_file, color=False,
        progress=False))
    assert trunc.input_cut_short and 0 < trunc.frames_out < small.frames
    topics = [{"topic": "/camera/image_raw", "camera": "camera"}]
    manifest = {
        "fingerprint": {"model": "tiny <script>alert(1)</script>", "prompts": ["car", "house"],
                        "parameters": {"min_pixels": MIN_PIXELS}},
        "settings_hash": "0123abcd", "started": "2026-01-01T10:00:00", "finished": None,
        "extra_key": "tolerated",
        "bags": [
            {"input": str(sample_bag.path), "output": "bags/whole", "status": "done",
             "truncated": False, "frames": whole.frames_out, "seconds": whole.seconds,
             "frames_per_second": whole.frames_out / whole.seconds, "topics": topics,
             "prompt_ids": [1, 2]},
            {"input": str(cut), "output": "bags/cut", "status": "done", "truncated": True,
             "recovered_messages": trunc.input_messages, "recovered_frames": trunc.frames_out,
             "frames": trunc.frames_out, "seconds": trunc.seconds, "topics": topics},
            {"input": "/data/c", "output": "bags/c", "status": "failed",
             "reason": FAILED_REASON},
        ],
    }
    page = report.write_report(out_dir, manifest) if importlib.util.find_spec("matplotlib") \
        else None
    return SimpleNamespace(out_dir=out_dir, manifest=manifest, page=page)


class _Page(HTMLParser):
    """Tags with their attributes, the text, and which section each is in."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None], str | None]] = []
        self.text: list[str] = []
        self.section: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.section = a.get("id")
        self.tags.append((tag, a, self.section))

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.section = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _objects(out_dir: Path, name: str) -> list[tuple[int, Any]]:
    return read_bag(out_dir / "bags" / name)[OBJECTS]


@needs_matplotlib
def test_the_page_has_settings_totals_and_a_section_per_done_bag(report_run):
    page = _parse(report_run.page)
    text = "".join(page.text)
    # Settings: the fingerprint, escaped (the <script> is text, not a tag).
    assert not [t for t, _, _ in page.tags if t == "script"]
    assert "tiny <script>alert(1)</script>" in text and "0123abcd" in text
    assert [a.get("class") for t, a, _ in page.tags if t == "table"][:2] == ["settings", "totals"]
    # One section per done bag, one camera heading in each; none for the failed bag.
    sections = [a["id"] for t, a, _ in page.tags if t == "section"]
    assert sections == ["bag0", "bag1"]
    for sec in sections:
        assert len([t for t, _, s in page.tags if t == "h3" and s == sec]) == 1
    assert FAILED_REASON in text
    n_cut = report_run.manifest["bags"][1]["recovered_messages"]
    assert f"input truncated: recovered {n_cut} messages" in text
    # Bag 1 has no overlays in its output: the page says how its pictures were made.
    assert "neutral grey" in text and "published overlays" in text


@needs_matplotlib
def test_every_link_is_relative_and_points_at_something(report_run):
    page = _parse(report_run.page)
    ids = {a["id"] for _, a, _ in page.tags if a.get("id")}
    links = [(t, a.get("src") or a.get("href")) for t, a, _ in page.tags if t in ("img", "a")]
    assert len(links) > 8
    for tag, link in links:
        assert link, tag
        parts = urlsplit(link)
        assert not parts.scheme and not parts.netloc and not link.startswith("/"), link
        if link.startswith("#"):
            assert link[1:] in ids
        else:
            assert (report_run.out_dir / unquote(parts.path)).exists(), link
    hrefs = {a.get("href") for t, a, _ in page.tags if t == "a"}
    assert {"bags/whole/", "bags/cut/"} <= hrefs
    srcs = [a["src"] for t, a, _ in page.tags if t == "img"]
    assert all(s.startswith(report.FILES + "/") for s in srcs)


@needs_matplotlib
def test_timeline_plots_are_pngs_of_a_sensible_size(report_run):
    for i in (0, 1):
        path = report_run.out_dir / report.FILES / f"{i:03d}_camera_timeline.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = cv2.imread(str(path))
        assert image is not None
        h, w = image.shape[:2]
        assert 500 <= w <= 1500 and 150 <= h <= 1200, (w, h)
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 5   # not blank


@needs_matplotlib
@pytest.mark.parametrize("name", ["whole", "cut"])
def test_the_timeline_is_what_the_objects_messages_say(report_run, name):
    msgs = [m for _, m in _objects(report_run.out_dir, name)]
    tl = report.presence_timeline(msgs)
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in msgs]
    assert np.allclose(tl.times_s, (np.array(stamps) - stamps[0]) / 1e9)
    labels = {o.label for m in msgs for o in m.objects}
    assert set(tl.class_names) == labels and len(tl.class_names) == len(labels)
    for i, m in enumerate(msgs):
        said = {o.label: o.present for o in m.objects}
        for k, label in enumerate(tl.class_names):
            assert tl.present[i, k] == said.get(label, False)
            assert tl.queried[i, k] == (label in said)
    assert tl.prompt_ids.tolist() == [m.prompt_id for m in msgs]
    if name == "whole":   # the random classes come and go at this min_pixels
        assert tl.present.any() and not tl.present.all()


@needs_matplotlib
@pytest.mark.parametrize(("index", "name"), [(0, "whole"), (1, "cut")])
def test_thumbnails_are_taken_where_a_class_first_appears(report_run, index, name):
    out = read_bag(report_run.out_dir / "bags" / name)
    objects = [m for _, m in out[OBJECTS]]
    first: dict[str, int] = {}
    for i, m in enumerate(objects):
        for o in m.objects:
            if o.present:
                first.setdefault(o.label, i)
    frames = sorted(set(first.values()))[:report.MAX_THUMBS]
    files = report_run.out_dir / report.FILES
    got = sorted(int(p.stem.rsplit("_f", 1)[1]) for p in files.glob(f"{index:03d}_camera_f*.png"))
    assert got == frames and frames
    if name == "whole":
        assert len(frames) >= 2   # a class appears after the first frame
    tables = {t.prompt_id: np.asarray(t.colors, np.uint8).reshape(-1, 3)
              for _, t in out["/cass/classes"]}
    for f in frames:
        if name == "whole":   # the published overlay, downscaled
            full = bag_io.image_array(out["/cass/camera/segmentation/color"][f][1])
        else:                 # the labels in the class table's colours over grey
            labels = bag_io.image_array(out["/cass/camera/segmentation"][f][1])
            grey = np.full((*labels.shape, 3), report.GREY, np.uint8)
            full = overlay(grey, labels, tables[objects[f].prompt_id], alpha=0.8)
        h, w = full.shape[:2]
        want = cv2.resize(full, (report.THUMB_WIDTH, round(h * report.THUMB_WIDTH / w)),
                          interpolation=cv2.INTER_AREA)
        thumb = cv2.imread(str(files / f"{index:03d}_camera_f{f:06d}.png"))[..., ::-1]
        assert np.array_equal(thumb, want)


def _msg(stamp_ns: int, prompt_id: int, names: list[str], present: list[bool]) -> SimpleNamespace:
    """An ObjectPresenceArray stand-in (the fields the timeline reads)."""
    stamp = SimpleNamespace(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    objs = [SimpleNamespace(class_id=k + 1, label=n, present=p)
            for k, (n, p) in enumerate(zip(names, present))]
    return SimpleNamespace(header=SimpleNamespace(stamp=stamp), class_names=["background", *names],
                           objects=objs, prompt_id=prompt_id)


def test_timeline_first_appearances_and_prompt_changes_of_known_messages():
    t0 = 5 * 10**9
    msgs = [_msg(t0 + 100_000_000, 1, ["a", "b"], [False, True]),
            _msg(t0 + 200_000_000, 1, ["a", "b"], [True, True]),
            _msg(t0 + 300_000_000, 2, ["b", "c"], [False, False]),
            _msg(t0 + 400_000_000, 2, ["b", "c"], [True, True])]
    tl = report.presence_timeline(msgs, t0_ns=t0)
    assert np.allclose(tl.times_s, [0.1, 0.2, 0.3, 0.4])
    assert tl.class_names == ["a", "b", "c"]
    assert tl.present.tolist() == [[False, True, False], [True, True, False],
                                   [False, False, False], [False, True, True]]
    assert tl.queried.tolist() == [[True, True, False]] * 2 + [[False, True, True]] * 2
    assert report.first_appearances(tl) == [(0, ["b"]), (1, ["a"]), (3, ["c"])]
    assert report.first_appearances(tl, limit=2) == [(0, ["b"]), (1, ["a"])]
    assert report.prompt_changes(tl) == [(pytest.approx(0.3), 2, ["b", "c"])]
    assert report.presence_timeline(msgs).times_s[0] == 0.0   # default: the first stamp


def test_a_sparse_manifest_and_an_unreadable_output_bag_still_give_a_page(tmp_path):
    """Optional keys missing, a bag still running, a done bag whose output is
    gone: the page says so instead of failing."""
    manifest = {"bags": [{"input": "/data/a", "output": "bags/a", "status": "done"},
                         {"input": "/data/b", "status": "running"}]}
    page = _parse(report.write_report(tmp_path, manifest))
    text = "".join(page.text)
    assert "Cannot read the output bag" in text and "running" in text
    assert [a["id"] for t, a, _ in page.tags if t == "section"] == ["bag0"]
    assert not list((tmp_path / report.FILES).iterdir())


def test_the_settings_table_names_each_setting_its_default_and_whether_it_differs(tmp_path):
    """A fingerprint as cass_fleet writes it: one row per parameter and
    output flag (name, value, default, differs), the changed ones marked;
    the weights and the version without a default."""
    from cass_ros.ros.params import SPECS

    fp = {"cass_ros": "9.9", "parameters": {"min_pixels": 5,
                                            "short_side": SPECS["short_side"].default,
                                            "prompts": ["car", "tree"]},
          "weights": {"clip": {"path": "/w/clip.pt", "bytes": 3}, "dino": "hub:name"},
          "outputs": {"storage": "mcap", "color": False, "summary": None}}
    page = _parse(report.write_report(tmp_path, {"fingerprint": fp, "bags": []}))
    html_text = (tmp_path / "report.html").read_text(encoding="utf-8")
    table = html_text[html_text.index('<table class="settings">'):]
    table = table[:table.index("</table>")]
    rows = {}
    for changed, tr in re.findall(r"<tr( class=changed)?>(.*?)</tr>", table)[1:]:  # no header
        cells = [unescape(re.sub(r"</?code>", "", c))
                 for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", tr)]
        rows[cells[0]] = (cells[1:], bool(changed))
    assert rows["min_pixels"] == (["5", str(SPECS["min_pixels"].default), "yes"], True)
    assert rows["short_side"] == ([str(SPECS["short_side"].default)] * 2 + ["no"], False)
    assert rows["prompts"][0] == ['["car", "tree"]', "[]", "yes"]
    assert rows["outputs.color"] == (["false", "true", "yes"], True)
    assert rows["outputs.storage"] == (["mcap", "mcap", "no"], False)
    assert rows["outputs.summary"] == (["null", "null", "no"], False)
    assert rows["weights.dino"] == (["hub:name", "", ""], False)
    assert rows["cass_ros"] == (["9.9", "", ""], False)
    assert "settings_hash" in rows
    assert "differs from the default" in "".join(page.text)
