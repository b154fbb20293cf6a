"""semantic_inference's open-set contract without its message package
(docs/ros-interface.md, "semantic_inference (Hydra, Khronos, Clio)").

The field builders (shared with cass_bag) against independent computations:
the FeatureImage's 16UC1 image holds, per pixel, the published id of the
track whose instance covers it (a plain loop over pixels and tracks), equals
/cass/<cam>/instances' instance bits (at the label size; at the depth size
after the nearest-neighbour map /instances itself uses), ``mask_ids`` are the
published tracks' ids and ``features`` their instances' pooled embeddings,
row for row. Without semantic_inference_msgs: one line that says how to get
it, and a node asked for the outputs runs as without them; not asked, it
says nothing. The contract over DDS with a built package:
test_semantic_inference_node.py.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
from node_harness import CONFIG, Harness, image_msg, ros_available, stamp_ns, unique_namespace
from scipy import ndimage

from cass_ros.core.depth import nearest_resize
from cass_ros.core.objects.instances import Instances
from cass_ros.core.objects.tracks import Track
from cass_ros.ros.outputs.instances import FrameObjects, instance_image
from cass_ros.ros.outputs.semantic_inference import (feature_image_fields, feature_vector_fields,
                                                     semantic_inference_missing)

_WHY = ros_available()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")

E = 8   # embedding width of the synthetic frames


def _labels(h: int = 12, w: int = 16) -> np.ndarray:
    """Five regions of three classes and background."""
    labels = np.zeros((h, w), np.int32)
    labels[1:5, 1:6] = 1
    labels[7:11, 2:7] = 1
    labels[2:9, 9:14] = 2
    labels[10:12, 10:16] = 3
    labels[0:2, 12:16] = 3
    return labels


def _objects(labels: np.ndarray, instance_shape: tuple[int, int],
             published: dict[int, int]) -> FrameObjects:
    """FrameObjects whose instances are ``labels``' 4-connected regions cut
    at ``instance_shape`` (the depth image's size when it differs), with a
    published track of id ``published[i]`` on instance i; the others are
    unpublished. Embeddings: random unit rows."""
    at = nearest_resize(labels, instance_shape)
    index = np.zeros(instance_shape, np.int32)
    class_ids = []
    for k in (1, 2, 3):
        comp, n = ndimage.label(at == k)
        for j in range(1, n + 1):
            class_ids.append(k)
            index[comp == j] = len(class_ids)
    count = len(class_ids)
    instances = Instances(index=index, class_ids=np.array(class_ids, np.int64),
                          pixel_counts=np.bincount(index.ravel(), minlength=count + 1)[1:],
                          boxes=np.zeros((count, 4), np.int64),
                          mean_confidence=np.ones(count, np.float32))
    tracks = [Track(id=tid, class_id=class_ids[i - 1], instance=i, age=0, missed=0, hits=1,
                    box=(0, 0, 1, 1), published=True)
              for i, tid in sorted(published.items(), key=lambda kv: kv[1])]
    emb = np.random.default_rng(3).normal(size=(count, E)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return FrameObjects(instances, tracks, nearest_resize(index, labels.shape), emb)


def _decode(image: dict[str, Any]) -> np.ndarray:
    assert image["encoding"] == "16UC1" and image["is_bigendian"] == 0
    assert image["step"] == image["width"] * 2
    return np.frombuffer(image["data"], "<u2").reshape(image["height"], image["width"])


def _expected_image(objs: FrameObjects) -> np.ndarray:
    """Independent: per pixel, the id of the published track on its instance."""
    index = objs.instances.index
    out = np.zeros(index.shape, np.uint16)
    for r in range(index.shape[0]):
        for c in range(index.shape[1]):
            for t in objs.tracks:
                if t.instance == index[r, c]:
                    out[r, c] = t.id % 65535 + 1
    return out


# Instance 2 unpublished; 70000 wraps to 70000 % 65535 + 1 = 4466.
PUBLISHED = {1: 7, 3: 70000, 4: 1, 5: 12}


def test_feature_image_at_the_label_size_equals_the_instance_bits() -> None:
    labels = _labels()
    objs = _objects(labels, labels.shape, PUBLISHED)
    assert objs.instances.count == 5
    f = feature_image_fields(objs)
    image = _decode(f["image"])
    assert image.shape == labels.shape
    np.testing.assert_array_equal(image, _expected_image(objs))
    np.testing.assert_array_equal(image, instance_image(labels, objs) & 0xFFFF)  # /instances
    assert not image[objs.instances.index == 2].any()        # the unpublished instance
    by_id = sorted(PUBLISHED.items(), key=lambda kv: kv[1])
    assert f["mask_ids"] == [tid % 65535 + 1 for _, tid in by_id] == [2, 8, 13, 4466]
    assert set(np.unique(image)) == {0, *f["mask_ids"]}
    assert len(f["features"]) == len(f["mask_ids"])
    for (inst, _), feat in zip(by_id, f["features"]):
        assert feat["data"].dtype == np.float32 and feat["data"].shape == (E,)
        np.testing.assert_array_equal(feat["data"], objs.embeddings[inst - 1])


def test_feature_image_at_the_depth_size() -> None:
    """Instances cut at the depth image's size (twice the label size): the
    FeatureImage has that size; mapped to the label size the way /instances
    maps the instance index, it equals /instances' instance bits."""
    labels = _labels()
    objs = _objects(labels, (24, 32), PUBLISHED)
    image = _decode(feature_image_fields(objs)["image"])
    assert image.shape == (24, 32)
    np.testing.assert_array_equal(image, _expected_image(objs))
    np.testing.assert_array_equal(nearest_resize(image, labels.shape),
                                  instance_image(labels, objs) & 0xFFFF)


def test_no_published_track_gives_an_empty_image() -> None:
    labels = _labels()
    f = feature_image_fields(_objects(labels, labels.shape, {}))
    assert f["mask_ids"] == [] and f["features"] == []
    assert not _decode(f["image"]).any()


def test_without_embeddings_the_feature_image_is_refused() -> None:
    import dataclasses

    labels = _labels()
    objs = dataclasses.replace(_objects(labels, labels.shape, PUBLISHED), embeddings=None)
    with pytest.raises(ValueError, match="no embeddings"):
        feature_image_fields(objs)


def test_feature_vector_fields_widen_to_float32() -> None:
    import torch

    vec = torch.nn.functional.normalize(torch.randn(E, generator=torch.Generator().manual_seed(1)),
                                        dim=0)
    for t in (vec, vec.half(), vec.numpy()):
        data = feature_vector_fields(t)["feature"]["data"]
        assert data.dtype == np.float32 and data.shape == (E,)
        np.testing.assert_array_equal(data, torch.as_tensor(t).float().numpy())


def _hide_package(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules: the import raises ImportError, as when it is not built
    for name in ("semantic_inference_msgs", "semantic_inference_msgs.msg",
                 "semantic_inference_msgs.srv"):
        monkeypatch.setitem(sys.modules, name, None)


def test_missing_package_gives_one_line_with_the_way_to_get_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_package(monkeypatch)
    reason = semantic_inference_missing()
    assert reason is not None and "\n" not in reason
    assert reason.startswith("semantic_inference_msgs is not usable")
    assert "MIT-SPARK/semantic_inference" in reason and "colcon build" in reason


# ------------------------------------------------------------------ the node without it

H, W = 48, 64


def _node_args(tiny_weights: tuple[str, str], on: bool) -> list[str]:
    clip, dino = tiny_weights
    return ["--ros-args", "--params-file", str(CONFIG),
            "-p", f"clip_weights:={clip}", "-p", f"dino_weights:={dino}",
            "-p", "device:=cpu", "-p", "short_side:=48", "-p", "prob_threshold:=0.0",
            "-p", 'prompts:=["person", "car", "box", "tree"]',
            "-p", 'image_topics:=["front/image_raw"]', "-p", "instances:=true",
            "-p", f"semantic_inference:={'true' if on else 'false'}"]


@pytest.fixture(scope="module")
def harness(ros_domain: int) -> Any:
    from rcl_interfaces.msg import Log
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    h = Harness(ros_domain, unique_namespace("cass_si_missing"))
    h.subscribe(Log, "/rosout", QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE))
    yield h
    h.close()


def _node_lines(h: Harness, ns: str) -> list[str]:
    return [m.msg for m in h.got("/rosout") if m.name == f"{ns[1:].replace('/', '.')}.cass_node"]


@pytest.mark.parametrize("on", [True, False], ids=["asked", "not_asked"])
def test_node_without_the_package(harness: Any, tiny_weights: tuple[str, str], on: bool,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked for (``semantic_inference: true``): one warning line says why the
    outputs are off and how to get the package; no publisher, no service; the
    node segments and publishes instances as without the parameter. Not
    asked: no line at all."""
    from sensor_msgs.msg import Image

    from cass_ros.ros.wiring.node import CassNode

    _hide_package(monkeypatch)
    h = harness
    ns = unique_namespace("cass_si_missing")
    node = CassNode(cli_args=_node_args(tiny_weights, on), context=h.context, namespace=ns)
    h.executor.add_node(node)
    try:
        h.wait_for(lambda: any(line.startswith("ready:") for line in _node_lines(h, ns)), 30,
                   "the ready line")
        lines = [line for line in _node_lines(h, ns) if "semantic_inference" in line]
        if on:
            assert len(lines) == 1, lines
            assert lines[0].startswith("semantic_inference: true, but its outputs are off: "
                                       "semantic_inference_msgs is not usable")
            assert "colcon build" in lines[0] and "\n" not in lines[0]
        else:
            assert lines == []
        assert all(o.feature_image is None and o.feature_vector is None for o in node._outputs)
        assert node._encode_feature is None
        names = [n for n, _ in node.get_service_names_and_types_by_node("cass_node", ns)]
        assert f"{ns}/cass/semantic/embed" not in names and f"{ns}/cass/query" in names
        assert not [t for t, _ in node.get_topic_names_and_types() if "/semantic/" in t]
        # a frame still gives the label image and the instances, as without it
        h.subscribe(Image, f"{ns}/cass/front/segmentation")
        h.subscribe(Image, f"{ns}/cass/front/instances")
        pub = h.node.create_publisher(Image, f"{ns}/front/image_raw", 10)
        h.wait_subscribers(pub)
        h.wait_subscribers(node._outputs[0].instances)
        rgb = np.kron(np.random.default_rng(5).integers(0, 256, (6, 8, 3), dtype=np.uint8),
                      np.ones((H // 6, W // 8, 1), np.uint8))
        stamp = 7_000_000_000
        pub.publish(image_msg(rgb, stamp, "front_optical"))
        for topic in ("segmentation", "instances"):
            h.wait_message(f"{ns}/cass/front/{topic}", lambda m: stamp_ns(m.header) == stamp, 60)
        h.node.destroy_publisher(pub)
    finally:
        h.executor.remove_node(node)
        node.destroy_node()
