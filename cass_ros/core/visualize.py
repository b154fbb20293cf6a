"""Colour palette, overlays, overlay legend and the colour table CSV for
label images (numpy and OpenCV only)."""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np


def palette(num_labels: int) -> np.ndarray:
    """(num_labels, 3) uint8 colours; label 0 (background) is black.

    Colours come from a fixed golden-ratio walk around the hue circle, so a
    label keeps its colour whatever the number of classes.
    """
    idx = np.arange(num_labels, dtype=np.float64)
    hue = (idx * 0.6180339887498949) % 1.0
    sat = 0.65 + 0.35 * ((idx * 0.37) % 1.0)
    val = 0.75 + 0.25 * ((idx * 0.53) % 1.0)
    rgb = _hsv_to_rgb(hue, sat, val)
    colors = np.round(rgb * 255).astype(np.uint8)
    colors[0] = 0
    return colors


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([
        np.stack([v, t, p], -1), np.stack([q, v, p], -1), np.stack([p, v, t], -1),
        np.stack([p, q, v], -1), np.stack([t, p, v], -1), np.stack([v, p, q], -1),
    ])  # (6, n, 3)
    return table[i, np.arange(len(h))]


def overlay(rgb: np.ndarray, labels: np.ndarray, colors: np.ndarray, alpha: float = 0.5
            ) -> np.ndarray:
    """Blend the label colours over an RGB image; background pixels keep the image.

    rgb (H, W, 3) uint8, labels (H, W) int, colors (K, 3) uint8 -> (H, W, 3) uint8.
    """
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"image {rgb.shape[:2]} and labels {labels.shape} differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    color = np.take(colors, labels, axis=0)  # (H, W, 3) uint8; take is ~4x faster than indexing
    # OpenCV's saturating blend and masked copy: much faster than float numpy at 640 x 480.
    blend = cv2.addWeighted(rgb, 1.0 - alpha, color, alpha, 0.0)
    mask = (labels > 0).astype(np.uint8)
    return cv2.copyTo(blend, mask, rgb.copy())


def outline_instances(image: np.ndarray, index: np.ndarray,
                      color: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) uint8 with the outlines of the
    instances of ``index`` (H, W) int (0 = none; docs/algorithm.md 11) drawn
    in ``color``, 1 px wide: a pixel of an instance is drawn when a
    4-neighbour has a smaller index (the background, a lower-numbered
    instance, or outside the image, which counts as 0), so a boundary
    between two instances is drawn once, on the higher one's side."""
    if image.shape[:2] != index.shape:
        raise ValueError(f"image {image.shape[:2]} and instances {index.shape} differ in size")
    p = np.pad(index, 1)                       # (H + 2, W + 2), 0 outside
    c = p[1:-1, 1:-1]
    edge = ((p[:-2, 1:-1] < c) | (p[2:, 1:-1] < c)
            | (p[1:-1, :-2] < c) | (p[1:-1, 2:] < c))   # (H, W) bool
    out = image.copy()
    out[edge] = np.asarray(color, np.uint8)
    return out


# --- colour table (docs/ros-interface.md: the colour table CSV) -------------

# The layout of the colour tables that Hydra (MIT-SPARK/Hydra, e.g.
# config/kitti_360/colors.csv) and semantic_inference (MIT-SPARK/
# semantic_inference, config/colors/*.csv) read beside an integer label
# image: this header, one row per label, 0-255 channels, alpha 255, the
# label value as id.
COLOR_TABLE_HEADER = ("name", "red", "green", "blue", "alpha", "id")


