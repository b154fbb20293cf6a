"""Depth to 3D over real DDS: cass_node in-process with the tiny random
model, colour + aligned depth + camera_info published by a test node; the
objects' 3D fields, /cass/<cam>/detections_3d, the labelled cloud only while
subscribed, unmatched and mis-sized depth counted (the labels still
published), a camera without depth unchanged."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from node_harness import CONFIG, Harness, image_msg, ros_available, stamp_ns, unique_namespace
from scipy.stats import trim_mean

_WHY = ros_available()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")

H, W = 48, 64
K = [60.0, 0.0, 31.5, 0.0, 62.0, 23.5, 0.0, 0.0, 1.0]
RNG = np.random.default_rng(5)


def _frame() -> np.ndarray:
    small = RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.kron(small, np.ones((H // 4, W // 4, 1), np.uint8))


def _depth_mm(h: int = H, w: int = W) -> np.ndarray:
    """A wall at 3 m, a box at 1.2 m in the middle, a few holes (0)."""
    mm = np.full((h, w), 3000, np.uint16)
    mm[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1200
    mm[::7, ::5] = 0
    return mm


def _header(stamp: int, frame_id: str) -> Any:
    from std_msgs.msg import Header

    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    return header


def _depth_msg(mm: np.ndarray, stamp: int) -> Any:
    from sensor_msgs.msg import Image

    msg = Image(header=_header(stamp, "front_optical"), height=mm.shape[0], width=mm.shape[1],
                encoding="16UC1", is_bigendian=0, step=mm.shape[1] * 2)
    msg.data = mm.astype("<u2").tobytes()
    return msg


def _info_msg(stamp: int) -> Any:
    from sensor_msgs.msg import CameraInfo

    return CameraInfo(header=_header(stamp, "front_optical"), height=H, width=W, k=K)


def _args(tiny_weights: tuple[str, str]) -> list[str]:
    clip, dino = tiny_weights
    return ["--ros-args", "--params-file", str(CONFIG),
            "-p", f"clip_weights:={clip}", "-p", f"dino_weights:={dino}",
            "-p", "device:=cpu", "-p", "short_side:=48",
            "-p", 'prompts:=["person", "car", "box"]', "-p", 'background_classes:=["sky"]',
            "-p", "prob_threshold:=0.0",
            "-p", 'image_topics:=["front/image_raw", "rear/image_raw"]',
            "-p", 'depth_topics:=["front/depth/image_raw", ""]',
            "-p", "depth_tolerance_s:=0.005", "-p", "cloud_stride:=2"]


@pytest.fixture(scope="module")
def live(ros_domain: int, tiny_weights: tuple[str, str]) -> Any:
    from rcl_interfaces.msg import Log
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from cass_ros.msg import ObjectPresenceArray
    from cass_ros.ros.wiring.node import CassNode

    ns = unique_namespace("cass_depth")
    h = Harness(ros_domain, ns)
    node = CassNode(cli_args=_args(tiny_weights), context=h.context, namespace=ns)
    h.executor.add_node(node)
    for cam in ("front", "rear"):
        h.subscribe(Image, f"cass/{cam}/segmentation")
        h.subscribe(ObjectPresenceArray, f"cass/{cam}/objects")
    h.subscribe(Log, "/rosout", QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE))
    pubs = {cam: h.node.create_publisher(Image, f"{cam}/image_raw", 10) for cam in ("front", "rear")}
    depth_pub = h.node.create_publisher(Image, "front/depth/image_raw", 10)
    info_pub = h.node.create_publisher(CameraInfo, "front/depth/camera_info", 10)
    for pub in (*pubs.values(), depth_pub, info_pub):
        h.wait_subscribers(pub)
    yield SimpleNamespace(h=h, node=node, pubs=pubs, depth_pub=depth_pub, info_pub=info_pub,
                          stamp=[5_000_000_000])
    node.destroy_node()
    h.close()


def _next_stamp(live: Any) -> int:
    live.stamp[0] += 100_000_000
    return live.stamp[0]


def _send_depth(live: Any, stamp: int, mm: np.ndarray | None = None) -> None:
    """camera_info and depth for ``stamp``, then wait until the node holds the depth."""
    live.info_pub.publish(_info_msg(stamp))
    live.depth_pub.publish(_depth_msg(_depth_mm() if mm is None else mm, stamp))
    live.h.wait_for(lambda: live.node._depth.find(0, stamp, 0.0) is not None
                    and live.node._depth.cameras[0].info is not None, 20, "the depth image")


def _send_colour(live: Any, cam: str, stamp: int) -> tuple[Any, Any]:
    live.pubs[cam].publish(image_msg(_frame(), stamp, f"{cam}_optical"))

    def match(m: Any) -> bool:
        return stamp_ns(m.header) == stamp

    labels = live.h.wait_message(f"cass/{cam}/segmentation", match, 60)
    objects = live.h.wait_message(f"cass/{cam}/objects", match, 60)
    return labels, objects


def _depth_stats(live: Any, cam: str = "front") -> dict[str, Any]:
    return next(s for s in live.node.camera_stats() if s["camera"] == cam)


def _points(labels: np.ndarray, mm: np.ndarray, k: int) -> np.ndarray:
    """Independent back-projection of class ``k``'s valid pixels (N, 3)."""
    v, u = np.nonzero((labels == k) & (mm > 0))
    z = mm[v, u] / 1000.0
    return np.stack([(u - K[2]) * z / K[0], (v - K[5]) * z / K[4], z], 1)


