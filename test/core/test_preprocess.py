"""Preprocessing (docs/algorithm.md section 2) and the sliding-window grid
(5.2), each against an independent computation."""

from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from cass_ros.core.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    dino_input,
    dino_square,
    normalize,
    resize_short_side,
    resized_size,
    slide_windows,
)


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def exact_resized_size(h: int, w: int, short: int) -> tuple[int, int]:
    """mmseg keep-ratio resize to (2048, short) in exact rational arithmetic,
    sides rounded half up."""
    scale = min(Fraction(2048, max(h, w)), Fraction(short, min(h, w)))

    def half_up(x: Fraction) -> int:
        return int((x + Fraction(1, 2)).__floor__())

    return half_up(h * scale), half_up(w * scale)


# ------------------------------------------------------------------ 2.1 resize


@pytest.mark.parametrize("h,w,short,expected", [
    (480, 640, 336, (336, 448)),
    (640, 480, 336, (448, 336)),
    (336, 500, 336, (336, 500)),       # already there
    (20, 30, 64, (64, 96)),            # small images are enlarged
    (100, 3000, 336, (68, 2048)),      # the long side is capped at 2048
    (1000, 8000, 560, (256, 2048)),
    (2, 3, 3, (3, 5)),                 # 4.5 rounds half up to 5 (not to even)
    (1080, 1920, 336, (336, 597)),     # 597.33
    (1080, 1920, 560, (560, 996)),     # 995.56
])
def test_resized_size_table(h, w, short, expected):
    assert resized_size(h, w, short) == expected
    assert exact_resized_size(h, w, short) == expected


def test_resized_size_against_exact_arithmetic():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        h, w = (int(x) for x in rng.integers(1, 4000, 2))
        short = int(rng.choice([16, 64, 224, 336, 448, 560, 1000]))
        assert resized_size(h, w, short) == exact_resized_size(h, w, short), (h, w, short)


@pytest.mark.parametrize("h,w,short", [(48, 80, 64), (30, 20, 64), (120, 90, 64), (64, 100, 64),
                                       (7, 5, 16)])
def test_resize_short_side_is_cv2_bilinear_on_uint8(h, w, short):
    image = rgb(h, w, seed=h * w)
    out = resize_short_side(image, short)
    nh, nw = exact_resized_size(h, w, short)
    assert out.shape == (nh, nw, 3) and out.dtype == np.uint8
    assert min(nh, nw) == short
    ref = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out, ref)
    if (nh, nw) == (h, w):
        np.testing.assert_array_equal(out, image)
    else:  # not nearest neighbour, not area: bilinear
        assert not np.array_equal(out, cv2.resize(image, (nw, nh), interpolation=cv2.INTER_NEAREST))


# ------------------------------------------------------------------ 2.2 / 2.3 normalisation


def test_normalize_clip_and_imagenet():
    image = rgb(5, 7, seed=3)
    for mean, std in ((CLIP_MEAN, CLIP_STD), (IMAGENET_MEAN, IMAGENET_STD)):
        out = normalize(image, mean, std)
        assert out.shape == (3, 5, 7) and out.dtype == torch.float32
        ref = (image.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)
        np.testing.assert_allclose(out.numpy(), ref.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)


def test_normalize_accepts_read_only_and_strided_views():
    image = rgb(6, 8, seed=4)
    view = image[:, ::2]
    ro = image.copy()
    ro.setflags(write=False)
    np.testing.assert_array_equal(normalize(ro, CLIP_MEAN, CLIP_STD).numpy(),
                                  normalize(image, CLIP_MEAN, CLIP_STD).numpy())
    np.testing.assert_array_equal(normalize(view, CLIP_MEAN, CLIP_STD).numpy(),
                                  normalize(np.ascontiguousarray(view), CLIP_MEAN, CLIP_STD).numpy())


@pytest.mark.parametrize("h,w", [(64, 96), (96, 64), (50, 51), (224, 300)])
def test_dino_square_is_pillow_bicubic(h, w):
    image = rgb(h, w, seed=h + w)
    out = dino_square(image)
    s = min(h, w)
    assert out.shape == (s, s, 3) and out.dtype == np.uint8
    ref = np.asarray(Image.fromarray(image, "RGB").resize((s, s), Image.BICUBIC))
    np.testing.assert_array_equal(out, ref)
    # not a bilinear or nearest resize
    assert not np.array_equal(out, cv2.resize(image, (s, s), interpolation=cv2.INTER_LINEAR))


