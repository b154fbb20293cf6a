"""Instances: each class's connected regions of a label image
(docs/algorithm.md 11).

Per class (label values 1 .. K-1) its 8-connected regions, cut also where
the depth between two neighbouring pixels jumps (with depth and
``depth_jump > 0``), are its instances; regions under ``min_pixels`` are
not. Instances are numbered 1..n by class, then by their first pixel in
raster order, so the node and cass_bag (and cass_segment) number a frame's
instances alike. Per instance: class, pixel count, box, mean confidence,
and with depth the 3D summary of core.depth.object_geometry, computed on the
instance map as a label map (the same code as the per-class 3D).

Cost: each present class is labelled only inside its bounding box, by
OpenCV's connected components (without statistics: OpenCV's own statistics
cost ten times the labelling); the per-instance numbers then come from one
pass over the foreground pixels (bincount and ufunc.at). A class whose
region has a depth jump is labelled on its pixel graph instead
(scipy.sparse.csgraph), which costs more; classes without one keep the fast
path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..config import ConfigError
from ..depth import Intrinsics, ObjectGeometry, check_shapes, object_geometry, valid_depth

# instance_min_pixels 0 = this share of the label image's pixels (307 at 640 x 480)
AUTO_MIN_FRACTION = 0.001


@dataclass(frozen=True)
class InstanceParams:
    """How regions become instances.

    ``min_pixels``: pixels a region needs to be an instance; 0 = AUTO_MIN_FRACTION
    of the label image. ``depth_jump``: with depth, a relative step between
    two neighbouring valid depths (|d1 - d2| > depth_jump * min(d1, d2))
    that separates them; 0 = off.
    """

    min_pixels: int = 0
    depth_jump: float = 0.0

    def validate(self, prefix: str = "instance_") -> InstanceParams:
        """Raise ConfigError naming the parameter (``prefix`` + field name,
        e.g. the node's ``instance_min_pixels``), as TemporalParams does."""
        def need(ok: bool, name: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"parameter '{prefix}{name}' {why}")

        need(isinstance(self.min_pixels, (int, np.integer)) and not isinstance(self.min_pixels, bool)
             and self.min_pixels >= 0, "min_pixels",
             f"must be an integer >= 0 (0 = {AUTO_MIN_FRACTION:.1%} of the image), "
             f"not {self.min_pixels!r}")
        need(isinstance(self.depth_jump, (int, float)) and not isinstance(self.depth_jump, bool)
             and math.isfinite(self.depth_jump) and self.depth_jump >= 0.0, "depth_jump",
             f"must be a finite number >= 0 (0 = off), not {self.depth_jump!r}")
        return self

    def min_pixels_for(self, size: tuple[int, int]) -> int:
        """The pixel threshold for a label image of ``size`` (H, W)."""
        if self.min_pixels > 0:
            return int(self.min_pixels)
        return max(1, int(AUTO_MIN_FRACTION * int(size[0]) * int(size[1])))


@dataclass(frozen=True)
class Instances:
    """One label image's instances; arrays are per instance 1..n at rows 0..n-1."""

    index: np.ndarray            # (H, W) int32: 0 = none, i = instance i (1..n)
    class_ids: np.ndarray        # (n,) int64 label value of each instance
    pixel_counts: np.ndarray     # (n,) int64
    boxes: np.ndarray            # (n, 4) int64 x, y, width, height
    mean_confidence: np.ndarray  # (n,) float32 mean confidence over its pixels (0 without)
    # core.depth.ObjectGeometry indexed by instance 0..n (row 0 unused); None without depth
    geometry: ObjectGeometry | None = None

    @property
    def count(self) -> int:
        return int(self.class_ids.shape[0])


def _present_classes(labels: np.ndarray) -> np.ndarray:
    """Label values > 0 that occur in ``labels``, ascending."""
    if labels.size == 0:
        return np.zeros(0, np.int64)
    top = int(labels.max())
    if top <= 0:
        return np.zeros(0, np.int64)
    if labels.dtype == np.uint8:
        # OpenCV's histogram is several times faster than np.bincount here
        hist = cv2.calcHist([labels], [0], None, [top + 1], [0, top + 1]).ravel()
    else:
        if int(labels.min()) < 0:
            raise ValueError("labels must be >= 0")
        hist = np.bincount(labels.ravel().astype(np.intp, copy=False), minlength=top + 1)
    present = np.nonzero(hist)[0]
    return present[present > 0].astype(np.int64)


# The four forward neighbours of 8-connectivity (right, down, down-right,
# down-left) as (first, second) slices of an (h, w) crop: every neighbour
# pair once.
_FORWARD = (
    ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
    ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
    ((slice(None, -1), slice(None, -1)), (slice(1, None), slice(1, None))),
    ((slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1))),
)


