"""Dense language features of an image (docs/algorithm.md 10.1): the unit
fused patch embeddings P of 3.9 on the image's CLIP patch grid, the
sliding-window crops merged as 5.2 merges logits, where that grid lies in
the input image, and the image-level embedding of 4.1. What a mapping stack
fuses into its map; a consumer's cosine with a text embedding (core.text)
is the patch logit of 4.4 with alpha = beta = 0.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..mapping import scale_camera_matrices
from .features import Box, ImageFeatures


@dataclass(frozen=True)
class Placement:
    """Where a grid of cells lies in an image (docs/algorithm.md 10.1): the
    grid is the image resized to ``grid`` by the half-pixel rule of 2.1 and
    5.3, so grid coordinate = scale * pixel + offset per axis (pixel centres
    at integers), the convention of core.mapping.scale_camera_matrices."""

    image_size: tuple[int, int]     # (H, W) of the input image
    grid: tuple[int, int]           # (gh, gw) cells

    @property
    def scale(self) -> tuple[float, float]:
        """(sy, sx): cells per image pixel."""
        return self.grid[0] / self.image_size[0], self.grid[1] / self.image_size[1]

    @property
    def offset(self) -> tuple[float, float]:
        """(oy, ox) = 0.5 * (s - 1): the grid coordinate of pixel 0's centre."""
        return tuple(0.5 * (s - 1.0) for s in self.scale)  # type: ignore[return-value]

    def camera_matrices(self, k: Sequence[float], p: Sequence[float]
                        ) -> tuple[list[float], list[float]]:
        """The image's K (3 x 3) and P (3 x 4), row-major, for the grid: a 3D
        point projects to the grid coordinates of the cell that sees it."""
        return scale_camera_matrices(k, p, self.image_size, self.grid)

    def to_json(self) -> dict:
        return {"image_size": list(self.image_size), "grid": list(self.grid),
                "scale": list(self.scale), "offset": list(self.offset)}


@dataclass(frozen=True)
class DenseFeatures:
    """One image's dense features (docs/algorithm.md 10.1)."""

    patches: torch.Tensor       # (gh, gw, E) mean of the covering crops' unit P
    image: torch.Tensor         # (E,) unit image-level embedding (4.1)
    placement: Placement

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in (self.patches, self.image))

    def upsampled(self, size: tuple[int, int]) -> torch.Tensor:
        """(h, w, E) float32: the patches resized bilinearly (align_corners
        False, as 5.1 and 5.3) to ``size``; at the input size each cell's
        value sits where its placement puts it."""
        x = self.patches.float().permute(2, 0, 1)[None]            # (1, E, gh, gw)
        return F.interpolate(x, size=tuple(size), mode="bilinear",
                             align_corners=False)[0].permute(1, 2, 0)


def image_grid(resized: tuple[int, int], patch: int) -> tuple[int, int]:
    """CLIP's patch grid of a whole resized image (2.2): (Hr // p, Wr // p)."""
    return resized[0] // patch, resized[1] // patch


def dense_features(features: ImageFeatures, patch: int,
                   dtype: torch.dtype = torch.float32) -> list[DenseFeatures]:
    """One DenseFeatures per image of ``features`` (``patch``: CLIP's patch
    size, Segmenter.clip.patch). Each crop's unit P is read at every cell
    centre of the image's grid that its box contains, by 5.1's bilinear
    rule, and the reads are averaged over the crops (5.2); with whole-image
    crops, and with crops on multiples of the cell size, a read is one crop
    cell exactly. ``dtype``: float16 halves the bytes (computed in float32).
    One weighted gather-sum per crop batch (a sparse product, as
    embedding_bag); its indices and weights are cached per geometry."""
    if not features.groups:
        return []
    grids = [image_grid(r, patch) for r in features.resized_sizes]
    starts = np.concatenate([[0], np.cumsum([gh * gw for gh, gw in grids])])
    device = features.groups[0].patches.device
    width = features.groups[0].patches.shape[-1]
    key = (tuple(features.resized_sizes), patch, str(device),
           tuple((g.size, g.grid, g.images, g.boxes) for g in features.groups))
    total = None                                                      # (sum gh gw, E)
    for grp, merge in zip(features.groups, _merge_matrices(key)):
        part = F.normalize(grp.patches, dim=-1).reshape(-1, width)  # (B N, E)
        if merge is not None:   # row r: sum of values[k] * part[src[k]], k in its bag
            src, bags, values = merge
            part = F.embedding_bag(src, part, bags, mode="sum", per_sample_weights=values)
        total = part if total is None else total + part
    return [DenseFeatures(total[starts[i]:starts[i + 1]].reshape(*grids[i], width).to(dtype),
                          _image_vector(features, i).to(dtype),
                          Placement(tuple(features.input_sizes[i]), grids[i]))
            for i in range(len(features))]


