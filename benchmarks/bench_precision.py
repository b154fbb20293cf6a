#!/usr/bin/env python3
"""The precision ladder (issue 25; docs/algorithm.md 8): each precision mode
against the product's own fp32 on every preset, and its seconds per image.

Full-size CLIP ViT-B/16 + DINO ViT-B/8 with RANDOM weights on deterministic
synthetic 640 x 480 images (smooth noise, as benchmarks/gpu_check.py; the
repository has no real images). Each preset runs in its own mode (voc21 whole
image, the others sliding 224/112, cityscapes at short side 560). Presets
whose image half is the same (docs/algorithm.md 10) share one ``encode`` per
image and mode; each preset then decodes with its own settings and class
list. The class names are encoded once, in fp32, and shared by every mode:
the table measures the image passes (the text tower runs off the frame path;
``mixed`` keeps it in fp32 anyway). ``--templates`` uses fewer of the 80
prompt templates to save time (the same embeddings for every mode).

Per mode and preset: the lowest label agreement over the images; per mode:
the largest |prob diff|, the crops whose head matching differs, whether the
mode meets the agreement rule stated for it (on every image), and the
seconds per image of ``encode`` (the fastest image) for voc21 (whole image)
and context60 (sliding). The reference row (fp32) is the timing baseline.

    .venv/bin/python benchmarks/bench_precision.py [--images 2] [--presets voc21 context60]
        [--modes fp32 bf16 mixed ...] [--templates 80] [--tiny]

Last line: ``bench_precision: mixed_min_agree=<%> mixed_speedup_whole=<x> mixed_speedup_slide=<x>``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cass_ros.core.agreement import AgreementRule, compare_results  # noqa: E402
from cass_ros.core.config import PRESETS, CassConfig, build_config  # noqa: E402
from cass_ros.core.models import CassModels, load_models  # noqa: E402
from cass_ros.core.precision import (MIXED_FP32_BLOCKS, PrecisionPlan,  # noqa: E402
                                     resolve_plan)
from cass_ros.core.prompts import prompt_set_from_settings  # noqa: E402
from cass_ros.core.result import SegmentationResult  # noqa: E402
from cass_ros.core.segmenter import Segmenter, _heads_per_image  # noqa: E402

BF16, FP16 = torch.bfloat16, torch.float16
CPU = torch.device("cpu")
# The ladder: name -> (plan, the rule it is held to, or None: measured only).
# The rules are docs/algorithm.md 8's; the mixed rows are the stages that
# chose ``mixed`` (its trunks, its fp32 tail).
MODES: dict[str, tuple[PrecisionPlan, AgreementRule | None]] = {
    "fp32": (PrecisionPlan(), None),
    "bf16": (PrecisionPlan(autocast=BF16), None),
    "fp16": (PrecisionPlan(autocast=FP16), None),
    "mixed": (resolve_plan("mixed", CPU), AgreementRule(0.995, 0.25)),
    "mixed-tail0": (PrecisionPlan(trunk_dtype=BF16, fp32_tail=0), None),
    "mixed-tail1": (PrecisionPlan(trunk_dtype=BF16, fp32_tail=1), None),
    "mixed-tail4": (PrecisionPlan(trunk_dtype=BF16, fp32_tail=4), None),
    "mixed-clip-only": (PrecisionPlan(trunk_dtype=BF16, trunks=("clip",)), None),
    "mixed-dino-only": (PrecisionPlan(trunk_dtype=BF16, trunks=("dino",)), None),
    "mixed-fp16": (PrecisionPlan(trunk_dtype=FP16), None),
}
DEFAULT_MODES = ("fp32", "bf16", "fp16", "mixed", "mixed-tail0", "mixed-clip-only",
                 "mixed-dino-only", "mixed-fp16")
# What the image half reads (docs/algorithm.md 10): presets equal in these
# share one encode.
ENCODE_SETTINGS = ("short_side", "slide_crop", "slide_stride", "attention", "k_eigen", "low_rank",
                   "fusion_weight", "eigenvalue_scaling", "gaussian_std", "crop_global_vector")
TIMED = {"voc21": "whole", "context60": "slide"}


def images(n: int, seed: int = 7) -> list[np.ndarray]:
    """Smooth random 640 x 480 RGB images (noise upsampled), all different."""
    rng = np.random.default_rng(seed)
    return [cv2.resize(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), (640, 480),
                       interpolation=cv2.INTER_CUBIC) for _ in range(n)]


def processor() -> str:
    """The model name of /proc/cpuinfo, and whether it has AMX (bf16 tiles)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("model name")), "unknown CPU")
    flags = [f for f in ("avx512_bf16", "avx512_fp16", "amx_bf16") if f" {f}" in text]
    return f"{name} ({', '.join(flags) or 'no bf16 instructions'})"


def tiny_models() -> CassModels:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_check import tiny_models as tiny

    return tiny()


@dataclass
class Run:
    """One mode's results per preset (one per image) and encode seconds per group."""

    results: dict[str, list[SegmentationResult]]
    seconds: dict[str, list[float]]


def preset_configs(presets: list[str], base: dict) -> dict[str, CassConfig]:
    return {p: build_config(base, {"preset": p}) for p in presets}


def groups_of(configs: dict[str, CassConfig]) -> dict[tuple, list[str]]:
    out: dict[tuple, list[str]] = defaultdict(list)
    for name, cfg in configs.items():
        out[tuple(getattr(cfg, k) for k in ENCODE_SETTINGS)].append(name)
    return out


