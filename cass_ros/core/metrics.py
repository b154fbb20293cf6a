"""Semantic-segmentation metrics as the paper's evaluation computes them
(mmsegmentation's ``IoUMetric``): one confusion matrix accumulated over the
whole split, then per-class IoU and accuracy, mIoU, aAcc and mAcc
(docs/evaluation.md).

The confusion matrix is (K, K + 1): row = ground-truth class, column =
predicted class, and the extra last column counts pixels predicted as no
class of the dataset (label 0 of a prompt set without background names,
which only the probability threshold produces). Ground-truth pixels equal
to the ignore index (255) are not counted at all. Importing this module does not
load torch (confusion_matrix does).
"""

from __future__ import annotations

import math
from typing import Any

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = 255


def confusion_matrix(gt: torch.Tensor, pred: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(K, K + 1) int64 confusion of one or more label maps, on their device.

    ``gt``: ground-truth class indices in [0, K) or ``ignore_index``;
    ``pred``: predicted class indices, any value outside [0, K) counting as
    "no class" (column K). ValueError when ``gt`` holds another value."""
    import torch

    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {tuple(gt.shape)} and prediction {tuple(pred.shape)} "
                         "differ in size")
    k = int(num_classes)
    gt = gt.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = gt != ignore_index
    gt, pred = gt[keep], pred[keep]
    if gt.numel() and (int(gt.min()) < 0 or int(gt.max()) >= k):
        bad = gt[(gt < 0) | (gt >= k)][0]
        raise ValueError(f"ground-truth value {int(bad)} is neither a class (0..{k - 1}) "
                         f"nor the ignore index {ignore_index}")
    pred = torch.where((pred >= 0) & (pred < k), pred, torch.full_like(pred, k))
    counts = torch.bincount(gt * (k + 1) + pred, minlength=k * (k + 1))
    return counts.reshape(k, k + 1)


def sparse_entries(confusion: torch.Tensor | np.ndarray) -> list[list[int]]:
    """[[gt, pred, count], ...] of the non-zero cells (the per-image record)."""
    cm = _numpy(confusion)
    rows, cols = np.nonzero(cm)
    return [[int(r), int(c), int(cm[r, c])] for r, c in zip(rows, cols, strict=True)]


def dense_from_entries(entries: list[list[int]], num_classes: int) -> np.ndarray:
    """Inverse of ``sparse_entries``: a (K, K + 1) int64 matrix."""
    cm = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    for r, c, n in entries:
        cm[int(r), int(c)] += int(n)
    return cm


def metrics_from_confusion(confusion: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """Per-class IoU and Acc (NaN where undefined), mIoU, aAcc, mAcc.

    As in mmseg: IoU_k = TP / (GT_k + PRED_k - TP) is NaN for a class that
    neither occurs nor is predicted (union 0) and mIoU is the mean over the
    others; Acc_k = TP / GT_k is NaN for a class absent from the ground
    truth and mAcc is the mean over the others; aAcc = sum TP / sum GT.
    Values are fractions (0..1); NaN means "not counted"."""
    cm = _numpy(confusion).astype(np.float64)
    k = cm.shape[0]
    tp = np.diag(cm[:, :k])
    gt_area = cm.sum(1)
    pred_area = cm[:, :k].sum(0)
    union = gt_area + pred_area - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt_area > 0, tp / gt_area, np.nan)
    total = gt_area.sum()
    return {
        "IoU": iou,
        "Acc": acc,
        "mIoU": _nanmean(iou),
        "aAcc": float(tp.sum() / total) if total > 0 else math.nan,
        "mAcc": _nanmean(acc),
        "pixels": int(total),
    }


def _numpy(confusion: torch.Tensor | np.ndarray) -> np.ndarray:
    return confusion.cpu().numpy() if hasattr(confusion, "cpu") else np.asarray(confusion)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan
