"""``cass_fleet --report``: DIR/report.html, one page to open in a browser.

The page shows the run's settings (a table: each parameter and output flag,
its value, its default and whether it differs) and totals, a table of the bags, and per
done bag and camera a presence timeline (matplotlib), the rates and a few
overlay thumbnails at the moments classes first appear. Everything it links
lies in DIR (the plots and thumbnails in DIR/report_files/), by relative
paths, so the folder can be copied and opened anywhere without a server.

Only this module of the package imports matplotlib (the layers below do
not need it), and only when a plot is drawn; it uses the Figure API with
the Agg canvas, never pyplot, so no global backend or figure state is
touched (a fleet run may be one thread among others).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np

from ..bag import io as bag_io
from ..core.visualize import overlay, palette
from ..ros import params as node_params
from .manifest import OUTPUT_DEFAULTS

FILES = "report_files"   # the plots and thumbnails, next to report.html
THUMB_WIDTH = 240        # thumbnail width in pixels
MAX_THUMBS = 6           # thumbnails per camera at most
GREY = 128               # base of overlays rendered from label images
_READ_ERRORS = (bag_io.BagError, OSError, ValueError, KeyError)
_CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f2f2f2}.num{text-align:right}
section{border-top:2px solid #888;margin-top:1.5em}.failed{color:#b00}
.thumbs{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;width:240px;font-size:85%}
.sw{display:inline-block;width:.9em;height:.9em;border:1px solid #444;margin-right:4px;
vertical-align:middle}ul.legend{list-style:none;padding:0;margin:2px 0}
img.timeline{max-width:100%}li.absent{color:#999}code{font-size:90%}
tr.changed td,tr.changed th{background:#fff3c4}"""


@dataclass
class Timeline:
    """Which classes were present when, for one camera (docs: cass_fleet)."""

    times_s: np.ndarray       # (T,) header stamp minus t0, seconds
    class_names: list[str]    # (K,) every class of any prompt set, first seen first
    present: np.ndarray       # (T, K) bool: the objects message says present
    queried: np.ndarray       # (T, K) bool: the class is in the frame's prompt set
    prompt_ids: np.ndarray    # (T,) the frame's prompt set


def presence_timeline(objects_msgs: Sequence[Any], t0_ns: int | None = None) -> Timeline:
    """The timeline of ObjectPresenceArray messages in frame order; times
    from their header stamps, relative to ``t0_ns`` (default the first)."""
    stamps = [bag_io.stamp_ns(m.header.stamp) for m in objects_msgs]
    t0 = stamps[0] if t0_ns is None and stamps else (t0_ns or 0)
    names: dict[str, int] = {}   # a dict keeps the order of first appearance
    for m in objects_msgs:
        for name in list(m.class_names)[1:]:   # [0] is the background, never reported
            names.setdefault(str(name), len(names))
    present = np.zeros((len(objects_msgs), len(names)), bool)
    queried = np.zeros_like(present)
    for i, m in enumerate(objects_msgs):
        queried[i, [names[str(n)] for n in list(m.class_names)[1:]]] = True
        for o in m.objects:
            present[i, names[str(o.label)]] |= bool(o.present)
    return Timeline(np.array([(s - t0) / 1e9 for s in stamps], float), list(names), present,
                    queried, np.array([int(m.prompt_id) for m in objects_msgs], int))


def first_appearances(tl: Timeline, limit: int = MAX_THUMBS) -> list[tuple[int, list[str]]]:
    """(frame index, the classes first present in it), in frame order, at
    most ``limit`` frames: where the thumbnails are taken."""
    firsts: dict[int, list[str]] = {}
    for k, name in enumerate(tl.class_names):
        hits = np.flatnonzero(tl.present[:, k])
        if hits.size:
            firsts.setdefault(int(hits[0]), []).append(name)
    return sorted(firsts.items())[:limit]


def prompt_changes(tl: Timeline) -> list[tuple[float, int, list[str]]]:
    """(time, new prompt id, its classes) where a frame's prompt set differs
    from the previous frame's (the first set is not a change)."""
    out = []
    for i in np.flatnonzero(np.diff(tl.prompt_ids) != 0) + 1:
        out.append((float(tl.times_s[i]), int(tl.prompt_ids[i]),
                    [n for k, n in enumerate(tl.class_names) if tl.queried[i, k]]))
    return out


