"""The segmenter end to end on tiny random CLIP and DINO models (real
open_clip / timm modules, random weights): shapes, dtypes, determinism,
batching, sliding windows, attention strategies, the presence prior,
probabilities, synonyms, background and threshold, and errors."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from cass_ros.core.agreement import AgreementRule, compare_results
from cass_ros.core.config import MODEL, ConfigError, build_config, group_names
from cass_ros.core.models import WeightsError
from cass_ros.core.prompts import PromptError, PromptSet, build_prompt_set, prompt_set_from_settings
from cass_ros.core.result import SegmentationResult, label_statistics
from cass_ros.core.segmenter import (MODEL_SETTINGS, STAGES, PreparedPrompts, Segmenter,
                                     resolve_device, resolve_precision)
from cass_ros.core.timing import StageTimer
from cass_ros.core.text import cluster_names
from cass_ros.core.visualize import overlay, palette

BASE = dict(device="cpu", short_side=64)
SLIDE = dict(slide_crop=32, slide_stride=16)

# Same flat name list in both: names, clusters and logits coincide.
PS_BG = build_prompt_set([("cat", "kitty"), ("dog",), ("car",)], background=["sky", "wall"])
PS_FLAT = build_prompt_set([("sky",), ("wall",), ("cat",), ("kitty",), ("dog",), ("car",)])
PS_NOBG = build_prompt_set([("cat",), ("dog",), ("car",), ("sky",)])


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image (noise upsampled), uint8."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def make(tiny_models, text_cache_dir):
    """make(**settings) -> Segmenter on the tiny models (cached per settings)."""
    cache: dict = {}

    def build(**settings):
        key = tuple(sorted(settings.items()))
        if key not in cache:
            cfg = build_config(dict(BASE, weights_cache_dir=text_cache_dir, **settings))
            cache[key] = Segmenter(cfg, models=tiny_models)
        return cache[key]

    return build


@pytest.fixture(scope="module")
def whole(make):
    return make()


@pytest.fixture(scope="module")
def prompts_bg(whole):
    return whole.prepare_prompts(PS_BG)


def segment(seg: Segmenter, images, ps: PromptSet, **kw) -> list[SegmentationResult]:
    return seg.segment(images, seg.prepare_prompts(ps), **kw)


# ------------------------------------------------------------------ shapes and dtypes


def test_result_shapes_and_dtypes(whole, prompts_bg):
    img = image(48, 80)
    (res,) = whole.segment([img], prompts_bg, return_probs=True)
    k = PS_BG.num_labels
    assert res.labels.shape == (48, 80) and res.labels.dtype == np.uint8
    assert res.size == (48, 80)
    assert res.class_names == ["background", "cat", "dog", "car"]
    assert res.presence.shape == (k,) and res.presence.dtype == np.float32
    assert res.probs.shape == (k, 48, 80) and res.probs.dtype == np.float32
    assert res.pixel_counts.shape == (k,) and res.pixel_counts.sum() == 48 * 80
    assert res.mean_confidence.shape == (k,) and res.boxes.shape == (k, 4)
    assert res.prompt_id == prompts_bg.prompt_id
    assert np.all((res.probs >= 0) & (res.probs <= 1))
    assert res.labels.max() < k
    assert {"preprocess", "clip", "dino", "spectral", "head", "postprocess", "total"} <= set(res.timings_ms)
    (plain,) = whole.segment([img], prompts_bg)
    assert plain.probs is None
    np.testing.assert_array_equal(plain.labels, res.labels)
    # output at the model's (resized) size: 48 x 80 -> 64 x 107
    (small,) = whole.segment([img], prompts_bg, output_size="model", return_probs=True)
    assert small.labels.shape == (64, 107) and small.probs.shape == (k, 64, 107)
    objs = res.objects()
    assert [o["class_id"] for o in objs] == [1, 2, 3]
    assert [o["label"] for o in objs] == ["cat", "dog", "car"]
    for o in objs:
        assert o["pixel_count"] == int((res.labels == o["class_id"]).sum())
        assert o["present"] == (o["pixel_count"] > 0)


def test_statistics_against_direct_computation(whole, prompts_bg):
    (res,) = whole.segment([image(40, 60, seed=3)], prompts_bg, return_probs=True)
    for lab in range(res.probs.shape[0]):
        mask = res.labels == lab
        assert res.pixel_counts[lab] == mask.sum()
        if mask.any():
            ys, xs = np.nonzero(mask)
            assert list(res.boxes[lab]) == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                            ys.max() - ys.min() + 1]
            assert res.mean_confidence[lab] == pytest.approx(res.probs[lab][mask].mean(), rel=1e-5)
        else:
            assert list(res.boxes[lab]) == [0, 0, 0, 0] and res.mean_confidence[lab] == 0


def test_label_statistics_synthetic():
    labels = np.array([[0, 1, 1], [2, 1, 0], [2, 2, 0]], np.uint8)
    conf = np.arange(9, dtype=np.float32).reshape(3, 3) / 10
    counts, mean_conf, boxes = label_statistics(labels, conf, 4)
    assert list(counts) == [3, 3, 3, 0]
    assert mean_conf[1] == pytest.approx((0.1 + 0.2 + 0.4) / 3)
    assert list(boxes[1]) == [1, 0, 2, 2] and list(boxes[2]) == [0, 1, 2, 2]
    assert list(boxes[3]) == [0, 0, 0, 0]


def test_determinism(whole, prompts_bg):
    imgs = [image(48, 80, 1), image(70, 50, 2)]
    a = whole.segment(imgs, prompts_bg, return_probs=True)
    b = whole.segment(imgs, prompts_bg, return_probs=True)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.labels, y.labels)
        np.testing.assert_array_equal(x.probs, y.probs)
        np.testing.assert_array_equal(x.presence, y.presence)


# A batch stacks the images into one forward: the matmuls block differently
# than one by one, so the two are compared with the agreement rule
# (docs/algorithm.md 8), never bit for bit.
BATCH_RULE = AgreementRule(min_share=0.999, max_prob_diff=2e-5)


def assert_same_result(x: SegmentationResult, y: SegmentationResult, threshold: float,
                       rule: AgreementRule = BATCH_RULE) -> None:
    rule.check(compare_results([x], [y], threshold=threshold))
    np.testing.assert_allclose(x.presence, y.presence, rtol=0, atol=rule.max_prob_diff)


@pytest.mark.arithmetic
@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_batch_equals_one_by_one(make, mode):
    seg = make(**(SLIDE if mode == "slide" else {}))
    ps = seg.prepare_prompts(PS_BG)
    imgs = [image(48, 80, 4), image(64, 64, 5), image(70, 50, 6), image(48, 80, 7)]
    batch = seg.segment(imgs, ps, return_probs=True)
    assert [r.labels.shape for r in batch] == [i.shape[:2] for i in imgs]
    for img, res in zip(imgs, batch):
        (single,) = seg.segment([img], ps, return_probs=True)
        assert_same_result(res, single, seg.config.prob_threshold)
    assert seg.segment([], ps) == []


def test_whole_and_slide_modes_differ(make, prompts_bg):
    img = image(64, 100, 8)
    (a,) = make().segment([img], prompts_bg, return_probs=True)
    slide = make(**SLIDE)
    (b,) = slide.segment([img], slide.prepare_prompts(PS_BG), return_probs=True)
    assert a.probs.shape == b.probs.shape
    assert not np.allclose(a.probs, b.probs, atol=1e-3)


def test_sliding_window_average_of_crop_logits(make):
    """5.2 end to end: with each crop's own global vector (the Cityscapes
    rule), the sliding-window probabilities are the softmax of the average of
    the crop logits, where each crop's logits come from a whole-image run on
    that crop alone (up to a per-pixel constant: its log-probabilities)."""
    common = dict(logit_scale=3.0, prob_threshold=0.0, mean_vector_weight=0.3,
                  global_semantics_weight=0.2)
    img = image(40, 72, 9)  # short side 40: not resized
    slide = make(short_side=40, slide_crop=32, slide_stride=16, crop_global_vector=True, **common)
    (res,) = segment(slide, [img], PS_NOBG, return_probs=True)
    per_crop = make(short_side=32, **common)
    pp = per_crop.prepare_prompts(PS_NOBG)
    acc = np.zeros((4, 40, 72))
    cnt = np.zeros((40, 72))
    from cass_ros.core.preprocess import slide_windows

    wins = slide_windows(40, 72, 32, 16)
    assert len(wins) == 8
    for y0, y1, x0, x1 in wins:
        (c,) = per_crop.segment([np.ascontiguousarray(img[y0:y1, x0:x1])], pp, return_probs=True)
        assert np.all(c.probs[0] == 0)
        acc[:, y0:y1, x0:x1] += np.log(c.probs[1:].astype(np.float64))
        cnt[y0:y1, x0:x1] += 1
    expected = torch.softmax(torch.from_numpy(acc / cnt), 0).numpy()
    np.testing.assert_allclose(res.probs[1:], expected, rtol=0, atol=2e-5)
    assert np.all(res.probs[0] == 0)


# ------------------------------------------------------------------ attention strategies


def test_attention_strategies_run_and_differ(make):
    img = image(48, 80, 10)
    probs = {}
    for attention in ("spectral", "sequential", "vanilla"):
        seg = make(attention=attention)
        (res,) = segment(seg, [img], PS_BG, return_probs=True)
        assert res.labels.shape == (48, 80)
        probs[attention] = res.probs
    assert not np.allclose(probs["spectral"], probs["sequential"], atol=1e-4)
    assert not np.allclose(probs["spectral"], probs["vanilla"], atol=1e-4)
    assert not np.allclose(probs["sequential"], probs["vanilla"], atol=1e-4)


def test_eigenvalue_scaling_and_fusion_weight_matter(make):
    img = image(48, 80, 11)
    (a,) = segment(make(), [img], PS_BG, return_probs=True)
    (b,) = segment(make(eigenvalue_scaling=False), [img], PS_BG, return_probs=True)
    (c,) = segment(make(fusion_weight=0.0), [img], PS_BG, return_probs=True)
    assert not np.allclose(a.probs, b.probs, atol=1e-5)
    assert not np.allclose(a.probs, c.probs, atol=1e-5)


# ------------------------------------------------------------------ presence prior (4.2)


def independent_presence(tiny_models, img: np.ndarray, text: torch.Tensor, labels: list[int],
                         k: int) -> np.ndarray:
    """softmax(100 r), max over names, with g from open_clip's own
    encode_image on the image resized to CLIP's pretrained 64 x 64."""
    x = cv2.resize(img, (64, 64), interpolation=cv2.INTER_LINEAR).astype(np.float64) / 255.0
    mean = np.array([0.48145466, 0.4578275, 0.40821073])
    std = np.array([0.26862954, 0.26130258, 0.27577711])
    t = torch.from_numpy(((x - mean) / std).transpose(2, 0, 1)).float()[None]
    with torch.no_grad():
        g = tiny_models.clip.encode_image(t)[0].double()
    r = text.double() @ (g / g.norm())
    p = torch.softmax(100.0 * r, 0).numpy()
    out = np.zeros(k)
    for name_index, lab in enumerate(labels):
        out[lab] = max(out[lab], p[name_index])
    return out


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_presence_against_clip_global_vector(make, tiny_models, mode):
    seg = make(**(SLIDE if mode == "slide" else {}))
    for ps in (PS_BG, PS_NOBG):
        pp = seg.prepare_prompts(ps)
        img = image(80, 80, 12)  # resized to 64 x 64, CLIP's pretrained size
        (res,) = seg.segment([img], pp)
        _, labels = ps.flat_names()
        expected = independent_presence(tiny_models, img, pp.text, labels, ps.num_labels)
        np.testing.assert_allclose(res.presence, expected, rtol=1e-4, atol=1e-6)
        assert np.all((res.presence >= 0) & (res.presence <= 1))
        if not ps.background:
            assert res.presence[0] == 0
            assert res.presence[1:].sum() == pytest.approx(1.0, abs=1e-5)
        else:
            assert res.presence.sum() <= 1 + 1e-5


