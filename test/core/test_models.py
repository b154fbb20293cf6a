"""Model loading (local checkpoints in the OpenAI / DINO key formats, the
fp16 rounding of 8, errors) and the ViT pieces of vit_features
(position-embedding resize of 2.4, CLIP's split last block, DINO's keys),
each against an independent computation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from cass_ros.core.config import build_config
from cass_ros.core.models import (
    WeightsError,
    clip_from_state_dict,
    dino_from_state_dict,
    load_clip,
    load_dino,
    load_models,
    save_tiny_random_checkpoints,
    tiny_random_state_dicts,
)
from cass_ros.core.prompts import build_prompt_set
from cass_ros.core.segmenter import Segmenter
from cass_ros.core.vit_features import ClipVision, DinoKeys, interpolate_pos_embed

DINO_NAME = "vit_base_patch8_224.dino"
PS = build_prompt_set([("cat",), ("dog",)], background=["sky"])


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------ position embeddings (2.4)


def cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Keys' cubic convolution weights for offsets -1, 0, 1, 2 (PyTorch's A)."""
    def w(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
        if x < 2:
            return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
        return 0.0
    return [w(t + 1), w(t), w(1 - t), w(2 - t)]


def bicubic_matrix(n_out: int, n_in: int, scale: float) -> np.ndarray:
    """(n_out, n_in) 1-D bicubic interpolation, align_corners=False, source
    coordinate (i + 0.5) / scale - 0.5, border indices clamped."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) / scale - 0.5
        i0 = math.floor(src)
        for off, wt in zip((-1, 0, 1, 2), cubic_weights(src - i0)):
            m[i, min(max(i0 + off, 0), n_in - 1)] += wt
    return m


def independent_pos_embed(pos: np.ndarray, grid: tuple[int, int], n0: int) -> np.ndarray:
    gh, gw = grid
    sh, sw = (gh + 0.1) / n0, (gw + 0.1) / n0
    assert math.floor(n0 * sh) == gh and math.floor(n0 * sw) == gw
    table = pos[1:].reshape(n0, n0, -1)
    mh, mw = bicubic_matrix(gh, n0, sh), bicubic_matrix(gw, n0, sw)
    out = np.einsum("ij,jkc,lk->ilc", mh, table, mw).reshape(gh * gw, -1)
    return np.concatenate([pos[:1], out], 0)


@pytest.mark.parametrize("n0,grid", [(4, (2, 2)), (4, (6, 7)), (4, (3, 5)), (14, (21, 28)),
                                     (14, (20, 37)), (28, (28, 40)), (28, (7, 7)), (4, (1, 9))])
def test_interpolate_pos_embed_against_independent_bicubic(n0, grid):
    gen = torch.Generator().manual_seed(n0 + grid[0])
    pos = torch.randn(1 + n0 * n0, 24, generator=gen)
    out = interpolate_pos_embed(pos, grid, n0)
    assert out.shape == (1 + grid[0] * grid[1], 24) and out.dtype == pos.dtype
    assert torch.equal(out[0], pos[0])  # the class token is kept
    ref = independent_pos_embed(pos.double().numpy(), grid, n0)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_interpolate_pos_embed_uses_the_scale_factor_not_the_size():
    # (n + 0.1) / n0 moves the sampling positions: not the same as size=(n, n)
    pos = torch.randn(1 + 14 * 14, 8, generator=torch.Generator().manual_seed(0))
    out = interpolate_pos_embed(pos, (21, 21), 14)
    by_size = torch.nn.functional.interpolate(
        pos[1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2), size=(21, 21), mode="bicubic",
        align_corners=False).permute(0, 2, 3, 1).reshape(-1, 8)
    assert not torch.allclose(out[1:], by_size, atol=1e-4)


def test_interpolate_pos_embed_identity_at_pretrained_grid():
    pos = torch.randn(1 + 16, 8)
    assert interpolate_pos_embed(pos, (4, 4), 4) is pos
    # a non-square grid with the pretrained token count is resized (no quirk)
    assert interpolate_pos_embed(pos, (2, 8), 4).shape == (17, 8)
    assert not torch.equal(interpolate_pos_embed(pos, (2, 8), 4), pos)


# ------------------------------------------------------------------ the ViT pieces


@pytest.fixture(scope="module")
def clip_vision(tiny_models):
    return ClipVision(tiny_models.clip)


@pytest.fixture(scope="module")
def dino_keys(tiny_models):
    return DinoKeys(tiny_models.dino)


def test_clip_split_equals_open_clip_at_pretrained_size(tiny_models, clip_vision):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = clip_vision.encode_image(x)
        ref = tiny_models.clip.encode_image(x)
        tokens, grid = clip_vision.tokens_before_last(x)
    assert grid == (4, 4) and tokens.shape == (2, 17, 128)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert clip_vision.num_heads == 2 and clip_vision.pretrained_grid == 4 and clip_vision.patch == 16


def test_clip_vanilla_last_block_is_patch_only_attention(tiny_models, clip_vision):
    """q, k, v split and the reduced output (3.2, 3.9) against torch's own
    MultiheadAttention of the last block run on the patch tokens only (the
    class token dropped from q, k and v), no residual, no MLP."""
    x = torch.randn(2, 3, 48, 80, generator=torch.Generator().manual_seed(1))
    last = tiny_models.clip.visual.transformer.resblocks[-1]
    with torch.no_grad():
        tokens, grid = clip_vision.tokens_before_last(x)
        assert grid == (3, 5)
        q, k, v = clip_vision.last_qkv(tokens)
        assert q.shape == k.shape == v.shape == (2, 2, 15, 64)
        heads = torch.softmax(q @ k.transpose(-1, -2) / 8.0, -1) @ v
        ours = clip_vision.reduced_output(heads)
        y = last.ln_1(tokens)[:, 1:]
        attn, _ = last.attn(y, y, y, need_weights=False)
        ref = tiny_models.clip.visual.ln_post(attn) @ tiny_models.clip.visual.proj
    assert ours.shape == (2, 15, 128)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_clip_global_vector_is_the_normal_last_block(tiny_models, clip_vision):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        tokens, _ = clip_vision.tokens_before_last(x)
        g = clip_vision.global_vector(tokens)
        out = tiny_models.clip.visual.transformer.resblocks[-1](tokens)
        ref = tiny_models.clip.visual.ln_post(out[:, 0]) @ tiny_models.clip.visual.proj
    torch.testing.assert_close(g, ref)


def test_clip_other_sizes_use_the_resized_position_table(tiny_models, clip_vision):
    x = torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(3))
    v = tiny_models.clip.visual
    with torch.no_grad():
        tokens, grid = clip_vision.tokens_before_last(x)
        feat = v.conv1(x).flatten(2).transpose(1, 2)
        seq = torch.cat([v.class_embedding.expand(1, 1, -1), feat], 1)
        seq = seq + interpolate_pos_embed(v.positional_embedding, (6, 4), 4)
        seq = v.ln_pre(seq)
        for blk in v.transformer.resblocks[:-1]:
            seq = blk(seq)
    assert grid == (6, 4)
    torch.testing.assert_close(tokens, seq)


def test_dino_keys_equal_the_qkv_of_timm_at_pretrained_size(tiny_models, dino_keys):
    dino = tiny_models.dino
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    captured = {}
    hook = dino.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: captured.setdefault("qkv", o))
    try:
        with torch.no_grad():
            dino(x)
            keys, grid = dino_keys.last_keys(x)
    finally:
        hook.remove()
    qkv = captured["qkv"]  # (B, 1 + N, 3 * D): q | k | v, heads of 64 inside each
    b, n1, _ = qkv.shape
    ref = qkv[:, 1:, 128:256].reshape(b, n1 - 1, 2, 64).permute(0, 2, 1, 3)
    assert grid == (8, 8) and keys.shape == (2, 2, 64, 64)
    torch.testing.assert_close(keys, ref)
    with torch.no_grad():
        k2, g2 = dino_keys.last_keys(torch.randn(1, 3, 40, 40))
    assert g2 == (5, 5) and k2.shape == (1, 2, 25, 64)


# ------------------------------------------------------------------ checkpoints


def test_tiny_state_dicts_use_openai_and_dino_key_names(tiny_state_dicts):
    clip_sd, dino_sd = tiny_state_dicts
    for key in ("visual.conv1.weight", "visual.proj", "visual.positional_embedding",
                "visual.transformer.resblocks.1.attn.in_proj_weight", "text_projection",
                "token_embedding.weight", "transformer.resblocks.0.mlp.c_fc.weight"):
        assert key in clip_sd
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.1.attn.qkv.weight",
                "norm.weight"):
        assert key in dino_sd
    a, b = tiny_random_state_dicts(seed=0)
    assert all(torch.equal(a[k], clip_sd[k]) for k in a)
    c, _ = tiny_random_state_dicts(seed=1)
    assert not torch.equal(c["visual.proj"], clip_sd["visual.proj"])


def test_clip_loader_rounds_through_fp16(tiny_state_dicts, tiny_models):
    """Section 8: OpenAI's loader reads linear / conv / attention weights and
    the projections as their fp16 rounding; LayerNorms and embeddings stay."""
    clip_sd, _ = tiny_state_dicts
    loaded = tiny_models.clip.state_dict()
    for key in ("visual.conv1.weight", "visual.proj", "text_projection",
                "visual.transformer.resblocks.0.attn.in_proj_weight",
                "visual.transformer.resblocks.1.mlp.c_fc.weight"):
        assert torch.equal(loaded[key], clip_sd[key].half().float()), key
    for key in ("visual.ln_pre.weight", "visual.positional_embedding", "visual.class_embedding"):
        assert torch.equal(loaded[key], clip_sd[key]), key
    assert all(p.dtype == torch.float32 for p in tiny_models.clip.parameters())


class _Holder(nn.Module):
    """A module tree that holds tensors under given dotted names."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def torchscript_archive(state: dict[str, torch.Tensor], path) -> None:
    """An OpenAI-style TorchScript file: a scripted module whose state dict
    has the OpenAI key names, plus the three scalar entries OpenAI's archives
    carry (input_resolution, context_length, vocab_size)."""
    root = _Holder()
    extra = {"input_resolution": torch.tensor(64), "context_length": torch.tensor(77),
             "vocab_size": torch.tensor(state["token_embedding.weight"].shape[0])}
    for key, value in {**state, **extra}.items():
        *parents, leaf = key.split(".")
        mod = root
        for p in parents:
            if not hasattr(mod, p):
                mod.add_module(p, _Holder())
            mod = getattr(mod, p)
        mod.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(root), str(path))


