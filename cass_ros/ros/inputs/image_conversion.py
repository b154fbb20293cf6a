"""Camera messages to RGB arrays, and arrays to image message fields.

ROS-free (numpy and OpenCV only): the functions take the fields of a
sensor_msgs/Image or CompressedImage, or any object that has them (an rclpy
message, a rosbags message), so the node, the bag tool and the tests share
one decoder. ``to_rgb`` prefers cv_bridge when it is importable and falls
back to the built-in converter, which handles the encodings of
docs/ros-interface.md and rows padded beyond ``width * pixel size`` (``step``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class ImageConversionError(ValueError):
    """A frame that cannot be used: unknown encoding, wrong size, bad data."""


class _Layout(NamedTuple):
    channels: int
    dtype: str        # numpy dtype of one channel, native order ('u1', 'u2')
    order: str        # how the channels map to RGB: 'rgb', 'bgr', 'rgba', 'bgra', 'mono', 'yuv'


# Encodings of sensor_msgs/image_encodings.hpp the built-in converter reads.
# The OpenCV-style names (8UC3 ...) carry no channel order; like cv_bridge's
# users we take OpenCV's BGR.
_LAYOUTS: dict[str, _Layout] = {
    "rgb8": _Layout(3, "u1", "rgb"),
    "bgr8": _Layout(3, "u1", "bgr"),
    "rgba8": _Layout(4, "u1", "rgba"),
    "bgra8": _Layout(4, "u1", "bgra"),
    "mono8": _Layout(1, "u1", "mono"),
    "8UC1": _Layout(1, "u1", "mono"),
    "8UC3": _Layout(3, "u1", "bgr"),
    "8UC4": _Layout(4, "u1", "bgra"),
    "rgb16": _Layout(3, "u2", "rgb"),
    "bgr16": _Layout(3, "u2", "bgr"),
    "rgba16": _Layout(4, "u2", "rgba"),
    "bgra16": _Layout(4, "u2", "bgra"),
    "mono16": _Layout(1, "u2", "mono"),
    "16UC1": _Layout(1, "u2", "mono"),
    # packed 4:2:2, two bytes a pixel
    "uyvy": _Layout(2, "u1", "uyvy"),
    "yuv422": _Layout(2, "u1", "uyvy"),
    "yuyv": _Layout(2, "u1", "yuyv"),
    "yuv422_yuy2": _Layout(2, "u1", "yuyv"),
    # Bayer mosaics, one byte (or two) a pixel; the name gives the colours of
    # the top-left 2 x 2 block, row by row (rggb: R G on row 0, G B on row 1)
    "bayer_rggb8": _Layout(1, "u1", "bayer_rggb"),
    "bayer_bggr8": _Layout(1, "u1", "bayer_bggr"),
    "bayer_gbrg8": _Layout(1, "u1", "bayer_gbrg"),
    "bayer_grbg8": _Layout(1, "u1", "bayer_grbg"),
    "bayer_rggb16": _Layout(1, "u2", "bayer_rggb"),
    "bayer_bggr16": _Layout(1, "u2", "bayer_bggr"),
    "bayer_gbrg16": _Layout(1, "u2", "bayer_gbrg"),
    "bayer_grbg16": _Layout(1, "u2", "bayer_grbg"),
}

SUPPORTED_ENCODINGS = tuple(_LAYOUTS)


def _as_bytes_view(data: Any) -> np.ndarray:
    """The message's data as a flat uint8 array, without a copy when the
    container supports the buffer protocol (array.array, bytes, ndarray)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype != np.uint8 else data.reshape(-1)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):
        # a list of ints (hand-made messages); slow, but only there
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def raw_to_rgb(encoding: str, height: int, width: int, step: int, data: Any,
               is_bigendian: int | bool = False) -> np.ndarray:
    """The fields of a sensor_msgs/Image to an (H, W, 3) uint8 RGB array.

    16-bit images are scaled to 8 bit over their full range (v / 257), as a
    display would; ``step`` may exceed ``width * pixel size`` (padded rows).
    Raises ImageConversionError for anything that is not a usable image.
    """
    layout = _LAYOUTS.get(encoding)
    if layout is None:
        raise ImageConversionError(
            f"unsupported encoding {encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"empty image ({width}x{height})")
    itemsize = np.dtype(layout.dtype).itemsize
    row_bytes = width * layout.channels * itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is shorter than a row of {width} {encoding} pixels ({row_bytes} bytes)")
    buf = _as_bytes_view(data)
    if buf.size < height * step:
        raise ImageConversionError(
            f"data holds {buf.size} bytes, height x step needs {height * step}")
    rows = buf[: height * step].reshape(height, step)
    if step != row_bytes:
        rows = rows[:, :row_bytes]
    if itemsize == 1:
        pixels = rows.reshape(height, width, layout.channels)
    else:
        dtype = np.dtype(layout.dtype).newbyteorder(">" if is_bigendian else "<")
        # view() needs contiguous rows; padded rows are copied once here
        pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width, layout.channels)
        if layout.order.startswith("bayer_"):
            # demosaic at full depth, then scale (as cv_bridge does)
            pixels = _demosaic(pixels.astype(np.uint16), layout.order)
            return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        pixels = ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return _to_rgb_order(pixels, layout.order)


