"""The ``precision`` setting resolved for a device: which parts of the ViTs
run in which dtype (docs/algorithm.md 8, "Precision modes").

- ``fp32``: everything in float32 (the faithful default on the CPU).
- ``fp16`` / ``bf16``: autocast over every ViT pass: CLIP and DINO up to
  the keys and q, k, v of the spectral step, the last block's out-projection
  and CLIP's text tower (``PrecisionPlan.autocast``).
- ``mixed``: only the matrix products of the trunk blocks before the last
  ``MIXED_FP32_BLOCKS`` of each trunk run in the low dtype (bf16 on the
  CPU, fp16 on CUDA); the residual stream, LayerNorms, attention logits and
  softmax stay float32, and so do those last blocks, the keys and q, k, v
  that feed the spectral step, the reduced last block, the whole-image
  class token and the text tower (``PrecisionPlan.trunk_dtype``;
  vit_features.LowBlocks, LowLinear).
- ``auto``: ``fp16`` on CUDA, ``fp32`` on the CPU.

The spectral step itself (3.3 to 3.9) is float32 / float64 in every mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ConfigError, PRECISIONS

# mixed: trunk blocks, counted back from the block before the replaced last
# one, that stay in float32 (docs/algorithm.md 8: the ladder that chose it).
MIXED_FP32_BLOCKS = 2
TRUNKS = ("clip", "dino")


@dataclass(frozen=True)
class PrecisionPlan:
    """Where the ViTs leave float32. ``autocast``: the dtype of an autocast
    around every ViT pass (fp16 / bf16 modes), None for none. ``trunk_dtype``:
    mixed, the dtype of the trunk blocks of ``trunks`` except the last
    ``fp32_tail`` of each. Both None: plain float32."""

    autocast: torch.dtype | None = None
    trunk_dtype: torch.dtype | None = None
    fp32_tail: int = MIXED_FP32_BLOCKS
    trunks: tuple[str, ...] = TRUNKS

    def __post_init__(self) -> None:
        if self.autocast is not None and self.trunk_dtype is not None:
            raise ValueError("a precision plan is either autocast or mixed, not both")
        if self.fp32_tail < 0 or not set(self.trunks) <= set(TRUNKS):
            raise ValueError(f"fp32_tail must be >= 0 and trunks among {TRUNKS}")

    @property
    def mixed(self) -> bool:
        return self.trunk_dtype is not None

    def low_dtype(self, trunk: str) -> torch.dtype | None:
        """The dtype of ``trunk``'s (clip or dino) low blocks in mixed mode."""
        return self.trunk_dtype if trunk in self.trunks else None

    def describe(self) -> str:
        """fp32, fp16, bf16, or 'mixed bf16 (last 2 trunk blocks fp32)'."""
        if self.autocast is not None:
            return _short(self.autocast)
        if self.trunk_dtype is None:
            return "fp32"
        which = "" if set(self.trunks) == set(TRUNKS) else f" {'+'.join(self.trunks)} only"
        return f"mixed {_short(self.trunk_dtype)}{which} (last {self.fp32_tail} trunk blocks fp32)"


def _short(dtype: torch.dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def resolve_plan(name: str, device: torch.device) -> PrecisionPlan:
    """``precision`` on ``device`` -> its plan; ConfigError (one line, naming
    the parameter) for an unknown value or fp16 without CUDA."""
    cuda = device.type == "cuda"
    if name == "fp32" or (name == "auto" and not cuda):
        return PrecisionPlan()
    if name in ("auto", "fp16"):
        if not cuda:
            raise ConfigError("parameter 'precision' fp16 needs a CUDA device; use fp32, mixed "
                              "or bf16 on the CPU")
        return PrecisionPlan(autocast=torch.float16)
    if name == "bf16":
        return PrecisionPlan(autocast=torch.bfloat16)
    if name == "mixed":
        return PrecisionPlan(trunk_dtype=torch.float16 if cuda else torch.bfloat16)
    raise ConfigError(f"parameter 'precision' must be one of {', '.join(PRECISIONS)}, "
                      f"not {name!r}")
