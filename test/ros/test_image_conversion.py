"""cass_ros.ros.image_conversion without ROS: every encoding, padded rows, bad
frames, compressed images, and the output fields."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from cass_ros.ros.image_conversion import (ImageConversionError, compressed_to_rgb, fields_from_rgb,
                                       labels_to_fields, raw_to_rgb, rgb_to_fields, to_rgb)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def _msg(**fields):
    # a duck-typed sensor_msgs/Image (rosbags and rclpy messages look alike)
    return SimpleNamespace(**fields)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("padding", [0, 3])
def test_colour_encodings_round_trip(encoding: str, padding: int) -> None:
    f = fields_from_rgb(RGB, encoding, step_padding=padding)
    out = raw_to_rgb(f["encoding"], f["height"], f["width"], f["step"], f["data"])
    assert out.dtype == np.uint8 and out.shape == RGB.shape
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize("encoding", ["mono8", "mono16"])
@pytest.mark.parametrize("padding", [0, 2])
def test_mono_encodings_give_grey_rgb(encoding: str, padding: int) -> None:
    f = fields_from_rgb(RGB, encoding, step_padding=padding)
    out = raw_to_rgb(f["encoding"], f["height"], f["width"], f["step"], f["data"])
    grey = RGB[..., 0]
    assert out.shape == RGB.shape
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_mono16_big_endian_and_scaling() -> None:
    values = np.array([[0, 257, 65535, 32896]], dtype=">u2")
    out = raw_to_rgb("mono16", 1, 4, 8, values.tobytes(), is_bigendian=1)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 255, 128])
    little = values.astype("<u2")
    np.testing.assert_array_equal(raw_to_rgb("mono16", 1, 4, 8, little.tobytes(), 0), out)


def test_16_bit_colour_and_opencv_names() -> None:
    rgb16 = RGB.astype("<u2") * 257
    out = raw_to_rgb("rgb16", 5, 7, 7 * 6, rgb16.tobytes())
    np.testing.assert_array_equal(out, RGB)
    bgr = np.ascontiguousarray(RGB[..., ::-1])
    np.testing.assert_array_equal(raw_to_rgb("8UC3", 5, 7, 21, bgr.tobytes()), RGB)


def test_yuv422() -> None:
    rgb = np.full((2, 4, 3), 128, np.uint8)
    yuyv = np.full((2, 4, 2), 128, np.uint8)  # grey in any 4:2:2 layout
    for enc in ("yuv422", "uyvy", "yuyv", "yuv422_yuy2"):
        out = raw_to_rgb(enc, 2, 4, 8, yuyv.tobytes())
        assert out.shape == rgb.shape
        assert np.abs(out.astype(int) - 128).max() <= 2


def test_accepts_array_array_and_numpy_data() -> None:
    import array

    f = fields_from_rgb(RGB, "rgb8")
    for data in (array.array("B", f["data"]), np.frombuffer(f["data"], np.uint8), list(f["data"])):
        np.testing.assert_array_equal(raw_to_rgb("rgb8", 5, 7, 21, data), RGB)


@pytest.mark.parametrize("encoding,h,w,step,size,why", [
    ("32FC1", 2, 2, 8, 16, "unsupported encoding"),
    ("rgb8", 0, 4, 12, 0, "empty image"),
    ("rgb8", 4, 0, 0, 0, "empty image"),
    ("rgb8", 4, 4, 12, 47, "height x step"),
    ("rgb8", 4, 4, 10, 40, "shorter than a row"),
    ("mono16", 2, 3, 6, 11, "height x step"),
])
def test_unusable_frames_raise(encoding, h, w, step, size, why) -> None:
    with pytest.raises(ImageConversionError, match=why):
        raw_to_rgb(encoding, h, w, step, bytes(size))


def test_odd_width_yuv_is_rejected() -> None:
    with pytest.raises(ImageConversionError):
        raw_to_rgb("yuyv", 1, 3, 6, bytes(6))


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_compressed(ext: str) -> None:
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:, :12] = (200, 40, 10)
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    out = compressed_to_rgb(ext[1:], buf.tobytes())
    assert out.shape == rgb.shape
    err = np.abs(out.astype(int) - rgb)
    if ext == ".png":
        assert err.max() == 0
    else:  # lossy, worst at the colour edge (chroma subsampling)
        assert err.mean() < 4
    msg = SimpleNamespace(format="rgb8; jpeg compressed bgr8", data=buf.tobytes())
    np.testing.assert_array_equal(to_rgb(msg), out)


@pytest.mark.parametrize("data,fmt", [(b"", "jpeg"), (b"not an image", "png"),
                                      (b"\x00" * 10, "16UC1; compressedDepth png")])
def test_bad_compressed(data: bytes, fmt: str) -> None:
    with pytest.raises(ImageConversionError):
        compressed_to_rgb(fmt, data)


def test_to_rgb_on_message_like_objects() -> None:
    f = fields_from_rgb(RGB, "bgra8", step_padding=4)
    np.testing.assert_array_equal(to_rgb(_msg(**f)), RGB)
    bad = dict(f, width=0)
    with pytest.raises(ImageConversionError):
        to_rgb(_msg(**bad))


def test_output_fields() -> None:
    f = rgb_to_fields(RGB)
    assert (f["height"], f["width"], f["step"], f["encoding"]) == (5, 7, 21, "rgb8")
    assert f["data"] == RGB.tobytes()
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    lf = labels_to_fields(labels)
    assert (lf["encoding"], lf["step"], lf["is_bigendian"]) == ("mono8", 4, 0)
    big = (np.arange(12, dtype=np.uint16) * 100).reshape(3, 4)
    bf = labels_to_fields(big)
    assert (bf["encoding"], bf["step"]) == ("mono16", 8)
    np.testing.assert_array_equal(np.frombuffer(bf["data"], "<u2").reshape(3, 4), big)
    with pytest.raises(ValueError):
        labels_to_fields(big.astype(np.int32))
