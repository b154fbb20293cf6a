"""core.vit_blocks: the trunks' blocks computed from the libraries' weights
agree with the libraries' own forward (timm's Block for DINO, open_clip's
ResidualAttentionBlock for CLIP), with torch's linear and with oneDNN's;
blocks of another layout run the library's forward. Tiny random models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cass_ros.core.cpu_kernels import onednn_available, onednn_linear
from cass_ros.core.vit_blocks import attend, block_function, open_clip_block, timm_block

LINEARS = [pytest.param(F.linear, id="torch")] + [pytest.param(
    onednn_linear, id="onednn",
    marks=pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN linear"))]


def tokens(batch: int, n: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, n, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("linear", LINEARS)
def test_dino_blocks_match_timm(tiny_models, linear):
    blocks = tiny_models.dino.blocks
    x = tokens(2, 1 + 7 * 5, blocks[0].norm1.normalized_shape[0], seed=1)
    with torch.inference_mode():
        for blk in blocks:
            fn = block_function(blk)
            want = blk(x)
            torch.testing.assert_close(fn(x, linear), want, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(timm_block(blk, x, linear), want, atol=2e-5, rtol=1e-5)
            x = want


@pytest.mark.parametrize("linear", LINEARS)
def test_clip_blocks_match_open_clip(tiny_models, linear):
    transformer = tiny_models.clip.visual.transformer
    assert transformer.batch_first
    x = tokens(3, 1 + 4 * 6, transformer.width, seed=2)
    with torch.inference_mode():
        for blk in transformer.resblocks:
            want = blk(x)
            torch.testing.assert_close(block_function(blk)(x, linear), want, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(open_clip_block(blk, x, linear), want, atol=2e-5,
                                       rtol=1e-5)
            x = want


@pytest.mark.parametrize("linear", LINEARS)
def test_text_blocks_match_open_clip_under_the_causal_mask(tiny_models, linear):
    transformer = tiny_models.clip.transformer
    n = 11
    mask = tiny_models.clip.attn_mask[:n, :n]
    assert torch.isinf(mask).sum() == n * (n - 1) // 2
    x = tokens(4, n, transformer.width, seed=5)
    with torch.inference_mode():
        for blk in transformer.resblocks:
            want = blk(x, attn_mask=mask)
            torch.testing.assert_close(block_function(blk)(x, linear, mask), want, atol=2e-5,
                                       rtol=1e-5)
            x = want


def test_attend_is_per_head_softmax_attention():
    """Against a float64 loop over heads written out."""
    b, n, heads, d = 2, 9, 3, 4
    qkv = tokens(b, n, 3 * heads * d, seed=3)
    got = attend(qkv, heads)                                # (B, N, h*d)
    q, k, v = qkv.double().split(heads * d, dim=-1)
    for i in range(b):
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            weights = torch.softmax(q[i, :, cols] @ k[i, :, cols].T / d ** 0.5, dim=-1)
            torch.testing.assert_close(got[i, :, cols].double(), weights @ v[i, :, cols],
                                       atol=1e-6, rtol=1e-6)


def test_other_layouts_run_the_library_forward():
    """A timm block with q/k normalisation is not the plain layout: the
    library's forward runs it, and the given linear is not used."""
    from timm.models.vision_transformer import Block

    blk = Block(16, num_heads=2, qk_norm=True).eval()
    x = tokens(1, 5, 16, seed=4)

    def refuse(*args):
        raise AssertionError("the plain-layout path ran a non-plain block")

    with torch.inference_mode():
        torch.testing.assert_close(block_function(blk)(x, refuse), blk(x))
