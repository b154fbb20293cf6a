"""Class-name text embeddings and their clustering (docs/algorithm.md
section 1): 80 OpenAI ImageNet templates per name, averaged; Ward
clustering of the names by cosine distance.

Embeddings depend only on the name and the text tower, so they are cached
per name (in memory, and on disk when a cache directory is given): a prompt
change encodes only the names not seen before. The cache holds at most
``max_names`` names, the least recently used leave first: a stream of
questions (``/cass/query``) cannot grow it without bound.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from torch import nn

from .cpu_kernels import Linear
from .vit_blocks import block_function

log = logging.getLogger(__name__)

# Names the embedding cache keeps (2 KB each at E = 512): the shipped
# vocabulary (285 names) and thousands of prompt and query names.
MAX_CACHED_NAMES = 4096


def templates() -> list[Callable[[str], str]]:
    """The 80 OpenAI ImageNet prompt templates, in the reference's order
    (open_clip ships the same list)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return list(OPENAI_IMAGENET_TEMPLATES)


def encode_text(clip: nn.Module, tokens: torch.Tensor, linear: Linear = F.linear) -> torch.Tensor:
    """CLIP's text embedding of (B, 77) tokens: (B, E).

    OpenAI-style CLIP reads its output at the end-of-text token under a
    causal mask, so nothing after the longest prompt's end token can change
    it: the transformer runs on that prefix only (a prompt is ~15 of the 77
    tokens, several times less work), its blocks through vit_blocks with
    ``linear`` (cpu_kernels). Other text towers run unchanged.
    """
    causal = (getattr(clip, "text_pool_type", None) == "argmax"
              and getattr(clip, "attn_mask", None) is not None
              and hasattr(clip, "token_embedding") and hasattr(clip, "ln_final"))
    if not causal:
        return clip.encode_text(tokens)
    eot = tokens.argmax(-1)  # the end token has the highest id in CLIP's vocabulary
    n = int(eot.max()) + 1
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens[:, :n]).to(cast) + clip.positional_embedding[:n].to(cast)
    mask = clip.attn_mask[:n, :n]  # (n, n) additive, -inf above the diagonal
    if getattr(clip.transformer, "batch_first", False):
        for blk in clip.transformer.resblocks:
            x = block_function(blk)(x, linear, mask)
    else:
        x = clip.transformer(x, attn_mask=mask)
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    proj = clip.text_projection
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


class TextEmbedder:
    """Encodes class names into unit 512-d (E-d) vectors, with a cache."""

    def __init__(self, clip: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor],
                 device: torch.device, model_id: str, cache_dir: str | None = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
                 batch_names: int = 8, linear: Linear = F.linear,
                 max_names: int = MAX_CACHED_NAMES) -> None:
        if max_names < 1:
            raise ValueError(f"max_names must be >= 1, not {max_names}")
        self.clip = clip
        self.linear = linear
        self.tokenizer = tokenizer
        self.device = device
        self.autocast = autocast or contextlib.nullcontext
        self.batch_names = batch_names
        self._templates = templates()
        self.max_names = max_names
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()  # oldest use first
        self._lock = threading.Lock()
        self._disk: Path | None = None
        if cache_dir:
            digest = hashlib.sha1(model_id.encode()).hexdigest()[:16]
            self._disk = Path(cache_dir) / "text_embeddings" / f"{digest}.pt"
            if self._disk.is_file():
                try:
                    self._memory.update(torch.load(self._disk, map_location="cpu", weights_only=True))
                    self._trim()
                except Exception as e:  # noqa: BLE001 - a bad cache is only a cache miss
                    log.warning("ignoring unreadable text-embedding cache %s: %s", self._disk, e)

    @property
    def cached_names(self) -> set[str]:
        return set(self._memory)

    @torch.no_grad()
    def encode_fresh(self, names: Sequence[str]) -> torch.Tensor:
        """(C, E) float32 on the CPU, bypassing the cache: per name, each
        template's embedding is L2-normalised, the 80 are averaged and the
        mean normalised again."""
        out = []
        per = len(self._templates)
        for i in range(0, len(names), self.batch_names):
            chunk = names[i:i + self.batch_names]
            texts = [t(n) for n in chunk for t in self._templates]
            tokens = self.tokenizer(texts).to(self.device)
            with self.autocast():
                emb = encode_text(self.clip, tokens, self.linear)  # (len(chunk) * 80, E)
            emb = F.normalize(emb.float(), dim=-1).reshape(len(chunk), per, -1)
            out.append(F.normalize(emb.mean(1), dim=-1).cpu())
        return torch.cat(out, 0)

    def encode(self, names: Sequence[str]) -> torch.Tensor:
        """(C, E) float32 on the CPU, one unit row per name, cached."""
        with self._lock:
            missing = list(dict.fromkeys(n for n in names if n not in self._memory))
            fresh = None
            if missing:
                log.info("encoding %d new class name(s) with %d templates", len(missing),
                         len(self._templates))
                fresh = dict(zip(missing, self.encode_fresh(missing)))
            rows = [fresh[n] if fresh is not None and n in fresh else self._memory[n]
                    for n in names]
            for n in dict.fromkeys(names):           # most recently used last
                self._memory[n] = fresh[n] if fresh is not None and n in fresh else self._memory[n]
                self._memory.move_to_end(n)
            if missing:
                self._trim()
                self._save()
            return torch.stack(rows)

    def _trim(self) -> None:
        while len(self._memory) > self.max_names:
            self._memory.popitem(last=False)

    def _save(self) -> None:
        if self._disk is None:
            return
        try:
            self._disk.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._disk.with_suffix(".tmp")
            torch.save(dict(self._memory), tmp)
            tmp.replace(self._disk)
        except OSError as e:
            log.warning("cannot write text-embedding cache %s: %s", self._disk, e)


def cluster_names(embeddings: torch.Tensor | np.ndarray, threshold: float) -> np.ndarray:
    """Cluster id per name (0-based): Ward linkage on the cosine distances of
    the rows, cut at ``threshold`` (scipy fcluster, criterion 'distance').
    A single name is its own cluster."""
    q = np.asarray(embeddings, dtype=np.float64)
    if q.shape[0] == 1:
        return np.zeros(1, dtype=np.int64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    dist = 1.0 - q @ q.T
    dist = np.clip((dist + dist.T) / 2.0, 0.0, None)
    np.fill_diagonal(dist, 0.0)
    tree = linkage(squareform(dist, checks=False), method="ward")
    return fcluster(tree, t=threshold, criterion="distance").astype(np.int64) - 1