@pytest.fixture(scope="module")
def clip_files(tiny_state_dicts, tmp_path_factory):
    clip_sd, _ = tiny_state_dicts
    d = tmp_path_factory.mktemp("clip_ckpt")
    files = {}
    files["plain"] = d / "plain.pt"
    torch.save(dict(clip_sd), files["plain"])
    files["wrapped"] = d / "wrapped.pth"
    torch.save({"state_dict": dict(clip_sd), "epoch": 3}, files["wrapped"])
    files["module"] = d / "module.ckpt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in clip_sd.items()}}, files["module"])
    files["fp16"] = d / "fp16.bin"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in clip_sd.items()}, files["fp16"])
    files["torchscript"] = d / "ViT-tiny.pt"
    torchscript_archive(clip_sd, files["torchscript"])
    return files


@pytest.fixture(scope="module")
def dino_files(tiny_state_dicts, tmp_path_factory):
    _, dino_sd = tiny_state_dicts
    d = tmp_path_factory.mktemp("dino_ckpt")
    gen = torch.Generator().manual_seed(0)
    head = {"head.weight": torch.randn(10, 128, generator=gen), "head.bias": torch.zeros(10)}
    files = {}
    files["plain"] = d / "plain.pth"
    torch.save(dict(dino_sd), files["plain"])
    files["with_head"] = d / "with_head.pth"
    torch.save({**dino_sd, **head}, files["with_head"])
    # DINO's training checkpoints: {'teacher': {'backbone.*', 'head.mlp.*'}}
    files["teacher"] = d / "checkpoint.pth"
    torch.save({"teacher": {**{f"backbone.{k}": v for k, v in dino_sd.items()},
                            "head.mlp.0.weight": torch.randn(4, 128, generator=gen)},
                "epoch": 100}, files["teacher"])
    files["module"] = d / "module.pth"
    torch.save({"model": {f"module.{k}": v for k, v in {**dino_sd, **head}.items()}}, files["module"])
    return files