# ------------------------------------------------------------------ probabilities, labels (5.4, 5.5)


def test_no_background_names(make):
    seg = make(prob_threshold=0.0)
    (res,) = segment(seg, [image(48, 80, 13)], PS_NOBG, return_probs=True)
    assert np.all(res.probs[0] == 0)  # class 0 has no names
    np.testing.assert_allclose(res.probs[1:].sum(0), 1.0, atol=1e-5)  # one name per class
    assert res.labels.min() >= 1  # threshold 0: nothing is sent to 0
    np.testing.assert_array_equal(res.labels, res.probs.argmax(0))


def test_threshold_sends_low_probability_pixels_to_zero(make):
    img = image(48, 80, 14)
    (free,) = segment(make(prob_threshold=0.0), [img], PS_NOBG, return_probs=True)
    best = free.probs.max(0)
    thr = float(np.quantile(best, 0.5))
    (cut,) = segment(make(prob_threshold=thr), [img], PS_NOBG, return_probs=True)
    np.testing.assert_array_equal(cut.probs, free.probs)  # the threshold only touches labels
    expected = np.where(best < thr, 0, free.probs.argmax(0))
    np.testing.assert_array_equal(cut.labels, expected)
    assert 0 < (cut.labels == 0).sum() < cut.labels.size


