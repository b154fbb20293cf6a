"""Instances and tracks over real DDS (docs/ros-interface.md, "Instances and
tracks"): cass_node in-process with the tiny random model. The 32SC1
instance image decodes to the label image's class everywhere and to the
published tracks' instances, which are the label image's 8-connected
regions (scipy.ndimage.label, independently); instance_objects agrees with
the image; ids stay over repeated frames; ``detections_per: instance`` gives
one detection per track with its id; with depth, each instance's 3D equals
a back-projection of its pixels; with instances off nothing is built."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from node_harness import CONFIG, Harness, image_msg, ros_available, stamp_ns, unique_namespace
from scipy import ndimage

_WHY = ros_available()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")

H, W = 48, 64
K = [60.0, 0.0, 31.5, 0.0, 62.0, 23.5, 0.0, 0.0, 1.0]
MIN_PIXELS = 6


def _frame(seed: int = 31) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return np.kron(small, np.ones((H // 6, W // 8, 1), np.uint8))


def _depth_mm() -> np.ndarray:
    mm = np.full((H, W), 3000, np.uint16)
    mm[:, W // 2:] = 1500
    mm[::7, ::5] = 0
    return mm


@pytest.fixture(scope="module")
def live(ros_domain: int, tiny_weights: tuple[str, str]) -> Any:
    from sensor_msgs.msg import CameraInfo, Image

    from cass_ros.msg import InstanceArray
    from cass_ros.ros.wiring.node import CassNode

    clip, dino = tiny_weights
    args = ["--ros-args", "--params-file", str(CONFIG),
            "-p", f"clip_weights:={clip}", "-p", f"dino_weights:={dino}",
            "-p", "device:=cpu", "-p", "short_side:=48", "-p", "prob_threshold:=0.0",
            "-p", 'prompts:=["person", "car", "box", "tree"]',
            "-p", 'background_classes:=["sky"]',
            "-p", 'image_topics:=["front/image_raw"]',
            "-p", 'depth_topics:=["front/depth/image_raw"]', "-p", "depth_tolerance_s:=0.005",
            "-p", "instances:=true", "-p", f"instance_min_pixels:={MIN_PIXELS}"]
    ns = unique_namespace("cass_instances")
    h = Harness(ros_domain, ns)
    node = CassNode(cli_args=args, context=h.context, namespace=ns)
    h.executor.add_node(node)
    h.subscribe(Image, "cass/front/segmentation")
    h.subscribe(InstanceArray, "cass/front/instance_objects")
    pubs = SimpleNamespace(image=h.node.create_publisher(Image, "front/image_raw", 10),
                           depth=h.node.create_publisher(Image, "front/depth/image_raw", 10),
                           info=h.node.create_publisher(CameraInfo, "front/depth/camera_info", 10))
    for pub in vars(pubs).values():
        h.wait_subscribers(pub)
    yield SimpleNamespace(h=h, node=node, pubs=pubs, stamp=[9_000_000_000])
    node.destroy_node()
    h.close()


def _send(live: Any, seed: int = 31, depth: bool = False) -> tuple[int, Any, Any]:
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    live.stamp[0] += 100_000_000
    stamp = live.stamp[0]
    header = Header(frame_id="front_optical")
    header.stamp.sec, header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    if depth:
        mm = _depth_mm()
        live.pubs.info.publish(CameraInfo(header=header, height=H, width=W, k=K))
        msg = Image(header=header, height=H, width=W, encoding="16UC1", is_bigendian=0,
                    step=W * 2)
        msg.data = mm.astype("<u2").tobytes()
        live.pubs.depth.publish(msg)
        live.h.wait_for(lambda: live.node._depth.find(0, stamp, 0.0) is not None
                        and live.node._depth.cameras[0].info is not None, 20, "the depth")
    live.pubs.image.publish(image_msg(_frame(seed), stamp, "front_optical"))

    def match(m: Any) -> bool:
        return stamp_ns(m.header) == stamp

    labels = live.h.wait_message("cass/front/segmentation", match, 60)
    objects = live.h.wait_message("cass/front/instance_objects", match, 60)
    return stamp, labels, objects


def _regions(labels: np.ndarray) -> set[frozenset[int]]:
    """Independent: every class's 8-connected regions of MIN_PIXELS or more,
    as sets of flat pixel indices."""
    out = set()
    for k in np.unique(labels):
        if k == 0:
            continue
        comp, n = ndimage.label(labels == k, structure=np.ones((3, 3), int))
        for i in range(1, n + 1):
            pix = np.flatnonzero(comp == i)
            if pix.size >= MIN_PIXELS:
                out.add(frozenset(pix.tolist()))
    return out


def test_instance_image_and_objects(live: Any) -> None:
    from sensor_msgs.msg import Image

    from cass_ros.ros.outputs.messages import labels_from_msg

    live.h.subscribe(Image, "cass/front/instances")
    live.h.wait_subscribers(live.node._outputs[0].instances)
    stamp, labels_msg, objects = _send(live)
    image = live.h.wait_message("cass/front/instances", lambda m: stamp_ns(m.header) == stamp)
    assert image.encoding == "32SC1" and image.header.frame_id == "front_optical"
    assert (image.height, image.width, image.step) == (H, W, W * 4)
    labels = labels_from_msg(labels_msg)
    value = np.frombuffer(bytes(image.data), "<i4").reshape(H, W)
    np.testing.assert_array_equal(value >> 16, labels)          # the class everywhere
    inst = value & 0xFFFF
    found = {frozenset(np.flatnonzero(inst == v).tolist()) for v in np.unique(inst) if v}
    assert found == _regions(labels) and found
    assert objects.prompt_id >= 1 and list(objects.class_names) == list(
        live.h.wait_message("cass/front/instance_objects").class_names)
    assert [i.id for i in objects.instances] == sorted(i.id for i in objects.instances)
    for i in objects.instances:
        pix = inst == i.id % 65535 + 1
        assert int(pix.sum()) == i.pixel_count and i.frames_since_seen == 0
        assert set(np.unique(labels[pix]).tolist()) == {i.class_id}
        assert i.label == objects.class_names[i.class_id]
        v, u = np.nonzero(pix)
        assert (i.bbox.x_offset, i.bbox.y_offset, i.bbox.width, i.bbox.height) == (
            u.min(), v.min(), u.max() - u.min() + 1, v.max() - v.min() + 1)
        assert 0.0 < i.mean_confidence <= 1.0


def test_ids_stay_over_repeated_frames_and_never_repeat(live: Any) -> None:
    _, _, first = _send(live, seed=40)
    _, _, again = _send(live, seed=40)
    assert [(i.id, i.class_id, i.pixel_count) for i in again.instances] == [
        (i.id, i.class_id, i.pixel_count) for i in first.instances]
    assert all(i.age >= 1 for i in again.instances)
    ages = {i.id: i.age for i in first.instances}
    assert all(i.age == ages[i.id] + 1 for i in again.instances)
    _, _, other = _send(live, seed=41)                            # another scene
    new = {i.id for i in other.instances} - {i.id for i in first.instances}
    assert all(n > max(i.id for i in first.instances) for n in new)


def test_detections_per_instance(live: Any) -> None:
    vision = pytest.importorskip("vision_msgs.msg", reason="vision_msgs is not built "
                                 "(../shared/ros2)")
    from rclpy.parameter import Parameter

    live.h.subscribe(vision.Detection2DArray, "cass/front/detections")
    live.h.wait_subscribers(live.node._outputs[0].detections)
    live.node.set_parameters([Parameter("detections_per", value="instance")])
    try:
        stamp, _, objects = _send(live)
        dets = live.h.wait_message("cass/front/detections", lambda m: stamp_ns(m.header) == stamp)
    finally:
        live.node.set_parameters([Parameter("detections_per", value="class")])
    assert [d.id for d in dets.detections] == [str(i.id) for i in objects.instances]
    for d, i in zip(dets.detections, objects.instances):
        assert d.results[0].hypothesis.class_id == i.label
        assert d.bbox.size_x == i.bbox.width and d.bbox.center.position.x == (
            i.bbox.x_offset + i.bbox.width / 2)


def test_instance_3d_equals_a_back_projection(live: Any) -> None:
    from rclpy.parameter import Parameter

    from cass_ros.ros.outputs.messages import labels_from_msg

    live.node.set_parameters([Parameter("instance_depth_jump", value=0.2)])
    try:
        _, labels_msg, objects = _send(live, depth=True)
    finally:
        live.node.set_parameters([Parameter("instance_depth_jump", value=0.0)])
    labels = labels_from_msg(labels_msg)
    mm = _depth_mm()
    assert objects.instances
    checked = 0
    for i in objects.instances:
        # independent: the instance's pixels are those of its class in its box
        # on its side of the depth step (the step at W / 2 cuts every region)
        x0, y0, w, h = i.bbox.x_offset, i.bbox.y_offset, i.bbox.width, i.bbox.height
        assert x0 + w <= W // 2 or x0 >= W // 2, "the depth step cuts regions"
        box = np.zeros((H, W), bool)
        box[y0:y0 + h, x0:x0 + w] = True
        mine = box & (labels == i.class_id)
        comp, _ = ndimage.label(mine, structure=np.ones((3, 3), int))
        sizes = np.bincount(comp.ravel())[1:]
        if sizes.size != 1 or sizes[0] != i.pixel_count:
            continue        # another region of the class inside the box: skip this one
        v, u = np.nonzero(mine & (mm > 0))
        assert i.depth_pixel_count == len(v)
        if not len(v):
            continue
        z = mm[v, u] / 1000.0
        pts = np.stack([(u - K[2]) * z / K[0], (v - K[5]) * z / K[4], z], 1)
        np.testing.assert_allclose([i.box_min.x, i.box_min.y, i.box_min.z],
                                   np.percentile(pts, 5, axis=0), atol=1e-5)
        np.testing.assert_allclose([i.box_max.x, i.box_max.y, i.box_max.z],
                                   np.percentile(pts, 95, axis=0), atol=1e-5)
        checked += 1
    assert checked >= 1, "no instance could be checked independently"


def test_off_builds_nothing(live: Any) -> None:
    from rclpy.parameter import Parameter

    live.node.set_parameters([Parameter("instances", value=False)])
    try:
        stamp = live.stamp[0] + 100_000_000
        live.stamp[0] = stamp
        live.pubs.image.publish(image_msg(_frame(), stamp, "front_optical"))
        live.h.wait_message("cass/front/segmentation", lambda m: stamp_ns(m.header) == stamp, 60)
        assert not [m for m in live.h.got("cass/front/instance_objects")
                    if stamp_ns(m.header) == stamp]
        assert live.node._frames._streams._trackers == {}
    finally:
        live.node.set_parameters([Parameter("instances", value=True)])
