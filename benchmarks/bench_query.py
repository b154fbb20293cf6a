#!/usr/bin/env python3
"""Benchmark of the segmenter's two halves (docs/algorithm.md 8): what a
query on a kept frame costs next to a full frame.

Full-size CLIP ViT-B/16 + DINO ViT-B/8 with RANDOM weights (speed does not
depend on the weights; built as bench_segmenter.py builds them) on one
640 x 480 frame, whole image and sliding window 224/112, short side 336:

- ``segment``: the full frame (median of ``--frames``);
- ``encode``: the image half alone (median of ``--frames``);
- ``decode``: an encoded frame with 1, 3 and 10 already-encoded phrases,
  labels at the input size (640 x 480) and at the model size, p50 and p99
  of ``--iters`` queries;
- ``prepare``: a prompt set of 1 and 3 new phrases (text encoding, 80
  templates each) and of 3 already-encoded ones (once: it does not depend
  on the mode);
- the features' memory per camera (``ImageFeatures.nbytes``).

The last line is ``bench_query: whole_p50_ms_3=<ms> sliding_p50_ms_3=<ms>``
(decode, 3 phrases, input size).

    .venv/bin/python benchmarks/bench_query.py [--iters 100] [--frames 3] [--tiny]
        [--profile]

``--tiny`` runs the tests' tiny random models (short side 64, sliding
32/16): seconds, for the smoke test; its times mean nothing.
``--profile`` adds torch.profiler's tables of a sliding-window decode with
3 phrases: its parts (adjust_text, patch_logits, the resizes ...) and ops.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cass_ros.core.config import build_config  # noqa: E402
from cass_ros.core.models import load_models, save_tiny_random_checkpoints  # noqa: E402
from cass_ros.core.prompts import build_prompt_set  # noqa: E402
from cass_ros.core.segmenter import Segmenter  # noqa: E402

FRAME = (480, 640)                  # (H, W): a VGA camera
PHRASES = ["person", "forklift", "pallet", "box", "door", "truck", "shelf", "ladder", "helmet",
           "cart"]
PHRASE_COUNTS = (1, 3, 10)
NEW_PHRASE_COUNTS = (1, 3)
PREPARE_REPEATS = 5
# (name, settings) per mode; the tiny models get a proportionally small frame side
FULL = {"short_side": 336, "modes": (("whole", {"slide_crop": 0}),
                                     ("sliding", {"slide_crop": 224, "slide_stride": 112}))}
TINY = {"short_side": 64, "modes": (("whole", {"slide_crop": 0}),
                                    ("sliding", {"slide_crop": 32, "slide_stride": 16}))}


def samples_ms(fn: Callable[[], Any], n: int) -> list[float]:
    """Wall times of ``n`` runs after one warm-up, in ms."""
    fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def p50_p99(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def new_names(count: int) -> list[tuple[str, ...]]:
    """Phrases no cache has seen (the text encoder must run)."""
    return [(f"object {uuid.uuid4().hex[:8]}",) for _ in range(count)]


def bench_describe(seg: Segmenter, frame: np.ndarray, iters: int
                   ) -> list[tuple[str, str, float, float | None]]:
    """/cass/describe's library half over the shipped vocabulary: its
    encoding once (cold: 80 templates per name, what the node does in the
    background at the first call), then the ranking on a kept frame."""
    from cass_ros.core.queries.describe import describe
    from cass_ros.core.queries.vocabulary import VocabularyEncoder, read_vocabulary

    entries = read_vocabulary()
    enc = VocabularyEncoder(seg.text_embedder, entries)
    t0 = time.perf_counter()
    enc.start()
    enc.join()
    cold_ms = (time.perf_counter() - t0) * 1000.0
    text = enc.text()
    features = seg.encode([frame])
    ms = samples_ms(lambda: describe(features, entries, text, top_k=10), iters)
    names = len(set(enc.names))
    return [("describe", f"encode the shipped vocabulary ({len(entries)} entries, {names} "
                         "names), cold", cold_ms, None),
            ("describe", "top 10 of the shipped vocabulary on a kept frame", *p50_p99(ms))]


def bench_prepare(seg: Segmenter) -> list[tuple[str, str, float, float | None]]:
    """Rows for the prompt preparation: new phrases, then cached ones."""
    rows = []
    for n in NEW_PHRASE_COUNTS:
        ms = []
        for _ in range(PREPARE_REPEATS):
            prompt_set = build_prompt_set(new_names(n), ())
            t0 = time.perf_counter()
            seg.prepare_prompts(prompt_set, prompt_id=0)
            ms.append((time.perf_counter() - t0) * 1000.0)
        rows.append(("prepare", f"{n} new phrase{'s' * (n > 1)} (text encoding)",
                     statistics.median(ms), None))
    cached = build_prompt_set([(p,) for p in PHRASES[:3]], ())
    ms = samples_ms(lambda: seg.prepare_prompts(cached, prompt_id=0), 20)
    rows.append(("prepare", "3 phrases already encoded", *p50_p99(ms)))
    return rows


def bench_mode(seg: Segmenter, mode: str, frame: np.ndarray, iters: int, frames: int
               ) -> tuple[list[tuple[str, str, float, float | None]], dict[str, float]]:
    """Rows for one mode, and the decode p50 per phrase count (input size)."""
    prepared = {n: seg.prepare_prompts(build_prompt_set([(p,) for p in PHRASES[:n]], ()),
                                       prompt_id=0) for n in PHRASE_COUNTS}
    rows: list[tuple[str, str, float, float | None]] = []
    ms = samples_ms(lambda: seg.segment([frame], prepared[3]), frames)
    rows.append((mode, "segment, full frame, 3 phrases", statistics.median(ms), None))
    ms = samples_ms(lambda: seg.encode([frame]), frames)
    rows.append((mode, "encode", statistics.median(ms), None))
    features = seg.encode([frame])
    p50s = {}
    for output_size, n in itertools.product(("input", "model"), PHRASE_COUNTS):
        ms = samples_ms(lambda pp=prepared[n], size=output_size:
                        seg.decode(features, pp, output_size=size), iters)
        p50, p99 = p50_p99(ms)
        if output_size == "input":
            p50s[n] = p50
        rows.append((mode, f"decode {n} phrase{'s' * (n > 1)}, output {output_size}", p50, p99))
    rows.append((mode, "features per camera (MB)", features.nbytes / 1e6, None))
    rows += frames_beside_queries(seg, mode, frame, features, prepared[3], frames)
    return rows, p50s


QUERY_RATE_HZ = 10.0     # a busy planner asking the node ten questions a second


def frames_beside_queries(seg: Segmenter, mode: str, frame: np.ndarray, features: Any,
                          prepared: Any, frames: int) -> list[tuple[str, str, float, float | None]]:
    """What queries cost the live stream: full frames segmented while another
    thread decodes 3 phrases on the kept features at QUERY_RATE_HZ, as the
    node's service handlers do beside its inference thread. The frame's
    extra time is what the queries took from it."""
    stop = threading.Event()
    answered = [0]

    def ask() -> None:
        while not stop.wait(1.0 / QUERY_RATE_HZ):
            seg.decode(features, prepared)
            answered[0] += 1

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    try:
        ms: list[float] = []
        started = time.perf_counter()
        # at least 2 s, so that queries do come in while tiny models run
        while len(ms) < frames or time.perf_counter() - started < 2.0:
            ms += samples_ms(lambda: seg.segment([frame], prepared), 1)
    finally:
        stop.set()
        asker.join()
    seconds = time.perf_counter() - started
    return [(mode, f"segment, full frame, beside {QUERY_RATE_HZ:.0f} queries/s "
                   f"({answered[0] / max(seconds, 1e-9):.1f} answered/s)", statistics.median(ms),
             None)]


# The decode's parts, by the names its module calls them (core/queries/decode.py):
# wrapped in profiler ranges while profiling, so the table says where the time goes.
DECODE_PARTS = ("presence_similarity", "adjust_text", "patch_logits", "_crop_index",
                "_output_logits", "per_class_max", "_statistics", "class_presence")


def profile_decode(seg: Segmenter, frame: np.ndarray) -> None:
    """torch.profiler's tables of 10 decodes with 3 phrases (the mode of
    ``seg``, output at the input size): the decode's parts, then the ops."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from cass_ros.core.queries import decode as decode_module

    def ranged(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            with record_function(f"part: {name}"):
                return fn(*a, **kw)
        return wrapper

    class Functional:   # F.interpolate of the decode module: crop and output resizes
        def __getattr__(self, name: str) -> Any:
            fn = getattr(torch.nn.functional, name)
            return ranged(f"F.{name}", fn) if name == "interpolate" else fn

    saved = {name: getattr(decode_module, name) for name in (*DECODE_PARTS, "F")}
    prepared = seg.prepare_prompts(build_prompt_set([(p,) for p in PHRASES[:3]], ()), prompt_id=0)
    features = seg.encode([frame])
    try:
        for name in DECODE_PARTS:
            setattr(decode_module, name, ranged(name, saved[name]))
        decode_module.F = Functional()
        for _ in range(3):
            seg.decode(features, prepared)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(10):
                with record_function("decode (all)"):
                    seg.decode(features, prepared)
    finally:
        for name, fn in saved.items():
            setattr(decode_module, name, fn)
    events = prof.key_averages()
    total = next(e for e in events if e.key == "decode (all)").cpu_time_total
    print("\ntorch.profiler, 10 decodes (3 phrases, output 640 x 480): the decode's parts "
          "(CPU total, ms per decode; _output_logits holds the output resize, _statistics "
          "holds class_presence and the host copy of the statistics; the profiler's own overhead "
          "is in every row)")
    print(f"{'decode (all)':<34}{total / 10 / 1000:>9.2f}")
    parts = {e.key[6:]: e for e in events if e.key.startswith("part: ")}
    for name, e in sorted(parts.items(), key=lambda item: -item[1].cpu_time_total):
        print(f"{name + f' x{e.count // 10}':<34}{e.cpu_time_total / 10 / 1000:>9.2f}")
    # What no range covers: the softmax, the argmax and threshold, the gather,
    # the canvas, the label copies. Nested ranges (class_presence in
    # _statistics, the output resize in _output_logits and F.interpolate)
    # are counted once.
    covered = sum(e.cpu_time_total for name, e in parts.items()
                  if name not in ("class_presence", "F.interpolate"))
    if "F.interpolate" in parts and "_output_logits" in parts:
        covered += parts["F.interpolate"].cpu_time_total - parts["_output_logits"].cpu_time_total
    print(f"{'rest (softmax, argmax, canvas ...)':<34}{(total - covered) / 10 / 1000:>9.2f}")
    print("\nthe ops, by self CPU time:")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total",
                                                             row_limit=20))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=100, help="queries per decode row")
    p.add_argument("--frames", type=int, default=3, help="frames per segment / encode row")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tiny", action="store_true", help="the tests' tiny random models (fast)")
    p.add_argument("--profile", action="store_true", help="profile a sliding decode, 3 phrases")
    p.add_argument("--describe", action="store_true",
                   help="also /cass/describe over the shipped vocabulary (its cold encoding "
                   "takes about a minute on the CPU at full size)")
    args = p.parse_args(argv)
    if args.iters < 1 or args.frames < 1 or args.threads < 1:
        p.error("--iters, --frames and --threads must be >= 1")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    plan = TINY if args.tiny else FULL
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            clip, dino = save_tiny_random_checkpoints(tmp, seed=0)
            # no text cache on disk: "new phrases" must really be encoded
            base = {"clip_weights": clip, "dino_weights": dino, "weights_cache_dir": ""}
        else:
            base = {"clip_weights": "random", "dino_weights": "random"}
        base.update(device=args.device, short_side=plan["short_side"])
        models = load_models(build_config(base))
        what = ("tiny random CLIP + DINO (times mean nothing)" if args.tiny
                else "CLIP ViT-B/16 + DINO ViT-B/8, RANDOM weights")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {args.device}; "
              f"{what}; frame {FRAME[1]} x {FRAME[0]}, short side {plan['short_side']}; ms: "
              f"segment/encode median of {args.frames}, decode p50/p99 of {args.iters}\n")
        frame = np.random.default_rng(0).integers(0, 256, (*FRAME, 3), dtype=np.uint8)
        rows = []
        p50s: dict[str, dict[int, float]] = {}
        seg = None
        for mode, extra in plan["modes"]:
            seg = Segmenter(build_config({**base, **extra}), models)
            desc = f"{mode} {extra['slide_crop']}/{extra['slide_stride']}" if extra["slide_crop"] \
                else mode
            mode_rows, p50s[mode] = bench_mode(seg, desc, frame, args.iters, args.frames)
            rows += mode_rows
        assert seg is not None
        rows += bench_prepare(seg)
        if args.describe:
            rows += bench_describe(seg, frame, args.iters)
        print("| mode | measurement | ms p50 (or MB) | ms p99 |")
        print("| --- | --- | --- | --- |")
        for mode, name, p50, p99 in rows:
            print(f"| {mode} | {name} | {p50:.{2 if p50 < 100 else 0}f} | "
                  f"{'' if p99 is None else f'{p99:.{2 if p99 < 100 else 0}f}'} |", flush=True)
        if args.profile:
            profile_decode(seg, frame)
    print(f"bench_query: whole_p50_ms_3={p50s['whole'][3]:.2f} "
          f"sliding_p50_ms_3={p50s['sliding'][3]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
