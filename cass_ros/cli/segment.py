"""``cass_segment``: image files in, label PNG + colour overlay + JSON out.

    cass_segment IMAGE_OR_DIR... --out DIR [--config YAML] [--preset NAME]
                 [--prompts TEXT ...] [--queries FILE] [--classes-file FILE]
                 [--device DEV] [--save-probs] [--no-legend] [--instances] [--track]
                 [--features] [--set KEY=VALUE ...]

Settings precedence: defaults < preset < --config < --set and the explicit
flags. ``--config`` takes a flat YAML mapping of parameter names or a ROS
parameters file such as config/cass.yaml.

Besides the per-image files, ``--out`` gets one ``color_table.csv``: the
overlay colours in Hydra's layout (docs/ros-interface.md); every image of a
run shares the prompt set, hence the table.

Several prompt sets (``--prompts`` given more than once, ``--queries``
with one set per line): each image goes through the models once
(Segmenter.encode) and is decoded once per set (Segmenter.decode). Set n
(``--prompts`` in order, then the lines of ``--queries``) is written to
``--out/set_NN/`` exactly as a run with that set alone writes ``--out``
(but ``timings_ms``), and ``--out/sets.json`` names each folder's prompts.
One set, from either flag, writes ``--out`` as before.

``--instances`` (docs/algorithm.md 11): also ``<stem>_instances.png``
(16-bit, the instance index per pixel, 0 = none), an ``instances`` list in
``<stem>.json`` and the instances outlined on the overlay. ``--track``
follows them across the inputs in the order processed (one tracker per
prompt set, the inputs as frames 1 ms apart, so no gap restarts them;
images of another size do): ids are then track ids, in the PNG as
``(id - 1) % 65535 + 1`` (the id itself up to 65535). ``--set`` takes the
node's ``instance_min_pixels`` and ``track_min_iou`` / ``track_max_missed``
/ ``track_min_hits``.

``--features`` (docs/algorithm.md 10.1): also ``<stem>_features.npy``, the
dense language features (gh x gw x E float16, CLIP's patch grid of the
image) and ``<stem>_features.json`` (their placement in the image, grid,
dtype, model, the image-level embedding); with ``--instances`` each entry
of ``instances`` gains an ``embedding`` (E floats, unit). With several
prompt sets each set's folder gets them, as a run with that set alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..core.config import ConfigError, build_config, coerce, read_settings_file, split_settings
from ..core.prompts import (
    PromptError,
    PromptSet,
    build_prompt_set,
    parse_prompt_text,
    prompt_set_from_settings,
)
from ..core.result import SegmentationResult
from ..core.visualize import draw_legend, outline_instances, overlay, palette, write_color_table
from .common import load_segmenter

log = logging.getLogger("cass_segment")

# The colour table beside the outputs: label value -> name and overlay colour.
COLOR_TABLE_NAME = "color_table.csv"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}
# Output settings that are not segmenter parameters (as in config/cass.yaml).
RUNTIME_DEFAULTS: dict[str, Any] = {"min_pixels": 1, "color_alpha": 0.5}
# The node's instance and track parameters that --set and --config take
# (docs/algorithm.md 11); the others (depth, temporal) do not apply here.
INSTANCE_DEFAULTS: dict[str, Any] = {"instance_min_pixels": 0, "track_min_iou": 0.3,
                                     "track_max_missed": 5, "track_min_hits": 1}
# --track: the inputs as frames this far apart (well under the tracker's
# 1 s reset gap), and the largest value of the 16-bit instance PNG.
TRACK_FRAME_S = 0.001
PNG_IDS = 65535
# The index of the set folders of a run with several prompt sets.
SETS_INDEX_NAME = "sets.json"
# --features: the dtype of <stem>_features.npy and the file names' suffix.
FEATURES_DTYPE = "float16"
FEATURES_SUFFIX = "_features"
# Largest input decoded (2^27 = 134 M pixels, e.g. 11585 x 11585). Beyond it
# the full-resolution overlay and probabilities alone need gigabytes, and a
# file that claims more is far more likely broken or hostile than a photo.
MAX_PIXELS = 1 << 27


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="cass_segment", description="CASS open-vocabulary segmentation of image files.")
    p.add_argument("inputs", nargs="*", metavar="IMAGE_OR_DIR", help="image files or folders of images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="YAML settings: flat mapping or a ROS params file (config/cass.yaml)")
    p.add_argument("--preset", help="one of the paper's datasets: voc21, voc20, context60, context59, "
                   "coco_object, coco_stuff, cityscapes, ade20k")
    p.add_argument("--prompts", action="append", default=[], metavar="TEXT",
                   help="classes separated by ',' ';' or new lines, synonyms by '|'; "
                   "given several times: one prompt set each, written to --out/set_NN/")
    p.add_argument("--queries", action="append", default=[], metavar="FILE",
                   help="one prompt set per line in the --prompts syntax (blank lines and "
                   "lines starting with '#' skipped); sets after those of --prompts")
    p.add_argument("--classes-file", help="one class per line, ',' or '|' between synonyms")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--save-probs", action="store_true",
                   help="also write <stem>_probs.npy: float32 classes x H x W")
    p.add_argument("--no-legend", dest="legend", action="store_false",
                   help="overlays without the legend of class names in their colours")
    p.add_argument("--instances", action="store_true",
                   help="also write <stem>_instances.png (16-bit instance index, 0 = none) and "
                   "an 'instances' list in the JSON; outlines on the overlay")
    p.add_argument("--track", action="store_true",
                   help="track the instances across the inputs in file order (implies "
                   "--instances); ids are track ids")
    p.add_argument("--features", action="store_true",
                   help="also write <stem>_features.npy (dense language features, gh x gw x E "
                   "float16 at CLIP's patch grid) and <stem>_features.json (their placement); "
                   "with --instances an 'embedding' per instance")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override parameters (--set a=1 b=2, or --set a=1 --set b=2)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    args = p.parse_args(argv)
    # `--set a=1 image.png` lets --set swallow the image: give back the items
    # that are not KEY=VALUE.
    args.inputs += [item for item in args.set if "=" not in item]
    args.set = [item for item in args.set if "=" in item]
    if not args.inputs:
        p.error("the following arguments are required: IMAGE_OR_DIR")
    args.instances = args.instances or args.track
    return args


def _settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(segmenter settings, output settings) in precedence order."""
    layers: list[dict[str, Any]] = []
    runtime = dict(RUNTIME_DEFAULTS)
    objects = dict(INSTANCE_DEFAULTS)
    if args.preset:
        layers.append({"preset": args.preset})
    if args.config:
        ours, rest = split_settings(read_settings_file(args.config))
        layers.append(ours)
        runtime.update({k: v for k, v in rest.items() if k in RUNTIME_DEFAULTS})
        objects.update({k: v for k, v in rest.items() if k in INSTANCE_DEFAULTS})
    explicit: dict[str, Any] = {}
    if args.preset:
        explicit["preset"] = args.preset
    for item in args.set:
        key, _, value = item.partition("=")
        key = key.strip()
        if key in RUNTIME_DEFAULTS:
            runtime[key] = value
        elif key in INSTANCE_DEFAULTS:
            objects[key] = value
        else:
            explicit[key] = coerce(key, value)  # names an unknown key clearly
    if args.classes_file:
        explicit["classes_file"] = args.classes_file
        explicit["prompts"] = []
    if args.device:
        explicit["device"] = args.device
    layers.append(explicit)
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    try:
        runtime = {"min_pixels": int(runtime["min_pixels"]), "color_alpha": float(runtime["color_alpha"])}
    except (TypeError, ValueError):
        raise ConfigError(f"bad output setting in {runtime}") from None
    if not 0.0 <= runtime["color_alpha"] <= 1.0:
        raise ConfigError("parameter 'color_alpha' must be in [0, 1]")
    runtime.update(_object_params(objects))
    return merged, runtime