def _depth_cuts(depth_m: np.ndarray, jump: float) -> list[np.ndarray]:
    """Per _FORWARD direction an (H, W) bool map: True where the edge from
    the pixel to that neighbour is cut, i.e. both depths are valid and
    differ by more than ``jump`` times the smaller (False where the
    neighbour is outside the image). Once per frame, for every class."""
    valid = valid_depth(depth_m)
    d = np.where(valid, depth_m, 0.0)
    h, w = depth_m.shape
    out = []
    for a, b in _FORWARD:
        cut = np.zeros((h, w), bool)
        da, db = d[a], d[b]
        cut[a] = valid[a] & valid[b] & (np.abs(da - db) > jump * np.minimum(da, db))
        out.append(cut)
    return out


def _components(mask: np.ndarray, cuts: list[np.ndarray] | None) -> tuple[np.ndarray, int]:
    """8-connected components of ``mask`` (h, w) bool -> ((h, w) int32 with
    0 off the mask and 1..m on it, in any order; m). With ``cuts`` (the
    crop of _depth_cuts' maps), the regions holding a cut edge are
    relabelled on their pixel graph without those edges."""
    n, comp = cv2.connectedComponents(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    m = int(n) - 1
    if cuts is None or m == 0:
        return comp, m
    # regions that hold a cut edge between two of their pixels
    hit = np.zeros(m + 1, bool)
    for (a, b), cut in zip(_FORWARD, cuts):
        hit[comp[a][cut[a] & mask[a] & mask[b]]] = True
    hit[0] = False
    if not hit.any():
        return comp, m
    sub = hit[comp]                             # (h, w) pixels of those regions
    parts, k = _graph_components(sub, [cut[a] for (a, _), cut in zip(_FORWARD, cuts)])
    # the cut regions' pixels take the graph's labels after the others
    np.copyto(comp, parts + m, where=sub)
    return comp, m + k


def _graph_components(mask: np.ndarray, cuts: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """Components of the graph of ``mask``'s pixels with an edge between
    8-neighbours except where ``cuts`` (one bool map per _FORWARD pair, on
    its first slice) says so: ((h, w) int32 labels 1..k on the mask, k)."""
    pixels = np.flatnonzero(mask)                              # (n,) raster order
    n = int(pixels.size)
    node = np.zeros(mask.shape, np.int32)                       # (h, w) node id of mask pixels
    node.ravel()[pixels] = np.arange(n, dtype=np.int32)
    src, dst = [], []
    for (a, b), cut in zip(_FORWARD, cuts):
        keep = mask[a] & mask[b] & ~cut
        src.append(node[a][keep])
        dst.append(node[b][keep])
    s, t = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(s.size, np.int8), (s, t)), shape=(n, n)).tocsr()
    k, lab = connected_components(graph, directed=False)
    comp = np.zeros(mask.shape, np.int32)
    comp.ravel()[pixels] = lab + 1
    return comp, int(k)


