"""How closely two segmenters agree on the same images: label agreement,
the largest class-probability difference, and whether the head matching
(docs/algorithm.md 3.5) chose the same heads for every crop.

The one place for the device and precision comparisons of issue 8: CUDA
fp32 against CPU fp32, fp16 / bf16 against fp32 (docs/algorithm.md
section 8). test/core/test_precision.py and benchmarks/gpu_check.py both
call it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from .result import SegmentationResult

if TYPE_CHECKING:
    from .prompts import PromptSet
    from .segmenter import Segmenter


@dataclass
class Agreement:
    """Two runs over the same images compared, the first as reference."""

    pixels: int = 0                # labelled pixels compared
    equal: int = 0                 # of which with the same label
    max_prob_diff: float = 0.0     # max |p_a - p_b| over pixels and labels (NaN: no probs)
    crops: int = 0                 # crops whose head choices were compared
    head_mismatches: list[tuple[int, int]] = field(default_factory=list)  # (image, crop)

    @property
    def label_agreement(self) -> float:
        """Fraction of pixels with the same label (1.0 for no pixels)."""
        return self.equal / self.pixels if self.pixels else 1.0

    def summary(self) -> str:
        heads = (f"heads differ in {len(self.head_mismatches)}/{self.crops} crops"
                 + (f" (image, crop): {self.head_mismatches[:10]}" if self.head_mismatches else ""))
        return (f"labels agree {100 * self.label_agreement:.3f}% of {self.pixels} px, "
                f"max |prob diff| {self.max_prob_diff:.2e}, {heads}")


def compare_results(ref: Sequence[SegmentationResult], other: Sequence[SegmentationResult]
                    ) -> Agreement:
    """Compare two result lists image by image (same images, same order).

    Probabilities are compared when both carry them (``return_probs``),
    head choices when both carry them (``return_heads``); ValueError when
    the two do not describe the same images.
    """
    if len(ref) != len(other):
        raise ValueError(f"cannot compare {len(ref)} results with {len(other)}")
    out = Agreement()
    diffs: list[float] = []
    for i, (a, b) in enumerate(zip(ref, other)):
        if a.labels.shape != b.labels.shape:
            raise ValueError(f"image {i}: label maps of shape {a.labels.shape} and {b.labels.shape}")
        out.pixels += a.labels.size
        out.equal += int(np.count_nonzero(a.labels == b.labels))
        if a.probs is not None and b.probs is not None:
            diffs.append(float(np.abs(a.probs - b.probs).max()) if a.probs.size else 0.0)
        if a.heads is not None and b.heads is not None:
            if a.heads.shape != b.heads.shape:
                raise ValueError(f"image {i}: head choices of shape {a.heads.shape} and "
                                 f"{b.heads.shape}")
            out.crops += a.heads.shape[0]
            differ = np.nonzero((a.heads != b.heads).any(-1))[0]
            out.head_mismatches += [(i, int(c)) for c in differ]
    out.max_prob_diff = max(diffs) if diffs else float("nan")
    return out


def compare_segmenters(ref: Segmenter, other: Segmenter, images: Sequence[np.ndarray],
                       prompt_set: PromptSet, batch: int = 1) -> Agreement:
    """Run both segmenters on ``images`` (``batch`` per segment call), each
    with the prompts encoded on its own device and precision, and compare."""
    runs = []
    for seg in (ref, other):
        prepared = seg.prepare_prompts(prompt_set, prompt_id=1)
        results: list[SegmentationResult] = []
        for start in range(0, len(images), max(1, batch)):
            results += seg.segment(images[start:start + max(1, batch)], prepared,
                                   return_probs=True, return_heads=True)
        runs.append(results)
    return compare_results(*runs)


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """fp32 that is fp32 on CUDA too, for the fp32 comparisons: by default
    cuDNN convolutions (CLIP's and DINO's patch embeddings) may use TF32,
    which keeps 10 bits of mantissa, and so may matmuls when a user allowed
    it. Restores the flags on exit."""
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
