"""Depth input of the node without DDS: 16UC1 / 32FC1 decoding (padding,
endianness, bad encodings and sizes), the stamp-matching rule, the depth
slots' counters and reasons, the depth parameters, and the 3D message
builders (PointCloud2 layout, Detection3DArray content)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from node_harness import ros_available

from cass_ros.core.config import ConfigError
from cass_ros.core.depth import DepthError, Intrinsics, labelled_points, object_geometry
from cass_ros.ros import params as node_params
from cass_ros.ros.inputs.depth import (DEPTH_BUFFER, DepthInput, closest_within, depth_to_metres)

K = [100.0, 0.0, 3.5, 0.0, 110.0, 2.5, 0.0, 0.0, 1.0]


def _fields(values: np.ndarray, encoding: str, padding: int = 0,
            bigendian: bool = False) -> dict[str, Any]:
    """Image fields of ``values`` (H, W), written by hand."""
    dtype = {"16UC1": "u2", "32FC1": "f4"}.get(encoding, "u2")
    rows = values.astype((">" if bigendian else "<") + dtype).view(np.uint8)
    rows = rows.reshape(values.shape[0], -1)
    if padding:
        rows = np.concatenate([rows, np.full((rows.shape[0], padding), 0xAB, np.uint8)], 1)
    return {"encoding": encoding, "height": values.shape[0], "width": values.shape[1],
            "step": rows.shape[1], "data": rows.tobytes(), "is_bigendian": int(bigendian)}


def _decode(f: dict[str, Any]) -> np.ndarray:
    return depth_to_metres(f["encoding"], f["height"], f["width"], f["step"], f["data"],
                           f["is_bigendian"])


MM = np.array([[0, 1000, 1500, 65535], [250, 0, 2000, 3]], np.uint16)
METRES = np.array([[np.nan, 1.0, 1.5, np.inf], [0.25, 0.0, -1.0, 2.0]], np.float32)


@pytest.mark.parametrize("padding", [0, 3])
@pytest.mark.parametrize("bigendian", [False, True])
def test_16uc1_is_millimetres(padding: int, bigendian: bool) -> None:
    out = _decode(_fields(MM, "16UC1", padding, bigendian))
    assert out.dtype == np.float32 and out.shape == MM.shape
    np.testing.assert_allclose(out, MM.astype(np.float64) / 1000.0, rtol=1e-6)
    assert out[0, 0] == 0.0                     # 0 stays "no measurement"


@pytest.mark.parametrize("padding", [0, 8])
@pytest.mark.parametrize("bigendian", [False, True])
def test_32fc1_is_metres(padding: int, bigendian: bool) -> None:
    out = _decode(_fields(METRES, "32FC1", padding, bigendian))
    np.testing.assert_array_equal(out, METRES)   # NaN, inf, 0, negative kept as they are


def test_array_data_as_rclpy_gives_it() -> None:
    import array

    f = _fields(MM, "16UC1")
    f["data"] = array.array("B", f["data"])
    np.testing.assert_allclose(_decode(f), MM / 1000.0, rtol=1e-6)


@pytest.mark.parametrize("change, why", [
    ({"encoding": "mono8"}, "unsupported depth encoding 'mono8' (supported: 16UC1, 32FC1)"),
    ({"encoding": "rgb8"}, "unsupported depth encoding 'rgb8'"),
    ({"width": 0}, "empty depth image"),
    ({"step": 7}, "depth step 7 is shorter than a row of 4 16UC1 pixels (8 bytes)"),
    ({"data": b"\x00" * 10}, "depth data holds 10 bytes, height x step needs 16"),
])
def test_unusable_depth_images_are_refused_with_a_reason(change: dict[str, Any],
                                                         why: str) -> None:
    f = _fields(MM, "16UC1")
    f.update(change)
    with pytest.raises(DepthError) as e:
        _decode(f)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_closest_stamp_within_the_tolerance() -> None:
    stamps = [100, 200, 300]
    assert closest_within(stamps, 210, 20) == 1
    assert closest_within(stamps, 250, 50) == 1          # a tie: the first
    assert closest_within(stamps, 260, 50) == 2
    assert closest_within(stamps, 250, 49) is None        # both 50 away
    assert closest_within(stamps, 300, 0) == 2           # exact with tolerance 0
    assert closest_within([], 5, 10) is None
    assert closest_within([300, 100, 200], 190, 20) == 2  # arrival order, not sorted


def _msg(values: np.ndarray, encoding: str, t_ns: int) -> SimpleNamespace:
    stamp = SimpleNamespace(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000)
    return SimpleNamespace(header=SimpleNamespace(stamp=stamp), **_fields(values, encoding))


def _info(width: int = 4, height: int = 2, k: list[float] = K) -> SimpleNamespace:
    return SimpleNamespace(width=width, height=height, k=k)


def test_depth_slot_matches_decodes_and_counts() -> None:
    depth = DepthInput([("/d/image", "/d/camera_info"), None])
    assert depth.stats(1) == {} and depth.find(1, 0, 1.0) is None
    depth.offer_info(0, _info())
    for i in range(DEPTH_BUFFER + 2):                   # the oldest two are forgotten
        depth.offer_depth(0, _msg(MM + i, "16UC1", 1_000_000_000 + i * 33_000_000))
    assert depth.find(0, 1_000_000_000, 0.02) is None   # forgotten
    found = depth.find(0, 1_000_000_000 + 5 * 33_000_000 + 15_000_000, 0.02)
    frame = depth.prepare(0, found, (2, 4))
    np.testing.assert_allclose(frame.depth_m, (MM + 5) / 1000.0, rtol=1e-6)
    assert frame.intrinsics == Intrinsics(100.0, 110.0, 3.5, 2.5)
    assert frame.stamp_ns == 1_000_000_000 + 5 * 33_000_000
    assert depth.prepare(0, None, (2, 4)) is None       # nothing within the tolerance
    assert depth.stats(0) == {"depth_topic": "/d/image", "depth_matched": 1,
                              "depth_unmatched": 1, "depth_rejected": 0}


@pytest.mark.parametrize("info, size, encoding, why", [
    (_info(), (4, 8), "16UC1", "depth image is 4x2, the colour image 8x4: depth must be "
                               "aligned to the colour image"),
    (None, (2, 4), "16UC1", "no camera_info received yet on /d/camera_info"),
    (_info(8, 4), (2, 4), "16UC1", "camera_info on /d/camera_info is for 8x4, the depth "
                                   "image is 4x2"),
    (_info(k=[0.0] * 9), (2, 4), "16UC1", "fx and fy must be > 0"),
    (_info(), (2, 4), "32SC1", "unsupported depth encoding '32SC1'"),
])
def test_unusable_pairs_are_rejected_and_counted(info: Any, size: tuple[int, int],
                                                 encoding: str, why: str) -> None:
    depth = DepthInput([("/d/image", "/d/camera_info")])
    if info is not None:
        depth.offer_info(0, info)
    depth.offer_depth(0, _msg(MM, encoding, 5))
    with pytest.raises(DepthError) as e:
        depth.prepare(0, depth.find(0, 5, 0.0), size)
    assert why in str(e.value)
    assert depth.stats(0)["depth_rejected"] == 1 and depth.stats(0)["depth_matched"] == 0


def test_info_without_size_is_accepted() -> None:
    depth = DepthInput([("/d/image", "/d/camera_info")])
    depth.offer_info(0, _info(0, 0))
    depth.offer_depth(0, _msg(MM, "16UC1", 5))
    assert depth.prepare(0, depth.find(0, 5, 0.0), (2, 4)) is not None


# ------------------------------------------------------------------ parameters


def test_depth_is_off_by_default() -> None:
    rt = node_params.RuntimeParams().validate()
    assert rt.depth_topics == () and rt.depth_inputs() == [None]


def test_depth_inputs_per_camera_with_default_camera_info() -> None:
    rt = node_params.runtime_from_values({
        "image_topics": ["/a/color/image_raw", "/b/image_raw", "/c/image"],
        "depth_topics": ["/a/aligned_depth_to_color/image_raw", "", "c_depth"],
        "depth_info_topics": ["", "", "/c/info"]})
    assert rt.depth_inputs() == [
        ("/a/aligned_depth_to_color/image_raw", "/a/aligned_depth_to_color/camera_info"),
        None, ("c_depth", "/c/info")]
    assert node_params.camera_info_topic("depth") == "camera_info"
    assert node_params.camera_info_topic("ns/depth") == "ns/camera_info"


@pytest.mark.parametrize("values, why", [
    ({"depth_topics": ["/d1", "/d2"]}, "parameter 'depth_topics' has 2 entries for 1 image_topics"),
    ({"depth_topics": ["bad topic"]}, "parameter 'depth_topics' 'bad topic' is not a valid topic"),
    ({"image_topics": ["/a", "/b"], "depth_topics": ["/d", "/d"]},
     "parameter 'depth_topics' names a topic twice"),
    ({"depth_topics": ["/d"], "depth_info_topics": ["/i", "/j"]},
     "parameter 'depth_info_topics' has 2 entries for 1 depth_topics"),
    ({"depth_topics": ["/d"], "depth_info_topics": ["9x"]},
     "parameter 'depth_info_topics' '9x' is not a valid topic name"),
    ({"depth_tolerance_s": -0.1}, "parameter 'depth_tolerance_s' must be >= 0"),
    ({"depth_tolerance_s": float("nan")}, "parameter 'depth_tolerance_s' must be >= 0"),
    ({"depth_trim_percent": 50.0}, "parameter 'depth_trim_percent' must be in [0, 50)"),
    ({"cloud_stride": 0}, "parameter 'cloud_stride' must be >= 1"),
])
def test_bad_depth_parameters_name_the_parameter(values: dict[str, Any], why: str) -> None:
    with pytest.raises(ConfigError) as e:
        node_params.runtime_from_values(values)
    assert why in str(e.value)


def test_depth_settings_change_at_run_time_and_topics_do_not() -> None:
    specs = node_params.SPECS
    assert not specs["depth_topics"].runtime and not specs["depth_info_topics"].runtime
    assert all(specs[n].runtime for n in ("depth_tolerance_s", "depth_trim_percent",
                                          "cloud_stride"))
    current = {"image_topics": ["/cam/image_raw"], "depth_topics": ["/cam/depth"]}
    rt, _ = node_params.check_change(current, {"cloud_stride": 2, "depth_trim_percent": 10.0})
    assert (rt.cloud_stride, rt.depth_trim_percent) == (2, 10.0)
    with pytest.raises(ConfigError, match="cloud_stride"):
        node_params.check_change(current, {"cloud_stride": 0})


# ------------------------------------------------------------------ messages

_WHY = ros_available()
needs_ros = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")


def _scene() -> tuple[np.ndarray, np.ndarray, Intrinsics]:
    labels = np.zeros((6, 8), np.uint8)
    labels[1:4, 2:6] = 1
    labels[4:, :3] = 2
    depth = np.full((6, 8), 2.0, np.float32)
    depth[4:, :3] = 1.0
    depth[0, 0] = np.nan
    return labels, depth, Intrinsics.from_matrix([100, 0, 3.5, 0, 110, 2.5, 0, 0, 1])


@needs_ros
def test_cloud_message_layout_and_round_trip() -> None:
    from sensor_msgs.msg import PointField
    from std_msgs.msg import Header

    from cass_ros.ros.outputs.depth import cloud_msg, cloud_points

    labels, depth, cam = _scene()
    conf = np.linspace(0, 1, labels.size, dtype=np.float32).reshape(labels.shape)
    pts = labelled_points(labels, depth, conf, cam, stride=1)
    header = Header(frame_id="cam_optical")
    msg = cloud_msg(pts, header)
    assert msg.header.frame_id == "cam_optical" and (msg.height, msg.width) == (1, 47)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1),
        ("z", 8, PointField.FLOAT32, 1), ("label", 12, PointField.UINT32, 1),
        ("confidence", 16, PointField.FLOAT32, 1), ("rgb", 20, PointField.FLOAT32, 1)]
    assert (msg.point_step, msg.row_step, msg.is_dense, msg.is_bigendian) == (24, 1128, True, False)
    back = cloud_points(msg)
    np.testing.assert_array_equal(back, pts)
    # x of pixel (u=7, v=5) with depth 2: (7 - 3.5) / 100 * 2
    last = back[-1]
    assert (last["x"], last["z"], last["label"]) == (pytest.approx(0.07), 2.0, 0)


@needs_ros
def test_detections_3d_one_per_present_class_with_depth() -> None:
    pytest.importorskip("vision_msgs.msg", reason="vision_msgs is not built (../shared/ros2)")
    from std_msgs.msg import Header

    from cass_ros.core.result import SegmentationResult, label_statistics
    from cass_ros.ros.outputs.depth import detections_3d_msg

    labels, depth, cam = _scene()
    depth[4:, :3] = np.nan                        # class 2: present, but no valid depth
    counts, conf, boxes = label_statistics(labels, np.full(labels.shape, 0.5, np.float32), 4)
    result = SegmentationResult(labels=labels, class_names=["background", "box", "floor", "cat"],
                                presence=np.ones(4, np.float32), pixel_counts=counts,
                                mean_confidence=conf, boxes=boxes, prompt_id=7)
    geo = object_geometry(labels, depth, cam, 4, trim_percent=0.0)
    msg = detections_3d_msg(result, geo, Header(frame_id="cam_optical"))
    assert len(msg.detections) == 1               # floor: no depth; cat: absent
    det = msg.detections[0]
    assert det.id == "7:1" and det.header.frame_id == "cam_optical"
    hyp = det.results[0]
    assert (hyp.hypothesis.class_id, hyp.hypothesis.score) == ("box", pytest.approx(0.5))
    x0, x1 = (2 - 3.5) / 100 * 2, (5 - 3.5) / 100 * 2
    y0, y1 = (1 - 2.5) / 110 * 2, (3 - 2.5) / 110 * 2
    c = det.bbox.center.position
    assert (c.x, c.y, c.z) == (pytest.approx((x0 + x1) / 2), pytest.approx((y0 + y1) / 2), 2.0)
    s = det.bbox.size
    assert (s.x, s.y, s.z) == (pytest.approx(x1 - x0), pytest.approx(y1 - y0), 0.0)
    assert det.bbox.center.orientation.w == 1.0
    p = hyp.pose.pose.position
    assert (p.x, p.y, p.z) == (pytest.approx(geo.centroid[1][0]), pytest.approx(geo.centroid[1][1]),
                               2.0)