# ---------------------------------------------------------------------------
# Reading an output bag

@dataclass
class _Camera:
    name: str
    times: list[int]      # bag time per frame (every output of a frame shares it)
    objects: list[Any]    # ObjectPresenceArray per frame


def _read_objects(path: Path) -> tuple[dict[int, np.ndarray], list[_Camera]]:
    """The class tables' colours by prompt id, and each camera's objects."""
    with bag_io.open_input_bag(path) as bag:
        ts = bag_io.reading_typestore(bag.connections)
        wanted = [c for c in bag.connections if c.topic == bag_io.CLASSES_TOPIC
                  or (c.msgtype == bag_io.OBJECTS and c.topic.startswith("/cass/")
                      and c.topic.endswith("/objects"))]
        colors: dict[int, np.ndarray] = {}
        cams: dict[str, _Camera] = {}
        for conn, t, raw in bag.messages(wanted):
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            if conn.topic == bag_io.CLASSES_TOPIC:
                colors[int(msg.prompt_id)] = np.asarray(msg.colors, np.uint8).reshape(-1, 3)
                continue
            name = conn.topic[len("/cass/"):-len("/objects")]
            cam = cams.setdefault(name, _Camera(name, [], []))
            cam.times.append(t)
            cam.objects.append(msg)
    for cam in cams.values():   # a cut-short file yields messages as written
        order = sorted(range(len(cam.times)), key=lambda i: cam.times[i])
        cam.times = [cam.times[i] for i in order]
        cam.objects = [cam.objects[i] for i in order]
    return colors, list(cams.values())


def _read_images(path: Path, camera: str, times: set[int]) -> tuple[dict[int, np.ndarray], bool]:
    """{bag time: image} of the frames at ``times``: the overlay when the
    bag has it (True), else the label image (False). Other frames are not
    decoded, so a long bag costs a read, not a decode, per frame."""
    topics = bag_io.output_topics(camera)
    with bag_io.open_input_bag(path) as bag:
        ts = bag_io.reading_typestore(bag.connections)
        by_topic = {c.topic: c for c in bag.connections}
        conn = by_topic.get(topics["color"]) or by_topic.get(topics["labels"])
        if conn is None:
            return {}, False
        images = {t: bag_io.image_array(ts.deserialize_cdr(raw, conn.msgtype))
                  for _, t, raw in bag.messages([conn]) if t in times}
        return images, conn.topic == topics["color"]


def _colors(table: dict[int, np.ndarray], msg: Any) -> np.ndarray:
    """(K, 3) colours of a frame's classes: its class table's, else the palette."""
    k = len(msg.class_names)
    got = table.get(int(msg.prompt_id))
    return got if got is not None and len(got) == k else palette(k)


# ---------------------------------------------------------------------------
# Pictures

def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index ranges where ``mask`` is true."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def plot_timeline(tl: Timeline, colors: dict[str, np.ndarray], path: Path) -> None:
    """One row per class: a bar in the class's colour where it is present,
    light grey where it was asked for but absent; dashed lines at prompt
    changes with the new set written at the top."""
    from matplotlib.figure import Figure   # only here: see the module docstring

    t = tl.times_s
    # A frame's bar lasts until the next frame; the last one a typical period.
    period = float(np.median(np.diff(t))) if len(t) > 1 else 0.1
    ends = np.append(t[1:], t[-1] + period)
    fig = Figure(figsize=(10, 1.4 + 0.32 * len(tl.class_names)), dpi=90)
    ax = fig.add_subplot()
    for k, name in enumerate(tl.class_names):
        for mask, face in ((tl.queried[:, k], "#e4e4e4"),
                           (tl.present[:, k], colors.get(name, np.zeros(3)) / 255.0)):
            bars = [(t[a], ends[b - 1] - t[a]) for a, b in _runs(mask)]
            ax.broken_barh(bars, (k - 0.38, 0.76), facecolors=face)
    for when, pid, names in prompt_changes(tl):
        ax.axvline(when, color="0.25", linestyle="--", linewidth=1)
        text = f"prompts {pid}: " + ", ".join(names)
        ax.annotate(text[:60] + ("..." if len(text) > 60 else ""), (when, 1.0),
                    xycoords=("data", "axes fraction"), xytext=(3, 3),
                    textcoords="offset points", fontsize=8, va="bottom")
    ax.set_yticks(range(len(tl.class_names)), tl.class_names)
    ax.set_ylim(max(len(tl.class_names), 1) - 0.5, -0.5)   # the first class on top
    ax.set_xlim(0, float(ends[-1]))
    ax.set_xlabel("time since the bag's first frame (s)")
    ax.grid(axis="x", color="0.85")
    ax.set_axisbelow(True)
    fig.savefig(path, bbox_inches="tight")


