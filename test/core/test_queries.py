"""The segmenter's two halves (docs/algorithm.md 10) on tiny random models:
``decode(encode(x), p)`` is ``segment(x, p)`` bit for bit in every mode and
for several prompt sets on the same features; one image's features taken
out of a batch answer for that image; the features' memory is what their
tensors hold; a query leaves a camera's temporal stream alone."""

from __future__ import annotations

import numpy as np
import pytest

from cass_ros.core.config import build_config
from cass_ros.core.prompts import build_prompt_set
from cass_ros.core.segmenter import Segmenter
from cass_ros.core.temporal import StreamFrame, TemporalParams, TemporalStream

MODES = {
    "whole": {},
    "sliding": {"slide_crop": 32, "slide_stride": 20},
    "crop_global_vector": {"slide_crop": 32, "slide_stride": 20, "crop_global_vector": True},
    "sequential": {"attention": "sequential"},
    "vanilla": {"attention": "vanilla"},
}
PROMPT_SETS = [
    build_prompt_set([("cat", "kitty"), ("dog",), ("car",)], background=["sky", "wall"]),
    build_prompt_set([("red box", "crimson block"), ("green ball",)]),
    build_prompt_set([("tree",)] + [(f"object {i}",) for i in range(6)], background=["floor"]),
]


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(4)
    return [rng.integers(0, 256, (70, 90, 3), dtype=np.uint8),
            rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)]


@pytest.fixture(scope="module")
def make(tiny_models, text_cache_dir):
    cache: dict = {}

    def build(mode: str) -> Segmenter:
        if mode not in cache:
            cfg = build_config(dict(device="cpu", short_side=64,
                                    weights_cache_dir=text_cache_dir, **MODES[mode]))
            cache[mode] = Segmenter(cfg, models=tiny_models)
        return cache[mode]

    return build


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.confidence, b.confidence)
    np.testing.assert_array_equal(a.presence, b.presence)
    np.testing.assert_array_equal(a.pixel_counts, b.pixel_counts)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.mean_confidence, b.mean_confidence)
    assert a.class_names == b.class_names and a.prompt_id == b.prompt_id


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("output_size", ["input", "model"])
def test_decode_of_encode_is_segment(make, mode: str, output_size: str) -> None:
    seg = make(mode)
    imgs = images()
    features = seg.encode(imgs)
    assert len(features) == 2
    for ps in PROMPT_SETS:          # several prompt sets on the same features
        prompts = seg.prepare_prompts(ps)
        want = seg.segment(imgs, prompts, return_probs=True, output_size=output_size)
        got = seg.decode(features, prompts, return_probs=True, output_size=output_size)
        for a, b in zip(got, want):
            _same(a, b)
        assert set(got[0].timings_ms) >= {"head", "postprocess", "total"}


@pytest.mark.parametrize("mode", ["whole", "sliding"])
def test_one_image_out_of_a_batch(make, mode: str) -> None:
    seg = make(mode)
    imgs = images()
    features = seg.encode(imgs)
    prompts = seg.prepare_prompts(PROMPT_SETS[0])
    batched = seg.decode(features, prompts, return_probs=True)
    for i, img in enumerate(imgs):
        alone = features.image(i)
        assert len(alone) == 1 and alone.input_sizes == (img.shape[:2],)
        got = seg.decode(alone, prompts, return_probs=True)[0]
        # smaller matmul batches may round differently in the last bit
        assert (got.labels == batched[i].labels).mean() > 0.999
        np.testing.assert_allclose(got.probs, batched[i].probs, atol=1e-5)
        single = seg.segment([img], prompts, return_probs=True)[0]
        np.testing.assert_array_equal(got.labels, single.labels)
        np.testing.assert_array_equal(got.probs, single.probs)
    with pytest.raises(IndexError):
        features.image(2)


def test_features_memory_is_what_the_tensors_hold(make) -> None:
    for mode in ("whole", "sliding"):
        seg = make(mode)
        features = seg.encode(images()[:1])
        total = sum(g.patches.numel() * 4 + g.g.numel() * 4 for g in features.groups)
        assert features.nbytes == total > 0
        crops = sum(len(g.images) for g in features.groups)
        assert crops == (1 if mode == "whole" else crops) and crops >= 1
        e = seg.models.clip.visual.output_dim
        assert all(g.patches.shape[-1] == e and g.g.shape == (len(g.images), e)
                   for g in features.groups)


def test_decode_without_stream_leaves_the_stream_alone(make) -> None:
    seg = make("whole")
    imgs = images()[:1]
    prompts = seg.prepare_prompts(PROMPT_SETS[0])
    stream = TemporalStream(TemporalParams(smoothing=0.5))
    seg.segment(imgs, prompts, streams=[StreamFrame(stream, 1.0, 1)])
    state = (stream._prob.clone(), stream._key, stream._stamp, stream.frames, stream.resets)
    other = seg.prepare_prompts(PROMPT_SETS[1])
    seg.decode(seg.encode(imgs), other)                # a query: no stream
    assert (stream._key, stream._stamp, stream.frames, stream.resets) == state[1:]
    assert (stream._prob == state[0]).all()
    seg.segment(imgs, prompts, streams=[StreamFrame(stream, 1.1, 1)])
    assert stream.frames == 2 and stream.resets == 0     # the stream went on


def test_decode_checks_its_arguments(make) -> None:
    seg = make("whole")
    features = seg.encode(images())
    prompts = seg.prepare_prompts(PROMPT_SETS[0])
    with pytest.raises(ValueError, match="output_size"):
        seg.decode(features, prompts, output_size="big")
    with pytest.raises(ValueError, match="streams: 1 entries for 2 images"):
        seg.decode(features, prompts, streams=[None])
