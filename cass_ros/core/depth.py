"""Labels plus an aligned depth image to 3D: per-class centroids and boxes,
and a labelled point cloud (docs/ros-interface.md, "Depth to 3D").

Pure numpy. Coordinates are the camera's optical frame (REP 103): x right,
y down, z forward, metres; pixel (u, v) = (column, row) has its centre at
integer coordinates, as in the pinhole model of sensor_msgs/CameraInfo:
``x = (u - cx) z / fx``, ``y = (v - cy) z / fy``.

A depth value is valid when it is finite and > 0 (0, NaN, +-inf and
negative values mean "no measurement" and are ignored). Everything is
vectorised over pixels and labels: one sort per axis groups the valid
points by label, percentiles and trimmed means are read off the groups by
index arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# The labelled cloud's point layout (sensor_msgs/PointCloud2 fields, 20 bytes).
POINT_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("label", "<u4"),
                        ("confidence", "<f4"), ("rgb", "<f4")])


def packed_rgb(colors: np.ndarray) -> np.ndarray:
    """(K, 3) uint8 colours -> (K,) float32 whose bits are 0x00RRGGBB: PCL's
    PointXYZRGB ``rgb`` field, which rviz and Foxglove colour points by."""
    c = np.asarray(colors, np.uint32)
    return ((c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]).astype("<u4").view("<f4")


class DepthError(ValueError):
    """Depth input that cannot be used with the labels (one-line reason)."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of the (aligned) depth image, in pixels."""

    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_matrix(cls, k: Any) -> "Intrinsics":
        """From a 3 x 3 camera matrix K (or its 9 values row by row, as in
        CameraInfo.k). Raises DepthError when fx, fy are not > 0 and finite."""
        m = np.asarray(k, dtype=np.float64).reshape(-1)
        if m.size != 9:
            raise DepthError(f"camera matrix needs 9 values, not {m.size}")
        out = cls(float(m[0]), float(m[4]), float(m[2]), float(m[5]))
        return out.validate()

    def validate(self) -> "Intrinsics":
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(math.isfinite(v) for v in values) or self.fx <= 0 or self.fy <= 0:
            raise DepthError(f"unusable camera matrix (fx={self.fx}, fy={self.fy}, "
                             f"cx={self.cx}, cy={self.cy}): fx and fy must be > 0")
        return self


@dataclass(frozen=True)
class ObjectGeometry:
    """Per label (K,): valid depth pixels and the robust 3D summary, in
    metres in the optical frame. Rows of labels without valid depth (and of
    label 0 unless asked for) are zero."""

    counts: np.ndarray      # (K,) int64 valid depth pixels
    centroid: np.ndarray    # (K, 3) float64 per-axis trimmed mean
    box_min: np.ndarray     # (K, 3) float64 trim_percent percentile per axis
    box_max: np.ndarray     # (K, 3) float64 (100 - trim_percent) percentile per axis

    @property
    def center(self) -> np.ndarray:
        """(K, 3) centre of the percentile box."""
        return (self.box_min + self.box_max) / 2.0

    @property
    def size(self) -> np.ndarray:
        """(K, 3) extent of the percentile box."""
        return self.box_max - self.box_min


def valid_depth(depth_m: np.ndarray) -> np.ndarray:
    """(H, W) bool: finite and > 0."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(depth_m) & (depth_m > 0)


def back_project(cols: np.ndarray, rows: np.ndarray, z: np.ndarray,
                 intrinsics: Intrinsics) -> np.ndarray:
    """Pixels (u = column, v = row) with depth z (N,) -> (N, 3) points x, y, z
    in metres (the pinhole model above)."""
    z = z.astype(np.float64, copy=False)
    return np.stack([(cols - intrinsics.cx) / intrinsics.fx * z,
                     (rows - intrinsics.cy) / intrinsics.fy * z, z], axis=1)


def nearest_resize(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``a`` (h, w) resampled to ``shape`` (H, W) by nearest neighbour
    (pixel centres), for labels at the model's resolution and depth at the
    camera's (output_size: model)."""
    h, w = a.shape[:2]
    H, W = shape
    if (h, w) == (H, W):
        return a
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.int64), w - 1)
    return a[rows[:, None], cols[None, :]]


def check_shapes(labels: np.ndarray, depth_m: np.ndarray) -> None:
    """DepthError unless labels and depth are two (H, W) images of one size."""
    if depth_m.ndim != 2 or labels.ndim != 2:
        raise DepthError(f"labels and depth must be 2-D images, not {labels.shape} and "
                         f"{depth_m.shape}")
    if labels.shape != depth_m.shape:
        raise DepthError(f"depth is {depth_m.shape[1]}x{depth_m.shape[0]}, labels are "
                         f"{labels.shape[1]}x{labels.shape[0]} (width x height)")


def _check_trim(trim_percent: float) -> None:
    if not (math.isfinite(trim_percent) and 0.0 <= trim_percent < 50.0):
        raise DepthError(f"trim_percent must be in [0, 50), not {trim_percent}")