def _object_params(values: dict[str, Any]) -> dict[str, Any]:
    """InstanceParams and TrackParams from the node's parameter names;
    ConfigError naming the parameter."""
    from ..core.objects.instances import InstanceParams
    from ..core.objects.tracks import TrackParams

    def number(key: str, kind: type) -> Any:
        try:
            return kind(values[key])
        except (TypeError, ValueError):
            raise ConfigError(f"parameter '{key}' must be {kind.__name__}, "
                              f"not {values[key]!r}") from None

    instance = InstanceParams(min_pixels=number("instance_min_pixels", int))
    track = TrackParams(min_iou=number("track_min_iou", float),
                        max_missed=number("track_max_missed", int),
                        min_hits=number("track_min_hits", int))
    return {"instance": instance.validate(), "track": track.validate()}


def collect_images(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image paths in argument order (folders: their images, sorted), and
    (input, reason) for the inputs that cannot be images: missing paths, and
    folder entries named like an image that are not regular files."""
    paths: list[Path] = []
    problems: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for entry in sorted(path.iterdir()):
                if entry.suffix.lower() not in IMAGE_SUFFIXES:
                    continue  # other files of the folder are not inputs
                if entry.is_file():
                    paths.append(entry)
                else:
                    problems.append((str(entry), "not a regular file"))
        elif path.is_file():
            paths.append(path)
        elif path.exists():
            problems.append((item, "not a regular file"))
        else:
            problems.append((item, "does not exist"))
    return paths, problems


class UnreadableImage(Exception):
    """An input that is not a usable image; the message is the reason."""


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header without decoding the pixels,
    or None when Pillow does not know the format (OpenCV may still).

    Pillow's Image.open reads the header only. Its own decompression-bomb
    limit is lifted for this call so that the size, not Pillow's verdict,
    is what gets checked (against MAX_PIXELS) and reported."""
    from PIL import Image, UnidentifiedImageError

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        # not a format Pillow knows, or a header it cannot parse
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _cv_reason(e: cv2.error) -> str:
    # cv2.error's text spans several lines (version, source file, function);
    # its `err` attribute is the one-line cause.
    return getattr(e, "err", None) or str(e).strip().splitlines()[-1]


def read_rgb(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3). Raises UnreadableImage with a one-line reason for
    empty, unreadable, undecodable and oversized files. The size is checked
    in the header before decoding, so a header claiming 99999 x 99999
    pixels costs no memory."""
    try:
        if path.stat().st_size == 0:
            raise UnreadableImage("empty file")
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise UnreadableImage(f"cannot read it ({e.strerror or e})") from None
    size = _header_size(path)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise UnreadableImage(f"its header says {size[0]} x {size[1]} pixels, more than the "
                              f"{MAX_PIXELS} pixels cass_segment decodes")
    try:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error as e:  # OpenCV's own size check, or a decoder failure
        raise UnreadableImage(f"OpenCV cannot decode it ({_cv_reason(e)})") from None
    if bgr is None or bgr.size == 0:
        what = "truncated or corrupt image" if size is not None else "not an image OpenCV decodes"
        raise UnreadableImage(what)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def result_json(image: str, result: SegmentationResult, min_pixels: int,
                instances: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The per-image JSON of docs/ros-interface.md; with ``instances``
    (--instances) also that list, as the last key."""
    doc = {
        "image": image,
        "size": list(result.size),
        "class_names": list(result.class_names),
        "objects": result.objects(min_pixels),
        "prompt_id": int(result.prompt_id),
        "timings_ms": dict(result.timings_ms),
    }
    if instances is not None:
        doc["instances"] = instances
    return doc


@dataclass(frozen=True)
class _Objects:
    """One image's instances as cass_segment writes them."""

    image: np.ndarray                # (H, W) uint16: id per pixel (0 = none)
    index: np.ndarray                # (H, W) int32 the instance map, for the outlines
    entries: list[dict[str, Any]]    # the JSON's 'instances'


def find_objects(result: SegmentationResult, runtime: dict[str, Any],
                 tracker: Any | None, frame: int, dense: Any | None = None) -> _Objects:
    """The instances of ``result`` (docs/algorithm.md 11), and with a
    Tracker their tracks: ids are then track ids (only published tracks'
    instances listed and drawn), frame ``frame`` at TRACK_FRAME_S apart.
    With ``dense`` (--features: DenseFeatures) each entry gets the
    instance's pooled ``embedding`` (docs/algorithm.md 10.1)."""
    from ..core.objects.instances import find_instances
    from ..core.objects.tracks import instance_track_ids

    inst = find_instances(result.labels, runtime["instance"], result.confidence)
    if tracker is None:
        ids = np.arange(inst.count + 1, dtype=np.int64)          # id = the instance index
    else:
        tracks = tracker.update(inst, result.prompt_id, frame * TRACK_FRAME_S)
        ids = instance_track_ids(inst.count, tracks)              # (n + 1,) 0: unpublished
    png_ids = np.where(ids > 0, (ids - 1) % PNG_IDS + 1, 0).astype(np.uint16)
    entries = [{"id": int(ids[i]), "class_id": int(inst.class_ids[i - 1]),
                "label": result.class_names[int(inst.class_ids[i - 1])],
                "pixel_count": int(inst.pixel_counts[i - 1]),
                "bbox": [int(v) for v in inst.boxes[i - 1]],
                "mean_confidence": float(inst.mean_confidence[i - 1])}
               for i in range(1, inst.count + 1) if ids[i] > 0]
    if dense is not None and entries:
        from ..core.queries.pooling import pool_regions

        pooled = pool_regions(dense, inst.index, inst.count, inst.boxes).cpu().numpy()
        listed = [i for i in range(1, inst.count + 1) if ids[i] > 0]
        for entry, i in zip(entries, listed, strict=True):
            entry["embedding"] = [float(v) for v in pooled[i - 1]]
    shown = np.where(ids > 0, np.arange(inst.count + 1), 0)[inst.index]   # (H, W) int32
    return _Objects(png_ids[inst.index], shown.astype(np.int32), entries)


def _unique_stems(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        stems.append(p.stem if n == 0 else f"{p.stem}_{n + 1}")
        if n:
            log.warning("two inputs are named %s: writing the second as %s", p.stem, stems[-1])
    return stems


@dataclass(frozen=True)
class QuerySet:
    """One prompt set of the run and the text it was written as."""

    text: str | None                # None: the settings' prompts (preset, classes file)
    prompt_set: PromptSet


def read_queries(path: str) -> list[tuple[int, str]]:
    """(line number, text) of each prompt set of a ``--queries`` file: one
    per line, blank lines and lines starting with ``#`` skipped. PromptError
    when the file cannot be read or holds no set."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise PromptError(f"cannot read --queries file {path}: {why}") from None
    found = [(n, line.strip()) for n, line in enumerate(lines, 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not found:
        raise PromptError(f"--queries file {path} holds no prompt set")
    return found


def prompt_sets(args: argparse.Namespace, config: Any) -> list[QuerySet]:
    """The run's prompt sets in order: each ``--prompts``, then each line
    of each ``--queries`` file; without either, the settings' one set.
    PromptError names the flag, file and line of a set that is no use."""
    several = len(args.prompts) > 1 or bool(args.queries)
    if several and args.classes_file:
        # A single --prompts wins over --classes-file (as it always has);
        # among several sets the file would be silently dropped or have to
        # be given a place: refused instead, so nothing is guessed.
        raise PromptError("--classes-file gives one prompt set and cannot be combined with "
                          "--queries or several --prompts; use its classes as one --prompts "
                          "or one line of the --queries file")
    texts: list[tuple[str, str]] = []
    for n, text in enumerate(args.prompts, 1):
        texts.append((f"--prompts #{n}: " if several else "", text))
    for path in args.queries:
        texts += [(f"--queries {path} line {n}: ", text) for n, text in read_queries(path)]
    if not texts:
        return [QuerySet(None, prompt_set_from_settings(config.prompts, config.classes_file,
                                                        config.background_classes))]
    sets = []
    for where, text in texts:
        try:
            sets.append(QuerySet(text, build_prompt_set(parse_prompt_text(text),
                                                        config.background_classes)))
        except PromptError as e:
            raise PromptError(f"{where}{e}") from None
    return sets


@dataclass(frozen=True)
class _Output:
    """Where one prompt set's files go, and what they are drawn with."""

    folder: Path
    prepared: Any                   # PreparedPrompts
    colors: np.ndarray
    tracker: Any = None             # --track: this set's core.objects Tracker


def set_folder_names(count: int) -> list[str]:
    """``set_01`` ... : zero-padded so that they sort in set order."""
    width = max(2, len(str(count)))
    return [f"set_{n:0{width}d}" for n in range(1, count + 1)]


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        settings, runtime = _settings(args)
        config = build_config(settings)
        sets = prompt_sets(args, config)
    except (ConfigError, PromptError) as e:
        print(f"cass_segment: error: {e}", file=sys.stderr)
        return 2
    paths, problems = collect_images(args.inputs)
    for item, why in problems:
        log.error("input %s: %s: skipped", item, why)
    if not paths:
        print("cass_segment: error: no image files among the inputs", file=sys.stderr)
        return 2

    loaded = load_segmenter("cass_segment", config, sets[0].prompt_set)
    if loaded is None:
        return 2
    segmenter, prepared = loaded
    out = Path(args.out)
    folders = [out] if len(sets) == 1 else [out / name for name in set_folder_names(len(sets))]
    outputs = []
    for i, (qs, folder) in enumerate(zip(sets, folders, strict=True)):
        # Every set gets the prompt_id a run with it alone gets, so that
        # its folder holds exactly that run's files.
        ready = prepared if i == 0 else segmenter.prepare_prompts(qs.prompt_set,
                                                                  prompt_id=prepared.prompt_id)
        tracker = None
        if args.track:
            from ..core.objects.tracks import Tracker

            tracker = Tracker(runtime["track"])
        outputs.append(_Output(folder, ready, palette(ready.num_labels), tracker))
    try:
        for o in outputs:
            o.folder.mkdir(parents=True, exist_ok=True)
            write_color_table(o.folder / COLOR_TABLE_NAME, o.prepared.class_names, o.colors)
        if len(sets) > 1:
            index = [{"folder": o.folder.name, "prompts": qs.text,
                      "class_names": list(o.prepared.class_names)}
                     for qs, o in zip(sets, outputs, strict=True)]
            (out / SETS_INDEX_NAME).write_text(json.dumps({"sets": index}, indent=2) + "\n")
    except OSError as e:
        print(f"cass_segment: error: {e}", file=sys.stderr)
        return 2

    # OpenCV logs its own multi-line messages for files it cannot decode;
    # each failure is reported once, in one line, below.
    cv_log_level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        failed = _segment_all(args, paths, segmenter, outputs, runtime)
    finally:
        cv2.utils.logging.setLogLevel(cv_log_level)
    done = len(paths) - failed
    failed += len(problems)
    note = f"; {failed} input(s) failed" if failed else ""
    if len(sets) == 1:
        print(f"cass_segment: wrote {done} result(s) to {out}{note}")
    else:
        print(f"cass_segment: wrote {done} result(s) for each of {len(sets)} prompt sets to "
              f"{folders[0]} ... {folders[-1]} ({out / SETS_INDEX_NAME}){note}")
    return 1 if failed else 0


def _segment_all(args: argparse.Namespace, paths: list[Path], segmenter: Any,
                 outputs: list[_Output], runtime: dict[str, Any]) -> int:
    """Segment and write every input; returns how many could not be read."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    failed = 0
    show_bar = not args.quiet and len(paths) > 1
    # With a progress bar, logging_redirect_tqdm prints a skipped input's
    # line above the bar instead of glued to its end.
    with logging_redirect_tqdm() if show_bar else contextlib.nullcontext():
        for frame, (path, stem) in enumerate(tqdm(list(zip(paths, _unique_stems(paths),
                                                            strict=True)),
                                                  desc="cass_segment", unit="img",
                                                  disable=not show_bar)):
            if len(outputs) == 1:
                o = outputs[0]
                failed += _segment_one(args, path, stem, segmenter, o.prepared, o.folder,
                                       o.colors, runtime, o.tracker, frame)
            else:
                failed += _segment_sets(args, path, stem, segmenter, outputs, runtime, frame)
    return failed


def _write_images(args: argparse.Namespace, out: Path, stem: str, rgb: np.ndarray,
                  result: SegmentationResult, colors: np.ndarray, runtime: dict[str, Any],
                  objects: _Objects | None = None) -> None:
    """The label PNG, the overlay, (--save-probs) the probabilities and
    (--instances) the instance PNG, outlined on the overlay."""
    cv2.imwrite(str(out / f"{stem}_labels.png"), result.labels)
    blend = overlay(rgb, result.labels, colors, runtime["color_alpha"])
    if objects is not None:
        cv2.imwrite(str(out / f"{stem}_instances.png"), objects.image)
        blend = outline_instances(blend, objects.index)
    if args.legend:
        blend = draw_legend(blend, result.class_names, colors)
    cv2.imwrite(str(out / f"{stem}_overlay.png"), cv2.cvtColor(blend, cv2.COLOR_RGB2BGR))
    if args.save_probs:
        np.save(out / f"{stem}_probs.npy", result.probs.astype(np.float32))


def features_json(image: str, file: str, dense: Any, model: str) -> dict[str, Any]:
    """``<stem>_features.json`` (--features, docs/algorithm.md 10.1)."""
    gh, gw, width = dense.patches.shape
    return {"image": image, "file": file, "shape": [gh, gw, width], "dtype": FEATURES_DTYPE,
            "model": model, "placement": dense.placement.to_json(),
            "image_embedding": [float(v) for v in dense.image.float().cpu().numpy()]}


def _write_features(out: Path, stem: str, image: str, dense: Any, model: str) -> None:
    """``<stem>_features.npy`` (gh x gw x E float16) and its JSON."""
    name = f"{stem}{FEATURES_SUFFIX}"
    np.save(out / f"{name}.npy", dense.patches.cpu().numpy().astype(FEATURES_DTYPE))
    doc = features_json(image, f"{name}.npy", dense, model)
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")


def _dense(segmenter: Any, features: Any) -> Any:
    """The image's dense features (fp32; written as FEATURES_DTYPE)."""
    from ..core.queries.dense import dense_features

    return dense_features(features, segmenter.clip.patch)[0]


def _read_input(path: Path) -> np.ndarray | None:
    """The input's RGB pixels; None (reported in one line) when unreadable."""
    try:
        return read_rgb(path)
    except UnreadableImage as e:
        log.error("input %s: %s: skipped", path, e)
        return None


def _segment_one(args: argparse.Namespace, path: Path, stem: str, segmenter: Any, prepared: Any,
                 out: Path, colors: np.ndarray, runtime: dict[str, Any],
                 tracker: Any | None = None, frame: int = 0) -> int:
    """Segment one input and write its files; 1 when it could not be read."""
    t0 = time.perf_counter()
    rgb = _read_input(path)
    if rgb is None:
        return 1
    t_read = time.perf_counter() - t0
    dense = None
    if args.features:
        results, features = segmenter.segment_keeping([rgb], prepared,
                                                      return_probs=args.save_probs)
        result = results[0]
    else:
        result = segmenter.segment([rgb], prepared, return_probs=args.save_probs)[0]
    t1 = time.perf_counter()
    if args.features:
        dense = _dense(segmenter, features)
        _write_features(out, stem, str(path), dense, segmenter.models.clip_id)
    objects = find_objects(result, runtime, tracker, frame, dense) if args.instances else None
    _write_images(args, out, stem, rgb, result, colors, runtime, objects)
    t_write = time.perf_counter() - t1
    result.timings_ms["read"] = round(t_read * 1000.0, 3)
    result.timings_ms["write"] = round(t_write * 1000.0, 3)
    result.timings_ms["total"] = round((time.perf_counter() - t0) * 1000.0, 3)
    with open(out / f"{stem}.json", "w") as f:
        json.dump(result_json(str(path), result, runtime["min_pixels"],
                              None if objects is None else objects.entries), f, indent=2)
    return 0


def _segment_sets(args: argparse.Namespace, path: Path, stem: str, segmenter: Any,
                  outputs: list[_Output], runtime: dict[str, Any], frame: int = 0) -> int:
    """One input, several prompt sets: one forward pass (encode), one
    decode and one set of files per set; 1 when it could not be read."""
    t0 = time.perf_counter()
    rgb = _read_input(path)
    if rgb is None:
        return 1
    t_read = time.perf_counter() - t0
    features = segmenter.encode([rgb])
    dense = _dense(segmenter, features) if args.features else None
    # The stage times of that one pass: encode keeps them in the segmenter's
    # stage timer (segment reads it the same way), its total is encode's.
    shared = segmenter._timer.timings_ms()
    for o in outputs:
        t1 = time.perf_counter()
        result = segmenter.decode(features, o.prepared, return_probs=args.save_probs)[0]
        t2 = time.perf_counter()
        if dense is not None:
            _write_features(o.folder, stem, str(path), dense, segmenter.models.clip_id)
        objects = (find_objects(result, runtime, o.tracker, frame, dense) if args.instances
                   else None)
        _write_images(args, o.folder, stem, rgb, result, o.colors, runtime, objects)
        t_write = time.perf_counter() - t2
        # Each set's JSON: the shared read and forward pass, plus its own
        # decode and write, as if this set had been the only one.
        timings = {k: round(shared.get(k, 0.0) + v, 3) for k, v in result.timings_ms.items()
                   if k != "total"}
        timings["total"] = 0.0      # the key order of a single-set run's JSON
        timings["read"] = round(t_read * 1000.0, 3)
        timings["write"] = round(t_write * 1000.0, 3)
        timings["total"] = round(t_read * 1000.0 + shared["total"]
                                 + (time.perf_counter() - t1) * 1000.0, 3)
        result.timings_ms = timings
        with open(o.folder / f"{stem}.json", "w") as f:
            json.dump(result_json(str(path), result, runtime["min_pixels"],
                                  None if objects is None else objects.entries), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
