"""``cass_eval``: the paper's benchmark protocol (mIoU, aAcc, mAcc over a
validation split), on the eight benchmarks or a team's own labelled images.

    cass_eval DATA_ROOT --dataset NAME [--config YAML] [--preset NAME]
              [--set KEY=VALUE ...] [--limit N] [--out DIR] [--device DEV]
    cass_eval --images DIR --labels DIR --classes-file FILE [...]

Settings precedence: defaults < the dataset's preset (or --preset) <
--config < --set and the explicit flags. The class table is the dataset's
(its preset's class file, or --classes-file); ``prompts`` is not used.
docs/evaluation.md gives each dataset's layout and label rule.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import ConfigError, build_config, coerce, read_settings_file, split_settings
from ..core.datasets import DATASETS, DatasetError, Split, custom_spec, load_custom, load_split
from ..core.prompts import PromptError, prompt_set_from_settings
from .common import load_segmenter
from .segment import UnreadableImage, read_rgb

log = logging.getLogger("cass_eval")

RESULTS_FILE = "per_image.jsonl"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion.npy"
# Settings that do not change the predictions: a run may resume with others.
NOT_FINGERPRINTED = ("device", "weights_cache_dir")


class EvalError(Exception):
    """A one-line reason why the evaluation cannot run."""


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="cass_eval", description="Score CASS on a labelled validation split (mIoU, aAcc, mAcc).")
    p.add_argument("data_root", nargs="?", metavar="DATA_ROOT", help="the dataset's folder")
    p.add_argument("--dataset", choices=sorted(DATASETS),
                   help="benchmark layout and label rule; its preset is applied")
    p.add_argument("--images", help="custom layout: folder of images")
    p.add_argument("--labels", help="custom layout: folder of label pngs, <image stem>.png")
    p.add_argument("--label-suffix", default=".png",
                   help="custom layout: label file = <image stem><suffix> (default .png)")
    p.add_argument("--reduce-zero-label", action="store_true",
                   help="custom layout: label 0 is ignored, label v is line v of the classes file")
    p.add_argument("--classes-file", help="class table (custom layout; overrides a dataset's)")
    p.add_argument("--config", help="YAML settings: flat mapping or a ROS params file (config/cass.yaml)")
    p.add_argument("--preset", help="a preset other than the dataset's")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override parameters (--set a=1 b=2, or --set a=1 --set b=2)")
    p.add_argument("--limit", type=int, help="only the first N images of the split")
    p.add_argument("--batch-size", type=int, default=4, help="images per segmenter call (default 4)")
    p.add_argument("--out", help="folder for per-image results (resumable), metrics.json, "
                   "confusion.npy")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    args = p.parse_args(argv)
    # `--set a=1 ROOT` lets --set swallow the root: give it back.
    rest = [item for item in args.set if "=" not in item]
    args.set = [item for item in args.set if "=" in item]
    if rest:
        if args.data_root or len(rest) > 1:
            p.error(f"unrecognized arguments: {' '.join(rest)}")
        args.data_root = rest[0]
    custom = args.images or args.labels
    if custom:
        if not (args.images and args.labels):
            p.error("the custom layout needs both --images and --labels")
        if args.data_root:
            p.error("give either DATA_ROOT or --images/--labels, not both")
        if not (args.classes_file or args.dataset):
            p.error("the custom layout needs --classes-file (or --dataset for a benchmark's classes)")
    elif not args.data_root or not args.dataset:
        p.error("the following arguments are required: DATA_ROOT and --dataset "
                "(or --images, --labels and --classes-file)")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    return args


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The segmenter settings in precedence order."""
    layers: list[dict[str, Any]] = []
    preset = args.preset or args.dataset
    if preset:
        layers.append({"preset": preset})
    if args.config:
        ours, _ = split_settings(read_settings_file(args.config))
        layers.append(ours)
    # The class table is the dataset's: a config's prompts or background
    # names (config/cass.yaml has them) must not change it.
    table: dict[str, Any] = {"prompts": []}
    if args.dataset:
        table["background_classes"] = []
    layers.append(table)
    explicit: dict[str, Any] = {}
    if preset:
        explicit["preset"] = preset
    for item in args.set:
        key, _, value = item.partition("=")
        explicit[key.strip()] = coerce(key.strip(), value)  # names an unknown key clearly
    if "prompts" in explicit:
        raise ConfigError("cass_eval scores the dataset's class table: use --classes-file, "
                          "not prompts")
    if args.classes_file:
        explicit["classes_file"] = args.classes_file
    if args.device:
        explicit["device"] = args.device
    layers.append(explicit)
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return merged