def test_synonyms_and_background_take_the_max_over_names(make):
    """Label probabilities are maxima of the name softmax: a prompt set that
    groups the same names into synonyms and background gives per-label maxima
    of the flat prompt set's per-name probabilities."""
    seg = make(prob_threshold=0.1)
    img = image(48, 80, 15)
    (grouped,) = segment(seg, [img], PS_BG, return_probs=True)
    (flat,) = segment(seg, [img], PS_FLAT, return_probs=True)
    f = flat.probs  # label 0 empty, labels 1..6 = sky, wall, cat, kitty, dog, car
    assert np.all(f[0] == 0)
    expected = np.stack([np.maximum(f[1], f[2]), np.maximum(f[3], f[4]), f[5], f[6]])
    np.testing.assert_allclose(grouped.probs, expected, rtol=1e-6, atol=1e-7)
    best = expected.max(0)
    np.testing.assert_array_equal(grouped.labels, np.where(best < 0.1, 0, expected.argmax(0)))
    # the presence prior follows the same rule
    fp = flat.presence
    np.testing.assert_allclose(grouped.presence, [max(fp[1], fp[2]), max(fp[3], fp[4]), fp[5], fp[6]],
                               rtol=1e-6, atol=1e-7)


def manual_prompts(seg: Segmenter, num_classes: int, seed: int = 0) -> PreparedPrompts:
    """A prepared prompt set with random unit text embeddings (no text
    encoding: hundreds of names would take long on the tiny text tower)."""
    ps = PromptSet(classes=tuple((f"class {i}",) for i in range(num_classes)))
    names, labels = ps.flat_names()
    dim = seg.models.clip.text_projection.shape[1]
    text = torch.nn.functional.normalize(
        torch.randn(len(names), dim, generator=torch.Generator().manual_seed(seed)), dim=-1)
    clusters = cluster_names(text, seg.config.cluster_threshold)
    onehot = torch.from_numpy(clusters[None, :] == np.arange(clusters.max() + 1)[:, None])
    return PreparedPrompts(prompt_set=ps, prompt_id=99, names=tuple(names),
                           name_labels=torch.tensor(labels), text=text, clusters=clusters,
                           cluster_onehot=onehot)


