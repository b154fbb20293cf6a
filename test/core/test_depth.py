"""cass_ros.core.depth on synthetic depth of known geometry: a fronto-parallel
plane at a known Z, a tilted plane of known extent, a known camera matrix.

Tolerances: with trim 0 the box is the extreme pixel centres exactly (1e-9 m);
with a trim of t percent each side of the box moves inwards by at most t
percent of the true extent plus one pixel's footprint. The vectorised code is
checked against an independent per-class loop (np.percentile,
scipy.stats.trim_mean) to 1e-9.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import trim_mean

from cass_ros.core.depth import (POINT_DTYPE, DepthError, Intrinsics, labelled_points,
                                 nearest_resize, object_geometry)

H, W = 120, 160
K = np.array([[200.0, 0.0, 79.5], [0.0, 210.0, 59.5], [0.0, 0.0, 1.0]])
CAM = Intrinsics.from_matrix(K)


def _ray(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (u - CAM.cx) / CAM.fx, (v - CAM.cy) / CAM.fy


def _plane_scene(z: float = 2.0) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice]]:
    """A wall at ``z`` m; label 1 on rows 20..59, columns 40..99."""
    depth = np.full((H, W), z, np.float32)
    labels = np.zeros((H, W), np.uint8)
    box = (slice(20, 60), slice(40, 100))
    labels[box] = 1
    return labels, depth, box


def test_intrinsics_from_camera_matrix() -> None:
    assert (CAM.fx, CAM.fy, CAM.cx, CAM.cy) == (200.0, 210.0, 79.5, 59.5)
    assert Intrinsics.from_matrix(K.reshape(-1).tolist()) == CAM


@pytest.mark.parametrize("k, why", [
    (np.zeros((3, 3)), "fx and fy must be > 0"),
    (np.array([[np.nan, 0, 1], [0, 1, 1], [0, 0, 1]]), "fx and fy must be > 0"),
    (np.eye(2), "needs 9 values"),
])
def test_unusable_camera_matrix_is_refused(k: np.ndarray, why: str) -> None:
    with pytest.raises(DepthError, match=why):
        Intrinsics.from_matrix(k)


def test_fronto_parallel_plane_gives_its_footprint() -> None:
    labels, depth, (rows, cols) = _plane_scene(2.0)
    geo = object_geometry(labels, depth, CAM, num_labels=2, trim_percent=0.0)
    assert geo.counts.tolist() == [0, 40 * 60]        # background skipped by default
    xs, ys = _ray(np.array([40.0, 99.0]), np.array([20.0, 59.0]))
    np.testing.assert_allclose(geo.box_min[1], [xs[0] * 2, ys[0] * 2, 2.0], atol=1e-9)
    np.testing.assert_allclose(geo.box_max[1], [xs[1] * 2, ys[1] * 2, 2.0], atol=1e-9)
    # symmetric grid: the centroid is the footprint's centre
    np.testing.assert_allclose(geo.centroid[1], geo.center[1], atol=1e-9)
    np.testing.assert_allclose(geo.size[1], [(99 - 40) / CAM.fx * 2, (59 - 20) / CAM.fy * 2, 0],
                               atol=1e-9)
    assert not geo.box_min[0].any() and not geo.centroid[0].any()
    # trimmed: each side moves in by at most 5 % of the extent plus a pixel
    trimmed = object_geometry(labels, depth, CAM, 2, trim_percent=5.0)
    slack = 0.05 * geo.size[1] + np.array([2 / CAM.fx, 2 / CAM.fy, 0.0]) + 1e-9
    assert np.all(trimmed.box_min[1] >= geo.box_min[1] - 1e-9)
    assert np.all(trimmed.box_min[1] - geo.box_min[1] <= slack)
    assert np.all(geo.box_max[1] - trimmed.box_max[1] <= slack)
    np.testing.assert_allclose(trimmed.centroid[1], geo.centroid[1], atol=1e-9)


def test_tilted_plane_of_known_extent_within_the_trim() -> None:
    # label 2: a plane whose depth grows from 1 m to 3 m across columns 10..149
    u = np.arange(W, dtype=np.float64)
    z_of_col = 1.0 + 2.0 * (u - 10) / 139
    depth = np.broadcast_to(z_of_col, (H, W)).astype(np.float32).copy()
    labels = np.zeros((H, W), np.uint8)
    labels[30:90, 10:150] = 2
    xs, ys = _ray(u, np.arange(H, dtype=np.float64))
    x_pts = (xs * z_of_col)[10:150]
    true_min = np.array([x_pts.min(), ys[30] * 3.0, 1.0])   # y: most negative at z = 3
    true_max = np.array([x_pts.max(), ys[89] * 3.0, 3.0])
    exact = object_geometry(labels, depth, CAM, 3, trim_percent=0.0)
    np.testing.assert_allclose(exact.box_min[2], true_min, atol=1e-6)   # float32 depth
    np.testing.assert_allclose(exact.box_max[2], true_max, atol=1e-6)
    trim = 5.0
    geo = object_geometry(labels, depth, CAM, 3, trim_percent=trim)
    extent = true_max - true_min
    pixel = np.array([3.0 / CAM.fx, 3.0 / CAM.fy, 2.0 / 139])  # one pixel's footprint at 3 m
    slack = trim / 100 * extent + pixel
    assert np.all(geo.box_min[2] >= true_min - 1e-6) and np.all(geo.box_max[2] <= true_max + 1e-6)
    # z is spread evenly over the pixels (linear in the column): its
    # percentiles lie within the trim of the extent; x and y are not (their
    # extremes occur only at the far end), so they are only bounded by the box
    even = [2]
    assert np.all((geo.box_min[2] - true_min)[even] <= slack[even]), (geo.box_min[2], true_min)
    assert np.all((true_max - geo.box_max[2])[even] <= slack[even]), (geo.box_max[2], true_max)
    assert geo.centroid[2][2] == pytest.approx(2.0, abs=0.01)       # mean depth of the ramp


def test_invalid_depth_is_ignored() -> None:
    labels, depth, _ = _plane_scene(2.0)
    clean = object_geometry(labels, depth, CAM, 2, trim_percent=0.0)
    bad = depth.copy()
    # invalid values on the object's edges, where they would widen the box
    bad[20, 40:45] = [0.0, np.nan, np.inf, -np.inf, -1.0]
    bad[59, 95:100] = [0.0, np.nan, np.inf, -np.inf, -1.0]
    geo = object_geometry(labels, bad, CAM, 2, trim_percent=0.0)
    assert geo.counts[1] == clean.counts[1] - 10
    assert np.isfinite(geo.box_min).all() and np.isfinite(geo.centroid).all()
    np.testing.assert_allclose(geo.box_min[1][2], 2.0)
    np.testing.assert_allclose(geo.box_max[1][2], 2.0)
    # the ignored pixels are the corner ones: the box shrinks, it does not grow
    assert np.all(geo.box_min[1] >= clean.box_min[1] - 1e-12)
    assert np.all(geo.box_max[1] <= clean.box_max[1] + 1e-12)
    # all invalid: count 0, zeros
    none = object_geometry(labels, np.full_like(depth, np.nan), CAM, 2)
    assert none.counts.tolist() == [0, 0] and not none.box_max.any()


def test_depth_outliers_are_trimmed() -> None:
    labels, depth, (rows, cols) = _plane_scene(2.0)
    rng = np.random.default_rng(3)
    ys, xs = np.nonzero(labels == 1)
    pick = rng.choice(ys.size, size=int(0.03 * ys.size), replace=False)  # 3 % of the object
    noisy = depth.copy()
    noisy[ys[pick], xs[pick]] = 50.0               # flying pixels far behind
    raw = object_geometry(labels, noisy, CAM, 2, trim_percent=0.0)
    assert raw.box_max[1][2] == pytest.approx(50.0)   # min/max would be ruined
    geo = object_geometry(labels, noisy, CAM, 2, trim_percent=5.0)
    assert geo.box_max[1][2] == pytest.approx(2.0, abs=1e-9)
    assert geo.centroid[1][2] == pytest.approx(2.0, abs=1e-9)   # plain mean: 3.44
    truth = object_geometry(labels, depth, CAM, 2, trim_percent=0.0)
    np.testing.assert_allclose(geo.centroid[1][:2], truth.centroid[1][:2], atol=0.01)


def _loop_geometry(labels: np.ndarray, depth: np.ndarray, k: int, trim: float,
                   include_background: bool) -> tuple[np.ndarray, ...]:
    """Independent reference: per class, per pixel back-projection by the
    pinhole formula, np.percentile and scipy.stats.trim_mean."""
    counts = np.zeros(k, np.int64)
    cen, lo, hi = np.zeros((k, 3)), np.zeros((k, 3)), np.zeros((k, 3))
    for c in range(0 if include_background else 1, k):
        pts = []
        for v, u in zip(*np.nonzero(labels == c)):
            z = float(depth[v, u])
            if np.isfinite(z) and z > 0:
                pts.append(((u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z))
        if not pts:
            continue
        p = np.array(pts)
        counts[c] = len(p)
        lo[c] = np.percentile(p, trim, axis=0)
        hi[c] = np.percentile(p, 100 - trim, axis=0)
        cen[c] = trim_mean(p, trim / 100, axis=0)
    return counts, cen, lo, hi


@pytest.mark.parametrize("trim, include_background", [(7.5, False), (0.0, True), (20.0, True)])
def test_vectorised_equals_a_per_class_loop(trim: float, include_background: bool) -> None:
    rng = np.random.default_rng(11)
    h, w, k = 40, 50, 7
    labels = rng.integers(0, k - 1, size=(h, w)).astype(np.uint8)   # class 6 never occurs
    depth = rng.uniform(0.3, 8.0, size=(h, w)).astype(np.float32)
    bad = rng.random((h, w)) < 0.15
    depth[bad] = rng.choice([0.0, np.nan, np.inf, -np.inf, -2.0], size=int(bad.sum()))
    labels[labels == 5] = 5 * (rng.random(int((labels == 5).sum())) < 0.02)  # a 1- or 2-pixel class
    cam = Intrinsics.from_matrix(K)
    geo = object_geometry(labels, depth, cam, k, trim_percent=trim,
                          include_background=include_background)
    counts, cen, lo, hi = _loop_geometry(labels, depth, k, trim, include_background)
    assert geo.counts.tolist() == counts.tolist()
    np.testing.assert_allclose(geo.box_min, lo, atol=1e-9)
    np.testing.assert_allclose(geo.box_max, hi, atol=1e-9)
    np.testing.assert_allclose(geo.centroid, cen, atol=1e-9)


def test_mismatched_sizes_and_bad_labels_are_rejected_with_a_reason() -> None:
    labels, depth, _ = _plane_scene()
    with pytest.raises(DepthError, match=r"depth is 80x60, labels are 160x120"):
        object_geometry(labels, depth[:60, :80], CAM, 2)
    with pytest.raises(DepthError, match="beyond num_labels 1"):
        object_geometry(labels, depth, CAM, 1)
    with pytest.raises(DepthError, match=r"trim_percent must be in \[0, 50\)"):
        object_geometry(labels, depth, CAM, 2, trim_percent=50.0)
    with pytest.raises(DepthError, match="depth is 80x60"):
        labelled_points(labels, depth[:60, :80], None, CAM)


def test_labelled_points_subsample_valid_depth() -> None:
    labels, depth, _ = _plane_scene(2.0)
    depth[0, 0] = np.nan        # on the stride grid: dropped
    depth[0, 2] = 0.0           # on the stride grid: dropped
    depth[1, 1] = np.inf        # off the grid for stride 2: irrelevant
    conf = np.random.default_rng(0).random((H, W)).astype(np.float32)
    pts = labelled_points(labels, depth, conf, CAM, stride=2)
    assert pts.dtype == POINT_DTYPE and pts.dtype.itemsize == 24
    assert pts.size == (H // 2) * (W // 2) - 2
    # independent: every grid pixel with valid depth, back-projected by hand
    vv, uu = np.meshgrid(np.arange(0, H, 2), np.arange(0, W, 2), indexing="ij")
    ok = np.isfinite(depth[vv, uu]) & (depth[vv, uu] > 0)
    v, u = vv[ok], uu[ok]
    z = depth[v, u].astype(np.float64)
    np.testing.assert_allclose(pts["x"], (u - CAM.cx) / CAM.fx * z, rtol=1e-6)
    np.testing.assert_allclose(pts["y"], (v - CAM.cy) / CAM.fy * z, rtol=1e-6)
    np.testing.assert_allclose(pts["z"], 2.0)
    assert pts["label"].tolist() == labels[v, u].tolist()
    assert 0 in set(pts["label"].tolist())      # background is in the cloud
    np.testing.assert_array_equal(pts["confidence"], conf[v, u])
    assert not labelled_points(labels, depth, None, CAM, stride=5)["confidence"].any()
    assert not labelled_points(labels, depth, None, CAM, stride=5)["rgb"].view("<u4").any()
    with pytest.raises(DepthError, match="stride must be >= 1"):
        labelled_points(labels, depth, None, CAM, stride=0)


def test_nearest_resize_maps_pixel_centres() -> None:
    small = np.array([[1, 2], [3, 4]], np.uint8)
    big = nearest_resize(small, (4, 6))
    assert big.tolist() == [[1, 1, 1, 2, 2, 2], [1, 1, 1, 2, 2, 2],
                            [3, 3, 3, 4, 4, 4], [3, 3, 3, 4, 4, 4]]
    assert nearest_resize(big, (2, 2)).tolist() == small.tolist()
    assert nearest_resize(small, (2, 2)) is small


def test_depth_module_does_not_load_torch() -> None:
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", "import sys, cass_ros.core.depth; "
                           "print('torch' in sys.modules)"], cwd=repo, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                       "PYTHONPATH": str(repo)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


def test_far_spread_values_take_the_exact_sort() -> None:
    # spans beyond the offset-key sort's precision budget (k * span > 4e6 m)
    # go through lexsort: same numbers as the per-class loop
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, size=(30, 30)).astype(np.uint8)
    depth = rng.uniform(1.0, 3.0e6, size=(30, 30)).astype(np.float32)
    geo = object_geometry(labels, depth, Intrinsics.from_matrix(K), 4, trim_percent=5.0)
    counts, cen, lo, hi = _loop_geometry(labels, depth, 4, 5.0, False)
    assert geo.counts.tolist() == counts.tolist()
    for got, want in ((geo.box_min, lo), (geo.box_max, hi), (geo.centroid, cen)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)


def test_labelled_points_carry_the_class_colour_as_pcl_packs_it() -> None:
    labels, depth, _ = _plane_scene(2.0)
    colors = np.random.default_rng(3).integers(0, 256, (int(labels.max()) + 1, 3), dtype=np.uint8)
    pts = labelled_points(labels, depth, None, CAM, stride=3, colors=colors)
    # independent: the bytes of each point's rgb are B, G, R, 0 (little endian 0x00RRGGBB)
    raw = np.frombuffer(pts.tobytes(), np.uint8).reshape(pts.size, POINT_DTYPE.itemsize)
    off = POINT_DTYPE.fields["rgb"][1]
    want = colors[pts["label"]]
    np.testing.assert_array_equal(raw[:, off:off + 3], want[:, ::-1])
    assert not raw[:, off + 3].any()
