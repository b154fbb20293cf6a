"""The pieces of the two ViTs that CASS needs, at any input size.

- position embeddings resized to the input's patch grid (docs/algorithm.md 2.4);
- CLIP up to (not through) its last block, and its ordinary global vector;
- the keys of DINO's last block, the only DINO output CASS uses (7b: no
  attention maps, no final LayerNorm).

Eager blocks run through vit_blocks with the segmenter's linear layer
(oneDNN or torch's on the CPU, cpu_kernels). The blocks before the last of
each trunk can instead run through torch.compile (``compile``,
docs/ros-interface.md, Model): ``ClipVision.compile``, ``DinoKeys.compile``.
With ``precision: mixed`` (``LowBlocks``) the matrix products of a trunk's
early blocks run in bf16 or fp16 and the rest in float32 (docs/algorithm.md 8).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_kernels import Linear
from .vit_blocks import block_function


def interpolate_pos_embed(pos: torch.Tensor, grid: tuple[int, int], pretrained_grid: int
                          ) -> torch.Tensor:
    """Resize a (1 + n0*n0, D) position table to (1 + gh*gw, D).

    Bicubic, align_corners=False, with ``scale_factor = (n + 0.1) / n0`` per
    axis as the DINO codebase does (the 0.1 keeps floor() from losing a row);
    passing the scale factor, not the size, also fixes the sampling positions.
    The class token's embedding is kept; the pretrained grid is returned as is.
    """
    gh, gw = grid
    n0 = pretrained_grid
    if (gh, gw) == (n0, n0):
        return pos
    cls_pos, patch_pos = pos[:1], pos[1:]
    width = pos.shape[-1]
    table = patch_pos.reshape(1, n0, n0, width).permute(0, 3, 1, 2).float()  # (1, D, n0, n0)
    table = F.interpolate(table, scale_factor=((gh + 0.1) / n0, (gw + 0.1) / n0),
                          mode="bicubic", align_corners=False)
    if table.shape[-2:] != (gh, gw):
        raise RuntimeError(f"position-embedding resize gave {tuple(table.shape[-2:])}, "
                           f"expected {(gh, gw)}")
    table = table.permute(0, 2, 3, 1).reshape(gh * gw, width).to(pos.dtype)
    return torch.cat([cls_pos, table], 0)


class _PosCache:
    """Resized position tables per grid: computed once per input size."""

    def __init__(self) -> None:
        self._tables: dict[tuple, torch.Tensor] = {}

    def get(self, pos: torch.Tensor, grid: tuple[int, int], n0: int) -> torch.Tensor:
        key = (grid, pos.device, pos.dtype, pos.data_ptr())
        table = self._tables.get(key)
        if table is None:
            with torch.no_grad():
                table = interpolate_pos_embed(pos.detach(), grid, n0)
            self._tables[key] = table
        return table


class _Blocks(nn.Module):
    """A run of transformer blocks as one module. With ``linear`` each block
    is computed by vit_blocks with that linear layer; without, by the
    library's forward: the form ``compile_trunk`` hands to torch.compile
    (no caches, no Python state)."""

    def __init__(self, blocks: Iterable[nn.Module], linear: Linear | None = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self._linear = linear
        self._fns = [block_function(b) for b in self.blocks] if linear is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fns is None:
            for blk in self.blocks:
                x = blk(x)
            return x
        for fn in self._fns:
            x = fn(x, self._linear)
        return x


@dataclass(frozen=True)
class LowBlocks:
    """``precision: mixed`` for one trunk (core.precision): the matrix
    products of its blocks but the last ``fp32_tail`` in ``dtype``
    (LowLinear), everything else in float32: the residual stream,
    LayerNorms, attention logits and softmax, GELU; the last ``fp32_tail``
    blocks and all after the trunk wholly in float32 (docs/algorithm.md 8).
    ``device_type``: for the compiled form, which autocasts instead."""

    dtype: torch.dtype
    fp32_tail: int
    device_type: str


class LowLinear:
    """A Linear: y = x W^T + b with the product in ``dtype`` (bf16, fp16),
    float32 in and out. The low copy of each weight and bias is made at its
    first use and kept (the low blocks' weights once more, at half size)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self._low: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}

    def __call__(self, x: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
        kept = self._low.get(id(weight))
        if kept is None or kept[0] is not weight:
            kept = (weight, weight.to(self.dtype), None if bias is None else bias.to(self.dtype))
            self._low[id(weight)] = kept
        return F.linear(x.to(self.dtype), kept[1], kept[2]).float()  # (..., out) float32


class _MixedTrunk(nn.Module):
    """The compiled form of a mixed trunk (library forwards, no pluggable
    linear): ``low`` under autocast with a float32 residual stream, then
    ``high`` in float32."""

    def __init__(self, low: nn.Module, high: nn.Module, mix: LowBlocks) -> None:
        super().__init__()
        self.low, self.high = low, high
        self.dtype, self.device_type = mix.dtype, mix.device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            x = self.low(x.float())
        with torch.autocast(self.device_type, enabled=False):
            return self.high(x.float())


def make_trunk(blocks: Sequence[nn.Module], linear: Linear | None,
               mix: LowBlocks | None = None) -> nn.Module:
    """The blocks before a trunk's last as one module: ``_Blocks`` (eager
    with ``linear``, the library's forward without). With ``mix`` the
    early blocks take a LowLinear and the last ``mix.fp32_tail`` ``linear``;
    without ``linear`` (torch.compile) the early ones run under autocast."""
    if mix is None:
        return _Blocks(blocks, linear)
    split = max(0, len(blocks) - mix.fp32_tail)
    if linear is None:
        return _MixedTrunk(_Blocks(blocks[:split]), _Blocks(blocks[split:]), mix)
    return nn.Sequential(_Blocks(blocks[:split], LowLinear(mix.dtype)),
                         _Blocks(blocks[split:], linear))


def compile_trunk(blocks: nn.Module, mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``blocks`` through torch.compile (``mode`` of config.COMPILE_MODES,
    not ``none``). Static shapes: each input size (and batch) compiles once.
    With CUDA graphs (reduce-overhead) the output lives in the graph's
    memory pool, which the next replay overwrites, so it is copied out."""
    compiled = torch.compile(blocks, mode=None if mode == "default" else mode, dynamic=False)
    if mode != "reduce-overhead":
        return compiled
    return lambda x: compiled(x).clone()


class ClipVision:
    """open_clip's visual tower, split where CASS replaces the last block.
    ``linear`` computes every linear layer outside torch.compile."""

    def __init__(self, clip: nn.Module, linear: Linear = F.linear,
                 mix: LowBlocks | None = None) -> None:
        self.visual = clip.visual
        v = self.visual
        self.patch = v.conv1.kernel_size[0]
        self.pretrained_grid = round((v.positional_embedding.shape[0] - 1) ** 0.5)
        last = v.transformer.resblocks[-1]
        self.num_heads = last.attn.num_heads
        self.batch_first = getattr(v.transformer, "batch_first", True)
        self._pos = _PosCache()
        self.linear = linear
        self.mix = mix
        self._trunk = self._eager_trunk = make_trunk(v.transformer.resblocks[:-1], linear, mix)
        self._last = _Blocks(v.transformer.resblocks[-1:], linear)

    def compile(self, mode: str) -> None:
        """Run the blocks before the last through torch.compile (``none``: eager)."""
        self._trunk = (self._eager_trunk if mode == "none" else compile_trunk(
            make_trunk(self.visual.transformer.resblocks[:-1], None, self.mix), mode))

    def _blocks(self, x: torch.Tensor, blocks) -> torch.Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)
        x = blocks(x)
        return x if self.batch_first else x.transpose(0, 1)

    def tokens_before_last(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """images (B, 3, H, W) normalised -> tokens x (B, 1 + N, width) entering
        the last block, and the patch grid (H // 16, W // 16)."""
        v = self.visual
        feat = v.conv1(images.to(v.conv1.weight.dtype))  # (B, width, gh, gw)
        grid = (feat.shape[-2], feat.shape[-1])
        x = feat.flatten(2).transpose(1, 2)  # (B, N, width)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], 1)
        x = x + self._pos.get(v.positional_embedding, grid, self.pretrained_grid).to(x.dtype)
        x = v.ln_pre(x)
        return self._blocks(x, self._trunk), grid

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """ln_post and the projection to the joint space: (..., width) -> (..., E)."""
        v = self.visual
        return v.ln_post(tokens) @ v.proj

    def global_vector(self, x: torch.Tensor) -> torch.Tensor:
        """The last block run normally, class token -> (B, E) (3.1)."""
        out = self._blocks(x, self._last)
        return self.project(out[:, 0])

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """A plain CLIP image embedding (all blocks unchanged): (B, E)."""
        x, _ = self.tokens_before_last(images)
        return self.global_vector(x)

    def last_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of the last block's attention, class token dropped:
        each (B, h, N, d)."""
        last = self.visual.transformer.resblocks[-1]
        y = last.ln_1(x)
        qkv = self.linear(y, last.attn.in_proj_weight, last.attn.in_proj_bias)  # (B, 1+N, 3*width)
        b, n1, _ = qkv.shape
        qkv = qkv.reshape(b, n1, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # (3, B, h, 1+N, d)
        q, k, v = qkv[0, :, :, 1:], qkv[1, :, :, 1:], qkv[2, :, :, 1:]
        return q, k, v

    def reduced_output(self, heads_out: torch.Tensor) -> torch.Tensor:
        """Per-head attention outputs (B, h, N, d) -> patch features P (B, N, E):
        out-projection, no residual, no MLP, then ln_post and the projection."""
        last = self.visual.transformer.resblocks[-1]
        b, h, n, d = heads_out.shape
        merged = heads_out.transpose(1, 2).reshape(b, n, h * d)
        proj = last.attn.out_proj
        out = last.ls_1(self.linear(merged.to(proj.weight.dtype), proj.weight, proj.bias))
        return self.project(out)


class DinoKeys:
    """timm's DINO ViT run up to the keys of its last block. ``linear``
    computes every linear layer outside torch.compile."""

    def __init__(self, dino: nn.Module, linear: Linear = F.linear,
                 mix: LowBlocks | None = None) -> None:
        self.model = dino
        self.patch = dino.patch_embed.proj.kernel_size[0]
        prefix = getattr(dino, "num_prefix_tokens", 1)
        if prefix != 1 or getattr(dino, "no_embed_class", False):
            raise ValueError("DINO model must have exactly one class token inside its "
                             "position table (DINO ViT layout)")
        self.pretrained_grid = round((dino.pos_embed.shape[1] - 1) ** 0.5)
        self.num_heads = dino.blocks[-1].attn.num_heads
        self._pos = _PosCache()
        self.linear = linear
        self.mix = mix
        self._trunk = self._eager_trunk = make_trunk(dino.blocks[:-1], linear, mix)

    def compile(self, mode: str) -> None:
        """Run the blocks before the last through torch.compile (``none``: eager)."""
        self._trunk = (self._eager_trunk if mode == "none" else compile_trunk(
            make_trunk(self.model.blocks[:-1], None, self.mix), mode))

    def last_keys(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """images (B, 3, S, S) ImageNet-normalised -> keys (B, h, n*n, d) of the
        last block (bias included, class token dropped) and the grid (n, n)."""
        m = self.model
        feat = m.patch_embed.proj(images.to(m.patch_embed.proj.weight.dtype))  # (B, D, n, n)
        grid = (feat.shape[-2], feat.shape[-1])
        x = feat.flatten(2).transpose(1, 2)
        x = m.patch_embed.norm(x)
        x = torch.cat([m.cls_token.to(x.dtype).expand(x.shape[0], -1, -1), x], 1)
        x = x + self._pos.get(m.pos_embed[0], grid, self.pretrained_grid).to(x.dtype)
        x = self._trunk(m.norm_pre(m.patch_drop(m.pos_drop(x))))
        # Only the key third of the last qkv projection: rows D..2D of its
        # weight (timm packs q, k, v in that order).
        qkv = m.blocks[-1].attn.qkv
        width = qkv.weight.shape[0] // 3
        bias = qkv.bias[width:2 * width] if qkv.bias is not None else None
        k = self.linear(m.blocks[-1].norm1(x), qkv.weight[width:2 * width], bias)  # (B, 1+N, D)
        b, n1, _ = k.shape
        k = k.reshape(b, n1, self.num_heads, -1)[:, 1:]  # (B, N, h, d)
        return k.permute(0, 2, 1, 3), grid