@pytest.mark.parametrize("fmt", ["plain", "wrapped", "module", "fp16", "torchscript"])
def test_clip_checkpoint_formats(clip_files, tiny_models, tiny_state_dicts, fmt):
    cfg = build_config({"clip_weights": str(clip_files[fmt]), "device": "cpu"})
    model, clip_id, desc = load_clip(cfg)
    assert clip_id.startswith("file:") and str(clip_files[fmt]) in desc
    if fmt == "fp16":  # every float tensor of the file is fp16: all of them read rounded
        expected = clip_from_state_dict({k: v.half().float() if v.is_floating_point() else v
                                         for k, v in tiny_state_dicts[0].items()})
        assert same_state(model, expected)
        assert not same_state(model, tiny_models.clip)
    else:
        assert same_state(model, tiny_models.clip)


@pytest.mark.parametrize("fmt", ["plain", "with_head", "teacher", "module"])
def test_dino_checkpoint_formats(dino_files, tiny_models, fmt):
    cfg = build_config({"dino_weights": str(dino_files[fmt]), "device": "cpu"})
    model, desc = load_dino(cfg)
    assert str(dino_files[fmt]) in desc
    assert same_state(model, tiny_models.dino)


def test_segmenter_from_checkpoint_files_equals_in_memory(clip_files, dino_files, tiny_models,
                                                          tmp_path):
    # A cache of its own: both encode the names with the same kernels here
    # (the session's cache may hold embeddings that other tests encoded with
    # torch's linear, which differ from oneDNN's in the last bits).
    settings = dict(device="cpu", short_side=64, weights_cache_dir=str(tmp_path))
    from_files = Segmenter(build_config(dict(settings, clip_weights=str(clip_files["torchscript"]),
                                             dino_weights=str(dino_files["teacher"]))))
    assert not from_files.models.random_weights
    in_memory = Segmenter(build_config(settings), models=tiny_models)
    imgs = [rgb(48, 80, 1), rgb(64, 64, 2)]
    a = from_files.segment(imgs, from_files.prepare_prompts(PS), return_probs=True)
    b = in_memory.segment(imgs, in_memory.prepare_prompts(PS), return_probs=True)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.labels, y.labels)
        np.testing.assert_array_equal(x.probs, y.probs)
        np.testing.assert_array_equal(x.presence, y.presence)