def _thumbnail(image: np.ndarray, is_overlay: bool, colors: np.ndarray) -> np.ndarray:
    """A THUMB_WIDTH-wide RGB picture of a frame's overlay; from a label
    image, its colours over neutral grey (the camera image is not in the
    output bag)."""
    if not is_overlay:
        grey = np.full((*image.shape, 3), GREY, np.uint8)
        image = overlay(grey, image, colors, alpha=0.8)
    h, w = image.shape[:2]
    size = (THUMB_WIDTH, max(1, round(h * THUMB_WIDTH / w)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------------
# The page

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _href(target: Path, out_dir: Path) -> str:
    """A relative, URL-quoted, HTML-escaped link from report.html to ``target``."""
    rel = os.path.relpath(target, out_dir)
    return _e(quote(Path(rel).as_posix()) + ("/" if target.is_dir() else ""))


def _num(value: Any, fmt: str = "{:.1f}") -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else "&ndash;"


def _swatch(rgb: np.ndarray) -> str:
    return f'<span class="sw" style="background:rgb({",".join(str(int(c)) for c in rgb)})"></span>'


def _legend_item(name: str, rgb: np.ndarray, present: bool, new: bool) -> str:
    """A legend line: the class's swatch and name, bold when it first
    appears here, faded when absent (its colour may still tint a few pixels)."""
    text = f"<b>{_e(name)}</b>" if new else _e(name)
    if not present:
        return f'<li class="absent">{_swatch(rgb)}{text} (absent)</li>'
    return f"<li>{_swatch(rgb)}{text}</li>"


def _json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _default_of(section: str, name: str) -> tuple[bool, Any]:
    """(whether it has a default, the default as JSON holds it) of a
    fingerprint entry: a node parameter's (cass_ros.ros.params) or an
    output flag's (manifest.OUTPUT_DEFAULTS)."""
    if section == "parameters" and name in node_params.SPECS:
        default = node_params.SPECS[name].default
    elif section == "outputs" and name in OUTPUT_DEFAULTS:
        default = OUTPUT_DEFAULTS[name]
    else:
        return False, None
    return True, json.loads(json.dumps(default, default=str))


def settings_rows(fingerprint: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The fingerprint as rows (name, value, default, differs): each node
    parameter and output flag by name, with its default and "yes" / "no"
    for whether the run changed it; other entries (the version, the
    weights' identity) with "" for both."""
    rows = []
    for key, value in fingerprint.items():
        if key in ("parameters", "outputs") and isinstance(value, dict):
            for name, v in value.items():
                known, default = _default_of(key, name)
                label = name if key == "parameters" else f"{key}.{name}"
                rows.append((label, _json(v), _json(default) if known else "",
                             ("yes" if v != default else "no") if known else ""))
        elif key == "weights" and isinstance(value, dict):
            rows += [(f"weights.{k}", _json(v), "", "") for k, v in value.items()]
        else:
            rows.append((key, _json(value), "", ""))
    return rows


def _settings_html(manifest: dict[str, Any]) -> str:
    """The settings table (settings_rows; the changed ones marked), then the run's."""
    cells = "".join(
        f'<tr{" class=changed" if d == "yes" else ""}><th>{_e(n)}</th><td><code>{_e(v)}</code>'
        f"</td><td><code>{_e(dv)}</code></td><td>{d}</td></tr>"
        for n, v, dv, d in settings_rows(manifest.get("fingerprint") or {}))
    run = [(k, manifest.get(k)) for k in ("settings_hash", "started", "finished", "state")
           if k in manifest or k != "state"]   # state: the run's, when the manifest has it
    return ('<h2>Settings</h2><table class="settings"><tr><th>setting</th><th>value</th>'
            "<th>default</th><th>differs from the default</th></tr>" + cells
            + "".join(f'<tr><th>{_e(k)}</th><td colspan="3"><code>{_e(v)}</code></td></tr>'
                      for k, v in run) + "</table>")


def _totals_html(bags: list[dict[str, Any]]) -> str:
    done = [b for b in bags if b.get("status") == "done"]
    frames = sum(b.get("frames") or 0 for b in done)
    seconds = sum(b.get("seconds") or 0.0 for b in done)
    cells = [("bags", len(bags)), ("done", len(done)),
             ("failed", sum(b.get("status") == "failed" for b in bags)),
             ("truncated", sum(bool(b.get("truncated")) for b in bags)),
             ("pending or running", sum(b.get("status") in ("pending", "running") for b in bags)),
             ("frames", frames), ("seconds", _num(seconds)),
             ("frames/s", _num(frames / seconds if seconds else None))]
    return ('<h2>Totals</h2><table class="totals"><tr>' + "".join(f"<th>{k}</th>" for k, _ in cells)
            + "</tr><tr>" + "".join(f'<td class="num">{v}</td>' for _, v in cells)
            + "</tr></table>")


def _bag_row(i: int, bag: dict[str, Any], out_dir: Path) -> str:
    status = str(bag.get("status", "?"))
    note = _e(bag.get("reason", "")) if status == "failed" else ""
    if bag.get("truncated"):
        note += ("; " if note else "") + (
            f"input truncated: recovered {_e(bag.get('recovered_messages', '?'))} messages"
            f" ({_e(bag.get('recovered_frames', '?'))} frames)")
    out = out_dir / str(bag.get("output", ""))
    link = (f'<a href="{_href(out, out_dir)}">{_e(bag.get("output"))}</a>'
            if bag.get("output") and out.exists() else "&ndash;")
    name = f'<a href="#bag{i}">{_e(bag.get("input"))}</a>' if status == "done" \
        else _e(bag.get("input"))
    return (f'<tr class="{_e(status)}"><td>{name}</td><td>{_e(status)}</td><td>{note}</td>'
            f'<td class="num">{_e(bag.get("frames", ""))}</td>'
            f'<td class="num">{_num(bag.get("frames_per_second"))}</td><td>{link}</td></tr>')


def _camera_html(i: int, cam: _Camera, t0: int, table: dict[int, np.ndarray], bag_path: Path,
                 out_dir: Path, label: str) -> str:
    """One camera of bag ``i``: its rates, timeline and thumbnails."""
    tl = presence_timeline(cam.objects, t0)
    colors: dict[str, np.ndarray] = {}
    for m in cam.objects:   # a class keeps the colour of the first set that has it
        for name, rgb in zip(list(m.class_names)[1:], _colors(table, m)[1:]):
            colors.setdefault(str(name), rgb)
    plot = out_dir / FILES / f"{i:03d}_{cam.name}_timeline.png"
    plot_timeline(tl, colors, plot)
    span = float(tl.times_s[-1] - tl.times_s[0])
    rate = f", {(len(tl.times_s) - 1) / span:.1f} Hz" if span > 0 else ""
    infer = np.mean([float(m.inference_ms) for m in cam.objects])
    parts = [f"<h3>{_e(cam.name)} <small>{_e(label)}</small></h3>",
             f"<p>{len(cam.objects)} frames over {span:.2f} s of recording{rate}; "
             f"inference {infer:.1f} ms a frame ({1000 / max(infer, 1e-9):.1f} frames/s)</p>",
             f'<img class="timeline" src="{_href(plot, out_dir)}" alt="presence timeline">',
             "<p><small>A bar in the class's colour: present; grey: asked for, absent; "
             "dashed: a new prompt set from then on.</small></p>"]
    return "".join(parts) + _thumbnails_html(i, cam, tl, table, bag_path, out_dir)


def _thumbnails_html(i: int, cam: _Camera, tl: Timeline, table: dict[int, np.ndarray],
                     bag_path: Path, out_dir: Path) -> str:
    """The thumbnails where classes first appear, each with its legend."""
    firsts = first_appearances(tl)
    images, is_overlay = _read_images(bag_path, cam.name, {cam.times[f] for f, _ in firsts})
    figs = []
    for f, new in firsts:
        if cam.times[f] not in images:   # its image message did not survive a cut
            continue
        msg = cam.objects[f]
        k_colors = _colors(table, msg)
        thumb = out_dir / FILES / f"{i:03d}_{cam.name}_f{f:06d}.png"
        bag_io.write_png(thumb, _thumbnail(images[cam.times[f]], is_overlay, k_colors))
        legend = "".join(_legend_item(str(o.label), k_colors[o.class_id], bool(o.present),
                                      str(o.label) in new) for o in msg.objects)
        figs.append(f'<figure><img src="{_href(thumb, out_dir)}" alt="frame {f}">'
                    f"<figcaption>t = {tl.times_s[f]:.2f} s (frame {f}), first: "
                    f'{_e(", ".join(new))}<ul class="legend">{legend}</ul></figcaption></figure>')
    source = ("the published overlays (segmentation/color)" if is_overlay else
              "the label images over neutral grey: the camera images are not in the output bag")
    return (f"<p>Where classes first appear (bold), from {source}:</p>"
            f'<div class="thumbs">{"".join(figs)}</div>')


def _bag_html(i: int, bag: dict[str, Any], out_dir: Path) -> str:
    path = out_dir / str(bag.get("output", ""))
    head = (f'<section id="bag{i}"><h2>{_e(Path(str(bag.get("input", "?"))).name)}</h2>'
            f'<p>input <code>{_e(bag.get("input"))}</code>, output <a href="{_href(path, out_dir)}">'
            f'{_e(bag.get("output"))}</a>; {_e(bag.get("frames", "?"))} frames in '
            f'{_num(bag.get("seconds"))} s ({_num(bag.get("frames_per_second"))} frames/s)</p>')
    try:
        table, cams = _read_objects(path)
        if not cams:
            return head + "<p>The output bag holds no objects messages.</p></section>"
        labels = {str(t.get("camera")): str(t.get("topic")) for t in bag.get("topics") or []}
        t0 = min(bag_io.stamp_ns(c.objects[0].header.stamp) for c in cams)
        body = "".join(_camera_html(i, c, t0, table, path, out_dir, labels.get(c.name, ""))
                       for c in cams)
    except _READ_ERRORS as e:
        body = f'<p class="failed">Cannot read the output bag: {_e(e)}</p>'
    return head + body + "</section>"


def write_report(out_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write ``out_dir``/report.html (and its pictures in report_files/)
    for a fleet run's ``manifest`` (the contents of fleet.json); returns
    the page's path. Output paths in the manifest are relative to out_dir."""
    out_dir = Path(out_dir)
    files = out_dir / FILES
    files.mkdir(parents=True, exist_ok=True)
    for old in files.glob("*.png"):   # a re-run must not leave a former bag's pictures
        old.unlink()
    bags = list(manifest.get("bags") or [])
    page = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>cass_fleet report</title>",
            f"<style>{_CSS}</style></head><body><h1>cass_fleet report</h1>",
            _settings_html(manifest), _totals_html(bags), "<h2>Bags</h2><table class='bags'>",
            "<tr><th>input</th><th>status</th><th>reason / note</th><th>frames</th>"
            "<th>frames/s</th><th>output bag</th></tr>",
            *(_bag_row(i, b, out_dir) for i, b in enumerate(bags)), "</table>",
            *(_bag_html(i, b, out_dir) for i, b in enumerate(bags) if b.get("status") == "done"),
            "</body></html>\n"]
    target = out_dir / "report.html"
    tmp = target.with_name(".report.html.tmp")
    tmp.write_text("".join(page), encoding="utf-8")
    os.replace(tmp, target)   # a reader never sees half a page
    return target
