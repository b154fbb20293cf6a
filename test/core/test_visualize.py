"""Palette and overlay against an independent float computation."""

import numpy as np
import pytest

from cass_ros.core.visualize import overlay, palette


def test_palette_is_stable_distinct_and_background_black():
    small, big = palette(5), palette(300)
    assert small.dtype == np.uint8 and small.shape == (5, 3)
    assert np.array_equal(small, big[:5])  # a label keeps its colour whatever K is
    assert np.array_equal(big[0], [0, 0, 0])
    assert len({tuple(c) for c in big[1:60]}) == 59


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("dtype,k", [(np.uint8, 6), (np.uint16, 300)])
def test_overlay_matches_float_blend(alpha, dtype, k):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    labels = rng.integers(0, k, (37, 53)).astype(dtype)
    colors = palette(k)
    out = overlay(rgb, labels, colors, alpha)
    expect = np.where((labels > 0)[..., None],
                      rgb * (1 - alpha) + colors[labels].astype(float) * alpha, rgb)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert np.abs(out.astype(float) - expect).max() <= 1.0
    assert np.array_equal(out[labels == 0], rgb[labels == 0])  # background keeps the image


def test_overlay_rejects_mismatched_sizes_and_bad_alpha():
    rgb = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="differ in size"):
        overlay(rgb, np.zeros((5, 4), np.uint8), palette(2))
    with pytest.raises(ValueError, match="alpha"):
        overlay(rgb, np.zeros((4, 5), np.uint8), palette(2), 1.5)