def run_mode(models: CassModels, plan: PrecisionPlan, configs: dict[str, CassConfig],
             prepared: dict, pictures: list[np.ndarray]) -> Run:
    results: dict[str, list[SegmentationResult]] = defaultdict(list)
    seconds: dict[str, list[float]] = defaultdict(list)
    for members in groups_of(configs).values():
        seg = Segmenter(configs[members[0]], models, precision_plan=plan)
        for img in pictures:
            t0 = time.perf_counter()
            feats = seg.encode([img])
            took = time.perf_counter() - t0
            heads = _heads_per_image(feats)[0]
            for name in members:
                (res,) = seg.with_config(configs[name]).decode(feats, prepared[name],
                                                                return_probs=True)
                res.heads = np.stack(heads) if heads else None
                results[name].append(res)
                seconds[name].append(took)
    return Run(dict(results), dict(seconds))


def measure(models: CassModels, modes: list[str], configs: dict[str, CassConfig],
            pictures: list[np.ndarray], templates: int) -> dict[str, Run]:
    ref_seg = Segmenter(next(iter(configs.values())), models)
    # Fewer prompt templates only to save time (CPU: about a second per name
    # with all 80); every mode decodes with these same embeddings.
    ref_seg.text_embedder._templates = ref_seg.text_embedder._templates[:templates]
    t0 = time.perf_counter()
    prepared = {}
    for name, cfg in configs.items():
        ps = prompt_set_from_settings(cfg.prompts, cfg.classes_file, cfg.background_classes)
        prepared[name] = ref_seg.prepare_prompts(ps, prompt_id=1)
    print(f"class names of {len(configs)} presets encoded in {time.perf_counter() - t0:.0f} s "
          f"(fp32, {templates} templates, shared by every mode)", flush=True)
    runs = {}
    for mode in dict.fromkeys(["fp32", *modes]):
        t0 = time.perf_counter()
        runs[mode] = run_mode(models, MODES[mode][0], configs, prepared, pictures)
        print(f"  {mode}: {time.perf_counter() - t0:.0f} s", flush=True)
    return runs


def table(runs: dict[str, Run], configs: dict[str, CassConfig]) -> tuple[list[str], dict]:
    """The markdown table, and per mode (lowest agreement, seconds per image)."""
    ref = runs["fp32"]
    presets = list(configs)
    lines = ["| mode | " + " | ".join(presets) + " | max prob diff | heads differ | rule | "
             "s/img whole | s/img sliding |",
             "|" + " --- |" * (len(presets) + 6)]
    summary = {}
    for mode, run in runs.items():
        per = {p: [compare_results([a], [b], configs[p].prob_threshold)
                   for a, b in zip(ref.results[p], run.results[p])] for p in presets}
        every = [g for got in per.values() for g in got]
        worst = {p: min(g.label_agreement for g in got) for p, got in per.items()}
        diff = max(g.max_prob_diff for g in every)
        heads = sum(len(g.head_mismatches) for g in every)
        crops = sum(g.crops for g in every)
        rule = MODES[mode][1]
        verdict = "" if rule is None else (
            "MISSES" if any(rule.failures(g) for g in every) else "meets")
        # the fastest image: the first call of a segmenter also builds its
        # oneDNN primitives and position tables
        secs = {k: float(np.min(run.seconds[p])) for p, k in TIMED.items() if p in run.seconds}
        cells = [f"{100 * worst[p]:.3f}" for p in presets]
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {diff:.1e} | {heads}/{crops} | "
                     f"{verdict} | {secs.get('whole', float('nan')):.2f} | "
                     f"{secs.get('slide', float('nan')):.2f} |")
        summary[mode] = (min(worst.values()), secs)
    return lines, summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=2, help="synthetic images per preset")
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=list(MODES))
    p.add_argument("--templates", type=int, default=80,
                   help="prompt templates per class name (80, the product's; fewer is faster)")
    p.add_argument("--tiny", action="store_true", help="the tests' tiny models (checks the script)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("cass_ros.core.cpu_kernels").setLevel(logging.INFO)
    base = {"clip_weights": "random", "dino_weights": "random", "device": "cpu"}
    models = tiny_models() if args.tiny else load_models(build_config(base))
    configs = preset_configs(args.presets, dict(base, short_side=64) if args.tiny else base)
    if args.tiny:
        configs = {k: c.replace(short_side=64, slide_crop=32 if c.slide_crop else 0,
                                slide_stride=16) for k, c in configs.items()}
    cpu = processor()
    print(f"bench_precision on {cpu}: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"{'TINY models' if args.tiny else 'ViT-B/16 + ViT-B/8 RANDOM weights'}, "
          f"{args.images} synthetic 640 x 480 images; mixed = last {MIXED_FP32_BLOCKS} trunk "
          f"blocks fp32", flush=True)
    runs = measure(models, args.modes, configs, images(args.images), args.templates)
    lines, summary = table(runs, configs)
    print("\nlabel agreement with fp32 (%, lowest image per preset); seconds per image of encode")
    print("\n".join(lines))
    base_s = summary["fp32"][1]
    mixed = summary.get("mixed")
    if mixed:
        speed = {k: base_s[k] / mixed[1][k] for k in mixed[1] if k in base_s}
        print(f"bench_precision: mixed_min_agree={100 * mixed[0]:.3f}% "
              f"mixed_speedup_whole={speed.get('whole', float('nan')):.2f}x "
              f"mixed_speedup_slide={speed.get('slide', float('nan')):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
