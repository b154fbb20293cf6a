"""What the segmenter returns for one image, and the per-class summary that
the JSON files, the objects messages and the bag summaries all share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class SegmentationResult:
    """Segmentation of one image at its input size.

    K = number of labels (classes + background at 0).
    """

    labels: np.ndarray            # (H, W) uint8, uint16 when K > 256
    class_names: list[str]        # (K,) index = label value, [0] = background
    presence: np.ndarray          # (K,) float32 zero-shot presence probability
    pixel_counts: np.ndarray      # (K,) int64
    mean_confidence: np.ndarray   # (K,) float32 mean class probability over its pixels
    boxes: np.ndarray             # (K, 4) int64 x, y, width, height (zeros when absent)
    prompt_id: int = 0
    probs: np.ndarray | None = None   # (K, H, W) float32, before the threshold
    # (K,) bool, set by a temporal stream's hysteresis (core.temporal); None:
    # present = pixel_count >= min_pixels
    present: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    confidence: np.ndarray | None = None  # (H, W) float32 probability of each pixel's label
    heads: np.ndarray | None = None   # (crops, h) int64 head matching per crop (segment's return_heads)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.labels.shape[0]), int(self.labels.shape[1])

    def objects(self, min_pixels: int = 1) -> list[dict[str, Any]]:
        """One entry per prompted class (label 1..K-1), keys as in
        docs/ros-interface.md: class_id, label, presence, present, pixel_count,
        area_fraction, mean_confidence, bbox [x, y, width, height].
        ``present`` is the hysteresis decision when ``self.present`` is set,
        else whether the class has at least ``min_pixels`` pixels."""
        total = max(1, self.labels.size)
        out = []
        for k in range(1, len(self.class_names)):
            count = int(self.pixel_counts[k])
            out.append({
                "class_id": k,
                "label": self.class_names[k],
                "presence": float(self.presence[k]),
                "present": (bool(self.present[k]) if self.present is not None
                            else count >= max(1, min_pixels)),
                "pixel_count": count,
                "area_fraction": count / total,
                "mean_confidence": float(self.mean_confidence[k]),
                "bbox": [int(v) for v in self.boxes[k]],
            })
        return out


def label_statistics(labels: np.ndarray, class_prob: np.ndarray | None, num_labels: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel counts, mean confidence and tight boxes per label.

    labels (H, W) int; class_prob (H, W) float: the probability of each
    pixel's own label (None gives zero confidence). Vectorised with bincount
    and per-row/column reductions, no loop over pixels.
    """
    flat = labels.reshape(-1).astype(np.int64)
    counts = np.bincount(flat, minlength=num_labels)[:num_labels]
    if class_prob is None:
        mean_conf = np.zeros(num_labels, np.float32)
    else:
        sums = np.bincount(flat, weights=class_prob.reshape(-1).astype(np.float64),
                           minlength=num_labels)[:num_labels]
        mean_conf = (sums / np.maximum(counts, 1)).astype(np.float32)
    boxes = np.zeros((num_labels, 4), np.int64)
    present = np.nonzero(counts)[0]
    if present.size:
        h, w = labels.shape
        # one-hot over present labels along rows and columns: (L, H) and (L, W)
        rows = np.zeros((num_labels, h), bool)
        cols = np.zeros((num_labels, w), bool)
        rr, cc = np.nonzero(np.ones_like(labels, bool))
        rows[flat, rr] = True
        cols[flat, cc] = True
        for_rows = rows[present]
        for_cols = cols[present]
        y0 = for_rows.argmax(1)
        y1 = h - 1 - for_rows[:, ::-1].argmax(1)
        x0 = for_cols.argmax(1)
        x1 = w - 1 - for_cols[:, ::-1].argmax(1)
        boxes[present] = np.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], 1)
    return counts.astype(np.int64), mean_conf, boxes
