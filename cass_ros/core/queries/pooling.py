"""Embeddings of objects, classes and phrases (docs/algorithm.md 10.1): a
region's embedding is the mean of the dense features (queries/dense.py)
sampled at its pixels through their placement, L2-normalised; a phrase's
is its text embedding through the same text tower and templates as the
class names (1.2), so the two compare by cosine.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..text import TextEmbedder
from .dense import DenseFeatures


@functools.lru_cache(maxsize=16)
def _axis_weights(size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """The bilinear reads (align_corners False, clamped) of ``size`` pixels
    from ``cells`` cells, as torch's upsampling makes them: the cells
    (size, 2) int64 and the dense matrix (size, cells) float32 of weights."""
    src = np.maximum((np.arange(size) + 0.5) * (cells / size) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), cells - 1)
    w1 = np.where(i0 >= cells - 1, 0.0, src - i0)
    taps = np.stack([i0, np.minimum(i0 + 1, cells - 1)], -1)
    matrix = np.zeros((size, cells), np.float32)
    np.add.at(matrix, (np.arange(size)[:, None], taps), np.stack([1.0 - w1, w1], -1))
    return taps, matrix


def _slices(index: np.ndarray, count: int, boxes: np.ndarray | None
            ) -> list[tuple[slice, slice] | None]:
    """Each region's bounding slices: from ``boxes`` (count, 4) x, y,
    width, height (Instances.boxes, SegmentationResult.boxes) or found."""
    if boxes is None:
        return list(ndimage.find_objects(index, count))
    return [None if bw <= 0 or bh <= 0 else (slice(y, y + bh), slice(x, x + bw))
            for x, y, bw, bh in np.asarray(boxes, np.int64)[:count].tolist()]


def region_weights(index: np.ndarray, count: int, grid: tuple[int, int],
                   boxes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per region k = 1 .. count of ``index`` (H, W): row k - 1 of
    weights (count, gh * gw) float32 sums, over the region's pixels, each
    grid cell's bilinear weight there (the grid placed over the image by
    the half-pixel rule); pixels (count,) int64, its pixel count. Within
    the region's box: Ay^T mask Ax on the few grid rows and columns the
    box reads (one loop step per region, none per pixel)."""
    (h, w), (gh, gw) = index.shape, grid
    ty, ay = _axis_weights(h, gh)                                # (H, 2), (H, gh)
    tx, ax = _axis_weights(w, gw)                                # (W, 2), (W, gw)
    out = np.zeros((count, gh, gw), np.float32)
    pixels = np.zeros(count, np.int64)
    for k, box in enumerate(_slices(index, count, boxes)):
        if box is None:
            continue
        mask = index[box] == k + 1                               # (bh, bw)
        pixels[k] = np.count_nonzero(mask)
        ys, xs = box
        r0, r1 = ty[ys.start, 0], ty[ys.stop - 1, 1] + 1         # grid rows the box reads
        c0, c1 = tx[xs.start, 0], tx[xs.stop - 1, 1] + 1
        out[k, r0:r1, c0:c1] = ay[ys, r0:r1].T @ mask.astype(np.float32) @ ax[xs, c0:c1]
    return out.reshape(count, gh * gw), pixels


def pool_regions(dense: DenseFeatures, index: np.ndarray, count: int,
                 boxes: np.ndarray | None = None) -> torch.Tensor:
    """(count, E) float32 on the features' device: per region 1 .. count
    of ``index`` (H, W; any size, e.g. a label or instance image), the
    mean of ``dense.upsampled((H, W))`` over its pixels, L2-normalised
    (docs/algorithm.md 10.1). An empty region's row is 0. ``boxes``: the
    regions' (x, y, width, height), saving a pass over the image."""
    return _pool(dense, *region_weights(index, count, dense.placement.grid, boxes))


def _pool(dense: DenseFeatures, weights: np.ndarray, pixels: np.ndarray) -> torch.Tensor:
    mean = weights / np.maximum(pixels, 1)[:, None]                   # (count, gh gw)
    patches = dense.patches.float().reshape(-1, dense.patches.shape[-1])   # (gh gw, E)
    return F.normalize(torch.from_numpy(mean).to(patches) @ patches, dim=-1)


def pool_classes(dense: DenseFeatures, labels: np.ndarray, num_labels: int,
                 boxes: np.ndarray | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """The present classes of a label image (values 1 .. K - 1 with
    pixels), ascending, and their pooled embeddings (n, E) as
    ``pool_regions``; ``boxes``: SegmentationResult.boxes (K, 4)."""
    boxes = None if boxes is None else np.asarray(boxes)[1:]
    weights, pixels = region_weights(labels, num_labels - 1, dense.placement.grid, boxes)
    present = np.flatnonzero(pixels > 0)
    return present + 1, _pool(dense, weights[present], pixels[present])


def phrase_embeddings(embedder: TextEmbedder, phrases: Sequence[str]) -> torch.Tensor:
    """(n, E) float32 unit text embeddings of ``phrases`` (1.2: CLIP's text
    tower, core.text.encode_text, the 80 templates averaged), through the
    segmenter's cache (Segmenter.text_embedder)."""
    return embedder.encode(list(phrases))
