"""Instances (docs/algorithm.md 11) against independent computations:
scipy.ndimage.label with 8-connectivity on each class mask and the size
filter, on random and hand-made label maps; the depth cut against a pixel
graph built here; per-instance statistics against numpy; the 3D against
core.depth.object_geometry on an instance map built here and against a hand
back-projection."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cass_ros.core.config import ConfigError
from cass_ros.core.depth import DepthError, Intrinsics, object_geometry
from cass_ros.core.objects.instances import (AUTO_MIN_FRACTION, InstanceParams, find_instances)

EIGHT = np.ones((3, 3), int)


def reference_index(labels: np.ndarray, min_pixels: int) -> tuple[np.ndarray, list[int]]:
    """The instance map the rules give: per class in ascending order,
    scipy's 8-connected regions (numbered in raster order of their first
    pixel), those with at least ``min_pixels`` kept, numbered on."""
    index = np.zeros(labels.shape, np.int32)
    classes: list[int] = []
    for c in np.unique(labels):
        if c == 0:
            continue
        regions, m = ndi.label(labels == c, EIGHT)
        sizes = np.bincount(regions.ravel(), minlength=m + 1)
        for j in range(1, m + 1):
            if sizes[j] >= min_pixels:
                classes.append(int(c))
                index[regions == j] = len(classes)
    return index, classes


def check_stats(labels: np.ndarray, conf: np.ndarray | None, inst) -> None:
    """Pixel counts, boxes, classes and mean confidence from the map, by numpy."""
    for i in range(1, inst.count + 1):
        ys, xs = np.nonzero(inst.index == i)
        assert inst.pixel_counts[i - 1] == ys.size
        assert list(inst.boxes[i - 1]) == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                           ys.max() - ys.min() + 1]
        assert np.all(labels[ys, xs] == inst.class_ids[i - 1])
        want = 0.0 if conf is None else conf[ys, xs].astype(np.float64).mean()
        assert inst.mean_confidence[i - 1] == pytest.approx(want, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("seed", range(6))
def test_random_label_maps_match_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        k = int(rng.integers(2, 6))
        dtype = [np.uint8, np.uint16, np.int64][seed % 3]
        if rng.random() < 0.5:   # blocky maps: bigger regions
            small = rng.integers(0, k, (h // 3 + 1, w // 3 + 1))
            labels = np.kron(small, np.ones((3, 3), int))[:h, :w].astype(dtype)
        else:
            labels = rng.integers(0, k, (h, w)).astype(dtype)
        conf = rng.random((h, w)).astype(np.float32)
        min_pixels = int(rng.integers(1, 8))
        inst = find_instances(labels, InstanceParams(min_pixels=min_pixels), conf)
        want, classes = reference_index(labels, min_pixels)
        np.testing.assert_array_equal(inst.index, want)
        assert inst.index.dtype == np.int32 and inst.class_ids.tolist() == classes
        assert inst.count == len(classes) and inst.geometry is None
        check_stats(labels, conf, inst)


def test_diagonal_touching_is_one_instance_and_different_classes_are_not() -> None:
    labels = np.zeros((6, 6), np.uint8)
    labels[1, 1] = labels[2, 2] = labels[3, 3] = 1     # a diagonal chain: one region
    labels[1, 3] = labels[2, 4] = 2                     # touches class 1 at (2,2)-(1,3): not joined
    labels[4, 0] = 1                                    # only a knight's move away: separate
    inst = find_instances(labels, InstanceParams(min_pixels=1))
    assert inst.count == 3
    assert inst.class_ids.tolist() == [1, 1, 2]
    assert inst.pixel_counts.tolist() == [3, 1, 2]
    assert inst.index[3, 3] == inst.index[1, 1] == 1 and inst.index[4, 0] == 2
    assert inst.index[1, 3] == inst.index[2, 4] == 3


def test_holes_border_regions_and_specks() -> None:
    labels = np.zeros((20, 30), np.uint8)
    labels[2:12, 2:12] = 1
    labels[5:8, 5:8] = 0          # a hole: still one instance, hole not part of it
    labels[6, 6] = 2              # a speck of class 2 in the hole
    labels[0:4, 25:30] = 2        # touches the top and right border
    labels[19, :] = 1             # the whole bottom row
    labels[15, 15] = 3            # a speck
    inst = find_instances(labels, InstanceParams(min_pixels=5))
    want, classes = reference_index(labels, 5)
    np.testing.assert_array_equal(inst.index, want)
    assert classes == [1, 1, 2]
    assert inst.pixel_counts.tolist() == [100 - 9, 30, 20]
    assert inst.boxes.tolist() == [[2, 2, 10, 10], [0, 19, 30, 1], [25, 0, 5, 4]]
    assert inst.index[6, 6] == 0 and inst.index[15, 15] == 0   # specks: no instance
    assert inst.index[6, 5] == 0                                 # the hole


def test_numbering_is_by_class_then_first_pixel_in_raster_order() -> None:
    labels = np.zeros((8, 8), np.uint8)
    labels[0, 6] = 2
    labels[1, 0] = 1               # scanned in blocks, this one could come first
    labels[0, 4] = 1
    labels[5:7, 1:3] = 1
    inst = find_instances(labels, InstanceParams(min_pixels=1))
    assert [tuple(np.argwhere(inst.index == i)[0]) for i in range(1, 5)] == [
        (0, 4), (1, 0), (5, 1), (0, 6)]


def test_auto_min_pixels_is_a_share_of_the_image() -> None:
    assert InstanceParams().min_pixels_for((480, 640)) == 307
    assert InstanceParams().min_pixels_for((10, 10)) == 1
    assert InstanceParams(min_pixels=50).min_pixels_for((480, 640)) == 50
    assert AUTO_MIN_FRACTION == 0.001
    labels = np.zeros((480, 640), np.uint8)
    labels[:15, :20] = 1           # 300 pixels: under 307
    labels[100:116, 100:120] = 1   # 320 pixels
    inst = find_instances(labels, InstanceParams())
    assert inst.count == 1 and inst.pixel_counts.tolist() == [320]


def test_empty_and_background_only() -> None:
    for labels in (np.zeros((5, 7), np.uint8), np.zeros((0, 0), np.uint8)):
        inst = find_instances(labels, InstanceParams(min_pixels=1), np.zeros(labels.shape))
        assert inst.count == 0 and inst.boxes.shape == (0, 4)
        assert inst.index.shape == labels.shape and not inst.index.any()
        assert inst.mean_confidence.shape == (0,) and inst.class_ids.dtype == np.int64


def test_parameters_are_checked_by_name() -> None:
    with pytest.raises(ConfigError, match="'instance_min_pixels'"):
        InstanceParams(min_pixels=-1).validate()
    with pytest.raises(ConfigError, match="'instance_depth_jump'"):
        InstanceParams(depth_jump=float("nan")).validate()
    with pytest.raises(ConfigError, match="'x_depth_jump'"):
        InstanceParams(depth_jump=-0.1).validate(prefix="x_")
    assert InstanceParams(10, 0.1).validate() == InstanceParams(10, 0.1)
    with pytest.raises(ValueError):
        find_instances(np.zeros((4, 4), np.uint8), InstanceParams(), np.zeros((4, 5)))
    with pytest.raises(DepthError):
        find_instances(np.zeros((4, 4), np.uint8), InstanceParams(), None, np.ones((5, 4)))


# ------------------------------------------------------------------ depth


def reference_depth_index(labels: np.ndarray, depth: np.ndarray, jump: float,
                          min_pixels: int) -> np.ndarray:
    """The depth-cut instance map by an explicit edge list over all 8-neighbour
    pairs (both directions), then the same numbering rule."""
    h, w = labels.shape
    ok = np.isfinite(depth) & (depth > 0)
    src, dst = [], []
    for y in range(h):
        for x in range(w):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    y2, x2 = y + dy, x + dx
                    if (dy, dx) == (0, 0) or not (0 <= y2 < h and 0 <= x2 < w):
                        continue
                    if labels[y, x] == 0 or labels[y, x] != labels[y2, x2]:
                        continue
                    a, b = depth[y, x], depth[y2, x2]
                    if ok[y, x] and ok[y2, x2] and abs(a - b) > jump * min(a, b):
                        continue
                    src.append(y * w + x)
                    dst.append(y2 * w + x2)
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(h * w, h * w))
    _, comp = connected_components(graph, directed=False)
    comp = comp.reshape(h, w)
    found = {}
    for p in np.flatnonzero(labels):          # raster order: first pixel first
        found.setdefault(comp.flat[p], []).append(p)
    regions = [v for v in found.values() if len(v) >= min_pixels]
    regions.sort(key=lambda v: (labels.flat[v[0]], v[0]))
    index = np.zeros(h * w, np.int32)
    for i, v in enumerate(regions, 1):
        index[v] = i
    return index.reshape(h, w)


def test_a_depth_step_cuts_a_region() -> None:
    """Two people one behind the other: one class region, two depths."""
    labels = np.zeros((20, 30), np.uint8)
    labels[2:18, 3:27] = 1
    depth = np.full((20, 30), 5.0)
    depth[:, 15:] = 2.0                        # the nearer one, right half
    depth[10, 20] = 0.0                        # holes never cut
    depth[11, 21] = np.nan
    for jump, count in ((0.0, 1), (0.1, 2), (1.4, 2), (1.6, 1)):   # 5 / 2 = 2.5 = 1 + 1.5
        inst = find_instances(labels, InstanceParams(min_pixels=1, depth_jump=jump),
                              depth_m=depth)
        assert inst.count == count, jump
    inst = find_instances(labels, InstanceParams(min_pixels=1, depth_jump=0.1), depth_m=depth)
    assert inst.boxes.tolist() == [[3, 2, 12, 16], [15, 2, 12, 16]]
    # without depth the parameter changes nothing
    assert find_instances(labels, InstanceParams(1, 0.1)).count == 1


def test_invalid_depth_does_not_cut_but_can_bridge() -> None:
    labels = np.ones((3, 9), np.uint8)
    depth = np.array([[1.0] * 4 + [np.inf] + [3.0] * 4] * 3)
    inst = find_instances(labels, InstanceParams(1, 0.1), depth_m=depth)
    assert inst.count == 1                     # the invalid column joins both sides
    depth[:, 4] = 3.0
    assert find_instances(labels, InstanceParams(1, 0.1), depth_m=depth).count == 2


@pytest.mark.parametrize("seed", range(4))
def test_depth_cut_matches_an_explicit_graph(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    for _ in range(8):
        h, w = (int(v) for v in rng.integers(2, 18, 2))
        labels = rng.integers(0, 3, (h, w)).astype(np.uint8)
        if seed % 2:
            labels = (rng.random((h, w)) < 0.85).astype(np.uint8)
        depth = rng.choice([1.0, 1.05, 2.0, 3.5], (h, w))
        depth[rng.random((h, w)) < 0.1] = rng.choice([0.0, np.nan, np.inf, -1.0])
        min_pixels = int(rng.integers(1, 4))
        inst = find_instances(labels, InstanceParams(min_pixels, 0.1), depth_m=depth)
        np.testing.assert_array_equal(inst.index,
                                      reference_depth_index(labels, depth, 0.1, min_pixels))
        check_stats(labels, None, inst)


def test_geometry_is_object_geometry_on_the_instance_map() -> None:
    rng = np.random.default_rng(7)
    h, w = 40, 50
    labels = np.zeros((h, w), np.uint8)
    labels[5:20, 5:20] = 1
    labels[25:35, 5:45] = 1
    labels[5:15, 30:45] = 2
    depth = rng.uniform(1.0, 1.2, (h, w))
    depth[labels == 2] += 2.0
    depth[rng.random((h, w)) < 0.1] = 0.0
    k = Intrinsics(60.0, 55.0, 24.5, 19.5)
    inst = find_instances(labels, InstanceParams(min_pixels=1), None, depth, k, trim_percent=10.0)
    # the map built independently, then the per-class code on it
    want_index, _ = reference_index(labels, 1)
    want = object_geometry(want_index, depth, k, 4, 10.0)
    g = inst.geometry
    assert g is not None and g.counts.shape == (4,)
    for name in ("counts", "centroid", "box_min", "box_max"):
        np.testing.assert_array_equal(getattr(g, name), getattr(want, name))
    assert g.counts[0] == 0
    # instance 2 (the lower class-1 block) by hand: back-projection, trimmed mean, percentiles
    ys, xs = np.nonzero((want_index == 2) & (depth > 0))
    z = depth[ys, xs]
    pts = np.stack([(xs - k.cx) * z / k.fx, (ys - k.cy) * z / k.fy, z], 1)
    cut = int(np.floor(0.1 * len(z)))
    for axis in range(3):
        v = np.sort(pts[:, axis])
        assert g.centroid[2, axis] == pytest.approx(v[cut:len(v) - cut].mean(), abs=1e-9)
        assert g.box_min[2, axis] == pytest.approx(np.percentile(v, 10), abs=1e-9)
        assert g.box_max[2, axis] == pytest.approx(np.percentile(v, 90), abs=1e-9)
    assert g.counts[2] == len(z)
    # depth without intrinsics: the cut only, no geometry
    assert find_instances(labels, InstanceParams(1, 0.5), None, depth).geometry is None