def object_geometry(labels: np.ndarray, depth_m: np.ndarray, intrinsics: Intrinsics,
                    num_labels: int, trim_percent: float = 5.0,
                    include_background: bool = False) -> ObjectGeometry:
    """Per label: valid depth pixel count, centroid and percentile box.

    labels (H, W) int in [0, num_labels); depth_m (H, W) float metres, same
    size (DepthError otherwise). Per axis and label, the box runs from the
    ``trim_percent`` to the ``100 - trim_percent`` percentile (linear
    interpolation, as np.percentile), and the centroid is the trimmed mean
    that drops ``floor(trim_percent / 100 * n)`` values at each end (as
    scipy.stats.trim_mean): depth outliers at object edges move neither.
    Label 0 (background) is skipped unless ``include_background``: it is
    usually most of the image and the costliest group to sort.
    """
    check_shapes(labels, depth_m)
    _check_trim(trim_percent)
    k = int(num_labels)
    if labels.size and int(labels.max()) >= k:
        raise DepthError(f"labels hold {int(labels.max())}, beyond num_labels {k}")
    keep = valid_depth(depth_m)
    if not include_background:
        keep &= labels != 0
    lab = labels[keep].astype(np.int64)                         # (N,)
    counts = np.bincount(lab, minlength=k)[:k].astype(np.int64)  # (K,)
    centroid = np.zeros((k, 3))
    box_min = np.zeros((k, 3))
    box_max = np.zeros((k, 3))
    present = np.nonzero(counts)[0]
    if present.size:
        rows, cols = np.nonzero(keep)
        points = back_project(cols, rows, depth_m[keep], intrinsics)   # (N, 3)
        n = counts[present]                                      # (P,)
        start = np.concatenate([[0], np.cumsum(counts)])[present]
        lab_sorted = np.repeat(np.arange(k), counts)             # (N,) labels in group order
        for axis in range(3):
            ordered = _sort_by_label(points[:, axis], lab, lab_sorted, k)
            box_min[present, axis] = _group_percentile(ordered, start, n, trim_percent)
            box_max[present, axis] = _group_percentile(ordered, start, n, 100.0 - trim_percent)
            centroid[present, axis] = _group_trimmed_mean(ordered, start, n, trim_percent)
    return ObjectGeometry(counts, centroid, box_min, box_max)


# Largest k * span (metres) for which the offset-key sort below keeps the
# values to 1e-9 m (float64: 2^-52 relative); wider spreads take lexsort.
_MAX_KEY_RANGE = 4.0e6


def _sort_by_label(values: np.ndarray, lab: np.ndarray, lab_sorted: np.ndarray,
                   k: int) -> np.ndarray:
    """``values`` ordered by label, then by value (what np.lexsort((values,
    lab)) gives), as one float sort of ``lab * span + value``: each label's
    keys stay below the next label's, and a plain np.sort is several times
    faster than a lexsort or an argsort."""
    vmin = float(values.min())
    span = float(values.max()) - vmin + 1.0
    if k * span > _MAX_KEY_RANGE:
        return values[np.lexsort((values, lab))]
    keys = np.sort(lab * span + (values - vmin))
    return keys - lab_sorted * span + vmin


def _group_percentile(ordered: np.ndarray, start: np.ndarray, n: np.ndarray,
                      q: float) -> np.ndarray:
    """The q-th percentile of each group ``ordered[start : start + n]``
    (sorted), with np.percentile's linear interpolation."""
    pos = q / 100.0 * (n - 1)                                    # (P,)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    a, b = ordered[start + lo], ordered[start + hi]
    return a + frac * (b - a)


def _group_trimmed_mean(ordered: np.ndarray, start: np.ndarray, n: np.ndarray,
                        trim_percent: float) -> np.ndarray:
    """Mean of each sorted group without ``floor(trim / 100 * n)`` values at
    either end (scipy.stats.trim_mean's cut), from one cumulative sum."""
    cut = np.floor(trim_percent / 100.0 * n).astype(np.int64)
    csum = np.concatenate([[0.0], np.cumsum(ordered)])
    total = csum[start + n - cut] - csum[start + cut]
    return total / (n - 2 * cut)


def labelled_points(labels: np.ndarray, depth_m: np.ndarray, confidence: np.ndarray | None,
                    intrinsics: Intrinsics, stride: int = 1,
                    colors: np.ndarray | None = None) -> np.ndarray:
    """The labelled cloud: every ``stride``-th pixel in rows and columns
    with valid depth, background (label 0) included, as a structured array
    of POINT_DTYPE (x, y, z metres; label; confidence = the probability of
    the pixel's own label, 0 when ``confidence`` is None; rgb = the label's
    colour in ``colors`` (K, 3) packed as ``packed_rgb``, black when None).
    labels, depth_m and confidence are (H, W) of one size."""
    check_shapes(labels, depth_m)
    if confidence is not None and confidence.shape != labels.shape:
        raise DepthError(f"confidence is {confidence.shape}, labels are {labels.shape}")
    stride = int(stride)
    if stride < 1:
        raise DepthError(f"stride must be >= 1, not {stride}")
    d = depth_m[::stride, ::stride]                              # (h, w)
    keep = valid_depth(d)
    rows, cols = np.nonzero(keep)
    points = back_project(cols * stride, rows * stride, d[keep], intrinsics)   # (N, 3)
    out = np.empty(points.shape[0], POINT_DTYPE)
    out["x"], out["y"], out["z"] = points.T
    out["label"] = labels[::stride, ::stride][keep]
    out["confidence"] = 0.0 if confidence is None else confidence[::stride, ::stride][keep]
    out["rgb"] = 0.0 if colors is None else packed_rgb(colors)[out["label"]]
    return out


__all__ = ["Intrinsics", "ObjectGeometry", "DepthError", "POINT_DTYPE", "valid_depth",
           "back_project", "nearest_resize", "check_shapes", "object_geometry",
           "labelled_points", "packed_rgb"]
