"""Object presence prior and text adjustment (docs/algorithm.md section 4),
batched over crops."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# CLIP's own logit scale, used only to report presence probabilities (4.2).
PRESENCE_LOGIT_SCALE = 100.0


def presence_similarity(g: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """r = g . Q^T: g (B, E) global vectors, q (C, E) unit text -> (B, C)."""
    return F.normalize(g, dim=-1) @ q.T


def class_presence(r: torch.Tensor, name_labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Per-class presence probability: softmax(100 r) over names, max over
    each class's names. r (B, C) -> (B, K); labels without names get 0."""
    p = torch.softmax(PRESENCE_LOGIT_SCALE * r.float(), -1)
    return per_class_max(p, name_labels, num_labels, dim=1)


def per_class_max(values: torch.Tensor, name_labels: torch.Tensor, num_labels: int, dim: int
                  ) -> torch.Tensor:
    """Max over the names of each label along ``dim`` (values >= 0; labels
    without names get 0)."""
    shape = list(values.shape)
    shape[dim] = num_labels
    index_shape = [1] * values.dim()
    index_shape[dim] = -1
    index = name_labels.reshape(index_shape).expand_as(values)
    out = torch.zeros(shape, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(dim, index, values, reduce="amax", include_self=True)


def picked_names(r: torch.Tensor, cluster_onehot: torch.Tensor) -> torch.Tensor:
    """Per crop and cluster, the name with the highest r (first on a tie).
    r (B, C), cluster_onehot (M, C) bool -> (B, M) name indices."""
    masked = r[:, None, :].masked_fill(~cluster_onehot[None], float("-inf"))  # (B, M, C)
    return masked.argmax(-1)


def adjust_text(p: torch.Tensor, q: torch.Tensor, r: torch.Tensor, cluster_onehot: torch.Tensor,
                alpha: float, top: int = 2) -> torch.Tensor:
    """Adjusted text embeddings T (B, C, E) (4.3).

    p (B, N, E) patch features, q (C, E) unit text, r (B, C). In each
    cluster the best-scoring name is pulled toward the mean of the ``top``
    patches most similar to it: normalise((1 - alpha) q + alpha m).
    """
    b = p.shape[0]
    pu = F.normalize(p, dim=-1)
    t = q[None].expand(b, -1, -1).clone()  # (B, C, E)
    if alpha == 0.0:
        return t
    pick = picked_names(r, cluster_onehot)                     # (B, M)
    q_pick = q[pick]                                           # (B, M, E)
    sim = pu @ q_pick.transpose(1, 2)                          # (B, N, M)
    k = min(top, pu.shape[1])
    idx = sim.topk(k, dim=1).indices                           # (B, k, M)
    chosen = torch.take_along_dim(pu[:, :, None, :], idx[..., None], 1)  # (B, k, M, E)
    m = F.normalize(chosen.mean(1), dim=-1)                    # (B, M, E)
    new = F.normalize((1 - alpha) * q_pick + alpha * m, dim=-1)
    t.scatter_(1, pick[..., None].expand_as(new), new)
    return t


def patch_logits(p: torch.Tensor, t: torch.Tensor, r: torch.Tensor, beta: float) -> torch.Tensor:
    """L = (1 - beta) P T^T + beta r: (B, N, E), (B, C, E), (B, C) -> (B, N, C)."""
    pu = F.normalize(p, dim=-1)
    logits = pu @ t.transpose(1, 2)
    return (1 - beta) * logits + beta * r[:, None, :]
