"""How closely two segmenters agree on the same images: label agreement,
the largest class-probability difference, whether every pixel whose label
differs is a near-tie, and whether the head matching (docs/algorithm.md 3.5)
chose the same heads for every crop.

The one place for every comparison of two runs whose arithmetic differs
(docs/algorithm.md 8, "The agreement rule"): batch sizes, crop grouping,
kernels (oneDNN against torch's, or one instruction set against another),
CUDA against the CPU, fp16 / bf16 against fp32. Such runs are never compared
bit for bit: which pixel flips between two near-tied classes depends on how
the processor blocks its sums. The tests, benchmarks/gpu_check.py and the
precision ladder all state an ``AgreementRule`` and check it here.
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
    # Of the differing pixels with probabilities on both sides, the largest
    # decision margin (see decision_margins): how far from a tie the worst
    # flipped pixel was. 0.0 when no pixel differs; NaN without probs.
    max_flip_margin: float = 0.0

    @property
    def label_agreement(self) -> float:
        """Fraction of pixels with the same label (1.0 for no pixels)."""
        return self.equal / self.pixels if self.pixels else 1.0

    def summary(self) -> str:
        heads = (f"heads differ in {len(self.head_mismatches)}/{self.crops} crops"
                 + (f" (image, crop): {self.head_mismatches[:10]}" if self.head_mismatches else ""))
        return (f"labels agree {100 * self.label_agreement:.4f}% of {self.pixels} px, "
                f"max |prob diff| {self.max_prob_diff:.2e}, "
                f"worst flipped pixel's margin {self.max_flip_margin:.2e}, {heads}")


@dataclass(frozen=True)
class AgreementRule:
    """The agreement rule (docs/algorithm.md 8): two runs agree when at least
    ``min_share`` of the pixels carry the same label, every pixel that
    differs is a near-tie (its decision margin is at most ``tie``), and no
    class probability differs by more than ``max_prob_diff``. The last two
    are checked only where both runs carry probabilities; a rule for label
    images alone is the share.

    If every probability differs by at most d, a pixel can only flip where
    its two labels are within 2 d in both runs, so ``tie`` defaults to
    2 * ``max_prob_diff``; a larger flip margin means labels were assigned
    wrongly, not rounded differently.
    """

    min_share: float = 0.9999
    max_prob_diff: float = 1e-4
    tie: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_share <= 1.0:
            raise ValueError(f"min_share must be in [0, 1], not {self.min_share}")
        if self.max_prob_diff < 0 or (self.tie is not None and self.tie < 0):
            raise ValueError("max_prob_diff and tie must be >= 0")

    @property
    def tie_bound(self) -> float:
        return 2 * self.max_prob_diff if self.tie is None else self.tie

    def failures(self, got: Agreement) -> list[str]:
        """What of the rule ``got`` breaks (empty: it holds)."""
        out = []
        if got.label_agreement < self.min_share:
            out.append(f"labels agree on {100 * got.label_agreement:.4f}% < "
                       f"{100 * self.min_share:.4f}% of pixels")
        if got.max_prob_diff > self.max_prob_diff:  # NaN (no probs) compares False
            out.append(f"a probability differs by {got.max_prob_diff:.2e} > "
                       f"{self.max_prob_diff:.2e}")
        if got.max_flip_margin > self.tie_bound:
            out.append(f"a pixel with decision margin {got.max_flip_margin:.2e} > "
                       f"{self.tie_bound:.2e} changed label: not a near-tie")
        return out

    def check(self, got: Agreement) -> None:
        """AssertionError naming every broken part and the whole comparison."""
        broken = self.failures(got)
        if broken:
            raise AssertionError("; ".join(broken) + f" ({got.summary()})")


def decision_margins(probs: np.ndarray, a: np.ndarray, b: np.ndarray,
                     threshold: float = 0.0) -> np.ndarray:
    """How far each pixel is from choosing between labels ``a`` and ``b``
    (docs/algorithm.md 5.4), from one run's probabilities.

    probs (K, H, W); a, b (H, W) labels. The margin is |p_a - p_b|; with a
    threshold, a pair of which one label is 0 may also have been decided by
    the best class crossing the threshold, so the margin is at most
    |best class - threshold| there. Returns (H, W) float64.
    """
    pa = np.take_along_axis(probs, a[None].astype(np.int64), 0)[0].astype(np.float64)
    pb = np.take_along_axis(probs, b[None].astype(np.int64), 0)[0].astype(np.float64)
    margin = np.abs(pa - pb)
    if threshold > 0 and probs.shape[0] > 1:
        best = probs[1:].max(0).astype(np.float64)  # (H, W) best prompted class
        by_threshold = (a == 0) | (b == 0)
        margin = np.where(by_threshold, np.minimum(margin, np.abs(best - threshold)), margin)
    return margin


def compare_results(ref: Sequence[SegmentationResult], other: Sequence[SegmentationResult],
                    threshold: float = 0.0) -> Agreement:
    """Compare two result lists image by image (same images, same order).

    Probabilities are compared when both carry them (``return_probs``), and
    then each differing pixel's decision margin is the smaller of the two
    runs' (``decision_margins``; ``threshold`` is the runs'
    ``prob_threshold``); head choices are compared when both carry them
    (``return_heads``). ValueError when the two do not describe the same
    images.
    """
    if len(ref) != len(other):
        raise ValueError(f"cannot compare {len(ref)} results with {len(other)}")
    out = Agreement()
    diffs: list[float] = []
    margins: list[float] = []
    for i, (a, b) in enumerate(zip(ref, other)):
        if a.labels.shape != b.labels.shape:
            raise ValueError(f"image {i}: label maps of shape {a.labels.shape} and {b.labels.shape}")
        same = a.labels == b.labels
        out.pixels += a.labels.size
        out.equal += int(np.count_nonzero(same))
        if a.probs is not None and b.probs is not None:
            diffs.append(float(np.abs(a.probs - b.probs).max()) if a.probs.size else 0.0)
            if not same.all():
                flipped = [decision_margins(r.probs, a.labels, b.labels, threshold)[~same]
                           for r in (a, b)]
                margins.append(float(np.minimum(*flipped).max()))
        if a.heads is not None and b.heads is not None:
            if a.heads.shape != b.heads.shape:
                raise ValueError(f"image {i}: head choices of shape {a.heads.shape} and "
                                 f"{b.heads.shape}")
            out.crops += a.heads.shape[0]
            differ = np.nonzero((a.heads != b.heads).any(-1))[0]
            out.head_mismatches += [(i, int(c)) for c in differ]
    out.max_prob_diff = max(diffs) if diffs else float("nan")
    out.max_flip_margin = max(margins, default=0.0) if diffs else float("nan")
    return out


def compare_labels(ref: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> Agreement:
    """Compare two runs' label images alone (image by image), as read back
    from output files or bags: only the share of equal pixels is known."""
    results = [[SegmentationResult(labels=lab, class_names=[], presence=_NONE,
                                   pixel_counts=_NONE, mean_confidence=_NONE, boxes=_NONE)
                for lab in run] for run in (ref, other)]
    return compare_results(*results)


_NONE = np.zeros(0)


def compare_segmenters(ref: Segmenter, other: Segmenter, images: Sequence[np.ndarray],
                       prompt_set: PromptSet, batch: int = 1, other_batch: int | None = None
                       ) -> Agreement:
    """Run both segmenters on ``images`` (``batch`` per segment call;
    ``other_batch`` for ``other`` when given), each with the prompts encoded
    on its own device and precision, and compare (threshold: the
    reference's ``prob_threshold``). ``other`` may be ``ref`` itself."""
    runs = []
    for seg, n in ((ref, batch), (other, batch if other_batch is None else other_batch)):
        prepared = seg.prepare_prompts(prompt_set, prompt_id=1)
        results: list[SegmentationResult] = []
        for start in range(0, len(images), max(1, n)):
            results += seg.segment(images[start:start + max(1, n)], prepared,
                                   return_probs=True, return_heads=True)
        runs.append(results)
    return compare_results(*runs, threshold=ref.config.prob_threshold)


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
