"""Palette and overlay against an independent float computation; the colour
table CSV parsed back; the legend's box, swatches and cache."""

import csv
import io

import numpy as np
import pytest

from cass_ros.core.visualize import (color_table_csv, draw_legend, legend_panel,
                                     outline_instances, overlay, palette, write_color_table)


def test_palette_is_stable_distinct_and_background_black():
    small, big = palette(5), palette(300)
    assert small.dtype == np.uint8 and small.shape == (5, 3)
    assert np.array_equal(small, big[:5])  # a label keeps its colour whatever K is
    assert np.array_equal(big[0], [0, 0, 0])
    assert len({tuple(c) for c in big[1:60]}) == 59


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("dtype,k", [(np.uint8, 6), (np.uint16, 300)])
def test_overlay_matches_float_blend(alpha, dtype, k):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    labels = rng.integers(0, k, (37, 53)).astype(dtype)
    colors = palette(k)
    out = overlay(rgb, labels, colors, alpha)
    expect = np.where((labels > 0)[..., None],
                      rgb * (1 - alpha) + colors[labels].astype(float) * alpha, rgb)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert np.abs(out.astype(float) - expect).max() <= 1.0
    assert np.array_equal(out[labels == 0], rgb[labels == 0])  # background keeps the image


def test_overlay_rejects_mismatched_sizes_and_bad_alpha():
    rgb = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="differ in size"):
        overlay(rgb, np.zeros((5, 4), np.uint8), palette(2))
    with pytest.raises(ValueError, match="alpha"):
        overlay(rgb, np.zeros((4, 5), np.uint8), palette(2), 1.5)


# --- colour table CSV (docs/ros-interface.md) --------------------------------

def _read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("names", [
    ["background", "person", "car"],
    ["background", "car, red", 'the "big" one', "pallet"],  # commas and quotes survive
    ["background"],                                          # K = 1
])
def test_color_table_csv_parses_back_to_the_class_table_and_palette(names):
    colors = palette(len(names))
    text = color_table_csv(names, colors)
    assert text.splitlines()[0] == "name,red,green,blue,alpha,id"  # Hydra's header, exactly
    rows = _read_csv(text)
    assert [r["name"] for r in rows] == names
    for label, row in enumerate(rows):
        assert int(row["id"]) == label
        assert int(row["alpha"]) == 255
        assert [int(row[k]) for k in ("red", "green", "blue")] == colors[label].tolist()
    assert [int(rows[0][k]) for k in ("red", "green", "blue")] == [0, 0, 0]  # background black


def test_color_table_csv_rejects_mismatched_colours():
    with pytest.raises(ValueError, match="colours"):
        color_table_csv(["background", "a"], palette(3))


def test_write_color_table_is_atomic_and_creates_the_folder(tmp_path):
    path = tmp_path / "new" / "folder" / "table.csv"
    names = ["background", "a", "b"]
    write_color_table(path, names, palette(3))
    assert path.read_text() == color_table_csv(names, palette(3))
    write_color_table(path, names[:2], palette(2))  # rewritten in place
    assert [r["name"] for r in _read_csv(path.read_text())] == names[:2]
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.csv"]  # no temp file left


def test_write_color_table_error_names_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    target = blocker / "table.csv"  # a folder that is a file
    with pytest.raises(OSError, match="colour table .*table.csv"):
        write_color_table(target, ["background"], palette(1))


# --- legend --------------------------------------------------------------------