# OpenCV names a Bayer pattern by the 2 x 2 block starting at the second row
# and second column, not at the origin: ROS's rggb (R at (0, 0)) is OpenCV's
# "BG" (B at (1, 1)). cv_bridge maps them the same way; the newer spelled-out
# aliases (COLOR_BayerRGGB2RGB == COLOR_BayerBG2RGB) are missing from older
# OpenCV releases. test_image_conversion.py checks the mapping on a mosaic
# made by hand.
_BAYER_CODES = {"bayer_rggb": "COLOR_BayerBG2RGB", "bayer_bggr": "COLOR_BayerRG2RGB",
                "bayer_gbrg": "COLOR_BayerGR2RGB", "bayer_grbg": "COLOR_BayerGB2RGB"}


def _demosaic(pixels: np.ndarray, order: str) -> np.ndarray:
    """(H, W, 1) Bayer mosaic (uint8 or uint16) to (H, W, 3) RGB of the same
    dtype, by OpenCV's bilinear demosaicing."""
    import cv2

    if pixels.shape[0] < 2 or pixels.shape[1] < 2:
        raise ImageConversionError(
            f"a Bayer image needs at least 2 x 2 pixels, not {pixels.shape[1]}x{pixels.shape[0]}")
    mosaic = np.ascontiguousarray(pixels.reshape(pixels.shape[:2]))
    try:
        return cv2.cvtColor(mosaic, getattr(cv2, _BAYER_CODES[order]))
    except cv2.error as e:
        raise ImageConversionError(f"cannot demosaic the {order} image ({e.err})") from None


def _to_rgb_order(pixels: np.ndarray, order: str) -> np.ndarray:
    if order == "rgb":
        return pixels
    import cv2

    # OpenCV's channel swaps are several times faster than numpy's strided
    # copies at camera resolutions; they need contiguous input.
    if order.startswith("bayer_"):
        return _demosaic(pixels, order)
    if order in ("bgr", "rgba", "bgra", "mono"):
        code = {"bgr": cv2.COLOR_BGR2RGB, "rgba": cv2.COLOR_RGBA2RGB,
                "bgra": cv2.COLOR_BGRA2RGB, "mono": cv2.COLOR_GRAY2RGB}[order]
        return cv2.cvtColor(np.ascontiguousarray(pixels), code)

    if pixels.shape[1] % 2:
        raise ImageConversionError("4:2:2 images need an even width")
    code = cv2.COLOR_YUV2RGB_UYVY if order == "uyvy" else cv2.COLOR_YUV2RGB_YUYV
    return cv2.cvtColor(np.ascontiguousarray(pixels), code)


def compressed_to_rgb(fmt: str, data: Any) -> np.ndarray:
    """The fields of a sensor_msgs/CompressedImage (JPEG, PNG or anything
    else OpenCV decodes) to an (H, W, 3) uint8 RGB array."""
    import cv2

    fmt = (fmt or "").strip()
    if "compressedDepth" in fmt:
        raise ImageConversionError(f"compressed depth images are not camera images ({fmt!r})")
    buf = _as_bytes_view(data)
    if buf.size == 0:
        raise ImageConversionError("compressed image without data")
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)  # always 8-bit BGR
    if decoded is None or decoded.size == 0:
        raise ImageConversionError(f"cannot decode compressed image (format {fmt!r})")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def _load_cv_bridge() -> Any | None:
    """A CvBridge when the ROS 2 package is installed, else None. The PyPI
    package of the same name is a ROS 1 copy: accept only a bridge that has
    the ROS 2 conversion methods."""
    try:
        from cv_bridge import CvBridge  # type: ignore[import-not-found]

        bridge = CvBridge()
    except Exception:  # noqa: BLE001 - any import problem means: not usable
        return None
    if not (hasattr(bridge, "imgmsg_to_cv2") and hasattr(bridge, "compressed_imgmsg_to_cv2")):
        return None
    return bridge


_BRIDGE: Any = None
_BRIDGE_LOADED = False


