"""Precision and device agreement (issue 8; docs/algorithm.md 3.5 and 8):
CPU fp32 against CPU bf16 everywhere; CUDA fp32 against CPU fp32 and CUDA
fp16 / bf16 against CUDA fp32 where a GPU exists. Tiny random-weight
models, real pipeline; the comparison is cass_ros.core.agreement, the code
that benchmarks/gpu_check.py runs on the full-size models."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from cass_ros.core.agreement import compare_results, compare_segmenters, strict_fp32
from cass_ros.core.config import build_config
from cass_ros.core.preprocess import resize_short_side, slide_windows
from cass_ros.core.prompts import build_prompt_set
from cass_ros.core.result import SegmentationResult
from cass_ros.core.segmenter import Segmenter

PROMPTS = build_prompt_set([("cat",), ("dog", "puppy"), ("car",)], background=["sky"])
MODES = {"whole": {}, "slide": dict(slide_crop=32, slide_stride=16)}
NO_CUDA = "no CUDA device here: the GPU comparisons run where one exists (benchmarks/gpu_check.sh)"


def image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


IMAGES = [image(96, 128, s) for s in range(3)]


@pytest.fixture(scope="module")
def make(tiny_models, text_cache_dir):
    def build(**settings) -> Segmenter:
        cfg = build_config(dict(short_side=64, weights_cache_dir=text_cache_dir, **settings))
        return Segmenter(cfg, models=tiny_models)

    return build


def _result(labels, probs=None, heads=None) -> SegmentationResult:
    k = 3
    return SegmentationResult(labels=np.asarray(labels, np.uint8), class_names=["a", "b", "c"],
                              presence=np.zeros(k, np.float32), pixel_counts=np.zeros(k, np.int64),
                              mean_confidence=np.zeros(k, np.float32),
                              boxes=np.zeros((k, 4), np.int64), probs=probs, heads=heads)


def test_compare_results_against_a_plain_loop():
    rng = np.random.default_rng(3)
    ref, other = [], []
    for i in range(3):
        la = rng.integers(0, 3, (5, 7))
        lb = np.where(rng.random((5, 7)) < 0.2, (la + 1) % 3, la)
        pa, pb = rng.random((3, 5, 7)).astype(np.float32), rng.random((3, 5, 7)).astype(np.float32)
        ha = np.array([[0, 1], [1, 0], [0, 1]])
        hb = ha.copy()
        if i == 1:
            hb[2] = [1, 0]
        ref.append(_result(la, pa, ha))
        other.append(_result(lb, pb, hb))
    got = compare_results(ref, other)
    equal = total = 0
    worst = 0.0
    for a, b in zip(ref, other):
        for y in range(5):
            for x in range(7):
                total += 1
                equal += int(a.labels[y, x] == b.labels[y, x])
                for k in range(3):
                    worst = max(worst, abs(float(a.probs[k, y, x]) - float(b.probs[k, y, x])))
    assert (got.pixels, got.equal) == (total, equal)
    assert got.label_agreement == pytest.approx(equal / total)
    assert got.max_prob_diff == pytest.approx(worst)
    assert got.crops == 9 and got.head_mismatches == [(1, 2)]
    assert "1/9 crops" in got.summary()


def test_compare_results_refuses_different_images():
    with pytest.raises(ValueError, match="shape"):
        compare_results([_result(np.zeros((2, 2)))], [_result(np.zeros((2, 3)))])
    with pytest.raises(ValueError, match="1 results with 2"):
        compare_results([_result(np.zeros((2, 2)))], [_result(np.zeros((2, 2)))] * 2)


@pytest.mark.parametrize("mode", MODES)
def test_segment_reports_the_head_choice_of_every_crop(make, mode):
    seg = make(device="cpu", **MODES[mode])
    results = seg.segment(IMAGES, seg.prepare_prompts(PROMPTS), return_heads=True)
    h = seg.clip.num_heads
    for img, res in zip(IMAGES, results):
        hr, wr = resize_short_side(img, 64).shape[:2]
        crops = 1 if mode == "whole" else len(slide_windows(hr, wr, 32, 16))
        assert res.heads.shape == (crops, h) and res.heads.dtype == np.int64
        # each crop's choice is a one-to-one assignment of the heads
        assert (np.sort(res.heads, -1) == np.arange(h)).all()
    assert seg.segment(IMAGES[:1], seg.prepare_prompts(PROMPTS))[0].heads is None
    vanilla = make(device="cpu", attention="vanilla")
    assert vanilla.segment(IMAGES[:1], vanilla.prepare_prompts(PROMPTS),
                           return_heads=True)[0].heads is None


def test_same_segmenter_agrees_with_itself(make):
    seg = make(device="cpu")
    got = compare_segmenters(seg, seg, IMAGES, PROMPTS, batch=2)
    assert got.label_agreement == 1.0 and got.max_prob_diff == 0.0
    assert got.crops == len(IMAGES) and not got.head_mismatches


@pytest.mark.parametrize("mode", MODES)
def test_cpu_bf16_agrees_with_cpu_fp32(make, mode):
    """bf16 keeps 8 bits of mantissa (relative rounding ~4e-3), and the
    logit scale of 40 before the softmax turns that into probability
    shifts of several percent where two classes are close; random weights
    make close classes common. Measured on these images (torch 2.14):
    99.9 % of the labels agree and the probabilities differ by at most
    0.008 (whole image) and 0.005 (sliding window); on other random images
    down to 99.6 % and up to 0.16 (sliding crops of only 2 x 2 patches).
    The thresholds are the issue's 99 % for half precision and 0.25 for
    probabilities. The head matching runs in
    float64 but on keys that carry bf16 rounding, so a near tie could flip:
    none does here; at most one crop in twenty is allowed."""
    ref = make(device="cpu", precision="fp32", **MODES[mode])
    low = make(device="cpu", precision="bf16", **MODES[mode])
    got = compare_segmenters(ref, low, IMAGES, PROMPTS)
    print(f"cpu bf16 vs cpu fp32 ({mode}): {got.summary()}")
    assert got.label_agreement >= 0.99, got.summary()
    assert 0.0 < got.max_prob_diff <= 0.25, got.summary()
    assert got.crops >= len(IMAGES)
    assert len(got.head_mismatches) <= got.crops // 20, got.summary()


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("mode", MODES)
def test_cuda_fp32_agrees_with_cpu_fp32(make, mode):
    """The issue's bar: >= 99.9 % of the labels, max |prob diff| <= 1e-3,
    and the same heads for every crop (float64 spectra, tie rule 3.5).
    TF32 off (strict_fp32): cuDNN would otherwise round the patch
    embeddings' inputs to 10 bits of mantissa."""
    cpu = make(device="cpu", precision="fp32", **MODES[mode])
    gpu = make(device="cuda", precision="fp32", **MODES[mode])
    with strict_fp32():
        got = compare_segmenters(cpu, gpu, IMAGES, PROMPTS)
    print(f"cuda fp32 vs cpu fp32 ({mode}): {got.summary()}")
    assert got.label_agreement >= 0.999, got.summary()
    assert got.max_prob_diff <= 1e-3, got.summary()
    assert not got.head_mismatches, got.summary()


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_half_precision_agrees_with_cuda_fp32(make, precision):
    ref = make(device="cuda", precision="fp32")
    low = make(device="cuda", precision=precision)
    got = compare_segmenters(ref, low, IMAGES, PROMPTS)
    print(f"cuda {precision} vs cuda fp32: {got.summary()}")
    assert got.label_agreement >= 0.99, got.summary()


def test_strict_fp32_turns_tf32_off_and_restores_it():
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True
    try:
        with strict_fp32():
            assert not torch.backends.cudnn.allow_tf32
            assert not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
