"""A prompt set prepared for inference (docs/algorithm.md 4): what the
segmenter's decode and a query's decode both read. Its own module so that
core.queries.decode needs nothing of core.segmenter, which calls it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .prompts import PromptSet


@dataclass(frozen=True)
class PreparedPrompts:
    """A prompt set ready for inference: encoded, clustered, on the device.
    Immutable, so a node can swap it atomically between frames."""

    prompt_set: PromptSet
    prompt_id: int
    names: tuple[str, ...]          # (C,) every name, label order
    name_labels: torch.Tensor       # (C,) long: label of each name
    text: torch.Tensor              # (C, E) float32 unit embeddings Q
    clusters: np.ndarray            # (C,) cluster id per name
    cluster_onehot: torch.Tensor    # (M, C) bool

    @property
    def class_names(self) -> list[str]:
        return self.prompt_set.class_names

    @property
    def num_labels(self) -> int:
        return self.prompt_set.num_labels
