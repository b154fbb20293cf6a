#!/usr/bin/env python3
"""gpu_check: the GPU fast path measured and its correctness re-proved, in
one run that prints one table and a final line (issue 8):

    gpu_check: p50_ms=... p99_ms=... cams8_fps=... agree_fp32=...% agree_fp16=...%

Full-size CLIP ViT-B/16 + DINO ViT-B/8 with RANDOM weights (speed does not
depend on them), 640 x 480 frames, whole image at short side 336, 8 classes
plus the default background names, precision ``auto``:

- correctness (cass_ros.core.agreement, as test/core/test_precision.py):
  CUDA fp32 against CPU fp32 (labels, max |prob diff|, head choices per
  crop); the precision ladder (issue 25, docs/algorithm.md 8): CUDA fp16,
  bf16 and mixed against CUDA fp32, each with its p50 / p99 per frame, and
  what ``precision: auto`` chose;
- one camera: p50 / p99 of ``Segmenter.segment`` (host RGB in, labels and
  objects on the host) over ``--frames`` frames after warm-up, eager and
  with ``compile`` (``--compile-mode``);
- 8 cameras in one call: frames/s; sliding window 224/112: p50;
- cass_bag on a 200-frame bag (``--batch 1`` and ``--batch 8``): frames/s;
- cass_fleet (benchmarks/bench_fleet.py) with one actor on the GPU and two
  sharing it, ``--batch 8``: frames/s against cass_bag's pipeline (GPU only,
  with ray among the wheels);
- text encoding of 100 new class names (80 templates each);
- the node's own per-frame overhead (benchmarks/bench_node.py, where rclpy
  and the built cass_ros messages exist);
- the per-stage table (``timings_ms``) and, with ``--profile``, the top
  torch.profiler rows.

Every speed row carries the achieved TFLOP/s: the FLOPs of that very call,
counted once with torch.utils.flop_counter (matmuls, convolutions,
attention), divided by its time.

    benchmarks/gpu_check.sh                      # on a machine with a CUDA GPU
    .venv/bin/python benchmarks/gpu_check.py --dry-run   # tiny models, CPU, ~1 min
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("cass_ros") is None:
    sys.path.insert(0, str(REPO))

from cass_ros.core.agreement import Agreement, compare_segmenters, strict_fp32  # noqa: E402
from cass_ros.core.config import build_config  # noqa: E402
from cass_ros.core.models import CassModels, load_models  # noqa: E402
from cass_ros.core.prompts import build_prompt_set  # noqa: E402
from cass_ros.core.segmenter import STAGES, PreparedPrompts, Segmenter  # noqa: E402

CLASSES = ["person", "car", "bicycle", "forklift", "pallet", "box", "door", "truck"]
FRAME = (480, 640)  # H, W
GOALS = {"p50": 5.0, "p99": 8.0, "cams8": 400.0, "slide": 15.0}
# The precision ladder (docs/algorithm.md 8) and the share of labels each
# must keep against fp32 on the same device (fp16 needs CUDA).
LADDER = ("fp32", "fp16", "bf16", "mixed")
LADDER_SHARE = {"fp16": 0.99, "bf16": 0.99, "mixed": 0.995}
BUDGET_S = 480.0          # the whole check (the issue: under 8 minutes)
COMPILE_BUDGET_S = 150.0  # what the compile row may need, compilation included


@dataclass
class Row:
    name: str
    value: float | None         # None: not measured (note says why)
    unit: str
    flops: float | None = None  # FLOPs of one item (a frame, a call) of this row
    per_s: float | None = None  # items per second, for the TFLOP/s column
    goal: str = ""
    ok: bool | None = None
    note: str = ""

    def tflops(self) -> str:
        if self.flops is None or self.per_s is None:
            return ""
        return f"{self.flops * self.per_s / 1e12:.3g}"


# ---------------------------------------------------------------- set-up


def tiny_models() -> CassModels:
    """The tests' tiny random CLIP and DINO (seed 0), in memory."""
    import open_clip

    from cass_ros.core.models import clip_from_state_dict, dino_from_state_dict, tiny_random_state_dicts

    clip_sd, dino_sd = tiny_random_state_dicts(seed=0)
    return CassModels(clip=clip_from_state_dict(dict(clip_sd)),
                      dino=dino_from_state_dict(dict(dino_sd), "vit_base_patch8_224.dino"),
                      tokenizer=open_clip.tokenizer.SimpleTokenizer(context_length=77),
                      clip_id="tiny-random-seed0", description="tiny random CLIP + DINO (dry run)")