def find_instances(labels: np.ndarray, params: InstanceParams,
                   confidence: np.ndarray | None = None, depth_m: np.ndarray | None = None,
                   intrinsics: Intrinsics | None = None, trim_percent: float = 5.0
                   ) -> Instances:
    """The instances of ``labels`` (H, W) int (docs/algorithm.md 11).

    ``confidence`` (H, W): each pixel's probability of its own label, for
    the mean confidence (0 without). ``depth_m`` (H, W) metres, at the
    labels' size (resizing is the caller's, as for the per-class 3D,
    core.depth.nearest_resize): cuts regions at depth jumps when
    ``params.depth_jump`` > 0, and with ``intrinsics`` gives ``geometry``
    = core.depth.object_geometry on the instance map (``trim_percent`` as
    there). Raises ValueError (DepthError for depth) on mismatched sizes.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D image, not {labels.shape}")
    if confidence is not None and confidence.shape != labels.shape:
        raise ValueError(f"confidence is {confidence.shape}, labels are {labels.shape}")
    if depth_m is not None:
        check_shapes(labels, depth_m)
    h, w = labels.shape
    jump = float(params.depth_jump) if depth_m is not None else 0.0
    cuts = _depth_cuts(depth_m, jump) if jump > 0.0 else None   # 4 x (H, W) bool

    # 1. provisional regions: each class labelled inside its bounding box,
    # numbered after the previous classes' regions
    regions = np.zeros((h, w), np.int32)       # (H, W) 0 = none, 1..R
    region_class = [np.zeros(1, np.int64)]     # per region 0..R, row 0 unused
    total = 0
    for c in _present_classes(labels):
        mask = labels == c                     # (H, W) bool
        x, y, bw, bh = cv2.boundingRect(mask.view(np.uint8))
        box = (slice(y, y + bh), slice(x, x + bw))
        crop = mask[box]
        comp, m = _components(crop, None if cuts is None else [c[box] for c in cuts])
        np.add(comp, total, out=comp, where=crop)
        regions[box] += comp                   # other classes' pixels get 0 added
        region_class.append(np.full(m, c, np.int64))
        total += m
    cls = np.concatenate(region_class)         # (R + 1,)

    # 2. per region, from one pass over the foreground pixels: size, box and
    # first pixel in raster order (flat is ascending)
    flat = np.flatnonzero(regions > 0)         # (F,) raster order
    reg = regions.ravel()[flat].astype(np.intp)  # (F,)
    counts = np.bincount(reg, minlength=total + 1)  # (R + 1,)
    rows, cols = np.divmod(flat, max(w, 1))   # max: a 0-pixel image has no pixels
    first = np.full(total + 1, h * w, np.int64)
    np.minimum.at(first, reg, flat)
    y1 = np.full(total + 1, -1, np.int64)
    np.maximum.at(y1, reg, rows)
    x0 = np.full(total + 1, w, np.int64)
    np.minimum.at(x0, reg, cols)
    x1 = np.full(total + 1, -1, np.int64)
    np.maximum.at(x1, reg, cols)
    y0 = first // max(w, 1)

    # 3. the size filter and the numbering: by class, then by first pixel
    min_pixels = params.min_pixels_for((h, w))
    kept = np.nonzero(counts >= min_pixels)[0]
    kept = kept[kept > 0]
    order = kept[np.lexsort((first[kept], cls[kept]))]   # (n,) region of instance 1..n
    n = int(order.size)
    lut = np.zeros(total + 1, np.int32)        # region -> instance (0 = not one)
    lut[order] = np.arange(1, n + 1, dtype=np.int32)
    index = np.zeros((h, w), np.int32)         # (H, W); written on the foreground only
    index.ravel()[flat] = lut[reg]

    if confidence is None or n == 0:
        mean_conf = np.zeros(n, np.float32)
    else:
        sums = np.bincount(reg, weights=confidence.ravel()[flat].astype(np.float64),
                           minlength=total + 1)
        mean_conf = (sums[order] / counts[order]).astype(np.float32)
    boxes = np.stack([x0[order], y0[order], x1[order] - x0[order] + 1,
                      y1[order] - y0[order] + 1], axis=1).astype(np.int64).reshape(n, 4)
    geometry = None
    if depth_m is not None and intrinsics is not None:
        geometry = object_geometry(index, depth_m, intrinsics, n + 1, trim_percent)
    return Instances(index, cls[order].astype(np.int64), counts[order].astype(np.int64), boxes,
                     mean_conf, geometry)


__all__ = ["AUTO_MIN_FRACTION", "InstanceParams", "Instances", "find_instances"]
