"""Text embeddings and clustering (docs/algorithm.md section 1), the object
presence prior and text adjustment (section 4), against independent
computations written here from the specification."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

from cass_ros.core.presence import (
    PRESENCE_LOGIT_SCALE,
    adjust_text,
    class_presence,
    patch_logits,
    per_class_max,
    picked_names,
    presence_similarity,
)
from cass_ros.core.text import TextEmbedder, cluster_names, templates

# ------------------------------------------------------------------ templates and encoding


def test_templates_are_the_80_openai_imagenet_templates():
    ts = templates()
    assert len(ts) == 80
    assert ts[0]("cat") == "a bad photo of a cat."
    assert ts[-1]("cat") == "a tattoo of the cat."
    assert len({t("x") for t in ts}) == 80


def independent_text_embedding(clip, names):
    """Section 1.2 from scratch: 80 templates, open_clip's tokenizer, each
    embedding normalised, averaged, normalised again."""
    import open_clip
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    rows = []
    with torch.no_grad():
        for name in names:
            tokens = open_clip.tokenize([t(name) for t in OPENAI_IMAGENET_TEMPLATES])
            emb = clip.encode_text(tokens).double()
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(0)
            rows.append(mean / mean.norm())
    return torch.stack(rows)


@pytest.fixture(scope="module")
def embedder(tiny_models, text_cache_dir):
    return TextEmbedder(tiny_models.clip, tiny_models.tokenizer, torch.device("cpu"),
                        tiny_models.clip_id, text_cache_dir)


def test_encode_fresh_against_independent_computation(tiny_models, embedder):
    names = ["cat", "traffic light", "person"]
    fresh = embedder.encode_fresh(names)
    assert fresh.shape == (3, tiny_models.clip.text_projection.shape[1])
    assert fresh.dtype == torch.float32
    torch.testing.assert_close(fresh.norm(dim=-1), torch.ones(3))
    ref = independent_text_embedding(tiny_models.clip, names)
    torch.testing.assert_close(fresh.double(), ref, rtol=1e-5, atol=1e-5)


def test_cached_encode_equals_fresh_and_reuses_names(embedder):
    names = ["cat", "dog", "cat", "forklift"]
    cached = embedder.encode(names)
    assert cached.shape[0] == 4
    assert torch.equal(cached[0], cached[2])
    assert {"cat", "dog", "forklift"} <= embedder.cached_names
    again = embedder.encode(["forklift", "dog"])
    assert torch.equal(again, cached[[3, 1]])
    torch.testing.assert_close(cached, embedder.encode_fresh(names), rtol=1e-6, atol=1e-6)


def test_disk_cache_round_trip(tiny_models, tmp_path):
    cache = str(tmp_path / "cache")
    first = TextEmbedder(tiny_models.clip, tiny_models.tokenizer, torch.device("cpu"), "model-a", cache)
    assert first.cached_names == set()
    emb = first.encode(["pallet", "shelf"])
    files = list((tmp_path / "cache").rglob("*.pt"))
    assert len(files) == 1
    second = TextEmbedder(tiny_models.clip, tiny_models.tokenizer, torch.device("cpu"), "model-a", cache)
    assert second.cached_names == {"pallet", "shelf"}  # loaded from disk, nothing encoded
    assert torch.equal(second.encode(["shelf", "pallet"]), emb[[1, 0]])
    # another model id does not see these embeddings
    other = TextEmbedder(tiny_models.clip, tiny_models.tokenizer, torch.device("cpu"), "model-b", cache)
    assert other.cached_names == set()
    # a corrupt cache file is only a cache miss
    files[0].write_bytes(b"not a torch file")
    broken = TextEmbedder(tiny_models.clip, tiny_models.tokenizer, torch.device("cpu"), "model-a", cache)
    assert broken.cached_names == set()
    torch.testing.assert_close(broken.encode(["pallet"]), emb[:1], rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ clustering (1.3)


def independent_clusters(q: np.ndarray, threshold: float) -> np.ndarray:
    tree = linkage(pdist(np.asarray(q, np.float64), metric="cosine"), method="ward")
    return fcluster(tree, t=threshold, criterion="distance") - 1


def grouped_embeddings(seed: int, groups: int, per: int, dim: int = 32, spread: float = 0.05):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, dim))
    rows = [c + spread * rng.standard_normal(dim) for c in centres for _ in range(per)]
    rows = np.array(rows)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("threshold", [0.0, 0.02, 0.1, 0.5, 3.0, 100.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cluster_names_against_scipy(seed, threshold):
    q = grouped_embeddings(seed, groups=4, per=3)
    ids = cluster_names(q, threshold)
    assert ids.dtype.kind == "i"
    np.testing.assert_array_equal(ids, independent_clusters(q, threshold))
    assert ids.min() == 0 and set(ids) == set(range(ids.max() + 1))


def test_cluster_names_structure():
    q = grouped_embeddings(3, groups=3, per=4, spread=0.02)
    ids = cluster_names(torch.from_numpy(q).float(), 0.5)
    # three tight groups, far apart: one cluster per group
    assert len(set(ids)) == 3
    assert all(len(set(ids[i * 4:(i + 1) * 4])) == 1 for i in range(3))
    assert len(set(cluster_names(q, 0.0))) == 12
    assert len(set(cluster_names(q, 1e6))) == 1


def test_cluster_single_name_is_one_cluster():
    np.testing.assert_array_equal(cluster_names(np.ones((1, 8)), 0.1), [0])
    np.testing.assert_array_equal(cluster_names(np.ones((1, 8)), 0.0), [0])


def test_cluster_identical_names_join():
    q = grouped_embeddings(4, groups=2, per=1)
    q = np.concatenate([q, q[:1]])
    ids = cluster_names(q, 0.0)
    assert ids[0] == ids[2] != ids[1]


# ------------------------------------------------------------------ presence (4.2)


def test_presence_similarity_and_class_presence():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(2, 16, generator=gen)
    q = F.normalize(torch.randn(5, 16, generator=gen), dim=-1)
    r = presence_similarity(g, q)
    for b in range(2):
        gu = g[b] / g[b].norm()
        torch.testing.assert_close(r[b], q @ gu)
    labels = torch.tensor([1, 1, 2, 4, 4])  # label 0 and 3 have no names
    pres = class_presence(r, labels, 5)
    assert PRESENCE_LOGIT_SCALE == 100.0
    for b in range(2):
        p = torch.softmax(100.0 * r[b].double(), 0)
        expected = torch.tensor([0.0, max(p[0], p[1]), p[2], 0.0, max(p[3], p[4])])
        torch.testing.assert_close(pres[b].double(), expected, rtol=1e-5, atol=1e-7)
        assert pres[b].min() >= 0 and pres[b].max() <= 1


def test_per_class_max_along_any_dim():
    gen = torch.Generator().manual_seed(1)
    vals = torch.rand(4, 3, 5, generator=gen)
    labels = torch.tensor([2, 0, 2, 2])
    out = per_class_max(vals, labels, 4, dim=0)
    assert out.shape == (4, 3, 5)
    torch.testing.assert_close(out[0], vals[1])
    torch.testing.assert_close(out[2], vals[[0, 2, 3]].amax(0))
    assert torch.all(out[1] == 0) and torch.all(out[3] == 0)
    out2 = per_class_max(vals.permute(1, 0, 2), labels, 3, dim=1)
    torch.testing.assert_close(out2.permute(1, 0, 2)[:3], out[:3])


# ------------------------------------------------------------------ text adjustment (4.3)


def naive_adjust(p, q, r, clusters, alpha):
    """Per crop, per cluster, written from 4.3 with plain loops."""
    b = p.shape[0]
    out = q[None].repeat(b, 1, 1).clone()
    for bi in range(b):
        pu = p[bi] / p[bi].norm(dim=-1, keepdim=True)
        for m in sorted(set(clusters.tolist())):
            members = [i for i in range(len(clusters)) if clusters[i] == m]
            pick = members[0]
            for i in members[1:]:
                if r[bi, i] > r[bi, pick]:  # a tie keeps the first in name order
                    pick = i
            sims = pu @ q[pick]
            top2 = sorted(range(len(sims)), key=lambda n: -float(sims[n]))[:2]
            mean = pu[top2].mean(0)
            mean = mean / mean.norm()
            new = (1 - alpha) * q[pick] + alpha * mean
            out[bi, pick] = new / new.norm()
    return out


@pytest.mark.parametrize("alpha", [0.0, 0.03, 0.5])
def test_adjust_text_against_loop(alpha):
    gen = torch.Generator().manual_seed(2)
    b, n, e, c = 3, 11, 16, 7
    p = torch.randn(b, n, e, generator=gen, dtype=torch.float64)
    q = F.normalize(torch.randn(c, e, generator=gen, dtype=torch.float64), dim=-1)
    r = torch.randn(b, c, generator=gen, dtype=torch.float64)
    r[1, 3] = r[1, 5] = 10.0  # a tie inside cluster {1, 3, 5}: name 3 wins
    clusters = np.array([0, 1, 2, 1, 0, 1, 3])
    onehot = torch.from_numpy(clusters[None, :] == np.arange(4)[:, None])
    t = adjust_text(p, q, r, onehot, alpha)
    assert t.shape == (b, c, e)
    torch.testing.assert_close(t, naive_adjust(p, q, r, clusters, alpha), rtol=1e-12, atol=1e-12)
    if alpha > 0:
        # exactly one name per cluster moved, per crop
        moved = (t - q[None]).abs().amax(-1) > 1e-12
        assert moved.sum().item() == b * 4
        assert moved[1, 3] and not moved[1, 5]
    picks = picked_names(r, onehot)
    assert picks[1, 1].item() == 3


def test_adjust_text_single_patch():
    gen = torch.Generator().manual_seed(3)
    p = torch.randn(1, 1, 8, generator=gen, dtype=torch.float64)
    q = F.normalize(torch.randn(2, 8, generator=gen, dtype=torch.float64), dim=-1)
    r = torch.tensor([[0.1, 0.2]], dtype=torch.float64)
    onehot = torch.tensor([[True, True]])
    t = adjust_text(p, q, r, onehot, 0.2)
    new = 0.8 * q[1] + 0.2 * p[0, 0] / p[0, 0].norm()
    torch.testing.assert_close(t[0, 1], new / new.norm())
    torch.testing.assert_close(t[0, 0], q[0])


@pytest.mark.parametrize("beta", [0.0, 0.1, 1.0])
def test_patch_logits_formula(beta):
    gen = torch.Generator().manual_seed(4)
    p = torch.randn(2, 6, 8, generator=gen, dtype=torch.float64)
    t = F.normalize(torch.randn(2, 3, 8, generator=gen, dtype=torch.float64), dim=-1)
    r = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    out = patch_logits(p, t, r, beta)
    for bi in range(2):
        for i in range(6):
            pu = p[bi, i] / p[bi, i].norm()
            expected = (1 - beta) * (t[bi] @ pu) + beta * r[bi]
            torch.testing.assert_close(out[bi, i], expected)


@pytest.mark.parametrize("kernels", ["torch", "onednn"])
def test_prefix_text_encoding_equals_open_clip(tiny_models, kernels):
    """The causal prefix shortcut, its blocks computed by vit_blocks with
    either CPU linear, gives open_clip's own encode_text."""
    import open_clip

    from cass_ros.core.cpu_kernels import select_linear
    from cass_ros.core.text import encode_text, templates

    linear = select_linear(kernels, torch.device("cpu"), None, compiled=False)
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=77)
    tokens = tok([t(n) for n in ("cat", "chest of drawers", "x") for t in templates()[:10]])
    with torch.no_grad():
        want = tiny_models.clip.encode_text(tokens)
        got = encode_text(tiny_models.clip, tokens, linear)
    assert tokens.argmax(-1).max() < 20  # the shortcut really is shorter than 77
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