def test_objects_and_detections_3d_with_matched_depth(live: Any) -> None:
    vision = pytest.importorskip("vision_msgs.msg", reason="vision_msgs is not built "
                                 "(../shared/ros2); test_without_vision_msgs covers the rest")
    Detection3DArray = vision.Detection3DArray

    from cass_ros.ros.outputs.messages import labels_from_msg

    live.h.subscribe(Detection3DArray, "cass/front/detections_3d")
    stamp = _next_stamp(live)
    before = _depth_stats(live)
    _send_depth(live, stamp)
    labels_msg, objects = _send_colour(live, "front", stamp)
    labels = labels_from_msg(labels_msg)
    mm = _depth_mm()
    with_depth = 0
    for o in objects.objects:
        pts = _points(labels, mm, o.class_id)
        assert o.depth_pixel_count == len(pts)
        if not len(pts):
            assert (o.centroid.x, o.centroid.y, o.centroid.z) == (0.0, 0.0, 0.0)
            continue
        with_depth += 1
        # default trim 5 %: percentiles and trimmed mean of the class's points,
        # computed here from the label image and the depth sent (float32 metres
        # in the node: 1e-5 m)
        want = {"box_min": np.percentile(pts, 5, axis=0), "box_max": np.percentile(pts, 95, axis=0),
                "centroid": trim_mean(pts, 0.05, axis=0)}
        for field, values in want.items():
            got = getattr(o, field)
            np.testing.assert_allclose([got.x, got.y, got.z], values, atol=1e-5,
                                       err_msg=f"{o.label} {field}")
    assert with_depth >= 1, "the tiny model labelled nothing with depth"
    after = _depth_stats(live)
    assert after["depth_matched"] == before["depth_matched"] + 1
    det = live.h.wait_message("cass/front/detections_3d", lambda m: stamp_ns(m.header) == stamp)
    present = {o.class_id: o for o in objects.objects if o.present and o.depth_pixel_count}
    assert sorted(int(d.id.split(":")[1]) for d in det.detections) == sorted(present)
    for d in det.detections:
        prompt_id, class_id = (int(v) for v in d.id.split(":"))
        o = present[class_id]
        assert prompt_id == objects.prompt_id and d.results[0].hypothesis.class_id == o.label
        assert d.results[0].hypothesis.score == pytest.approx(o.mean_confidence, rel=1e-6)
        assert d.bbox.center.position.z == pytest.approx((o.box_min.z + o.box_max.z) / 2)
        assert d.bbox.size.x == pytest.approx(o.box_max.x - o.box_min.x)
        assert d.header.frame_id == "front_optical"


def test_cloud_only_while_subscribed(live: Any) -> None:
    from sensor_msgs.msg import PointCloud2

    from cass_ros.ros.outputs.depth import cloud_points
    from cass_ros.ros.outputs.messages import labels_from_msg

    outputs = live.node._outputs[0]
    assert outputs.points.get_subscription_count() == 0
    stamp = _next_stamp(live)
    _send_depth(live, stamp)
    _send_colour(live, "front", stamp)          # nobody listens: no cloud computed
    live.h.subscribe(PointCloud2, "cass/front/points")
    live.h.wait_subscribers(outputs.points)
    stamp = _next_stamp(live)
    _send_depth(live, stamp)
    labels_msg, _ = _send_colour(live, "front", stamp)
    cloud = live.h.wait_message("cass/front/points", lambda m: stamp_ns(m.header) == stamp)
    assert len(live.h.got("cass/front/points")) == 1    # none for the first frame
    labels = labels_from_msg(labels_msg)
    mm = _depth_mm()
    grid = mm[::2, ::2] > 0
    pts = cloud_points(cloud)
    assert cloud.header.frame_id == "front_optical" and pts.size == int(grid.sum())
    v, u = np.nonzero(grid)
    assert pts["label"].tolist() == labels[::2, ::2][grid].tolist()
    np.testing.assert_allclose(pts["z"], mm[::2, ::2][grid] / 1000.0, rtol=1e-6)
    np.testing.assert_allclose(pts["x"], (u * 2 - K[2]) * pts["z"] / K[0], rtol=1e-5, atol=1e-6)
    assert np.all((pts["confidence"] >= 0) & (pts["confidence"] <= 1))


