"""The image half of the segmenter (docs/algorithm.md 10): what is left of
images once both trunks, the spectral head matching and CLIP's fused last
layer have run. Nothing here depends on the prompts, so one frame's
features answer any number of prompt sets (``decode``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

Box = tuple[int, int, int, int]     # y0, y1, x0, x1 in the resized image


@dataclass(frozen=True)
class CropFeatures:
    """The crops of one size (one ViT batch, docs/algorithm.md 5.2)."""

    size: tuple[int, int]           # (ch, cw) crop size in the resized image
    grid: tuple[int, int]           # (gh, gw) CLIP's patch grid
    images: tuple[int, ...]         # (B,) image of each crop
    boxes: tuple[Box, ...]          # (B,) each crop's box
    patches: torch.Tensor           # (B, N, E) float32 fused patch embeddings P (3.9)
    g: torch.Tensor                 # (B, E) float32 global vector of each crop's prior (4.1)
    heads: tuple[np.ndarray, ...]   # (B,) the head matching of each crop; () for vanilla


@dataclass(frozen=True)
class ImageFeatures:
    """The prompt-independent state of the images of one encode call, on
    the segmenter's device."""

    input_sizes: tuple[tuple[int, int], ...]     # (I,) each image's (H, W)
    resized_sizes: tuple[tuple[int, int], ...]   # (I,) after the short-side resize (2.1)
    groups: tuple[CropFeatures, ...]

    def __len__(self) -> int:
        return len(self.input_sizes)

    @property
    def offsets(self) -> np.ndarray:
        """(I + 1,) start of each resized image in the flat canvas."""
        return np.concatenate([[0], np.cumsum([h * w for h, w in self.resized_sizes])])

    @property
    def nbytes(self) -> int:
        """Device memory the tensors hold (the per-camera cost of keeping them)."""
        return sum(t.element_size() * t.nelement() for g in self.groups
                   for t in (g.patches, g.g))

    def image(self, i: int) -> ImageFeatures:
        """Image ``i``'s features alone (a node keeps each camera's newest)."""
        if not 0 <= i < len(self):
            raise IndexError(f"image {i} of {len(self)}")
        groups = []
        for grp in self.groups:
            keep = [j for j, owner in enumerate(grp.images) if owner == i]
            if not keep:
                continue
            index = torch.tensor(keep, device=grp.patches.device)
            groups.append(CropFeatures(
                grp.size, grp.grid, (0,) * len(keep), tuple(grp.boxes[j] for j in keep),
                grp.patches.index_select(0, index), grp.g.index_select(0, index),
                tuple(grp.heads[j] for j in keep) if grp.heads else ()))
        return ImageFeatures((self.input_sizes[i],), (self.resized_sizes[i],), tuple(groups))
