"""The outputs for mappers over real DDS (docs/ros-interface.md, "Outputs for
mappers"): cass_node in-process with the tiny random model at
``output_size: model``; /cass/<cam>/camera_info (K and P scaled to the label
image, checked against where OpenCV's resize puts a point), /confidence
(32FC1), /mask (mono8, the label image's pixels of ``mask_classes``), each
only while subscribed and under the image's header; the cloud's ``rgb``
equals the class table's colours; ``color_table_file`` follows the prompts."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from node_harness import CONFIG, Harness, image_msg, ros_available, stamp_ns, unique_namespace

_WHY = ros_available()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")

H, W = 48, 64
SHORT = 32                      # model size: 32 x 43 (docs/algorithm.md 2.1)
K = [60.0, 0.0, 31.5, 0.0, 62.0, 23.5, 0.0, 0.0, 1.0]
P = [60.0, 0.0, 31.5, -3.0, 0.0, 62.0, 23.5, 0.0, 0.0, 0.0, 1.0, 0.0]
RNG = np.random.default_rng(11)


def _frame() -> np.ndarray:
    small = RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.kron(small, np.ones((H // 4, W // 4, 1), np.uint8))


def _header(stamp: int, frame_id: str = "front_optical") -> Any:
    from std_msgs.msg import Header

    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    return header


def _info(stamp: int) -> Any:
    from sensor_msgs.msg import CameraInfo

    return CameraInfo(header=_header(stamp), height=H, width=W, k=K, p=P,
                      distortion_model="plumb_bob", d=[0.1, -0.2, 0.0, 0.0, 0.0])


def _depth(stamp: int) -> Any:
    from sensor_msgs.msg import Image

    mm = np.full((H, W), 2500, np.uint16)
    mm[::5, ::3] = 0
    msg = Image(header=_header(stamp), height=H, width=W, encoding="16UC1", is_bigendian=0,
                step=W * 2)
    msg.data = mm.astype("<u2").tobytes()
    return msg


@pytest.fixture(scope="module")
def live(ros_domain: int, tiny_weights: tuple[str, str], tmp_path_factory: Any) -> Any:
    from sensor_msgs.msg import CameraInfo, Image

    from cass_ros.msg import ClassTable
    from cass_ros.ros.wiring.node import CassNode

    table = tmp_path_factory.mktemp("mappers") / "colors" / "classes.csv"
    clip, dino = tiny_weights
    args = ["--ros-args", "--params-file", str(CONFIG),
            "-p", f"clip_weights:={clip}", "-p", f"dino_weights:={dino}",
            "-p", "device:=cpu", "-p", f"short_side:={SHORT}", "-p", "output_size:=model",
            "-p", 'prompts:=["person|worker", "car", "box"]', "-p", "prob_threshold:=0.0",
            "-p", 'image_topics:=["front/image_raw"]',
            "-p", 'depth_topics:=["front/depth/image_raw"]', "-p", "depth_tolerance_s:=0.005",
            "-p", "cloud_stride:=1", "-p", 'mask_classes:=["worker", "box"]',
            "-p", f"color_table_file:={table}"]
    ns = unique_namespace("cass_mappers")
    h = Harness(ros_domain, ns)
    node = CassNode(cli_args=args, context=h.context, namespace=ns)
    h.executor.add_node(node)
    h.subscribe(Image, "cass/front/segmentation")
    h.subscribe(ClassTable, "cass/classes", h.latched_qos())
    pubs = SimpleNamespace(image=h.node.create_publisher(Image, "front/image_raw", 10),
                           info=h.node.create_publisher(CameraInfo, "front/camera_info", 10),
                           depth=h.node.create_publisher(Image, "front/depth/image_raw", 10),
                           depth_info=h.node.create_publisher(CameraInfo,
                                                              "front/depth/camera_info", 10))
    for pub in vars(pubs).values():
        h.wait_subscribers(pub)
    yield SimpleNamespace(h=h, node=node, pubs=pubs, table=table, stamp=[7_000_000_000])
    node.destroy_node()
    h.close()


def _send(live: Any, with_info: bool = True) -> tuple[int, Any]:
    """One frame (camera_info and depth first); returns (stamp, label image)."""
    live.stamp[0] += 100_000_000
    stamp = live.stamp[0]
    if with_info:
        live.pubs.info.publish(_info(stamp))
        live.h.wait_for(lambda: live.node._infos.latest(0) is not None
                        and stamp_ns(live.node._infos.latest(0).header) == stamp, 20,
                        "the camera_info in the node")
    live.pubs.depth_info.publish(_info(stamp))
    live.pubs.depth.publish(_depth(stamp))
    live.h.wait_for(lambda: live.node._depth.find(0, stamp, 0.0) is not None
                    and live.node._depth.cameras[0].info is not None, 20, "the depth image")
    live.pubs.image.publish(image_msg(_frame(), stamp, "front_optical"))
    labels = live.h.wait_message("cass/front/segmentation", lambda m: stamp_ns(m.header) == stamp,
                                 60)
    return stamp, labels


def _listen(live: Any, msg_type: Any, topic: str, publisher: Any) -> None:
    live.h.subscribe(msg_type, topic)
    live.h.wait_subscribers(publisher)


def _same_header(a: Any, b: Any) -> bool:
    return stamp_ns(a) == stamp_ns(b) and a.frame_id == b.frame_id


def test_nothing_is_built_without_subscribers(live: Any) -> None:
    out = live.node._outputs[0]
    for pub in (out.camera_info, out.confidence, out.mask):
        assert pub is not None and pub.get_subscription_count() == 0
    calls = []
    import cass_ros.ros.outputs.mappers as mo

    original = mo.class_mask
    mo.class_mask = lambda *a: calls.append(a) or original(*a)
    try:
        _send(live)
    finally:
        mo.class_mask = original
    assert calls == []


def test_camera_info_scaled_to_the_label_image(live: Any) -> None:
    import cv2
    from sensor_msgs.msg import CameraInfo

    _listen(live, CameraInfo, "cass/front/camera_info", live.node._outputs[0].camera_info)
    stamp, labels = _send(live)
    info = live.h.wait_message("cass/front/camera_info", lambda m: stamp_ns(m.header) == stamp)
    assert _same_header(info.header, labels.header)
    h, w = labels.height, labels.width
    assert (info.height, info.width) == (h, w) and (h, w) != (H, W)
    assert info.distortion_model == "plumb_bob" and list(info.d) == [0.1, -0.2, 0.0, 0.0, 0.0]
    # Independent: a bright dot at a known 3D point, resized as the segmenter
    # resizes (OpenCV bilinear); the dot's centroid in the small image is where
    # the new K must project the point.
    point = np.array([0.12, -0.07, 1.0])
    u, v = K[0] * point[0] + K[2], K[4] * point[1] + K[5]
    yy, xx = np.mgrid[0:H, 0:W]
    dot = np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * 2.5 ** 2))
    small = cv2.resize(dot, (w, h), interpolation=cv2.INTER_LINEAR)
    sy, sx = np.mgrid[0:h, 0:w]
    want = (np.sum(sx * small) / small.sum(), np.sum(sy * small) / small.sum())
    k = np.array(info.k).reshape(3, 3)
    got = (k[0, 0] * point[0] + k[0, 2], k[1, 1] * point[1] + k[1, 2])
    np.testing.assert_allclose(got, want, atol=0.05)
    np.testing.assert_allclose([k[0, 0], k[1, 1]], [K[0] * w / W, K[4] * h / H], rtol=1e-12)
    p = np.array(info.p).reshape(3, 4)
    np.testing.assert_allclose(p[:, :3], k, rtol=1e-12)     # P's left block is K here
    assert p[0, 3] == pytest.approx(P[3] * w / W)


def test_confidence_is_the_own_label_probability(live: Any) -> None:
    from sensor_msgs.msg import Image

    from cass_ros.msg import ObjectPresenceArray
    from cass_ros.ros.outputs.messages import labels_from_msg

    _listen(live, Image, "cass/front/confidence", live.node._outputs[0].confidence)
    live.h.subscribe(ObjectPresenceArray, "cass/front/objects")
    stamp, labels_msg = _send(live)
    conf_msg = live.h.wait_message("cass/front/confidence", lambda m: stamp_ns(m.header) == stamp)
    objects = live.h.wait_message("cass/front/objects", lambda m: stamp_ns(m.header) == stamp)
    assert _same_header(conf_msg.header, labels_msg.header) and conf_msg.encoding == "32FC1"
    assert (conf_msg.height, conf_msg.width, conf_msg.step) == (labels_msg.height,
                                                                labels_msg.width,
                                                                labels_msg.width * 4)
    conf = np.frombuffer(bytes(conf_msg.data), "<f4").reshape(conf_msg.height, conf_msg.width)
    labels = labels_from_msg(labels_msg)
    assert np.all((conf > 0) & (conf <= 1))
    # the objects' mean_confidence is the mean of this image over each class's pixels
    for o in objects.objects:
        if o.pixel_count:
            assert conf[labels == o.class_id].mean() == pytest.approx(o.mean_confidence,
                                                                      rel=1e-5)


def test_mask_is_the_label_image_of_mask_classes(live: Any) -> None:
    from sensor_msgs.msg import Image

    from cass_ros.ros.outputs.messages import labels_from_msg

    _listen(live, Image, "cass/front/mask", live.node._outputs[0].mask)
    stamp, labels_msg = _send(live)
    mask_msg = live.h.wait_message("cass/front/mask", lambda m: stamp_ns(m.header) == stamp)
    assert _same_header(mask_msg.header, labels_msg.header) and mask_msg.encoding == "mono8"
    labels = labels_from_msg(labels_msg)
    mask = np.frombuffer(bytes(mask_msg.data), np.uint8).reshape(labels.shape)
    table = live.h.wait_message("cass/classes")
    # 'worker' is a synonym of class 1 (person|worker), 'box' is class 3
    ids = [k for k, syn in enumerate(table.synonyms)
           if k and {"worker", "box"} & set(syn.split("|"))]
    assert ids == [1, 3]
    np.testing.assert_array_equal(mask, np.where(np.isin(labels, ids), 255, 0))
    assert set(np.unique(mask)) <= {0, 255}


def test_cloud_rgb_is_the_class_colour(live: Any) -> None:
    from sensor_msgs.msg import PointCloud2

    from cass_ros.ros.outputs.depth import cloud_points

    _listen(live, PointCloud2, "cass/front/points", live.node._outputs[0].points)
    stamp, _ = _send(live)
    cloud = live.h.wait_message("cass/front/points", lambda m: stamp_ns(m.header) == stamp)
    field = {f.name: f for f in cloud.fields}["rgb"]
    assert (field.datatype, field.count, field.offset) == (7, 1, 20)   # FLOAT32, as PCL
    pts = cloud_points(cloud)
    assert pts.size > 0
    table = live.h.wait_message("cass/classes")
    colors = np.array(table.colors, np.int64).reshape(-1, 3)
    bits = pts["rgb"].view("<u4").astype(np.int64)
    want = colors[pts["label"], 0] * 65536 + colors[pts["label"], 1] * 256 + colors[pts["label"], 2]
    np.testing.assert_array_equal(bits, want)


def test_color_table_file_follows_the_prompt_set(live: Any) -> None:
    from rclpy.parameter import Parameter

    def rows() -> list[dict[str, str]]:
        with open(live.table, newline="") as f:
            return list(csv.DictReader(f))

    def matches(table: Any) -> bool:
        got = rows() if Path(live.table).exists() else []
        colors = np.array(table.colors).reshape(-1, 3).tolist()
        return got and [r["name"] for r in got] == list(table.class_names) and [
            [int(r["red"]), int(r["green"]), int(r["blue"])] for r in got] == colors and [
            int(r["id"]) for r in got] == list(range(len(colors)))

    first = live.h.wait_message("cass/classes")
    live.h.wait_for(lambda: matches(first), 20, "the colour table of the start-up prompts")
    with open(live.table, newline="") as f:
        assert f.readline().strip() == "name,red,green,blue,alpha,id"
    live.node.set_parameters([Parameter("prompts", Parameter.Type.STRING_ARRAY,
                                        ["pallet", "forklift", "person", "door"])])
    new = live.h.wait_message("cass/classes", lambda m: m.prompt_id > first.prompt_id, 60)
    live.h.wait_for(lambda: matches(new), 20, "the colour table of the new prompt set")
    assert len(rows()) == 5


def test_camera_info_topics_default_and_override() -> None:
    from cass_ros.ros.params import RuntimeParams, runtime_from_values
    from cass_ros.core.config import ConfigError

    rt = RuntimeParams(image_topics=("/front/image_raw", "/rear/color/image_rect"))
    assert rt.image_info_topics() == ["/front/camera_info", "/rear/color/camera_info"]
    rt = RuntimeParams(image_topics=("/a/image_raw", "/b/image_raw"),
                       camera_info_topics=("", "/b/info"))
    assert rt.image_info_topics() == ["/a/camera_info", "/b/info"]
    with pytest.raises(ConfigError, match="camera_info_topics.*1 entries for 2"):
        runtime_from_values({"image_topics": ["/a/image_raw", "/b/image_raw"],
                             "camera_info_topics": ["/x"]})
    with pytest.raises(ConfigError, match="mask_classes"):
        runtime_from_values({"mask_classes": [" person"]})


def test_overlay_legend_parameter(live: Any) -> None:
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from cass_ros.core.visualize import draw_legend

    _listen(live, Image, "cass/front/segmentation/color", live.node._outputs[0].color)
    # large enough for a legend (a 32 x 43 overlay has no room for one)
    frame = np.kron(_frame(), np.ones((5, 5, 1), np.uint8))

    def overlay_of_frame() -> np.ndarray:
        live.stamp[0] += 100_000_000
        stamp = live.stamp[0]
        live.pubs.image.publish(image_msg(frame, stamp, "front_optical"))
        msg = live.h.wait_message("cass/front/segmentation/color",
                                  lambda m: stamp_ns(m.header) == stamp, 60)
        return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)

    live.node.set_parameters([Parameter("output_size", value="input")])
    try:
        plain = overlay_of_frame()
        live.node.set_parameters([Parameter("overlay_legend", value=True)])
        with_legend = overlay_of_frame()
    finally:
        live.node.set_parameters([Parameter("overlay_legend", value=False),
                                  Parameter("output_size", value="model")])
    active = live.node._in_force.session.active
    assert not np.array_equal(plain, with_legend)
    np.testing.assert_array_equal(with_legend,
                                  draw_legend(plain, active.class_names, active.colors))