def _split(args: argparse.Namespace, num_labels: int, has_background_names: bool) -> Split:
    """The samples and label rule, checked against the class table."""
    if args.images:
        if args.dataset:
            spec = DATASETS[args.dataset]
        else:
            # Label values are cass_segment's: 0 = background, v = class v;
            # with --reduce-zero-label 0 is ignored and v is class line v.
            k = num_labels - 1 if args.reduce_zero_label else num_labels
            spec = custom_spec(k, not args.reduce_zero_label, args.reduce_zero_label)
        split = load_custom(args.images, args.labels, spec, args.label_suffix)
    else:
        split = load_split(args.dataset, args.data_root)
    spec = split.spec
    if num_labels - spec.pred_offset != spec.num_classes:
        have = num_labels - 1
        raise EvalError(f"{spec.name} has {spec.num_classes} classes"
                        f"{' (background included)' if spec.has_background else ''}, but the "
                        f"classes file gives {have} class line(s)"
                        f"{' and a background line' if has_background_names else ''}")
    return split


# ---------------------------------------------------------------- resumable results


def _fingerprint(config: Any, split: Split, class_names: list[str]) -> dict[str, Any]:
    cfg = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_FINGERPRINTED}
    spec = split.spec
    return {"dataset": spec.name, "num_classes": spec.num_classes,
            "has_background": spec.has_background, "reduce_zero_label": spec.reduce_zero_label,
            "class_names": class_names, "config": cfg}


