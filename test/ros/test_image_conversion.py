"""cass_ros.ros.inputs.image_conversion without ROS: every encoding, padded rows, bad
frames, compressed images, and the output fields."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from cass_ros.ros.inputs.image_conversion import (ImageConversionError, compressed_to_rgb, fields_from_rgb,
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


# ---------------------------------------------------------------- Bayer

# Flat colour patches, 8 x 8 pixels each (a multiple of the 2 x 2 Bayer
# block): away from the patch edges bilinear demosaicing must give the
# patch colour back exactly.
PATCH_COLOURS = [(200, 30, 10), (20, 180, 60), (10, 40, 220), (250, 250, 250), (90, 0, 160),
                 (0, 0, 0)]


def _patches() -> np.ndarray:
    rgb = np.zeros((16, 24, 3), np.uint8)
    for i, colour in enumerate(PATCH_COLOURS):
        y, x = divmod(i, 3)
        rgb[y * 8:(y + 1) * 8, x * 8:(x + 1) * 8] = colour
    return rgb


def _patch_centres(rgb: np.ndarray) -> list[tuple[int, ...]]:
    # the 4 x 4 core of each patch, where no neighbour of another patch is used
    out = []
    for i in range(len(PATCH_COLOURS)):
        y, x = divmod(i, 3)
        core = rgb[y * 8 + 2:y * 8 + 6, x * 8 + 2:x * 8 + 6].reshape(-1, 3)
        assert (core == core[0]).all(), core
        out.append(tuple(int(v) for v in core[0]))
    return out


def _mosaic_by_hand(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """What a sensor with the ROS pattern records: the pattern names the
    colours of pixels (0, 0), (0, 1), (1, 0), (1, 1), repeated every 2 x 2."""
    channel = "rgb"
    out = np.zeros(rgb.shape[:2], rgb.dtype)
    for y in range(rgb.shape[0]):
        for x in range(rgb.shape[1]):
            out[y, x] = rgb[y, x, channel.index(pattern[(y % 2) * 2 + x % 2])]
    return out


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer8_demosaics_to_the_patch_colours(pattern: str) -> None:
    rgb = _patches()
    raw = _mosaic_by_hand(rgb, pattern)
    out = raw_to_rgb(f"bayer_{pattern}8", 16, 24, 24, raw.tobytes())
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert _patch_centres(out) == PATCH_COLOURS
    # with padded rows, and through to_rgb on a message-like object
    padded = np.concatenate([raw, np.zeros((16, 5), np.uint8)], 1)
    msg = _msg(encoding=f"bayer_{pattern}8", height=16, width=24, step=29,
               data=padded.tobytes(), is_bigendian=0)
    np.testing.assert_array_equal(to_rgb(msg), out)


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bigendian", [0, 1])
def test_bayer16_demosaics_and_scales(pattern: str, bigendian: int) -> None:
    rgb = _patches()
    raw = _mosaic_by_hand(rgb.astype(np.uint16) * 257, pattern)
    raw = raw.astype(">u2" if bigendian else "<u2")
    out = raw_to_rgb(f"bayer_{pattern}16", 16, 24, 48, raw.tobytes(), is_bigendian=bigendian)
    assert out.dtype == np.uint8
    assert _patch_centres(out) == PATCH_COLOURS


def test_the_bayer_pattern_matters() -> None:
    """The same bytes read with another pattern give other colours: read
    as bggr, an rggb mosaic swaps red and blue (OpenCV's pattern names are
    shifted by one pixel against ROS's; a wrong mapping shows here)."""
    rgb = _patches()
    raw = _mosaic_by_hand(rgb, "rggb").tobytes()
    swapped = raw_to_rgb("bayer_bggr8", 16, 24, 24, raw)
    assert _patch_centres(swapped) == [(b, g, r) for r, g, b in PATCH_COLOURS]
    # read one pixel off (grbg), a red patch is not red anywhere inside
    shifted = raw_to_rgb("bayer_grbg8", 16, 24, 24, raw)
    assert not (shifted[2:6, 2:6] == PATCH_COLOURS[0]).all(axis=-1).any()


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_fields_from_rgb_writes_the_ros_mosaic(pattern: str) -> None:
    rgb = _patches()
    f = fields_from_rgb(rgb, f"bayer_{pattern}8", step_padding=2)
    assert (f["encoding"], f["step"]) == (f"bayer_{pattern}8", 26)
    rows = np.frombuffer(f["data"], np.uint8).reshape(16, 26)[:, :24]
    np.testing.assert_array_equal(rows, _mosaic_by_hand(rgb, pattern))
    assert _patch_centres(to_rgb(_msg(**f))) == PATCH_COLOURS


def test_bad_bayer_frames() -> None:
    with pytest.raises(ImageConversionError, match="2 x 2"):
        raw_to_rgb("bayer_rggb8", 1, 8, 8, bytes(8))
    with pytest.raises(ImageConversionError, match="height x step"):
        raw_to_rgb("bayer_rggb16", 4, 4, 8, bytes(31))
    # an unsupported encoding is still named, and the list names the Bayer ones
    with pytest.raises(ImageConversionError, match=r"'bayer_rggb32f'.*bayer_rggb8"):
        raw_to_rgb("bayer_rggb32f", 4, 4, 64, bytes(64))


def test_bayer_frames_as_the_node_and_the_bag_tool_receive_them() -> None:
    """An rclpy sensor_msgs/Image (the node) and a rosbags one read from a
    bag (cass_bag) in bayer_grbg8 decode to the patch colours."""
    rgb = _patches()
    fields = fields_from_rgb(rgb, "bayer_grbg8")
    rclpy_msgs = pytest.importorskip("sensor_msgs.msg", reason="rclpy messages not importable")
    msg = rclpy_msgs.Image(height=fields["height"], width=fields["width"],
                           encoding=fields["encoding"], is_bigendian=0, step=fields["step"],
                           data=fields["data"])
    assert _patch_centres(to_rgb(msg)) == PATCH_COLOURS

    from cass_ros.bag import io as bag_io

    ts = bag_io.make_typestore()
    header = bag_io.header_msg(ts, 123, "cam")
    bag_msg = bag_io.image_from_fields(ts, header, fields)
    # through the bag's serialisation, as cass_bag reads it
    raw = ts.serialize_cdr(bag_msg, "sensor_msgs/msg/Image")
    back = ts.deserialize_cdr(raw, "sensor_msgs/msg/Image")
    assert _patch_centres(bag_io.image_to_rgb(back)) == PATCH_COLOURS
