"""Temporal stability (docs/algorithm.md 5.6): the moving average against a
plain numpy recurrence, labels that stop flickering, the resets, the
``present`` hysteresis, parameter checks, and the segmenter's path: off is
bit-identical to no stream, on smooths the probabilities before the labels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from cass_ros.core.config import ConfigError, build_config
from cass_ros.core.prompts import build_prompt_set
from cass_ros.core.segmenter import Segmenter
from cass_ros.core.temporal import StreamFrame, TemporalParams, TemporalStream, TemporalStreams

DT = 0.1  # 10 Hz stamps


def ema_numpy(frames: list[np.ndarray], a: float) -> list[np.ndarray]:
    """The reference recurrence, in float64: p_0 = x_0, p_t = (1-a) x_t + a p_(t-1)."""
    out, p = [], None
    for x in frames:
        p = x.astype(np.float64) if p is None else (1 - a) * x + a * p
        out.append(p)
    return out


def random_probs(rng: np.random.Generator, k: int, h: int, w: int) -> torch.Tensor:
    x = rng.random((k, h, w)).astype(np.float32)
    return torch.from_numpy(x / x.sum(0, keepdims=True))


# ------------------------------------------------------------------ the moving average


def test_average_equals_the_numpy_recurrence() -> None:
    rng = np.random.default_rng(0)
    frames = [random_probs(rng, 4, 6, 9) for _ in range(12)]
    stream = TemporalStream(TemporalParams(smoothing=0.7))
    got = [stream.smooth(x, 1, t * DT).numpy() for t, x in enumerate(frames)]
    want = ema_numpy([x.numpy() for x in frames], 0.7)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)
    assert stream.frames == 12 and stream.resets == 0
    # the input tensors are not changed in place
    np.testing.assert_array_equal(frames[0].numpy(), random_probs(np.random.default_rng(0),
                                                                  4, 6, 9).numpy())


def test_flickering_labels_are_steady_when_smoothed() -> None:
    """Each pixel's probabilities alternate between favouring class 1 and
    class 2 around a mean that favours class 1: the per-frame labels flip
    every frame, the smoothed ones stay on class 1."""
    rng = np.random.default_rng(1)
    h, w = 16, 20
    mean = np.array([0.1, 0.5, 0.4])[:, None, None]       # class 1 wins on average
    swing = np.array([0.0, 0.1, -0.1])[:, None, None]     # +-0.1 frame by frame
    frames = []
    for t in range(30):
        noise = rng.normal(0, 0.01, (3, h, w))
        frames.append(torch.from_numpy((mean + (-1) ** t * swing + noise).astype(np.float32)))
    raw = [x.argmax(0).numpy() for x in frames]
    stream = TemporalStream(TemporalParams(smoothing=0.8))
    smoothed = [stream.smooth(x, 1, t * DT).argmax(0).numpy() for t, x in enumerate(frames)]
    raw_flips = [float((a != b).mean()) for a, b in zip(raw, raw[1:])]
    smooth_flips = [float((a != b).mean()) for a, b in zip(smoothed, smoothed[1:])]
    assert min(raw_flips) == 1.0                     # every pixel flips every frame
    assert max(smooth_flips) == 0.0                  # no pixel ever flips
    assert all(np.all(s == 1) for s in smoothed)


def test_smoothing_keeps_the_device_and_dtype() -> None:
    stream = TemporalStream(TemporalParams(smoothing=0.5))
    x = torch.rand(3, 4, 5)
    y = stream.smooth(x, 1, 0.0)
    z = stream.smooth(torch.rand(3, 4, 5), 1, DT)
    assert y is x                                    # the first frame is its own average
    assert z.device == x.device and z.dtype == x.dtype and z.shape == x.shape


# ------------------------------------------------------------------ resets


def _stream_after(n: int, a: float = 0.9) -> tuple[TemporalStream, float]:
    stream = TemporalStream(TemporalParams(smoothing=a, reset_gap_s=0.5))
    rng = np.random.default_rng(2)
    for t in range(n):
        stream.smooth(random_probs(rng, 3, 4, 4), 7, t * DT)
    return stream, (n - 1) * DT


@pytest.mark.parametrize("case", ["prompt", "size", "labels", "gap", "backwards"])
def test_reset_starts_the_average_over(case: str) -> None:
    stream, last = _stream_after(5)
    x = random_probs(np.random.default_rng(3), 3, 4, 4)
    prompt_id, stamp = 7, last + DT
    if case == "prompt":
        prompt_id = 8
    elif case == "size":
        x = random_probs(np.random.default_rng(3), 3, 4, 6)
    elif case == "labels":
        x = random_probs(np.random.default_rng(3), 4, 4, 4)
    elif case == "gap":
        stamp = last + 0.6
    else:  # a bag looping: the stamps start again
        stamp = 0.0
    y = stream.smooth(x, prompt_id, stamp)
    assert torch.equal(y, x)                         # no history left
    assert stream.resets == 1 and stream.frames == 1


def test_a_gap_up_to_the_limit_and_a_repeated_stamp_keep_the_history() -> None:
    stream, last = _stream_after(5)
    x = random_probs(np.random.default_rng(4), 3, 4, 4)
    assert not torch.equal(stream.smooth(x, 7, last + 0.5), x)   # gap == reset_gap_s
    assert not torch.equal(stream.smooth(x, 7, last + 0.5), x)   # same stamp again
    assert stream.resets == 0 and stream.frames == 7


def test_new_parameters_reset_the_stream_and_equal_ones_do_not() -> None:
    stream, _ = _stream_after(3)
    stream.set_params(TemporalParams(smoothing=0.9, reset_gap_s=0.5))
    assert stream.frames == 3
    stream.set_params(TemporalParams(smoothing=0.5, reset_gap_s=0.5))
    assert stream.frames == 0 and stream.params.smoothing == 0.5


# ------------------------------------------------------------------ present hysteresis


def _present_run(stream: TemporalStream, counts: list[int], min_pixels: int = 10) -> list[bool]:
    out = []
    for t, c in enumerate(counts):
        stream.smooth(torch.rand(2, 2, 2), 1, t * DT)
        out.append(bool(stream.present(np.array([0, c]), min_pixels)[1]))
    return out


def test_present_turns_on_and_off_after_the_frame_counts() -> None:
    stream = TemporalStream(TemporalParams(present_on_frames=3, present_off_frames=2))
    counts = [20, 20, 0, 20, 20, 20, 20, 0, 20, 0, 0, 20, 0]
    #  over:   1   1  0   1   1   1   1  0   1  0  0   1  0
    want = [False, False, False, False, False, True, True, True, True, True, False, False, False]
    assert _present_run(stream, counts) == want


def test_present_without_hysteresis_is_the_pixel_rule() -> None:
    rng = np.random.default_rng(5)
    counts = [int(c) for c in rng.integers(0, 20, 40)]
    stream = TemporalStream(TemporalParams(smoothing=0.5))
    assert _present_run(stream, counts) == [c >= 10 for c in counts]


def test_present_starts_absent_after_a_reset() -> None:
    stream = TemporalStream(TemporalParams(present_on_frames=2, present_off_frames=2))
    assert _present_run(stream, [20, 20, 20]) == [False, True, True]
    stream.smooth(torch.rand(2, 2, 2), 2, 0.3)      # prompt change
    assert not stream.present(np.array([0, 20]), 10)[1]
    stream.smooth(torch.rand(2, 2, 2), 2, 0.4)
    assert stream.present(np.array([0, 20]), 10)[1]


# ------------------------------------------------------------------ parameters


@pytest.mark.parametrize("kw,name", [
    (dict(smoothing=1.0), "temporal_smoothing"),
    (dict(smoothing=-0.1), "temporal_smoothing"),
    (dict(reset_gap_s=0.0), "temporal_reset_gap_s"),
    (dict(reset_gap_s=float("inf")), "temporal_reset_gap_s"),
    (dict(present_on_frames=0), "temporal_present_on_frames"),
    (dict(present_off_frames=1.5), "temporal_present_off_frames"),
])
def test_bad_parameters_name_the_parameter(kw: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=f"'{name}'"):
        TemporalParams(**kw).validate(prefix="temporal_")
    with pytest.raises(ConfigError):
        TemporalStream(TemporalParams(**kw))


def test_defaults_change_nothing() -> None:
    p = TemporalParams()
    assert not p.active and not p.smooths and not p.hysteresis
    assert TemporalParams(present_off_frames=2).active and TemporalParams(smoothing=0.1).active


# ------------------------------------------------------------------ through the segmenter

PS = build_prompt_set([("cat",), ("dog",), ("car",)], background=["sky"])


def image(h: int, w: int, seed: int) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (max(2, h // 8), max(2, w // 8), 3),
                                                 dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def seg(tiny_models, text_cache_dir) -> Segmenter:
    cfg = build_config(dict(device="cpu", short_side=64, weights_cache_dir=text_cache_dir))
    return Segmenter(cfg, models=tiny_models)


@pytest.fixture(scope="module")
def prepared(seg):
    return seg.prepare_prompts(PS)


def test_off_is_bit_identical_to_no_stream(seg, prepared) -> None:
    imgs = [image(48, 80, s) for s in range(3)]
    plain = seg.segment(imgs, prepared, return_probs=True)
    stream = TemporalStream(TemporalParams())
    off = seg.segment(imgs, prepared, return_probs=True,
                      streams=[StreamFrame(stream, i * DT, 5) for i in range(3)])
    for a, b in zip(plain, off):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.probs, b.probs)
        np.testing.assert_array_equal(a.mean_confidence, b.mean_confidence)
        np.testing.assert_array_equal(a.pixel_counts, b.pixel_counts)
        assert b.present is None and a.objects(5) == b.objects(5)
    assert stream.frames == 0                        # an inactive stream is not touched


def test_segmenter_smooths_before_the_labels(seg, prepared) -> None:
    """Frames of one camera, one call each and two in one call: the returned
    probabilities are the moving average of the per-frame ones, the labels
    and statistics are those of the averaged probabilities."""
    a = 0.6
    imgs = [image(40, 56, 10 + (t % 2)) for t in range(5)]  # flickers between two scenes
    raw = [seg.segment([im], prepared, return_probs=True)[0] for im in imgs]
    stream = TemporalStream(TemporalParams(smoothing=a))
    got = [seg.segment([im], prepared, return_probs=True,
                       streams=[StreamFrame(stream, t * DT)])[0] for t, im in enumerate(imgs[:3])]
    got += seg.segment(imgs[3:], prepared, return_probs=True,
                       streams=[StreamFrame(stream, t * DT) for t in (3, 4)])
    want = ema_numpy([r.probs for r in raw], a)
    threshold = seg.config.prob_threshold
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.probs, w, rtol=0, atol=1e-5)
        labels = np.where(g.probs.max(0) >= threshold, g.probs.argmax(0), 0)
        np.testing.assert_array_equal(g.labels, labels)
        assert list(g.pixel_counts) == [int((g.labels == k).sum()) for k in range(PS.num_labels)]
        own = np.take_along_axis(g.probs, g.labels[None].astype(np.int64), 0)[0]
        for k in range(PS.num_labels):
            if g.pixel_counts[k]:
                assert g.mean_confidence[k] == pytest.approx(own[g.labels == k].mean(), rel=1e-5)
    flips_raw = sum(int((x.labels != y.labels).sum()) for x, y in zip(raw, raw[1:]))
    flips_smooth = sum(int((x.labels != y.labels).sum()) for x, y in zip(got, got[1:]))
    assert flips_smooth < flips_raw


def test_segmenter_present_uses_the_hysteresis(seg, prepared) -> None:
    stream = TemporalStream(TemporalParams(present_on_frames=2))
    img = image(48, 80, 20)
    (first,) = seg.segment([img], prepared, streams=[StreamFrame(stream, 0.0, 1)])
    (second,) = seg.segment([img], prepared, streams=[StreamFrame(stream, DT, 1)])
    seen = [o["pixel_count"] >= 1 for o in first.objects(1)]
    assert any(seen)
    assert [o["present"] for o in first.objects(1)] == [False] * len(seen)
    assert [o["present"] for o in second.objects(1)] == seen
    assert list(first.objects(1)[0]) == list(seg.segment([img], prepared)[0].objects(1)[0])


def test_segmenter_checks_the_streams_argument(seg, prepared) -> None:
    with pytest.raises(ValueError, match="streams: 1 entries for 2 images"):
        seg.segment([image(32, 32, 0)] * 2, prepared,
                    streams=[StreamFrame(TemporalStream(), 0.0)])


def test_streams_keep_one_stream_per_source():
    streams = TemporalStreams()
    on = TemporalParams(smoothing=0.5)
    first = streams.frames(["front", "rear", "front"], [0.0, 0.0, 0.1], on, 3)
    assert first[0].stream is first[2].stream and first[0].stream is not first[1].stream
    assert [f.stamp_s for f in first] == [0.0, 0.0, 0.1] and first[1].min_pixels == 3
    again = streams.frames(["rear"], [0.2], on, 1)
    assert again[0].stream is first[1].stream
    # new parameters restart the same stream; turning off drops them all
    first[1].stream.smooth(torch.rand(2, 4, 4), 1, 0.3)
    assert first[1].stream.frames == 1
    streams.frames(["rear"], [0.4], TemporalParams(smoothing=0.6), 1)
    assert first[1].stream.frames == 0
    assert streams.frames(["rear"], [0.5], TemporalParams(), 1) is None
    assert streams.frames(["rear"], [0.6], on, 1)[0].stream is not first[1].stream