def cv_bridge_available() -> bool:
    return _bridge() is not None


def _bridge() -> Any | None:
    global _BRIDGE, _BRIDGE_LOADED
    if not _BRIDGE_LOADED:
        _BRIDGE = _load_cv_bridge()
        _BRIDGE_LOADED = True
    return _BRIDGE


def is_compressed(msg: Any) -> bool:
    """CompressedImage has ``format`` and no ``encoding``."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def to_rgb(msg: Any, use_cv_bridge: bool = True) -> np.ndarray:
    """A sensor_msgs/Image or CompressedImage (rclpy or rosbags) as an
    (H, W, 3) uint8 RGB array; raises ImageConversionError when unusable."""
    if is_compressed(msg):
        return compressed_to_rgb(msg.format, msg.data)
    height, width = int(msg.height), int(msg.width)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"empty image ({width}x{height})")
    bridge = _bridge() if use_cv_bridge else None
    if bridge is not None and msg.__class__.__module__.startswith("sensor_msgs"):
        try:
            rgb = bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
            if rgb.ndim == 3 and rgb.shape == (height, width, 3):
                return rgb
        except Exception:  # noqa: BLE001 - fall back to our converter, which explains
            pass
    return raw_to_rgb(msg.encoding, height, width, msg.step, msg.data, msg.is_bigendian)


def rgb_to_fields(rgb: np.ndarray) -> dict[str, Any]:
    """Fields of an rgb8 sensor_msgs/Image holding ``rgb`` (H, W, 3) uint8."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    return {"height": h, "width": w, "encoding": "rgb8", "is_bigendian": 0,
            "step": w * 3, "data": rgb.tobytes()}


def labels_to_fields(labels: np.ndarray) -> dict[str, Any]:
    """Fields of a mono8 (uint8 labels) or mono16 (uint16, little endian)
    sensor_msgs/Image: label images are never lossy."""
    if labels.dtype == np.uint8:
        enc = "mono8"
    elif labels.dtype == np.uint16:
        enc = "mono16"
        labels = labels.astype("<u2", copy=False)
    else:
        raise ValueError(f"label image must be uint8 or uint16, not {labels.dtype}")
    labels = np.ascontiguousarray(labels)
    h, w = labels.shape
    return {"height": h, "width": w, "encoding": enc, "is_bigendian": 0,
            "step": w * labels.dtype.itemsize, "data": labels.tobytes()}


BAYER_PATTERNS = {f"bayer_{p}8": p for p in ("rggb", "bggr", "gbrg", "grbg")}


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """The (H, W) Bayer mosaic a camera with ``pattern`` ('rggb', 'bggr',
    'gbrg', 'grbg': the top-left 2 x 2 block, row by row) records of ``rgb``."""
    channel = {"r": 0, "g": 1, "b": 2}
    out = np.empty(rgb.shape[:2], rgb.dtype)
    for i, colour in enumerate(pattern):
        dy, dx = divmod(i, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, channel[colour]]
    return out


def fields_from_rgb(rgb: np.ndarray, encoding: str, step_padding: int = 0) -> dict[str, Any]:
    """Fields of an Image in ``encoding`` showing ``rgb`` (tests, benchmarks
    and sample data: the inverse of ``raw_to_rgb`` for 8-bit encodings and
    mono16; Bayer encodings get the mosaic of ``rgb``, which demosaics back
    to ``rgb`` only where the colours are smooth), rows padded by
    ``step_padding`` bytes."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if encoding == "rgb8":
        px = rgb
    elif encoding == "bgr8":
        px = rgb[..., ::-1]
    elif encoding == "rgba8":
        px = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], 2)
    elif encoding == "bgra8":
        px = np.concatenate([rgb[..., ::-1], np.full(rgb.shape[:2] + (1,), 255, np.uint8)], 2)
    elif encoding == "mono8":
        px = rgb[..., :1]
    elif encoding == "mono16":
        px = (rgb[..., :1].astype("<u2") * 257).view(np.uint8).reshape(rgb.shape[:2] + (2,))
    elif encoding in BAYER_PATTERNS:
        px = mosaic(rgb, BAYER_PATTERNS[encoding])[..., None]
    else:
        raise ValueError(f"fields_from_rgb does not write {encoding!r}")
    h, w = px.shape[:2]
    rows = np.ascontiguousarray(px).reshape(h, -1)
    if step_padding:
        rows = np.concatenate([rows, np.zeros((h, step_padding), np.uint8)], 1)
    return {"height": h, "width": w, "encoding": encoding, "is_bigendian": 0,
            "step": rows.shape[1], "data": rows.tobytes()}