def color_table_csv(class_names: Sequence[str], colors: np.ndarray) -> str:
    """The colour table as CSV text in Hydra's layout (docs/ros-interface.md).

    One row per label value 0..K-1, background (black, as in the overlay)
    included, so that a reader mapping ``id`` to ``name`` covers every value
    a label image holds. Names holding commas or quotes are quoted by the
    csv module.
    """
    colors = np.asarray(colors)
    if colors.ndim != 2 or colors.shape[1] != 3 or len(colors) != len(class_names):
        raise ValueError(f"{len(class_names)} class names need ({len(class_names)}, 3) colours, "
                         f"got {colors.shape}")
    buf = io.StringIO()
    # "\n" line ends as in Hydra's files (csv's default is "\r\n").
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLOR_TABLE_HEADER)
    for label, (name, rgb) in enumerate(zip(class_names, colors, strict=True)):
        writer.writerow([name, int(rgb[0]), int(rgb[1]), int(rgb[2]), 255, label])
    return buf.getvalue()


def write_color_table(path: str | os.PathLike[str], class_names: Sequence[str],
                      colors: np.ndarray) -> None:
    """Write :func:`color_table_csv` to ``path`` atomically, creating its folder.

    A reader (a mapper reloading the table) never sees half a file: the text
    goes to a temporary file in the same folder, then ``os.replace``. Raises
    OSError with a one-line message naming ``path``.
    """
    text = color_table_csv(class_names, colors)  # ValueError before touching the disk
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise OSError(e.errno, f"cannot write the colour table {path}: "
                               f"{e.strerror or e}") from e
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


# --- legend -------------------------------------------------------------------

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_PANEL_ALPHA = 0.65          # opacity of the dark panel behind the names
_MAX_HEIGHT_FRACTION = 0.6   # the legend never covers more of the image than this
_MAX_WIDTH_FRACTION = 0.45


class LegendPanel(NamedTuple):
    """A rendered legend, to composite at rows y:y+h, columns x:x+w.

    ``premult`` (h, w, 3) uint8 is the panel's colour times its opacity;
    ``keep`` (h, w) uint8 is 255 x (1 - opacity): how much of the image
    shows through. Swatches are opaque (keep 0, premult = class colour).
    """

    x: int
    y: int
    premult: np.ndarray
    keep: np.ndarray
    shown: int          # classes listed with a swatch: labels 1..shown
    more: int           # classes left out ("+N more")
    swatches: tuple[tuple[int, int, int], ...]  # (row, column, side) in the panel, per label 1..shown


def _fit_text(text: str, scale: float, thickness: int, width: int) -> str:
    """``text``, cut and ended with '..' when wider than ``width`` pixels."""
    # Hershey fonts draw ASCII only; cv2 would print '?' anyway.
    text = text.encode("ascii", "replace").decode()
    if cv2.getTextSize(text, _FONT, scale, thickness)[0][0] <= width:
        return text
    while text and cv2.getTextSize(text + "..", _FONT, scale, thickness)[0][0] > width:
        text = text[:-1]
    return text + ".." if text else ""