@pytest.mark.parametrize("num_classes,dtype", [(255, np.uint8), (300, np.uint16)])
def test_label_dtype_by_class_count(make, num_classes, dtype):
    seg = make(prob_threshold=0.0, logit_scale=400.0)
    pp = manual_prompts(seg, num_classes)
    (res,) = seg.segment([image(32, 48, 16)], pp, return_probs=True)
    assert res.labels.dtype == dtype
    assert res.probs.shape == (num_classes + 1, 32, 48)
    np.testing.assert_array_equal(res.labels, res.probs.argmax(0))
    assert len(res.class_names) == num_classes + 1 and res.prompt_id == 99


# ------------------------------------------------------------------ prompts preparation


def test_prepare_prompts(whole, tiny_models):
    pp = whole.prepare_prompts(PS_BG)
    assert pp.names == ("sky", "wall", "cat", "kitty", "dog", "car")
    assert pp.name_labels.tolist() == [0, 0, 1, 1, 2, 3]
    assert pp.class_names == ["background", "cat", "dog", "car"] and pp.num_labels == 4
    fresh = whole.text_embedder.encode_fresh(list(pp.names))
    torch.testing.assert_close(pp.text, fresh, rtol=1e-6, atol=1e-6)  # cached == fresh
    np.testing.assert_array_equal(pp.clusters, cluster_names(pp.text, whole.config.cluster_threshold))
    assert pp.cluster_onehot.shape == (pp.clusters.max() + 1, 6)
    assert pp.cluster_onehot.sum(0).tolist() == [1] * 6
    pp2 = whole.prepare_prompts(PS_BG)
    assert pp2.prompt_id > pp.prompt_id
    assert whole.prepare_prompts(PS_BG, prompt_id=7).prompt_id == 7