def test_dino_square_keeps_square_crops():
    image = rgb(224, 224, seed=9)
    np.testing.assert_array_equal(dino_square(image), image)
    view = rgb(100, 300)[:, 50:150]  # a non-contiguous square crop
    np.testing.assert_array_equal(dino_square(view), view)


@pytest.mark.parametrize("h,w,expected", [(64, 96, 64), (70, 90, 64), (224, 224, 224), (30, 45, 24)])
def test_dino_input(h, w, expected):
    image = rgb(h, w, seed=1)
    x = dino_input(image, patch=8)
    assert x.shape == (3, expected, expected) and x.dtype == torch.float32
    sq = np.asarray(Image.fromarray(image).resize((min(h, w),) * 2, Image.BICUBIC)) if h != w else image
    ref = (sq.astype(np.float64) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x.numpy(), ref.transpose(2, 0, 1)[:, :expected, :expected],
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ 5.2 sliding windows


def mmseg_windows(h_img: int, w_img: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg's slide_inference loop, transcribed."""
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    out = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * stride
            x1 = w_idx * stride
            y2 = min(y1 + crop, h_img)
            x2 = min(x1 + crop, w_img)
            y1 = max(y2 - crop, 0)
            x1 = max(x2 - crop, 0)
            out.append((y1, y2, x1, x2))
    return out


@pytest.mark.parametrize("h,w,crop,stride", [
    (336, 448, 224, 112), (336, 597, 224, 112), (224, 224, 224, 112), (225, 224, 224, 112),
    (560, 1120, 224, 112), (100, 150, 224, 112), (64, 107, 32, 16), (64, 64, 48, 20),
    (50, 300, 224, 112), (300, 50, 224, 112), (97, 131, 32, 32), (40, 70, 32, 31),
])
def test_slide_windows(h, w, crop, stride):
    wins = slide_windows(h, w, crop, stride)
    assert wins == mmseg_windows(h, w, crop, stride)
    cover = np.zeros((h, w), np.int64)
    for y0, y1, x0, x1 in wins:
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        assert (y1 - y0, x1 - x0) == (min(crop, h), min(crop, w))
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1, "every pixel is covered"
    # the last crop of each row / column is aligned to the border
    assert max(w[1] for w in wins) == h and max(w[3] for w in wins) == w
    rows = max(h - crop + stride - 1, 0) // stride + 1
    cols = max(w - crop + stride - 1, 0) // stride + 1
    assert len(wins) == rows * cols
    starts_y = sorted({w[0] for w in wins})
    assert starts_y == sorted({min(i * stride, max(h - crop, 0)) for i in range(rows)})


def test_slide_windows_small_image_is_one_crop_of_its_size():
    assert slide_windows(100, 150, 224, 112) == [(0, 100, 0, 150)]
    assert slide_windows(224, 224, 224, 112) == [(0, 224, 0, 224)]
    assert slide_windows(225, 100, 224, 112) == [(0, 224, 0, 100), (1, 225, 0, 100)]


def test_slide_window_averaging_against_direct_sum():
    """Averaging crop values as the segmenter does (sum into the canvas,
    divide by the count) equals the per-pixel mean over the covering crops."""
    h, w, crop, stride = 61, 90, 32, 20
    wins = slide_windows(h, w, crop, stride)
    rng = np.random.default_rng(0)
    values = [rng.random((y1 - y0, x1 - x0)) for y0, y1, x0, x1 in wins]
    canvas = np.zeros((h, w))
    count = np.zeros((h, w))
    for (y0, y1, x0, x1), v in zip(wins, values):
        canvas[y0:y1, x0:x1] += v
        count[y0:y1, x0:x1] += 1
    avg = canvas / count
    for y, x in [(0, 0), (h - 1, w - 1), (30, 45), (15, 89), (60, 20)]:
        vals = [v[y - y0, x - x0] for (y0, y1, x0, x1), v in zip(wins, values)
                if y0 <= y < y1 and x0 <= x < x1]
        assert avg[y, x] == pytest.approx(np.mean(vals))
