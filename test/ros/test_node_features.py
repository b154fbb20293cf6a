"""Language features over real DDS (docs/ros-interface.md, "Language
features"): cass_node in-process with the tiny random model.
/cass/<cam>/features holds the library's dense features of the frame
(core.queries.dense, recomputed here from the node's own segmenter), at
the grid, dtype and placement it states, with the model and weights hash;
instance_objects carries each instance's embedding, equal to an independent
mean of the upsampled features over that instance's pixels of /instances;
/cass/query's similarity images equal each class's best name's cosine with
the upsampled features; and a frame no output needs the features for
computes none."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from node_harness import CONFIG, Harness, image_msg, ros_available, stamp_ns, unique_namespace

_WHY = ros_available()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")

H, W = 48, 64
MIN_PIXELS = 6


def _frame(seed: int = 31) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return np.kron(small, np.ones((H // 6, W // 8, 1), np.uint8))


@pytest.fixture(scope="module")
def live(ros_domain: int, tiny_weights: tuple[str, str]) -> Any:
    from sensor_msgs.msg import Image

    from cass_ros.msg import Features, InstanceArray
    from cass_ros.ros.wiring.node import CassNode
    from cass_ros.srv import Query

    clip, dino = tiny_weights
    args = ["--ros-args", "--params-file", str(CONFIG),
            "-p", f"clip_weights:={clip}", "-p", f"dino_weights:={dino}",
            "-p", "device:=cpu", "-p", "short_side:=48", "-p", "prob_threshold:=0.0",
            "-p", 'prompts:=["person", "car", "box", "tree"]',
            "-p", 'background_classes:=["sky"]', "-p", 'image_topics:=["front/image_raw"]',
            "-p", "instances:=true", "-p", f"instance_min_pixels:={MIN_PIXELS}",
            "-p", "instance_embeddings:=true", "-p", "publish_instances:=true"]
    ns = unique_namespace("cass_features")
    h = Harness(ros_domain, ns)
    node = CassNode(cli_args=args, context=h.context, namespace=ns)
    h.executor.add_node(node)
    h.subscribe(Image, "cass/front/segmentation")
    h.subscribe(Image, "cass/front/instances")
    h.subscribe(InstanceArray, "cass/front/instance_objects")
    features_sub = h.subscribe(Features, "cass/front/features")
    pub = h.node.create_publisher(Image, "front/image_raw", 10)
    h.wait_subscribers(pub)
    h.wait_subscribers(node._outputs[0].features)
    query = h.node.create_client(Query, "cass/query")
    assert query.wait_for_service(20)
    yield SimpleNamespace(h=h, node=node, pub=pub, query=query, features_sub=features_sub,
                          stamp=[5_000_000_000])
    node.destroy_node()
    h.close()


def _send(live: Any, seed: int = 31, keys: tuple[str, ...] = ("cass/front/segmentation",)
          ) -> dict[str, Any]:
    live.stamp[0] += 100_000_000
    stamp = live.stamp[0]
    live.pub.publish(image_msg(_frame(seed), stamp, "front_optical"))
    return {k: live.h.wait_message(k, lambda m: stamp_ns(m.header) == stamp, 60) for k in keys}


def _library(live: Any, seed: int = 31) -> tuple[Any, Any]:
    """The frame's dense features and prepared prompts from the node's own
    segmenter, computed here (float32)."""
    from cass_ros.core.queries.dense import dense_features

    in_force = live.node._in_force
    seg, prepared = in_force.segmenter, in_force.session.active.prepared
    _, features = seg.segment_keeping([_frame(seed)], prepared)
    return dense_features(features, seg.clip.patch)[0], prepared


def test_features_message_holds_the_librarys_dense_features(live: Any) -> None:
    from cass_ros.ros.outputs.features import features_array

    got = _send(live, keys=("cass/front/segmentation", "cass/front/features"))
    msg, labels = got["cass/front/features"], got["cass/front/segmentation"]
    dense, _ = _library(live)
    gh, gw, e = dense.patches.shape
    assert (msg.height, msg.width, msg.channels) == (gh, gw, e)
    assert (msg.dtype, msg.layout) == ("float16", "HWC")
    assert len(msg.data) == gh * gw * e * 2
    grid = features_array(msg)
    np.testing.assert_allclose(grid, dense.patches.numpy(), atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(np.asarray(msg.image_embedding), dense.image.numpy(), atol=1e-6)
    assert abs(np.linalg.norm(np.asarray(msg.image_embedding)) - 1.0) < 1e-5
    # placement in the label image: grid coordinate = scale * pixel + offset
    assert (msg.image_height, msg.image_width) == (labels.height, labels.width)
    np.testing.assert_allclose(msg.scale, [gh / labels.height, gw / labels.width])
    np.testing.assert_allclose(msg.offset, [0.5 * (gh / labels.height - 1),
                                            0.5 * (gw / labels.width - 1)])
    models = live.node._in_force.segmenter.models
    assert msg.model == models.clip_id
    assert len(msg.weights_sha256) == 64 and msg.weights_sha256 == models.weights_sha256()


def test_features_dtype_float32_is_exact(live: Any) -> None:
    from rclpy.parameter import Parameter

    from cass_ros.ros.outputs.features import features_array

    live.node.set_parameters([Parameter("features_dtype", value="float32")])
    try:
        msg = _send(live, seed=32, keys=("cass/front/features",))["cass/front/features"]
    finally:
        live.node.set_parameters([Parameter("features_dtype", value="float16")])
    dense, _ = _library(live, seed=32)
    assert msg.dtype == "float32"
    np.testing.assert_allclose(features_array(msg), dense.patches.numpy(), atol=1e-6)


def test_instance_embeddings_are_the_mean_over_each_instances_pixels(live: Any) -> None:
    from cass_ros.ros.outputs.instances import INSTANCE_MODULO

    keys = ("cass/front/instances", "cass/front/instance_objects")
    got = _send(live, seed=33, keys=keys)
    image = got["cass/front/instances"]
    inst_img = np.frombuffer(bytes(image.data), "<i4").reshape(H, W) & 0xFFFF  # (H, W) ids
    instances = got["cass/front/instance_objects"].instances
    assert instances, "the frame has instances"
    dense, _ = _library(live, seed=33)
    up = dense.upsampled(inst_img.shape).numpy()                              # (H, W, E)
    for inst in instances:
        mask = inst_img == inst.id % INSTANCE_MODULO + 1
        assert mask.sum() == inst.pixel_count
        mean = up[mask].mean(axis=0)
        expected = mean / np.linalg.norm(mean)
        np.testing.assert_allclose(np.asarray(inst.embedding), expected, atol=1e-4)


def test_query_similarity_is_each_class_best_cosine(live: Any) -> None:
    _send(live, seed=34)
    request = live.query.srv_type.Request(prompts="red box|crimson block, green ball",
                                          return_similarity=True, return_labels=True)
    future = live.query.call_async(request)
    answer = live.h.wait_for(lambda: future.result() if future.done() else None, 60, "query")
    assert answer.success, answer.error
    assert len(answer.similarity) == len(answer.class_names) - 1 == 2
    dense, _ = _library(live, seed=34)
    seg = live.node._in_force.segmenter
    from cass_ros.core.prompts import prompt_set_from_settings

    prepared = seg.prepare_prompts(prompt_set_from_settings(
        "red box|crimson block, green ball", "", ["sky"]), prompt_id=0)
    h, w = answer.labels.height, answer.labels.width
    per_name = dense.upsampled((h, w)).numpy() @ prepared.text.numpy().T      # (H, W, C)
    names = prepared.name_labels.numpy()
    for k, img in enumerate(answer.similarity, start=1):
        assert (img.encoding, img.height, img.width) == ("32FC1", h, w)
        values = np.frombuffer(bytes(img.data), "<f4").reshape(h, w)
        np.testing.assert_allclose(values, per_name[..., names == k].max(axis=-1), atol=1e-5)
    plain = live.query.call_async(live.query.srv_type.Request(prompts="green ball"))
    answer = live.h.wait_for(lambda: plain.result() if plain.done() else None, 60, "query")
    assert answer.success and len(answer.similarity) == 0


def test_re_identification_gets_the_instances_embeddings(live: Any, monkeypatch: Any) -> None:
    """track_reid_* reach the camera's tracker, and its update receives the
    frame's instance embeddings (the rows instance_objects carries). The
    re-identification itself: test/core/test_track_reid.py."""
    from rclpy.parameter import Parameter

    from cass_ros.core.objects.tracks import Tracker

    seen = []
    real = Tracker.update

    def spy(self: Any, instances: Any, prompt_id: int, stamp_s: float, embeddings: Any = None
            ) -> Any:
        seen.append((self.params, instances, None if embeddings is None else embeddings.copy()))
        return real(self, instances, prompt_id, stamp_s, embeddings)

    monkeypatch.setattr(Tracker, "update", spy)
    live.node.set_parameters([Parameter("track_reid_seconds", value=2.5),
                              Parameter("track_reid_min_cosine", value=0.7)])
    try:
        got = _send(live, seed=37, keys=("cass/front/instance_objects",))
    finally:
        live.node.set_parameters([Parameter("track_reid_seconds", value=0.0)])
    params, instances, embeddings = seen[-1]
    assert (params.reid_seconds, params.reid_min_cosine) == (2.5, 0.7)
    assert embeddings.shape[0] == instances.count > 0
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    for inst in got["cass/front/instance_objects"].instances:
        row = [i for i in range(instances.count)
               if instances.pixel_counts[i] == inst.pixel_count
               and tuple(instances.boxes[i]) == (inst.bbox.x_offset, inst.bbox.y_offset,
                                                  inst.bbox.width, inst.bbox.height)]
        assert len(row) == 1
        np.testing.assert_allclose(np.asarray(inst.embedding), embeddings[row[0]], atol=1e-6)


def test_a_frame_that_needs_no_features_computes_none(live: Any, monkeypatch: Any) -> None:
    from rclpy.parameter import Parameter

    import cass_ros.core.queries.dense as dense_module

    calls = []
    real = dense_module.dense_features
    monkeypatch.setattr(dense_module, "dense_features",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    _send(live, seed=35, keys=("cass/front/features",))
    assert calls, "subscribed: computed"
    calls.clear()
    live.h.node.destroy_subscription(live.features_sub)
    live.node.set_parameters([Parameter("instances", value=False)])
    try:
        live.h.wait_for(lambda: live.node._outputs[0].features.get_subscription_count() == 0,
                        20, "no features subscriber")
        _send(live, seed=36)
        assert calls == []
    finally:
        live.node.set_parameters([Parameter("instances", value=True)])


def test_weights_hash_is_sha256_of_both_backbones(live: Any) -> None:
    """The documented definition, written out here: every tensor of CLIP's
    state dict then DINO's, in key order, 'key:dtype:shape;' then its bytes."""
    models = live.node._in_force.segmenter.models
    digest = hashlib.sha256()
    for model in (models.clip, models.dino):
        state = model.state_dict()
        for key in sorted(state):
            t = state[key].detach().cpu().contiguous()
            digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
            digest.update(t.numpy().tobytes())
    assert models.weights_sha256() == digest.hexdigest()