def full_models() -> CassModels:
    return load_models(build_config({"clip_weights": "random", "dino_weights": "random",
                                     "device": "cpu"}))


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random 640 x 480 RGB frames (noise upsampled), all different."""
    rng = np.random.default_rng(seed)
    h, w = FRAME
    return [cv2.resize(rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8), (w, h),
                       interpolation=cv2.INTER_CUBIC) for _ in range(n)]


def segmenter(models: CassModels, device: str, **settings: Any) -> Segmenter:
    """A segmenter on ``models`` (moved to ``device``: give each device its own copy)."""
    return Segmenter(build_config(dict({"device": device, "short_side": 336}, **settings)), models)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(seg: Segmenter, images: Sequence[np.ndarray], prepared: PreparedPrompts) -> float:
    """The FLOPs of one ``segment`` call on ``images`` (matmuls, convolutions,
    attention; torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        seg.segment(list(images), prepared)
    return float(counter.get_total_flops())


def time_calls(seg: Segmenter, prepared: PreparedPrompts, batches: Sequence[Sequence[np.ndarray]],
               warm: int) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Wall ms of each ``segment`` call (results on the host: labels and
    statistics are numpy), after ``warm`` untimed calls; and the timings_ms."""
    for i in range(warm):
        seg.segment(list(batches[i % len(batches)]), prepared)
    sync(seg.device)
    ms, stages = [], []
    for images in batches:
        t0 = time.perf_counter()
        res = seg.segment(list(images), prepared)
        ms.append((time.perf_counter() - t0) * 1000.0)
        stages.append(res[0].timings_ms)
    return np.asarray(ms), stages


# ---------------------------------------------------------------- the checks


def correctness(models: CassModels, device: str, images: list[np.ndarray], prompts: Any,
                rows: list[Row]) -> tuple[Agreement, Agreement]:
    """fp32 on ``device`` against fp32 on the CPU (TF32 off: strict_fp32);
    the ladder's fp16, bf16 and mixed (bf16 and mixed on a CPU) against fp32
    on ``device``, each held to LADDER_SHARE. Returns (fp32 pair, the first
    of the ladder: fp16, or bf16 on a CPU)."""
    ref = segmenter(copy.deepcopy(models), "cpu", precision="fp32")
    dev32 = segmenter(models, device, precision="fp32")
    slide = dict(slide_crop=224, slide_stride=112)
    checks = [(f"fp32 {device} vs fp32 cpu, whole", ref, dev32, images, 0.999, 1e-3)]
    ref_s = segmenter(ref.models, "cpu", precision="fp32", **slide)
    dev_s = segmenter(models, device, precision="fp32", **slide)
    checks.append((f"fp32 {device} vs fp32 cpu, sliding", ref_s, dev_s, images[:1], 0.999, 1e-3))
    for p in LADDER[1:] if device.startswith("cuda") else LADDER[2:]:
        checks.append((f"{p} {device} vs fp32 {device}", dev32,
                       segmenter(models, device, precision=p), images, LADDER_SHARE[p], None))
    found: dict[str, Agreement] = {}
    for name, a, b, imgs, min_agree, max_diff in checks:
        with strict_fp32() if name.startswith("fp32") else contextlib.nullcontext():
            got = compare_segmenters(a, b, imgs, prompts)
        found[name] = got
        ok = got.label_agreement >= min_agree and (max_diff is None or got.max_prob_diff <= max_diff)
        if name.startswith("fp32"):
            ok = ok and not got.head_mismatches
        goal = f">= {100 * min_agree:g}%" + (f", diff <= {max_diff:g}, same heads" if max_diff else "")
        rows.append(Row(f"agree {name}", 100 * got.label_agreement, "%", goal=goal, ok=ok,
                        note=f"max|dp| {got.max_prob_diff:.1e}, heads differ "
                             f"{len(got.head_mismatches)}/{got.crops}"
                             + (f" at (image, crop) {got.head_mismatches[:5]}"
                                if got.head_mismatches else "")))
    fp32 = found[checks[0][0]]
    fp16 = found[checks[2][0]]
    return fp32, fp16


def speed(models: CassModels, device: str, prompt_set: Any, n: int, warm: int, cams: int,
          rows: list[Row]) -> tuple[np.ndarray, float, dict[str, float]]:
    """One camera, cameras batched, sliding window. Returns the
    single-camera ms, the batched fps, the stage medians."""
    pool = frames(16, seed=1)
    seg = segmenter(models, device)
    prepared = seg.prepare_prompts(prompt_set)
    flops = count_flops(seg, pool[:1], prepared)
    ms, stages = time_calls(seg, prepared, [[pool[i % len(pool)]] for i in range(n)], warm)
    p50, p99 = np.percentile(ms, 50), np.percentile(ms, 99)
    precision = "fp32" if seg.amp_dtype is None else str(seg.amp_dtype).replace("torch.", "")
    rows.append(Row(f"1 camera p50 ({precision})", p50, "ms",
                    flops, 1000 / p50, f"<= {GOALS['p50']:g}", p50 <= GOALS["p50"],
                    f"{n} frames, {flops / 1e12:.3f} TFLOP a frame"))
    rows.append(Row("1 camera p99", p99, "ms", flops, 1000 / p99, f"<= {GOALS['p99']:g}",
                    p99 <= GOALS["p99"]))
    stage_ms = {s: float(np.median([t[s] for t in stages])) for s in (*STAGES, "total")}

    batch = [pool[i:i + cams] for i in range(0, len(pool) - cams + 1, cams)] or [pool[:cams]]
    flops_b = count_flops(seg, batch[0], prepared)
    calls = max(2, n // (4 * cams))
    ms_b, _ = time_calls(seg, prepared, [batch[i % len(batch)] for i in range(calls)],
                         warm=min(warm, 2))
    fps = cams * 1000 / float(np.median(ms_b))
    rows.append(Row(f"{cams} cameras in one call", fps, "frames/s", flops_b / cams, fps,
                    f">= {GOALS['cams8']:g}", fps >= GOALS["cams8"] if cams == 8 else None,
                    f"{calls} calls, median {np.median(ms_b):.1f} ms a call"))

    slide = segmenter(models, device, slide_crop=224, slide_stride=112)
    sp = slide.prepare_prompts(prompt_set)
    flops_s = count_flops(slide, pool[:1], sp)
    ms_s, _ = time_calls(slide, sp, [[pool[i % len(pool)]] for i in range(max(2, n // 5))], warm)
    p50_s = float(np.median(ms_s))
    rows.append(Row("sliding 224/112 p50", p50_s, "ms", flops_s, 1000 / p50_s,
                    f"<= {GOALS['slide']:g}", p50_s <= GOALS["slide"], f"{len(ms_s)} frames"))
    return ms, fps, stage_ms


def ladder_rows(models: CassModels, device: str, prompt_set: Any, n: int, warm: int,
                rows: list[Row]) -> None:
    """One camera's p50 / p99 per precision of the ladder, and what
    ``precision: auto`` resolves to on ``device``."""
    pool = frames(16, seed=1)
    for p in LADDER if device.startswith("cuda") else LADDER[:1] + LADDER[2:]:
        seg = segmenter(models, device, precision=p)
        prepared = seg.prepare_prompts(prompt_set)
        ms, _ = time_calls(seg, prepared, [[pool[i % len(pool)]] for i in range(n)], warm)
        rows.append(Row(f"precision {p}: 1 camera p50", float(np.percentile(ms, 50)), "ms",
                        note=f"p99 {np.percentile(ms, 99):.2f} ms over {n} frames; "
                             f"{seg.plan.describe()}"))
    auto = segmenter(models, device, precision="auto")
    rows.append(Row(f"precision auto chose {auto.plan.describe()}", None, "",
                    note="fp16 on CUDA, fp32 on the CPU (core.precision)"))


def compiled_row(models: CassModels, device: str, prompt_set: Any, n: int, warm: int,
                 mode: str, flops: float | None, seconds_left: float) -> Row:
    """One camera with ``compile: mode``; last, as its compilation takes
    longest, and only while ``seconds_left`` allows."""
    name = f"1 camera p50, compile {mode}"
    if mode == "none":
        return Row(name, None, "ms", note="skipped (--compile-mode none)")
    if seconds_left < COMPILE_BUDGET_S:
        return Row(name, None, "ms", note=f"skipped: {seconds_left:.0f} s left of the 8 minutes")
    pool = frames(16, seed=1)
    try:
        seg = segmenter(models, device, compile=mode)
        prepared = seg.prepare_prompts(prompt_set)
        t0 = time.perf_counter()
        seg.segment(pool[:1], prepared)
        seg.segment(pool[1:2], prepared)  # CUDA graphs record on the second call
        compile_s = time.perf_counter() - t0
        ms, _ = time_calls(seg, prepared, [[pool[i % len(pool)]] for i in range(n)], warm)
    except Exception as e:  # noqa: BLE001 - a failed compilation is a finding, not a crash
        return Row(name, None, "ms", note=f"failed: {type(e).__name__}: {str(e)[:120]}")
    p50 = float(np.median(ms))
    return Row(name, p50, "ms", flops, 1000 / p50, f"<= {GOALS['p50']:g}", p50 <= GOALS["p50"],
               f"p99 {np.percentile(ms, 99):.2f} ms; warm-up (compilation) {compile_s:.1f} s")


def text_encoding(models: CassModels, device: str, names: int, rows: list[Row]) -> None:
    """``names`` class names never seen before, 80 templates each."""
    seg = segmenter(models, device)
    embedder = seg.text_embedder
    embedder.encode([f"warm-up name {i}" for i in range(8)])
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        embedder.encode([f"counted name {i}" for i in range(names)])
    flops = float(counter.get_total_flops())
    fresh = [f"new class {i} of the check" for i in range(names)]
    sync(seg.device)
    t0 = time.perf_counter()
    embedder.encode(fresh)
    sync(seg.device)
    ms = (time.perf_counter() - t0) * 1000.0
    rows.append(Row(f"text: {names} new names x 80 templates", ms, "ms", flops, 1000 / ms,
                    note=f"{ms / names:.2f} ms a name"))


def bag_rows(clip: str, dino: str, device: str, frames_n: int, batches: Sequence[int],
             flops: float | None, rows: list[Row]) -> None:
    """cass_bag on a ``frames_n``-frame sample bag (tools/make_sample_bag.py,
    a prompt change halfway): frames/s without the model load."""
    try:
        from cass_ros.bag import tool as bag_tool

        spec = importlib.util.spec_from_file_location("make_sample_bag",
                                                      REPO / "tools" / "make_sample_bag.py")
        assert spec and spec.loader
        sample = importlib.util.module_from_spec(spec)
        sys.modules["make_sample_bag"] = sample  # its dataclasses look their module up
        spec.loader.exec_module(sample)
    except ImportError as e:
        rows.append(Row("cass_bag", None, "frames/s", note=f"skipped: {e}"))
        return
    work = Path(tempfile.mkdtemp(prefix="cass_gpu_check_"))
    info = sample.write_sample_bag(work / "in", frames=frames_n)
    settings = {"clip_weights": clip, "dino_weights": dino, "device": device,
                "prompts": list(sample.INITIAL_PROMPTS)}
    loads: list[float] = []
    real_load = bag_tool._load_segmenter

    def timed_load(config: Any) -> Any:
        t0 = time.perf_counter()
        seg = real_load(config)
        loads.append(time.perf_counter() - t0)
        return seg

    bag_tool._load_segmenter = timed_load  # the load is not what this row measures
    try:
        for batch in (0, *batches):  # 0: an untimed first pass (lazy initialisations)
            opts = bag_tool.BagToolOptions(input_bag=info.path, out=work / f"out{batch}",
                                           settings=settings, progress=False,
                                           batch=max(1, batch))
            report = bag_tool.run(opts)
            if not batch:
                continue
            seconds = report.seconds - loads[-1]
            fps = report.frames_out / seconds
            rows.append(Row(f"cass_bag --batch {batch}", fps, "frames/s", flops, fps,
                            note=f"{report.frames_out} frames in {seconds:.1f} s, with "
                                 f"encoding its 2 prompt sets (+ {loads[-1]:.1f} s model load)"))
    finally:
        bag_tool._load_segmenter = real_load


FLEET_BUDGET_S = 150.0    # the cass_fleet rows, Ray's start and the actors' model loads included


def fleet_rows(dry: bool, device: str, seconds_left: float, rows: list[Row]) -> None:
    """cass_fleet on the GPU (benchmarks/bench_fleet.py, issue 17): frames/s
    with one actor on the GPU and two sharing it, ``--batch 8``, against
    cass_bag's pipeline on the same bags. GPU only: Ray and its workers are
    not what a dry run checks; needs ray among the wheels (make gpu-wheels)."""
    name = "cass_fleet, 2 bags x 40 frames"
    if dry:
        rows.append(Row(name, None, "frames/s", note="dry run: measured on a GPU only"))
        return
    if importlib.util.find_spec("ray") is None:
        rows.append(Row(name, None, "frames/s", note="skipped: ray is not installed here"))
        return
    if seconds_left < COMPILE_BUDGET_S + FLEET_BUDGET_S:
        rows.append(Row(name, None, "frames/s", note="skipped: the 8-minute budget is spent"))
        return
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_fleet.py"), "--full", "--device",
           device, "--gpus-per-worker", "0.5", "--workers", "1", "2", "--batch", "8",
           "--bags", "2", "--frames", "40"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=FLEET_BUDGET_S,
                             check=True).stdout
    except (subprocess.SubprocessError, OSError) as e:
        rows.append(Row(name, None, "frames/s", note=f"failed: {type(e).__name__}"))
        return
    for line in out.splitlines():        # | run | workers | frames | wall | start-up | fps | ...
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0].startswith(("cass_bag pipeline", "cass_fleet")):
            rows.append(Row(f"{cells[0]}, --batch 8, 0.5 GPU per worker", float(cells[5]),
                            "frames/s", note=f"overhead {cells[6]}"))


def node_row(dry: bool, device: str, rows: list[Row]) -> None:
    """benchmarks/bench_node.py in a subprocess, where rclpy and the built
    cass_ros messages are importable."""
    try:
        import rclpy  # noqa: F401

        from cass_ros.msg import ObjectPresenceArray  # noqa: F401
    except ImportError as e:
        rows.append(Row("node overhead (bench_node)", None, "ms",
                        note=f"skipped: {e} (needs ROS 2 and a colcon build)"))
        return
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_node.py"), "--device", device,
           "--repeat", "5" if dry else "30"]
    if not dry:
        cmd += ["--clip-weights", "random", "--dino-weights", "random", "--short-side", "336"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    lines = out.stdout.splitlines()
    found = [line for line in lines if line.startswith("node overhead")]
    if out.returncode != 0 or not found:
        rows.append(Row("node overhead (bench_node)", None, "ms",
                        note=f"failed ({out.returncode}): {(out.stderr or out.stdout)[-150:]}"))
        return
    ms = float(found[0].split()[-1])
    rows.append(Row("node overhead (bench_node)", ms, "ms", goal="< 3", ok=ms < 3.0,
                    note="receive..publish, 640 x 480, no overlay"))


# ---------------------------------------------------------------- output


def print_table(rows: list[Row], stage_ms: dict[str, float], title: str) -> None:
    print(title)
    head = f"{'check':<44}{'value':>10} {'unit':<9}{'TFLOP/s':>8}  {'goal':<38}{'':<5}note"
    print(head)
    print("-" * len(head))
    for r in rows:
        value = "n/a" if r.value is None else f"{r.value:.3f}" if r.value < 10 else f"{r.value:.1f}"
        status = {True: "ok", False: "MISS", None: ""}[r.ok]
        print(f"{r.name:<44}{value:>10} {r.unit:<9}{r.tflops():>8}  {r.goal:<38}{status:<5}{r.note}")
    print("-" * len(head))
    print("stages of one camera (median ms, timings_ms): "
          + ", ".join(f"{s} {v:.2f}" for s, v in stage_ms.items()))


def final_line(single_ms: np.ndarray, fps: float, fp32: Agreement, fp16: Agreement,
               cams: int = 8) -> str:
    return (f"gpu_check: p50_ms={np.percentile(single_ms, 50):.2f} "
            f"p99_ms={np.percentile(single_ms, 99):.2f} cams{cams}_fps={fps:.1f} "
            f"agree_fp32={100 * fp32.label_agreement:.3f}% "
            f"agree_fp16={100 * fp16.label_agreement:.3f}%")


def profile(models: CassModels, device: str, prompt_set: Any, frames_n: int) -> None:
    """The top torch.profiler rows of ``frames_n`` single-camera calls."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    seg = segmenter(models, device)
    prepared = seg.prepare_prompts(prompt_set)
    pool = frames(4, seed=2)
    seg.segment(pool[:1], prepared)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda")
                                           else [])
    with torch_profile(activities=activities) as prof:
        for i in range(frames_n):
            seg.segment([pool[i % 4]], prepared)
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=15))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true",
                   help="tiny random models on the CPU, few frames: checks the script, not speed")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    p.add_argument("--frames", type=int, default=None, help="single-camera frames (500; dry 3)")
    p.add_argument("--cams", type=int, default=None, help="cameras batched in one call (8)")
    p.add_argument("--bag-frames", type=int, default=None, help="frames of the bag (200; dry 6)")
    p.add_argument("--text-names", type=int, default=None, help="new class names (100; dry 4)")
    p.add_argument("--compile-mode", default=None,
                   help="compile row: none, default, reduce-overhead (the default on CUDA), "
                   "max-autotune; dry run: none")
    p.add_argument("--profile", action="store_true", help="also print torch.profiler's top rows")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    dry = args.dry_run
    device = args.device or ("cpu" if dry else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device here (torch "
              f"{torch.__version__}); use --dry-run or --device cpu", file=sys.stderr)
        return 2
    n = args.frames or (3 if dry else 500)
    cams = args.cams or 8
    mode = args.compile_mode or ("none" if dry or not device.startswith("cuda") else
                                 "reduce-overhead")
    started = time.perf_counter()
    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "CPU"
    print(f"gpu_check on {gpu}: torch {torch.__version__}, python {sys.version.split()[0]}, "
          f"{torch.get_num_threads()} CPU threads{' (DRY RUN: tiny models)' if dry else ''}")
    models = tiny_models() if dry else full_models()
    prompt_set = build_prompt_set([(c,) for c in CLASSES],
                                  build_config({}).background_classes)
    rows: list[Row] = []
    fp32, fp16 = correctness(models, device, frames(1 if dry else 4, seed=3), prompt_set, rows)
    single_ms, fps, stage_ms = speed(models, device, prompt_set, n, 1 if dry else 20, cams, rows)
    ladder_rows(models, device, prompt_set, n if dry else max(20, n // 5), 1 if dry else 10, rows)
    text_encoding(models, device, args.text_names or (4 if dry else 100), rows)
    with contextlib.ExitStack() as stack:
        if dry:
            from cass_ros.core.models import save_tiny_random_checkpoints

            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="cass_gpu_check_w_"))
            clip, dino = save_tiny_random_checkpoints(tmp)
        else:
            clip, dino = "random", "random"
        frame_flops = next(r.flops for r in rows if r.name.startswith("1 camera p50 ("))
        bag_rows(clip, dino, device, args.bag_frames or (6 if dry else 200), (1, cams),
                 frame_flops, rows)
    node_row(dry, device, rows)
    fleet_rows(dry, device, BUDGET_S - (time.perf_counter() - started), rows)
    rows.append(compiled_row(models, device, prompt_set, n, 1 if dry else 20, mode, frame_flops,
                             BUDGET_S - (time.perf_counter() - started)))
    title = (f"CLIP ViT-B/16 + DINO ViT-B/8 RANDOM weights, {FRAME[1]} x {FRAME[0]} frames, "
             f"short side 336, {len(CLASSES)} classes + default background, precision auto"
             if not dry else "DRY RUN: tiny random models on the CPU; the figures mean nothing")
    print_table(rows, stage_ms, title)
    if args.profile:
        profile(models, device, prompt_set, 20)
    print(f"gpu_check took {time.perf_counter() - started:.0f} s")
    print(final_line(single_ms, fps, fp32, fp16, cams))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
