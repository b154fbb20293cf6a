"""semantic_inference's open-set contract over real DDS (docs/ros-interface.md,
"semantic_inference (Hydra, Khronos, Clio)"), with the semantic_inference_msgs
stand-in that harness/semantic_msgs.py builds for the session.

cass_node runs as a process with the package in its environment
(``semantic_inference: true``, ``instances: true``, tiny random models,
``output_size: model`` so that the label image, 48 x 64, is half the camera's
96 x 128); the listener, another process with the package, sends a frame
with an aligned depth image and one without, records /instances and the two
semantic topics, and calls the EncodeFeature service. Checked here against
the library, run on the same frames by a reference node with the same
parameters in this process: the FeatureImage is 16UC1 at the depth image's
size (with depth) or the label image's (without), its ids are /instances'
instance bits (mapped to the label size as /instances maps them), mask_ids
are the ids present and each feature is the library's pooled embedding
(core.queries.pooling.pool_regions) over that id's pixels; the
FeatureVectorStamped is the frame's image embedding
(core.queries.dense.dense_features); EncodeFeature answers
phrase_embeddings, and an empty prompt gets an empty feature.
"""

from __future__ import annotations

import subprocess
from typing import Any

import numpy as np
import pytest
from node_harness import (CONFIG, Harness, node_executable, ros_available, stop_node,
                          unique_namespace, wait_log)
from semantic_msgs import run_listener, semantic_msgs_once

_WHY = ros_available()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")

H, W = 96, 128              # the camera; the label image is (48, 64)
K = [110.0, 0.0, 63.5, 0.0, 112.0, 47.5, 0.0, 0.0, 1.0]
PROMPTS = ["red mug", "a chair", ""]