@functools.lru_cache(maxsize=16)
def _legend_panel_cached(names: tuple[str, ...], color_bytes: bytes, height: int,
                         width: int) -> LegendPanel | None:
    colors = np.frombuffer(color_bytes, np.uint8).reshape(-1, 3)
    # Sizes follow the image: rows of ~1/24 of the shorter side (20 px at
    # 640 x 480), never under 10 px, where Hershey text stops being legible.
    row = max(10, round(min(height, width * 0.75) / 24))
    margin = max(2, row // 3)
    pad = max(2, row // 4)
    swatch = row - 2 * max(1, row // 6)
    thickness = 1 if row < 28 else 2
    scale = cv2.getFontScaleFromHeight(_FONT, max(6, round(row * 0.55)), thickness)
    max_h = int(height * _MAX_HEIGHT_FRACTION) - margin
    max_w = int(width * _MAX_WIDTH_FRACTION) - margin
    rows_fit = (max_h - 2 * pad) // row
    text_room = max_w - 2 * pad - swatch - pad
    if rows_fit < 1 or text_room < row:
        return None  # too small for even one readable line
    n = len(names)
    shown = n if n <= rows_fit else rows_fit - 1
    more = n - shown
    lines = [_fit_text(name, scale, thickness, text_room) for name in names[:shown]]
    if more:
        lines.append(_fit_text(f"+{more} more", scale, thickness, text_room))
    text_w = max(cv2.getTextSize(t, _FONT, scale, thickness)[0][0] for t in lines)
    h = 2 * pad + row * len(lines)
    w = 2 * pad + swatch + pad + text_w
    # Text drawn white on black gives its coverage per pixel (anti-aliased).
    coverage = np.zeros((h, w), np.uint8)
    swatches = np.zeros((h, w, 3), np.uint8)
    solid = np.zeros((h, w), bool)
    boxes = []
    for i, text in enumerate(lines):
        top = pad + i * row
        base = top + (row + cv2.getTextSize("Ag", _FONT, scale, thickness)[0][1]) // 2
        text_x = pad + swatch + pad
        if i < shown:
            s0 = top + (row - swatch) // 2
            swatches[s0:s0 + swatch, pad:pad + swatch] = colors[i]
            solid[s0:s0 + swatch, pad:pad + swatch] = True
            boxes.append((s0, pad, swatch))
        cv2.putText(coverage, text, (text_x, base), _FONT, scale, 255, thickness, cv2.LINE_AA)
    # White text over a dark semi-opaque panel, composed as one layer:
    # opacity = 1 - (1 - c)(1 - a), premultiplied colour = 255 c.
    c = coverage.astype(np.float32) / 255.0
    keep = np.round((1.0 - c) * (1.0 - _PANEL_ALPHA) * 255.0).astype(np.uint8)
    premult = np.repeat(coverage[..., None], 3, axis=2)
    premult[solid] = swatches[solid]
    keep[solid] = 0
    for a in (premult, keep):
        a.setflags(write=False)  # shared by every frame through the cache
    return LegendPanel(margin, margin, premult, keep, shown, more, tuple(boxes))


def legend_panel(class_names: Sequence[str], colors: np.ndarray, height: int,
                 width: int) -> LegendPanel | None:
    """The legend for an image of ``height`` x ``width``, rendered once per
    (names, colours, size) and cached; None when the image is too small for
    one line. Lists labels 1..K-1: background pixels are not tinted in the
    overlay, so label 0 has no colour to explain."""
    colors = np.ascontiguousarray(colors, dtype=np.uint8)
    if colors.shape != (len(class_names), 3):
        raise ValueError(f"{len(class_names)} class names need ({len(class_names)}, 3) colours, "
                         f"got {colors.shape}")
    if len(class_names) <= 1:
        return None
    return _legend_panel_cached(tuple(class_names[1:]), colors[1:].tobytes(), int(height),
                                int(width))


def draw_legend(image: np.ndarray, class_names: Sequence[str], colors: np.ndarray) -> np.ndarray:
    """A copy of the (H, W, 3) uint8 RGB ``image`` with a legend in its
    top-left corner: a swatch in the overlay colour and the name of each
    class, on a dark semi-opaque panel (docs/ros-interface.md, overlay_legend).

    ``class_names`` and ``colors`` are indexed by label value, as
    ``palette`` and the class table. Background (label 0) is not listed
    (:func:`legend_panel`). When the classes do not all fit in the panel's
    share of the height, it lists what fits and ends with "+N more". Pixels
    outside the panel are unchanged.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"legend needs an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    out = image.copy()
    panel = legend_panel(class_names, colors, image.shape[0], image.shape[1])
    if panel is None:
        return out
    h, w = panel.keep.shape
    region = out[panel.y:panel.y + h, panel.x:panel.x + w]
    # out = premult + image x keep / 255, rounded; uint16 holds 255 x 255.
    shown = (region.astype(np.uint16) * panel.keep[..., None] + 127) // 255
    region[...] = panel.premult + shown.astype(np.uint8)
    return out
