"""What is in the picture: a vocabulary ranked by CASS's own object-presence
prior on an image's features (docs/algorithm.md 4.1, 4.2 and 10): the
image's global vector against every name's text embedding, softmax over
the names with CLIP's logit scale, max over each entry's synonyms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..presence import class_presence, presence_similarity
from .features import ImageFeatures


@dataclass(frozen=True)
class Ranked:
    """One vocabulary entry and its presence probability."""

    name: str          # the entry's first name
    presence: float


def name_labels(entries: Sequence[Sequence[str]]) -> tuple[list[str], list[int]]:
    """Every name of the entries in order, and the entry index of each."""
    names = [n for entry in entries for n in entry]
    labels = [i for i, entry in enumerate(entries) for _ in entry]
    return names, labels


def describe(features: ImageFeatures, entries: Sequence[Sequence[str]], text: torch.Tensor,
             top_k: int = 10) -> list[list[Ranked]]:
    """Per image of ``features``, the ``top_k`` entries (each a tuple of
    synonyms) by presence, highest first (ties: the earlier entry).
    ``text`` (C, E): the unit embedding of each name of ``name_labels(entries)``.
    The prior is the one ``segment`` reports: each crop's global vector
    against the names, max over an image's crops (one crop, or the whole
    image's vector, except with crop_global_vector), then the softmax."""
    names, labels = name_labels(entries)
    if text.shape[0] != len(names):
        raise ValueError(f"{text.shape[0]} text embeddings for {len(names)} names")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, not {top_k}")
    device = features.groups[0].g.device
    text = text.to(device)
    image_r = torch.full((len(features), len(names)), float("-inf"), device=device)  # (I, C)
    for grp in features.groups:
        r = presence_similarity(grp.g, text)                                # (B, C)
        owner = torch.tensor(grp.images, device=device)
        image_r.scatter_reduce_(0, owner[:, None].expand_as(r), r, reduce="amax")
    presence = class_presence(image_r, torch.tensor(labels, device=device), len(entries))
    k = min(top_k, len(entries))
    # stable sort: equal presences keep the vocabulary's order
    order = torch.sort(presence, dim=1, descending=True, stable=True).indices[:, :k]
    values = torch.gather(presence, 1, order).cpu().tolist()
    return [[Ranked(entries[j][0], float(v)) for j, v in zip(row, vals)]
            for row, vals in zip(order.cpu().tolist(), values)]


__all__ = ["Ranked", "describe", "name_labels"]