def _frame(seed: int) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return np.kron(small, np.ones((H // 6, W // 8, 1), np.uint8))


def _args(tiny_weights: tuple[str, str]) -> list[str]:
    clip, dino = tiny_weights
    return ["-p", f"clip_weights:={clip}", "-p", f"dino_weights:={dino}",
            "-p", "device:=cpu", "-p", "short_side:=48", "-p", "prob_threshold:=0.0",
            "-p", "output_size:=model", "-p", 'prompts:=["person", "car", "box", "tree"]',
            "-p", 'background_classes:=["sky"]', "-p", 'image_topics:=["front/image_raw"]',
            "-p", 'depth_topics:=["front/depth/image_raw"]', "-p", "depth_tolerance_s:=0.005",
            "-p", "instances:=true", "-p", "instance_min_pixels:=6"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: Any, tiny_weights: tuple[str, str], ros_domain: int) -> Any:
    """(what the listener got, the frames) from one node process."""
    msgs = semantic_msgs_once(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("si_node")
    ns = unique_namespace("cass_si")
    log = tmp / "node.log"
    mm = np.full((H, W), 2000, np.uint16)
    mm[:, W // 2:] = 1000
    frames = {"count": 2, "rgb_0": _frame(61), "stamp_0": 5_100_000_000, "depth_0": mm,
              "k_0": np.array(K), "rgb_1": _frame(62), "stamp_1": 5_200_000_000}
    np.savez(tmp / "frames.npz", **frames)
    cmd = [node_executable(), "--ros-args", "--params-file", str(CONFIG), "-r", f"__ns:={ns}",
           *_args(tiny_weights), "-p", "semantic_inference:=true"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=msgs.env)
    try:
        text = wait_log(proc, log, "ready:", 120)
        assert "outputs are off" not in text, text      # no warning: the package is there
        got = run_listener(msgs, ns, tmp / "frames.npz", tmp / "got.npz", PROMPTS)
    finally:
        stop_node(proc)
    return got, frames, log.read_text(errors="replace")


@pytest.fixture(scope="module")
def reference(tiny_weights: tuple[str, str], ros_domain: int) -> Any:
    """The library as the node uses it: a node with the same parameters
    (without semantic_inference) in this process, for its segmenter and
    prepared prompts; not spun."""
    from cass_ros.ros.wiring.node import CassNode

    h = Harness(ros_domain, unique_namespace("cass_si_ref"))
    node = CassNode(cli_args=["--ros-args", "--params-file", str(CONFIG), *_args(tiny_weights)],
                    context=h.context, namespace=h.namespace)
    yield node._in_force.segmenter, node._in_force.session.active.prepared
    node.destroy_node()
    h.close()


def _library(reference: Any, rgb: np.ndarray) -> Any:
    from cass_ros.core.queries.dense import dense_features

    seg, prepared = reference
    _, feats = seg.segment_keeping([rgb], prompts=prepared, output_size="model")
    return dense_features(feats, seg.clip.patch)[0]


def _feature_image(got: dict[str, Any], i: int) -> np.ndarray:
    height, width, step, bigendian = (int(v) for v in got[f"fi_meta_{i}"])
    assert str(got[f"fi_encoding_{i}"]) == "16UC1" and bigendian == 0 and step == width * 2
    assert str(got[f"fi_frame_{i}"]) == "front_optical"
    return got[f"fi_data_{i}"].view("<u2").reshape(height, width)


@pytest.mark.parametrize("i, size", [(0, (H, W)), (1, (48, 64))], ids=["depth", "no_depth"])
def test_feature_image(recorded: Any, reference: Any, i: int, size: tuple[int, int]) -> None:
    from cass_ros.core.depth import nearest_resize
    from cass_ros.core.queries.pooling import pool_regions

    got, frames, _ = recorded
    image = _feature_image(got, i)
    assert image.shape == size
    bits = got[f"instances_{i}"] & 0xFFFF                 # /instances' instance bits
    assert bits.shape == (48, 64) and bits.any()
    np.testing.assert_array_equal(nearest_resize(image, bits.shape), bits)
    ids = got[f"fi_ids_{i}"]
    assert ids.tolist() == sorted(set(np.unique(image).tolist()) - {0})
    feats = got[f"fi_features_{i}"]
    dense = _library(reference, frames[f"rgb_{i}"])
    assert feats.dtype == np.float32 and feats.shape == (len(ids), dense.image.shape[0])
    # independent regions: each id's pixels, renumbered 1..n in mask_ids' order
    index = np.zeros(image.shape, np.int32)
    for k, m in enumerate(ids, 1):
        index[image == m] = k
    expected = pool_regions(dense, index, len(ids)).float().numpy()
    np.testing.assert_allclose(feats, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("i", [0, 1])
def test_feature_vector_is_the_image_embedding(recorded: Any, reference: Any, i: int) -> None:
    got, frames, _ = recorded
    vec = got[f"vec_{i}"]
    expected = _library(reference, frames[f"rgb_{i}"]).image.float().numpy()
    assert vec.dtype == np.float32 and vec.shape == expected.shape
    assert str(got[f"vec_frame_{i}"]) == "front_optical"
    np.testing.assert_allclose(vec, expected, atol=1e-5)


def test_encode_feature_is_phrase_embeddings(recorded: Any, reference: Any) -> None:
    from cass_ros.core.queries.pooling import phrase_embeddings

    got, _, log = recorded
    seg, _ = reference
    for j, prompt in enumerate(PROMPTS[:2]):
        expected = phrase_embeddings(seg.text_embedder, [prompt])[0].numpy()
        np.testing.assert_allclose(got[f"embed_{j}"], expected, atol=1e-5)
        assert int(got[f"embed_stamp_{j}"]) > 0
    # the empty prompt: an empty feature, and one line in the node's log says why
    assert got["embed_2"].size == 0
    lines = [ln for ln in log.splitlines() if "no embedding for ''" in ln]
    assert len(lines) == 1 and "the prompt is empty" in lines[0]


def test_managed_node_makes_them_in_configure_and_cleanup_removes_them(
        tmp_path_factory: Any, tiny_weights: tuple[str, str], ros_domain: int,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """cass_lifecycle_node with the package: the two topics and the service
    exist from configure to cleanup (docs/ros-interface.md, "Managed node"),
    and again after a second configure. Seen from the DDS graph, which
    needs no message type here."""
    from lifecycle_msgs.msg import Transition
    from test_lifecycle import Managed, _args as managed_args

    msgs = semantic_msgs_once(tmp_path_factory)
    for name in ("AMENT_PREFIX_PATH", "LD_LIBRARY_PATH", "PYTHONPATH"):
        monkeypatch.setenv(name, msgs.env[name])      # what start_node hands the process
    clip, dino = tiny_weights
    m = Managed(ros_domain, managed_args(clip, dino) + ["-p", "instances:=true",
                                                        "-p", "semantic_inference:=true"],
                tmp_path / "node.log")
    try:
        def present() -> list[bool]:
            services = {n for n, _ in m.h.node.get_service_names_and_types()}
            return [f"{m.ns}/cass/semantic/embed" in services,
                    m.h.node.count_publishers(f"{m.ns}/cass/cam/semantic/image_raw") == 1,
                    m.h.node.count_publishers(f"{m.ns}/cass/cam/semantic/feature") == 1]

        assert not any(present())
        for step in ("configure", "cleanup", "configure"):
            transition = getattr(Transition, f"TRANSITION_{step.upper()}")
            assert m.transition(transition), step
            want = step == "configure"
            m.h.wait_for(lambda w=want: present() == [w] * 3, 30, f"the entities after {step}")
        assert "outputs are off" not in (tmp_path / "node.log").read_text(errors="replace")
    finally:
        m.close()