def test_text_cache_in_weights_cache_dir(tiny_models, tmp_path):
    cfg = build_config(dict(BASE, weights_cache_dir=str(tmp_path)))
    first = Segmenter(cfg, models=tiny_models)
    assert first.text_embedder.cached_names == set()
    pp = first.prepare_prompts(PS_NOBG)
    second = Segmenter(cfg, models=tiny_models)
    assert second.text_embedder.cached_names == {"cat", "dog", "car", "sky"}  # read from disk
    torch.testing.assert_close(second.prepare_prompts(PS_NOBG).text, pp.text, rtol=0, atol=0)
    # random weights never write or read the disk cache
    rand = dataclasses.replace(tiny_models, random_weights=True)
    assert Segmenter(cfg, models=rand).text_embedder.cached_names == set()


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("bad,match", [
    (np.zeros((32, 32, 3), np.float32), "uint8"),
    (np.zeros((32, 32), np.uint8), r"\(H, W, 3\)"),
    (np.zeros((32, 32, 4), np.uint8), r"\(H, W, 3\)"),
    (np.zeros((0, 32, 3), np.uint8), "zero size"),
    (np.zeros((32, 0, 3), np.uint8), "zero size"),
    ([[1, 2, 3]], "numpy array"),
])
def test_bad_images(whole, prompts_bg, bad, match):
    with pytest.raises(ValueError, match=match) as info:
        whole.segment([image(32, 32), bad], prompts_bg)
    assert "image 1" in str(info.value)


def test_bad_output_size(whole, prompts_bg):
    with pytest.raises(ValueError, match="output_size"):
        whole.segment([image(32, 32)], prompts_bg, output_size="native")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_device_without_cuda(tiny_models, device):
    with pytest.raises(ConfigError, match="'device'"):
        Segmenter(build_config(dict(BASE, device=device)), models=tiny_models)
    with pytest.raises(ConfigError, match="'device'"):
        resolve_device(device)


@pytest.mark.parametrize("device", ["gpu", "cuda:", "CPU", "mps0"])
def test_unknown_device(tiny_models, device):
    with pytest.raises(ConfigError, match="'device'"):
        build_config(dict(BASE, device=device))
    with pytest.raises(ConfigError, match="'device'"):
        resolve_device(device)


def test_devices_and_precision():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("fp32", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ConfigError, match="'precision'"):
        resolve_precision("fp16", torch.device("cpu"))


def test_bf16_on_cpu_runs_close_to_fp32(make, prompts_bg):
    img = image(48, 80, 17)
    (a,) = make().segment([img], prompts_bg, return_probs=True)
    (b,) = make(precision="bf16").segment([img], prompts_bg, return_probs=True)
    assert b.labels.dtype == np.uint8 and b.probs.dtype == np.float32
    assert np.abs(a.probs - b.probs).mean() < 0.1


def test_unknown_preset():
    with pytest.raises(ConfigError, match="'preset'"):
        build_config(dict(BASE, preset="pascal"))


def test_missing_weight_files(tmp_path, tiny_weights):
    with pytest.raises(WeightsError, match="'clip_weights'"):
        Segmenter(build_config(dict(BASE, clip_weights=str(tmp_path / "clip.pt"))))
    with pytest.raises(WeightsError, match="'dino_weights'"):
        Segmenter(build_config(dict(BASE, clip_weights=tiny_weights[0],
                                    dino_weights=str(tmp_path / "dino.pth"))))


def test_empty_prompts():
    with pytest.raises(PromptError):
        prompt_set_from_settings([], "", [])
    with pytest.raises(PromptError):
        prompt_set_from_settings(" ;, | ", "", [])
    with pytest.raises(PromptError):
        PromptSet(classes=())


# ------------------------------------------------------------------ visualisation


def test_palette_and_overlay(whole, prompts_bg):
    colors = palette(300)
    assert colors.shape == (300, 3) and colors.dtype == np.uint8
    assert np.all(colors[0] == 0)
    np.testing.assert_array_equal(palette(5), colors[:5])  # a label keeps its colour
    img = image(48, 80, 18)
    (res,) = whole.segment([img], prompts_bg)
    out = overlay(img, res.labels, palette(4), alpha=0.5)
    assert out.shape == img.shape and out.dtype == np.uint8
    bg = res.labels == 0
    np.testing.assert_array_equal(out[bg], img[bg])
    fg = ~bg
    expected = np.round(img.astype(np.float32) * 0.5 + palette(4)[res.labels].astype(np.float32) * 0.5)
    np.testing.assert_array_equal(out[fg], expected[fg].astype(np.uint8))
    with pytest.raises(ValueError):
        overlay(img, res.labels[:10], palette(4))
    with pytest.raises(ValueError):
        overlay(img, res.labels, palette(4), alpha=1.5)


# ------------------------------------------------------------------ reconfiguration


