"""Where a phrase is in an image (docs/algorithm.md 10.1, docs/ros-interface.md
"Queries", ``return_similarity``): per class of a prompt set, the cosine of
its text embedding with the dense features, at the label image's size. The
heat map a planner or a language interface asks for ("where is the red mug").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..prepared_prompts import PreparedPrompts
from .dense import DenseFeatures


def class_similarity(dense: DenseFeatures, prompts: PreparedPrompts,
                     size: tuple[int, int]) -> torch.Tensor:
    """(K - 1, H, W) float32: for each class 1 .. K - 1, per pixel, the
    largest over its names of the dot product of the name's unit text
    embedding (1.2) with the dense features resized bilinearly
    (align_corners False) to ``size``. Each name's products are taken on the
    patch grid and then resized: resizing is linear, so this equals the
    products with ``dense.upsampled(size)`` without its (H, W, E) tensor
    (629 MB at 640 x 480 in float32); the maximum over names comes after
    the resize, as it is not linear."""
    patches = dense.patches.float()                                   # (gh, gw, E)
    text = prompts.text.to(patches)                                   # (C, E)
    per_name = (patches @ text.T).permute(2, 0, 1)[None]              # (1, C, gh, gw)
    per_name = F.interpolate(per_name, size=tuple(size), mode="bilinear",
                             align_corners=False)[0]                  # (C, H, W)
    c, h, w = per_name.shape
    labels = prompts.name_labels.to(per_name.device)                  # (C,)
    per_class = torch.full((prompts.num_labels, h, w), float("-inf"), device=per_name.device)
    per_class = per_class.scatter_reduce(0, labels[:, None, None].expand(c, h, w), per_name,
                                         "amax")
    return per_class[1:]


__all__ = ["class_similarity"]
