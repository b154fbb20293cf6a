"""core.mapping (docs/ros-interface.md, "Outputs for mappers"): the mask of
``mask_classes`` against np.isin, the names matched through synonyms, and
the camera matrices scaled to a resized image against where OpenCV's resize
moves a point."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cass_ros.core.mapping import MASK_ON, class_mask, mask_label_ids, scale_camera_matrices

SYNONYMS = [("sky", "wall"), ("person", "worker"), ("Car",), ("box", "crate")]


def test_mask_ids_match_any_synonym_case_insensitively_never_background() -> None:
    assert mask_label_ids(SYNONYMS, ["worker", "car"]) == ([1, 2], [])
    assert mask_label_ids(SYNONYMS, ["crate", "box"]) == ([3], [])
    ids, missing = mask_label_ids(SYNONYMS, ["sky", "pallet", "person"])
    assert ids == [1] and missing == ["sky", "pallet"]     # background is never masked
    assert mask_label_ids(SYNONYMS, []) == ([], [])


@pytest.mark.parametrize("dtype,k", [(np.uint8, 4), (np.uint16, 300)])
def test_class_mask_equals_isin(dtype: type, k: int) -> None:
    labels = np.random.default_rng(0).integers(0, k, (37, 53)).astype(dtype)
    ids = [1, 3, k - 1]
    mask = class_mask(labels, ids, k)
    assert mask.dtype == np.uint8 and mask.shape == labels.shape
    np.testing.assert_array_equal(mask, np.where(np.isin(labels, ids), MASK_ON, 0))
    assert not class_mask(labels, [], k).any()


@pytest.mark.parametrize("src,dst", [((480, 640), (336, 448)), ((48, 64), (32, 43)),
                                     ((100, 80), (250, 200))])
def test_scaled_matrices_project_where_opencv_resizes(src: tuple[int, int],
                                                      dst: tuple[int, int]) -> None:
    h, w = src
    k = [0.9 * w, 0.0, w / 2 - 0.3, 0.0, 0.85 * w, h / 2 + 0.7, 0.0, 0.0, 1.0]
    p = [k[0], 0.0, k[2], -0.05 * k[0], 0.0, k[4], k[5], 0.0, 0.0, 0.0, 1.0, 0.0]
    k2, p2 = scale_camera_matrices(k, p, src, dst)
    km, pm = np.array(k2).reshape(3, 3), np.array(p2).reshape(3, 4)
    for point in ([0.1, -0.05, 1.0], [-0.2, 0.15, 1.5]):
        x = np.array(point)
        u, v = k[0] * x[0] / x[2] + k[2], k[4] * x[1] / x[2] + k[5]
        # a smooth dot at (u, v), resized with OpenCV bilinear: its centroid
        # is where the scaled K must put the point
        yy, xx = np.mgrid[0:h, 0:w]
        sigma = 0.04 * w
        dot = np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * sigma ** 2))
        small = cv2.resize(dot, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
        sy, sx = np.mgrid[0:dst[0], 0:dst[1]]
        want = [np.sum(sx * small) / small.sum(), np.sum(sy * small) / small.sum()]
        got = km @ x
        np.testing.assert_allclose(got[:2] / got[2], want, atol=0.02 * max(1.0, dst[1] / w))
        gp = pm @ np.append(x, 1.0)
        assert gp[0] / gp[2] == pytest.approx(got[0] / got[2] + p2[3] / x[2], abs=1e-9)
    assert km[2].tolist() == [0.0, 0.0, 1.0] and pm[2].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_same_size_leaves_the_matrices() -> None:
    k = [500.0, 0.0, 320.0, 0.0, 510.0, 240.0, 0.0, 0.0, 1.0]
    p = [500.0, 0.0, 320.0, 0.0, 0.0, 510.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert scale_camera_matrices(k, p, (480, 640), (480, 640)) == (k, p)