def test_with_config_equals_a_fresh_segmenter(tiny_models, text_cache_dir):
    base = dict(BASE, weights_cache_dir=text_cache_dir)
    first = Segmenter(build_config(dict(base, prob_threshold=0.0)), models=tiny_models)
    changes = dict(prob_threshold=0.2, gaussian_std=2.0, slide_crop=48, slide_stride=24,
                   attention="sequential", cluster_threshold=0.5)
    other = first.with_config(first.config.replace(**changes))
    fresh = Segmenter(build_config(dict(base, **changes)), models=tiny_models)
    assert other.text_embedder is first.text_embedder and other.models is first.models
    assert first.config.prob_threshold == 0.0 and first.params.attention == "spectral"
    ps = build_prompt_set([("cat",), ("dog", "puppy")], ["sky"])
    img = image(70, 90, 3)
    got = other.segment([img], other.prepare_prompts(ps), return_probs=True)[0]
    want = fresh.segment([img], fresh.prepare_prompts(ps), return_probs=True)[0]
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.probs, want.probs, atol=1e-6)


@pytest.mark.parametrize("name,value", [("device", "cuda"), ("clip_weights", "random"),
                                        ("precision", "bf16")])
def test_with_config_refuses_model_settings(whole, name, value):
    with pytest.raises(ConfigError, match=name):
        whole.with_config(whole.config.replace(**{name: value}))


# A changed value per model setting; kept next to the group so that a new
# model setting without a line here fails the test below.
MODEL_CHANGES = dict(clip_model="ViT-B-32", clip_weights="random", dino_model="vit_small_patch8_224",
                     dino_weights="random", weights_cache_dir="/elsewhere", device="cuda:1",
                     precision="bf16", compile="default", cpu_kernels="torch")


def test_with_config_refuses_every_setting_of_the_model_group(whole):
    model_settings = MODEL_SETTINGS
    assert model_settings == group_names(MODEL)
    assert set(MODEL_CHANGES) == set(model_settings)
    for name, value in MODEL_CHANGES.items():
        with pytest.raises(ConfigError, match=f"parameter '{name}' selects the models"):
            whole.with_config(whole.config.replace(**{name: value}))
    # every other setting is the algorithm's or the prompts': accepted
    other = whole.with_config(whole.config.replace(preset="voc20", k_eigen=3, prompts=["cat"]))
    assert other.params.k_eigen == 3 and other.models is whole.models


# ------------------------------------------------------------------ stage timing


@pytest.mark.parametrize("settings", [{}, SLIDE, dict(SLIDE, crop_global_vector=True),
                                      dict(attention="vanilla")])
def test_timings_report_every_stage(make, prompts_bg, settings):
    seg = make(**settings)
    results = seg.segment([image(40, 72, 1), image(64, 64, 2)], prompts_bg)
    timings = results[0].timings_ms
    assert list(timings) == [*STAGES, "total"]
    assert all(r.timings_ms == timings and r.timings_ms is not timings for r in results[1:])
    assert all(v >= 0 for v in timings.values())
    assert timings["total"] >= sum(timings[s] for s in STAGES) - 0.01  # stages do not overlap
    for stage in ("preprocess", "clip", "spectral", "head", "postprocess"):
        assert timings[stage] > 0, stage
    # vanilla attention has no DINO pass
    assert (timings["dino"] == 0) == (seg.config.attention == "vanilla")
    # each call starts from zero: a smaller call's stages fit in its own total
    again = seg.segment([image(20, 20, 1)], prompts_bg)[0].timings_ms
    assert sum(again[s] for s in STAGES) <= again["total"] + 0.01


def test_stage_timer_adds_up_syncs_and_restarts():
    synced = []
    timer = StageTimer(("a", "b"), sync=lambda: synced.append(1))
    timer.start()
    with timer("a"):
        sum(range(10000))
    with timer("a", sync=False):
        pass
    with timer("b"):
        pass
    first = timer.timings_ms()
    assert list(first) == ["a", "b", "total"] and first["a"] > 0
    assert first["total"] >= first["a"] + first["b"] - 0.01
    assert synced == [1, 1]  # once per synced stage, never for sync=False
    with pytest.raises(KeyError, match="unknown stage 'c'"), timer("c"):
        pass
    timer.start()
    assert timer.timings_ms()["a"] == 0.0
    assert StageTimer(("a",)).timings_ms()["a"] == 0.0  # no sync on the CPU: nothing to call


def test_with_config_has_its_own_timer(whole):
    other = whole.with_config(whole.config.replace(k_eigen=3))
    assert other._timer is not whole._timer