def _legend_case(h: int, w: int, k: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    names = ["background"] + [f"class {i}" for i in range(1, k)]
    return img, names, palette(k)


def _assert_swatches(out: np.ndarray, panel, colors: np.ndarray) -> None:
    assert len(panel.swatches) == panel.shown
    for label, (row, col, side) in enumerate(panel.swatches, start=1):
        assert side >= 4
        y, x = panel.y + row, panel.x + col
        patch = out[y:y + side, x:x + side].reshape(-1, 3)
        assert (patch == colors[label]).all(), label


def test_legend_changes_only_its_box_and_swatches_have_the_class_colours():
    img, names, colors = _legend_case(480, 640, 5)
    out = draw_legend(img, names, colors)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.shares_memory(out, img)
    panel = legend_panel(names, colors, 480, 640)
    assert panel is not None and panel.shown == 4 and panel.more == 0
    h, w = panel.keep.shape
    inside = np.zeros(img.shape[:2], bool)
    inside[panel.y:panel.y + h, panel.x:panel.x + w] = True
    assert np.array_equal(out[~inside], img[~inside])
    assert not np.array_equal(out[inside], img[inside])
    # Each listed class has a swatch of exactly its colour; background has none.
    _assert_swatches(out, panel, colors)
    # Readable at 640 x 480: rows of at least 16 px, and the box is small.
    assert h >= 16 * 4 and h * w < 0.25 * 480 * 640


def test_legend_blend_matches_float_compositing():
    img, names, colors = _legend_case(120, 160, 4)
    panel = legend_panel(names, colors, 120, 160)
    h, w = panel.keep.shape
    region = img[panel.y:panel.y + h, panel.x:panel.x + w].astype(float)
    expect = panel.premult + region * panel.keep[..., None] / 255.0
    got = draw_legend(img, names, colors)[panel.y:panel.y + h, panel.x:panel.x + w]
    assert np.abs(got - expect).max() <= 1.0


def test_legend_too_many_classes_fits_and_ends_with_more():
    img, names, colors = _legend_case(120, 160, 40)
    panel = legend_panel(names, colors, 120, 160)
    assert panel is not None
    h, w = panel.keep.shape
    assert panel.y + h <= 0.6 * 120 and panel.x + w <= 0.45 * 160  # does not cover most of it
    assert panel.more == 39 - panel.shown > 0
    _assert_swatches(draw_legend(img, names, colors), panel, colors)


@pytest.mark.parametrize("h,w", [(1, 1), (8, 8), (30, 40), (120, 160)])
def test_legend_on_tiny_images_does_not_crash_and_fits(h, w):
    img, names, colors = _legend_case(h, w, 6)
    out = draw_legend(img, names, colors)
    assert out.shape == img.shape and out.dtype == np.uint8
    panel = legend_panel(names, colors, h, w)
    if panel is None:
        assert np.array_equal(out, img)
    else:
        ph, pw = panel.keep.shape
        assert panel.y + ph <= h and panel.x + pw <= w
        _assert_swatches(out, panel, colors)


def test_legend_background_only_leaves_the_image():
    img, names, colors = _legend_case(48, 64, 1)
    assert legend_panel(names, colors, 48, 64) is None
    assert np.array_equal(draw_legend(img, names, colors), img)


def test_legend_panel_is_cached_and_read_only():
    _, names, colors = _legend_case(480, 640, 5)
    first = legend_panel(names, colors, 480, 640)
    assert legend_panel(list(names), colors.copy(), 480, 640) is first  # same key, same panel
    assert legend_panel(names, palette(6)[:5] + 0, 240, 320) is not first
    renamed = names[:-1] + ["other"]
    assert legend_panel(renamed, colors, 480, 640) is not first
    assert not first.premult.flags.writeable and not first.keep.flags.writeable


def test_legend_rejects_bad_inputs():
    img, names, colors = _legend_case(48, 64, 3)
    with pytest.raises(ValueError, match="uint8"):
        draw_legend(img.astype(np.float32), names, colors)
    with pytest.raises(ValueError, match="colours"):
        draw_legend(img, names, palette(4))


def test_outline_instances_draws_each_boundary_once():
    """Against a loop over pixels: an instance pixel is drawn when a
    4-neighbour (outside the image = 0) has a smaller index."""
    rng = np.random.default_rng(5)
    index = np.zeros((12, 15), np.int32)
    index[2:7, 2:8] = 1
    index[2:7, 8:12] = 2          # touches 1: one line, on 2's side
    index[9:12, 0:4] = 3          # on the border: closed by the image edge
    img = rng.integers(0, 256, (12, 15, 3), dtype=np.uint8)
    out = outline_instances(img, index, (255, 0, 0))
    want = np.zeros(index.shape, bool)
    for y in range(12):
        for x in range(15):
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                y2, x2 = y + dy, x + dx
                other = index[y2, x2] if 0 <= y2 < 12 and 0 <= x2 < 15 else 0
                want[y, x] |= index[y, x] > 0 and other < index[y, x]
    assert np.all(out[want] == [255, 0, 0])
    np.testing.assert_array_equal(out[~want], img[~want])
    assert want[4, 8] and not want[4, 7]          # the shared boundary: 1 px
    assert want[11, 1] and want[9, 0]             # the image edge closes instance 3
    assert out is not img
    with pytest.raises(ValueError, match="differ in size"):
        outline_instances(img, index[:-1])