def test_unmatched_and_mis_sized_depth_are_counted_and_labels_still_publish(live: Any) -> None:
    before = _depth_stats(live)
    stamp = _next_stamp(live)
    _send_depth(live, stamp - 50_000_000)       # 50 ms off, beyond the 5 ms tolerance
    _, objects = _send_colour(live, "front", stamp)
    assert all(o.depth_pixel_count == 0 for o in objects.objects)
    assert _depth_stats(live)["depth_unmatched"] == before["depth_unmatched"] + 1
    stamp = _next_stamp(live)
    _send_depth(live, stamp, _depth_mm(24, 32))  # half the colour image's size
    labels_msg, objects = _send_colour(live, "front", stamp)
    assert (labels_msg.height, labels_msg.width) == (H, W)
    assert all(o.depth_pixel_count == 0 for o in objects.objects)
    after = _depth_stats(live)
    assert after["depth_rejected"] == before["depth_rejected"] + 1
    assert after["depth_matched"] == before["depth_matched"]
    why = "depth rejected: depth image is 32x24, the colour image 64x48"
    live.h.wait_for(lambda: any(why in m.msg for m in live.h.got("/rosout")), 20,
                    "the rejection's reason in the log")


def test_camera_without_depth_is_unchanged(live: Any) -> None:
    rear = live.node._outputs[1]
    assert rear.points is None and rear.detections_3d is None
    assert "depth_matched" not in _depth_stats(live, "rear")
    _, objects = _send_colour(live, "rear", _next_stamp(live))
    assert all(o.depth_pixel_count == 0 for o in objects.objects)


def test_without_vision_msgs(live: Any, tiny_weights: tuple[str, str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """vision_msgs not importable: one warning says detections_3d is off and
    why; the objects' 3D fields and the cloud still work."""
    import sys

    from cass_ros.ros.wiring.node import CassNode

    monkeypatch.setitem(sys.modules, "vision_msgs", None)
    monkeypatch.setitem(sys.modules, "vision_msgs.msg", None)
    ns = unique_namespace("cass_depth_novision")
    node = CassNode(cli_args=_args(tiny_weights), context=live.h.context, namespace=ns)
    try:
        out = node._outputs[0]
        assert out.detections_3d is None and out.points is not None
        why = "/cass/<cam>/detections_3d is off: vision_msgs is not importable"
        warned = live.h.wait_for(lambda: [m.msg for m in live.h.got("/rosout") if why in m.msg],
                                 20, "the warning")
        assert len(warned) == 1 and "/cass/<cam>/points still work" in warned[0]
        # and a frame still gets its 3D fields (the harness node publishes into ns)
        from sensor_msgs.msg import CameraInfo, Image

        from cass_ros.msg import ObjectPresenceArray

        live.h.executor.add_node(node)
        h = live.h
        h.subscribe(ObjectPresenceArray, f"{ns}/cass/front/objects")
        pubs = [h.node.create_publisher(t, f"{ns}/front/{name}", 10) for t, name in (
            (CameraInfo, "depth/camera_info"), (Image, "depth/image_raw"), (Image, "image_raw"))]
        for pub in pubs:
            h.wait_subscribers(pub)
        stamp = _next_stamp(live)
        pubs[0].publish(_info_msg(stamp))
        pubs[1].publish(_depth_msg(_depth_mm(), stamp))
        h.wait_for(lambda: node._depth.find(0, stamp, 0.0) is not None
                   and node._depth.cameras[0].info is not None, 20, "the depth image")
        pubs[2].publish(image_msg(_frame(), stamp, "front_optical"))
        objects = h.wait_message(f"{ns}/cass/front/objects", lambda m: stamp_ns(m.header) == stamp,
                                 60)
        assert sum(o.depth_pixel_count for o in objects.objects) > 0
    finally:
        live.h.executor.remove_node(node)
        node.destroy_node()