@functools.lru_cache(maxsize=32)
def _merge_matrices(key: tuple) -> list[tuple[torch.Tensor, ...] | None]:
    """Per crop batch, the sparse matrix (sum gh gw, B N) of the merge in
    rows: src (nnz,) patch rows, bags (sum gh gw,) each cell's first entry,
    values (nnz,) float32 each read's bilinear weight divided by the number
    of crops that cover the cell (5.2's coverage); None for the identity
    (whole-image mode)."""
    resized, patch, device, groups = key
    grids = [image_grid(r, patch) for r in resized]
    starts = np.concatenate([[0], np.cumsum([gh * gw for gh, gw in grids])])
    taps = [_crop_taps(size, grid, images, boxes, resized, grids, starts)
            for size, grid, images, boxes in groups]
    coverage = np.bincount(np.concatenate([t[3] for t in taps]), minlength=int(starts[-1]))
    out: list[tuple[torch.Tensor, ...] | None] = []
    for (dst, src, weight, _), (_, grid, images, _) in zip(taps, groups):
        values = weight / coverage[dst]
        rows = len(images) * grid[0] * grid[1]
        if (len(groups) == 1 and int(starts[-1]) == rows == len(dst) and (values == 1).all()
                and (dst == src).all()):
            out.append(None)
            continue
        order = np.argsort(dst, kind="stable")
        bags = np.searchsorted(dst[order], np.arange(int(starts[-1])))
        out.append(tuple(torch.from_numpy(np.ascontiguousarray(x)).to(device) for x in
                         (src[order], bags, values[order].astype(np.float32))))
    return out


def _image_vector(features: ImageFeatures, i: int) -> torch.Tensor:
    """Image ``i``'s unit global vector (E,): the g of 4.1 its crops share;
    with ``crop_global_vector`` (a g per crop) the normalised mean of the
    crops' unit g."""
    rows = torch.cat([grp.g[[j for j, owner in enumerate(grp.images) if owner == i]]
                      for grp in features.groups])                   # (crops, E)
    if bool((rows == rows[:1]).all()):
        return F.normalize(rows[0], dim=-1)
    return F.normalize(F.normalize(rows, dim=-1).mean(0), dim=-1)


def _axis_taps(length: np.ndarray, cells: np.ndarray, start: np.ndarray, stop: np.ndarray,
               crop_cells: np.ndarray, most: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One axis, per crop b (arrays (B,)) and image cell J < ``most``: whether
    the crop's box [start, stop) holds the cell's centre (J + 0.5) L / G, and
    the two crop cells 5.1's bilinear rule (align_corners False, clamped)
    reads there with their weights. Exact rational arithmetic in integers:
    a centre on a crop cell's centre reads that cell alone. Returns covered
    (B, most) bool, cells (B, most, 2) int64, weights (B, most, 2) float64."""
    j = np.arange(most)[None, :]
    big_l, big_g, a, b, g = (v.astype(np.int64)[:, None]
                             for v in (length, cells, start, stop, crop_cells))
    centre = (2 * j + 1) * big_l                            # centre * 2G, in pixels
    covered = (j < big_g) & (2 * a * big_g <= centre) & (centre <= 2 * b * big_g)
    den = np.maximum(2 * big_g * (b - a), 1)                # source * den: an integer
    num = np.maximum((centre - 2 * a * big_g) * g - big_g * (b - a), 0)
    i0 = np.minimum(num // den, g - 1)
    w1 = np.where(num // den >= g - 1, 0.0, (num - i0 * den) / den)
    i1 = np.minimum(i0 + 1, g - 1)
    return covered, np.stack([i0, i1], -1), np.stack([1.0 - w1, w1], -1)


def _crop_taps(crop_size: tuple[int, int], crop_grid: tuple[int, int],
               images: tuple[int, ...], crop_boxes: tuple[Box, ...],
               resized: Sequence[tuple[int, int]], grids: Sequence[tuple[int, int]],
               starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (image cell, crop patch, weight) read of a crop batch (its
    CropFeatures' size, grid, images and boxes), zero weights dropped: dst,
    src (rows of the (B N, E) patches), weight (float64), and the image
    cell of each (crop, covered cell) pair once."""
    boxes = np.array(crop_boxes, np.int64)                  # (B, 4) y0, y1, x0, x1
    owners = np.array(images)
    size = np.array([resized[i] for i in owners], np.int64)  # (B, 2)
    grid = np.array([grids[i] for i in owners], np.int64)    # (B, 2)
    gh, gw = crop_grid
    cy, iy, wy = _axis_taps(size[:, 0], grid[:, 0], boxes[:, 0], boxes[:, 1],
                            np.full(len(owners), gh), int(grid[:, 0].max()))
    cx, ix, wx = _axis_taps(size[:, 1], grid[:, 1], boxes[:, 2], boxes[:, 3],
                            np.full(len(owners), gw), int(grid[:, 1].max()))
    # (B, Jy, Jx, 2, 2): the four bilinear reads of every cell of every crop
    cover = cy[:, :, None] & cx[:, None, :]                              # (B, Jy, Jx)
    weight = wy[:, :, None, :, None] * wx[:, None, :, None, :]
    src = ((np.arange(len(owners)) * gh * gw)[:, None, None, None, None]
           + iy[:, :, None, :, None] * gw + ix[:, None, :, None, :])
    cell = (starts[owners][:, None, None] + np.arange(cy.shape[1])[None, :, None]
            * grid[:, 1, None, None] + np.arange(cx.shape[1])[None, None, :])  # (B, Jy, Jx)
    keep = cover[..., None, None] & (weight > 0)
    dst = np.broadcast_to(cell[..., None, None], keep.shape)[keep]
    return dst, src[keep], weight[keep], cell[cover]
