"""The transformer blocks of both trunks, computed here from the libraries'
weights so that every linear layer goes through one pluggable function
(cpu_kernels.select_linear) and both trunks use fused scaled-dot-product
attention.

A block is the pre-norm ViT block: x + attn(norm1(x)), then + mlp(norm2(x)).
``block_function`` recognises the two layouts CASS loads, timm's ``Block``
(DINO) and open_clip's ``ResidualAttentionBlock`` (CLIP), and only in their
plain form (no q/k norm, gates or cross-attention); any other block is
called as the library wrote it. CLIP's text tower runs the same way, its
causal mask as SDPA's additive mask (text.encode_text).
test/core/test_vit_blocks.py checks each against the library's own forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_kernels import Linear

# (x (B, N, D), linear, additive attention mask (N, N) or None) -> (B, N, D)
Block = Callable[[torch.Tensor, Linear, "torch.Tensor | None"], torch.Tensor]


def attend(qkv: torch.Tensor, heads: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head self-attention from packed projections: qkv (B, N, 3*D)
    -> (B, N, D), softmax(q k^T / sqrt(d) + mask) v per head; ``mask`` is
    additive, (N, N) (CLIP's text tower: -inf above the diagonal)."""
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, N, d)
    if mask is not None:
        mask = mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)               # (B, h, N, d)
    return out.transpose(1, 2).reshape(b, n, -1)


def _timm_plain(blk: nn.Module) -> bool:
    from timm.layers import Attention, Mlp
    from timm.models.vision_transformer import Block as TimmBlock

    attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
    return (type(blk) is TimmBlock and type(attn) is Attention and type(mlp) is Mlp
            and isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)
            and getattr(attn, "gate", None) is None and not blk.training)


def _open_clip_plain(blk: nn.Module) -> bool:
    from open_clip.transformer import ResidualAttentionBlock

    attn = getattr(blk, "attn", None)
    return (type(blk) is ResidualAttentionBlock and isinstance(attn, nn.MultiheadAttention)
            and not hasattr(blk, "ln_1_kv") and attn._qkv_same_embed_dim and attn.batch_first
            and attn.bias_k is None and not attn.add_zero_attn and not blk.training)


def timm_block(blk: nn.Module, x: torch.Tensor, linear: Linear) -> torch.Tensor:
    """timm's Block (eval): x (B, N, D) -> (B, N, D)."""
    a, m = blk.attn, blk.mlp
    heads = attend(linear(blk.norm1(x), a.qkv.weight, a.qkv.bias), a.num_heads)
    x = x + blk.ls1(linear(a.norm(heads), a.proj.weight, a.proj.bias))
    hidden = m.norm(m.act(linear(blk.norm2(x), m.fc1.weight, m.fc1.bias)))
    return x + blk.ls2(linear(hidden, m.fc2.weight, m.fc2.bias))


def open_clip_block(blk: nn.Module, x: torch.Tensor, linear: Linear,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """open_clip's ResidualAttentionBlock (eval, batch first), ``mask`` as
    its additive ``attn_mask``: x (B, N, D) -> (B, N, D)."""
    a, m = blk.attn, blk.mlp
    heads = attend(linear(blk.ln_1(x), a.in_proj_weight, a.in_proj_bias), a.num_heads, mask)
    x = x + blk.ls_1(linear(heads, a.out_proj.weight, a.out_proj.bias))
    hidden = m.gelu(linear(blk.ln_2(x), m.c_fc.weight, m.c_fc.bias))
    return x + blk.ls_2(linear(hidden, m.c_proj.weight, m.c_proj.bias))


def block_function(blk: nn.Module) -> Block:
    """How to run ``blk`` with a given linear: this module's computation
    for the plain layouts, the library's forward (its own linears) otherwise.
    Only open_clip's blocks take a mask (CLIP's text tower)."""
    if _timm_plain(blk):
        return lambda x, linear, mask=None: timm_block(blk, x, linear) if mask is None \
            else blk(x, attn_mask=mask)
    if _open_clip_plain(blk):
        return lambda x, linear, mask=None: open_clip_block(blk, x, linear, mask)
    return lambda x, linear, mask=None: blk(x) if mask is None else blk(x, attn_mask=mask)
