"""What is in the picture (docs/algorithm.md 10): ``describe`` ranks a
vocabulary by the presence prior, checked against numpy on the same
features; it reports what ``segment`` reports as presence; the shipped
vocabulary is the presets' union; a vocabulary encodes in the background;
the text-embedding cache stays within its bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cass_ros.core.config import build_config
from cass_ros.core.prompts import build_prompt_set
from cass_ros.core.queries.describe import describe, name_labels
from cass_ros.core.queries.vocabulary import (VOCABULARY_FILE, VocabularyEncoder,
                                              preset_vocabulary, read_vocabulary)
from cass_ros.core.segmenter import Segmenter
from cass_ros.core.text import TextEmbedder

ENTRIES = [("cat", "kitty"), ("dog",), ("car", "automobile"), ("tree",), ("sky",), ("road",)]


@pytest.fixture(scope="module")
def make(tiny_models, text_cache_dir):
    cache: dict = {}

    def build(**settings) -> Segmenter:
        key = tuple(sorted(settings.items()))
        if key not in cache:
            cfg = build_config(dict(device="cpu", short_side=64,
                                    weights_cache_dir=text_cache_dir, **settings))
            cache[key] = Segmenter(cfg, models=tiny_models)
        return cache[key]

    return build


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(9)
    return [rng.integers(0, 256, (64, 80, 3), dtype=np.uint8),
            rng.integers(0, 256, (72, 64, 3), dtype=np.uint8)]


def _numpy_ranking(features, entries, text: np.ndarray) -> list[list[tuple[str, float]]]:
    """Independent: per image, cosine similarity of each crop's global vector
    to each name, max over the image's crops, softmax(100 r), max over each
    entry's names; sorted by presence (stable)."""
    names, labels = name_labels(entries)
    out = []
    for i in range(len(features)):
        rows = [grp.g[j].double().numpy() for grp in features.groups
                for j, owner in enumerate(grp.images) if owner == i]
        g = np.stack(rows)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        r = (g @ text.astype(np.float64).T).max(0)                      # (C,)
        p = np.exp(100.0 * (r - r.max()))
        p /= p.sum()
        per = np.zeros(len(entries))
        for name_p, label in zip(p, labels):
            per[label] = max(per[label], name_p)
        order = sorted(range(len(entries)), key=lambda j: -per[j])
        out.append([(entries[j][0], per[j]) for j in order])
    return out


@pytest.mark.parametrize("settings", [{}, {"slide_crop": 32, "slide_stride": 20},
                                      {"slide_crop": 32, "slide_stride": 20,
                                       "crop_global_vector": True}])
def test_ranking_equals_numpy_on_the_same_features(make, settings) -> None:
    seg = make(**settings)
    features = seg.encode(_images())
    names, _ = name_labels(ENTRIES)
    text = seg.text_embedder.encode(names)
    got = describe(features, ENTRIES, text, top_k=4)
    want = _numpy_ranking(features, ENTRIES, text.numpy())
    for g, w in zip(got, want):
        assert len(g) == 4
        assert [r.name for r in g] == [n for n, _ in w[:4]]
        np.testing.assert_allclose([r.presence for r in g], [p for _, p in w[:4]], atol=1e-5)
        assert all(a.presence >= b.presence for a, b in zip(g, g[1:]))


def test_describe_reports_what_segment_reports_as_presence(make) -> None:
    seg = make(slide_crop=32, slide_stride=20)
    imgs = _images()
    prompts = seg.prepare_prompts(build_prompt_set(ENTRIES))
    results = seg.segment(imgs, prompts)
    ranked = describe(seg.encode(imgs), ENTRIES, prompts.text.cpu(), top_k=len(ENTRIES))
    for res, rows in zip(results, ranked):
        by_name = {r.name: r.presence for r in rows}
        for k, name in enumerate(res.class_names[1:], start=1):
            assert by_name[name] == pytest.approx(float(res.presence[k]), abs=1e-6)


def test_describe_checks_its_arguments(make) -> None:
    seg = make()
    features = seg.encode(_images()[:1])
    text = seg.text_embedder.encode(name_labels(ENTRIES)[0])
    with pytest.raises(ValueError, match="8 text embeddings for 9 names"):
        describe(features, ENTRIES + [("door",)], text[:8])
    with pytest.raises(ValueError, match="top_k"):
        describe(features, ENTRIES, text, top_k=0)
    assert len(describe(features, ENTRIES, text, top_k=100)[0]) == len(ENTRIES)


def test_shipped_vocabulary_is_the_presets_union() -> None:
    shipped = read_vocabulary(VOCABULARY_FILE)
    assert shipped == preset_vocabulary()
    names = [n for e in shipped for n in e]
    assert len(names) == len(set(names))                       # no name twice
    assert ("aeroplane", "airplane") in shipped
    assert len(shipped) > 200
    for must in ("person", "car", "road", "wall", "bed"):      # from several presets
        assert any(must in e for e in shipped)


def test_vocabulary_encodes_in_the_background(make, tmp_path) -> None:
    seg = make()
    embedder = TextEmbedder(seg.models.clip, seg.models.tokenizer, seg.device, "vocab-test",
                            str(tmp_path), batch_names=4)
    entries = [(f"thing {i}",) for i in range(20)] + [("alpha", "beta")]
    enc = VocabularyEncoder(embedder, entries)
    assert enc.text() is None and enc.progress() == (0, 22)
    enc.start()
    enc.start()                                                # once only
    assert enc.join(120)
    assert enc.error is None and enc.progress() == (22, 22)
    text = enc.text()
    assert text.shape[0] == 22
    torch.testing.assert_close(text, embedder.encode_fresh(enc.names), rtol=0, atol=1e-6)
    # on disk: a new embedder on the same folder has them without encoding
    again = TextEmbedder(seg.models.clip, seg.models.tokenizer, seg.device, "vocab-test",
                         str(tmp_path))
    assert set(enc.names) <= again.cached_names


def test_text_cache_stays_within_its_bound(make, tmp_path) -> None:
    seg = make()
    embedder = TextEmbedder(seg.models.clip, seg.models.tokenizer, seg.device, "bound-test",
                            str(tmp_path), max_names=10)
    first = embedder.encode(["keep me"])
    for i in range(40):
        embedder.encode([f"question {i}", "keep me"])          # "keep me" stays recent
        assert len(embedder.cached_names) <= 10
    assert "keep me" in embedder.cached_names and "question 0" not in embedder.cached_names
    torch.testing.assert_close(embedder.encode(["keep me"]), first, rtol=0, atol=0)
    again = TextEmbedder(seg.models.clip, seg.models.tokenizer, seg.device, "bound-test",
                         str(tmp_path), max_names=10)
    assert len(again.cached_names) <= 10
    # an evicted name is encoded again, to the same vector
    torch.testing.assert_close(embedder.encode(["question 0"]),
                               embedder.encode_fresh(["question 0"]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="max_names"):
        TextEmbedder(seg.models.clip, seg.models.tokenizer, seg.device, "x", None, max_names=0)