def _open_out(out: Path, fingerprint: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Create or reopen ``out``: the per-image records already there (of the
    same configuration, else EvalError)."""
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / RUN_FILE
    if run_file.exists():
        try:
            old = json.loads(run_file.read_text())
        except (OSError, ValueError) as e:
            raise EvalError(f"cannot read {run_file}: {e}") from None
        if old != fingerprint:
            diff = sorted({k for k in set(old.get("config", {})) | set(fingerprint["config"])
                           if old.get("config", {}).get(k) != fingerprint["config"].get(k)}
                          | {k for k in fingerprint if k != "config" and old.get(k) != fingerprint[k]})
            raise EvalError(f"{out} holds results of another evaluation (differs in: "
                            f"{', '.join(diff) or 'format'}); use another --out or empty it")
    else:
        run_file.write_text(json.dumps(fingerprint, indent=2))
    done: dict[str, dict[str, Any]] = {}
    results = out / RESULTS_FILE
    if results.exists():
        lines = results.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by an interrupted run: that image is redone
            done[record["id"]] = record
            kept.append(line)
        if len(kept) != len(lines) or (lines and not results.read_text().endswith("\n")):
            # Rewritten without the cut line, so that new records start on a line of their own.
            results.write_text("".join(line + "\n" for line in kept))
    return done


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        config = build_config(_settings(args))
        prompt_set = prompt_set_from_settings(config.prompts, config.classes_file,
                                              config.background_classes)
        split = _split(args, prompt_set.num_labels, bool(prompt_set.background))
    except (ConfigError, PromptError, DatasetError, EvalError) as e:
        print(f"cass_eval: error: {e}", file=sys.stderr)
        return 2

    loaded = load_segmenter("cass_eval", config, prompt_set)
    if loaded is None:
        return 2
    segmenter, prepared = loaded
    spec = split.spec
    class_names = prepared.class_names[spec.pred_offset:]
    samples = split.samples[: args.limit] if args.limit else split.samples
    done: dict[str, dict[str, Any]] = {}
    out = Path(args.out) if args.out else None
    try:
        if out is not None:
            done = _open_out(out, _fingerprint(config, split, class_names))
        t0 = time.perf_counter()
        records = _evaluate(args, split, samples, done, segmenter, prepared, out)
        wall = time.perf_counter() - t0
    except (DatasetError, EvalError, UnreadableImage) as e:
        print(f"cass_eval: error: {e}", file=sys.stderr)
        return 1
    report = _report(records, spec, class_names, config, args, wall,
                     resumed=sum(1 for s in samples if s.id in done), device=str(segmenter.device))
    print(format_table(report))
    if out is not None:
        (out / METRICS_FILE).write_text(json.dumps(report, indent=2))
        print(f"cass_eval: wrote {out / METRICS_FILE} and {out / CONFUSION_FILE}")
    return 0


def _evaluate(args: argparse.Namespace, split: Split, samples: list, done: dict[str, dict[str, Any]],
              segmenter: Any, prepared: Any, out: Path | None) -> list[dict[str, Any]]:
    """Every sample's record (the done ones as stored), in split order; the
    total confusion is written to ``out`` at the end."""
    import torch
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..core.metrics import confusion_matrix, dense_from_entries, sparse_entries

    spec = split.spec
    device = segmenter.device
    k = spec.num_classes
    todo = [s for s in samples if s.id not in done]
    records: dict[str, dict[str, Any]] = {s.id: done[s.id] for s in samples if s.id in done}
    total = torch.zeros(k, k + 1, dtype=torch.int64, device=device)
    for record in records.values():
        total += torch.from_numpy(dense_from_entries(record["confusion"], k)).to(device)
    show_bar = not args.quiet and len(todo) > 1
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(out / RESULTS_FILE, "a")) if out is not None else None
        if show_bar:
            stack.enter_context(logging_redirect_tqdm())
        bar = tqdm(total=len(todo), desc="cass_eval", unit="img", disable=not show_bar)
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start: start + args.batch_size]
            t0 = time.perf_counter()
            images, labels = [], []
            for s in batch:
                try:
                    images.append(read_rgb(s.image))
                except UnreadableImage as e:
                    raise UnreadableImage(f"image {s.image}: {e}") from None
                label = split.read_label(s)
                if label.shape != images[-1].shape[:2]:
                    raise DatasetError(f"label {s.label} is {label.shape[1]} x {label.shape[0]} "
                                       f"but its image is {images[-1].shape[1]} x "
                                       f"{images[-1].shape[0]}")
                labels.append(label)
            predictions = segmenter.segment(images, prepared)
            seconds = (time.perf_counter() - t0) / len(batch)
            for s, label, result in zip(batch, labels, predictions, strict=True):
                gt = torch.from_numpy(label).to(device)
                pred = torch.from_numpy(result.labels.astype(np.int64)).to(device) - spec.pred_offset
                try:
                    cm = confusion_matrix(gt, pred, k)
                except ValueError as e:
                    raise DatasetError(f"label {s.label}: {e}") from None
                total += cm
                record = {"id": s.id, "seconds": round(seconds, 6), "confusion": sparse_entries(cm)}
                records[s.id] = record
                if sink is not None:
                    sink.write(json.dumps(record) + "\n")
                    sink.flush()
            bar.update(len(batch))
        bar.close()
    if out is not None:
        np.save(out / CONFUSION_FILE, total.cpu().numpy())
    return [records[s.id] for s in samples]


def _pct(x: float) -> float | None:
    return None if math.isnan(x) else round(100.0 * x, 2)


def _report(records: list[dict[str, Any]], spec: Any, class_names: list[str], config: Any,
            args: argparse.Namespace, wall: float, resumed: int, device: str) -> dict[str, Any]:
    from ..core.metrics import dense_from_entries, metrics_from_confusion

    total = np.zeros((spec.num_classes, spec.num_classes + 1), dtype=np.int64)
    for r in records:
        total += dense_from_entries(r["confusion"], spec.num_classes)
    m = metrics_from_confusion(total)
    n = len(records)
    new = n - resumed
    return {
        "dataset": spec.name,
        "description": spec.description,
        "num_images": n,
        "metrics": {
            "mIoU": _pct(m["mIoU"]), "aAcc": _pct(m["aAcc"]), "mAcc": _pct(m["mAcc"]),
            "per_class": [{"class": name, "IoU": _pct(float(iou)), "Acc": _pct(float(acc))}
                          for name, iou, acc in zip(class_names, m["IoU"], m["Acc"], strict=True)],
            "pixels": m["pixels"],
            "no_class_pixels": int(total[:, -1].sum()),
        },
        "seconds_per_image": round(sum(r["seconds"] for r in records) / n, 4) if n else None,
        "this_run": {"images": new, "resumed": resumed, "wall_seconds": round(wall, 3),
                     "seconds_per_image": round(wall / new, 4) if new else None,
                     "batch_size": args.batch_size, "device": device},
        "config": dataclasses.asdict(config),
        "label_rule": {"has_background": spec.has_background,
                       "reduce_zero_label": spec.reduce_zero_label, "ignore_index": 255},
    }


def format_table(report: dict[str, Any]) -> str:
    """Per class IoU and Acc (%), then mIoU, aAcc, mAcc; '-' = not counted."""
    def cell(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    rows = report["metrics"]["per_class"]
    width = max([len("class")] + [len(r["class"]) for r in rows])
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}", "-" * (width + 16)]
    lines += [f"{r['class']:<{width}}  {cell(r['IoU']):>6}  {cell(r['Acc']):>6}" for r in rows]
    m = report["metrics"]
    lines.append("-" * (width + 16))
    per = report["seconds_per_image"]
    lines.append(f"{report['dataset']}: {report['num_images']} image(s)  mIoU {cell(m['mIoU'])}  "
                 f"aAcc {cell(m['aAcc'])}  mAcc {cell(m['mAcc'])}  "
                 f"({'-' if per is None else f'{per:.3f}'} s/image)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