def test_save_tiny_random_checkpoints_round_trip(tmp_path, tiny_models):
    clip_path, dino_path = save_tiny_random_checkpoints(tmp_path / "w", seed=0)
    models = load_models(build_config({"clip_weights": clip_path, "dino_weights": dino_path}))
    assert same_state(models.clip, tiny_models.clip)
    assert same_state(models.dino, tiny_models.dino)
    assert models.clip_id.startswith("file:") and not models.random_weights
    tokens = models.tokenizer(["a photo of a cat."])
    assert tokens.shape == (1, 77)


# ------------------------------------------------------------------ errors


def test_missing_files_name_the_parameter(tmp_path):
    with pytest.raises(WeightsError, match="'clip_weights'"):
        load_clip(build_config({"clip_weights": str(tmp_path / "nope.pt")}))
    with pytest.raises(WeightsError, match="'dino_weights'"):
        load_dino(build_config({"dino_weights": str(tmp_path / "nope.pth")}))
    with pytest.raises(WeightsError, match="'dino_weights'"):
        load_dino(build_config({"dino_weights": str(tmp_path / "no_suffix")}))


def test_bad_files_name_the_parameter(tmp_path, tiny_state_dicts):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match="'clip_weights'"):
        load_clip(build_config({"clip_weights": str(junk)}))
    with pytest.raises(WeightsError, match="'dino_weights'"):
        load_dino(build_config({"dino_weights": str(junk)}))
    # each file given to the other loader: wrong key names
    clip_sd, dino_sd = tiny_state_dicts
    torch.save(dict(dino_sd), tmp_path / "dino.pt")
    torch.save(dict(clip_sd), tmp_path / "clip.pt")
    with pytest.raises(WeightsError, match="'clip_weights'"):
        load_clip(build_config({"clip_weights": str(tmp_path / "dino.pt")}))
    with pytest.raises(WeightsError, match="'dino_weights'"):
        load_dino(build_config({"dino_weights": str(tmp_path / "clip.pt")}))


def test_mismatched_heads_are_refused(tmp_path, tiny_weights):
    import timm

    dino = timm.create_model(DINO_NAME, pretrained=False, num_classes=0, embed_dim=192, depth=2,
                             num_heads=3, img_size=64)
    torch.save(dino.state_dict(), tmp_path / "dino3.pth")
    assert DinoKeys(dino_from_state_dict(dino.state_dict(), DINO_NAME)).num_heads == 3
    with pytest.raises(WeightsError, match="'clip_model'"):
        load_models(build_config({"clip_weights": tiny_weights[0],
                                  "dino_weights": str(tmp_path / "dino3.pth")}))


def test_clip_from_state_dict_infers_the_architecture(tiny_state_dicts):
    model = clip_from_state_dict(dict(tiny_state_dicts[0]))
    v = ClipVision(model)
    assert v.pretrained_grid == 4 and v.patch == 16 and v.num_heads == 2
    assert model.visual.transformer.resblocks[-1].attn.embed_dim == 128
    assert not model.training
