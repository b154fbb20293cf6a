"""Spectral object-level context distillation: CASS's new last-layer
attention (cass-algorithm.md section 3, steps 3 to 8, and section 6).

Everything is batched over crops (B) and heads (h). The speed lever of the
cost note is used throughout: a key graph ``s * k k^T`` (N x N) has rank at
most d, so its non-zero eigenvalues are those of the d x d Gram matrix
``s * k^T k`` and its eigenvectors are ``k V / sigma``. No N x N matrix is
ever eigendecomposed; the small eigenproblems run in float64 (the project's
rule, which makes head matching deterministic across devices).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

# Totals within this of the optimum count as tied (cass-algorithm.md 3.5).
TIE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class SpectralParams:
    k_eigen: int = 20
    low_rank: int = 10
    fusion_weight: float = 10.0       # lambda
    eigenvalue_scaling: bool = True
    gaussian_std: float = 5.0         # sigma
    attention: str = "spectral"       # spectral | sequential | vanilla


# ------------------------------------------------------------ DINO keys (3.3)

def resize_dino_keys(keys_dino: torch.Tensor, dino_grid: tuple[int, int],
                     clip_grid: tuple[int, int]) -> torch.Tensor:
    """(B, h, n*n, d) DINO keys -> (B, h, N, d) on CLIP's patch grid: each
    key channel is an n x n map, resized bilinearly (align_corners=False)."""
    b, h, _, d = keys_dino.shape
    maps = keys_dino.transpose(-1, -2).reshape(b * h, d, *dino_grid)  # (B*h, d, n, n)
    maps = F.interpolate(maps, size=clip_grid, mode="bilinear", align_corners=False)
    return maps.reshape(b, h, d, -1).transpose(-1, -2)


def match_range(x: torch.Tensor, target: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Map ``x`` affinely so that its min and max over ``dims`` equal those of
    ``target`` over the same dims (a constant ``x`` maps to target's min)."""
    x_min, x_max = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    t_min, t_max = target.amin(dims, keepdim=True), target.amax(dims, keepdim=True)
    span = (x_max - x_min)
    unit = (x - x_min) / torch.where(span > 0, span, torch.ones_like(span))
    return unit * (t_max - t_min) + t_min


# ------------------------------------------------------------ spectra (3.5)

def top_eigenvalues(keys: torch.Tensor, scale: float, k: int) -> torch.Tensor:
    """The ``k`` largest eigenvalues, descending, of each head's graph
    ``scale * keys keys^T`` (N x N), from the d x d Gram matrix in float64.

    keys (B, h, N, d) -> (B, h, min(k, N)). The graph's other eigenvalues
    are exact zeros (rank <= d), padded in when k exceeds d.
    """
    n, d = keys.shape[-2], keys.shape[-1]
    k64 = keys.double()
    gram = (k64.transpose(-1, -2) @ k64) * scale  # (B, h, d, d)
    evals = torch.linalg.eigvalsh(gram).flip(-1)   # descending
    length = min(k, n)
    if length > d:
        evals = F.pad(evals, (0, length - d))
    return evals[..., :length]


def spectral_cost(eig_dino: torch.Tensor, eig_clip: torch.Tensor) -> torch.Tensor:
    """cost[b, i, j] = 1 - W1(DINO head i, CLIP head j) on normalised spectra.

    eig_* (B, h, k) float64 -> (B, h, h): each spectrum is L2- then
    L1-normalised and sorted ascending; the distance is the sum of absolute
    differences (a 1-D Wasserstein distance between the two spectra).
    """
    def prep(e: torch.Tensor) -> torch.Tensor:
        e = F.normalize(e, p=2, dim=-1)
        e = F.normalize(e, p=1, dim=-1)
        return e.sort(-1).values

    a, c = prep(eig_dino), prep(eig_clip)
    dist = (a[:, :, None, :] - c[:, None, :, :]).abs().sum(-1)
    return 1.0 - dist


def match_heads(cost: np.ndarray, tol: float = TIE_TOLERANCE) -> np.ndarray:
    """Minimum-cost assignment of DINO heads (rows) to CLIP heads (columns);
    ``col[i]`` is the CLIP head of DINO head i.

    Among assignments whose total is within ``tol`` of the minimum, the one
    with the lexicographically smallest ``col`` (cass-algorithm.md 3.5):
    built greedily, row by row taking the smallest column that still admits
    a completion within ``tol``, each checked by one assignment solve of the
    remaining rows. Exact ties are common here, so this is not a corner case.
    """
    cost = np.asarray(cost, dtype=np.float64)
    h = cost.shape[0]
    r, c = linear_sum_assignment(cost)
    best = cost[r, c].sum()
    col = np.empty(h, dtype=np.int64)
    free = list(range(h))
    fixed = 0.0
    for t in range(h):
        for j in free:
            rest = [x for x in free if x != j]
            total = fixed + cost[t, j]
            if rest:
                sub = cost[t + 1:][:, rest]
                rr, cc = linear_sum_assignment(sub)
                total += sub[rr, cc].sum()
            if total <= best + tol:
                col[t] = j
                fixed += cost[t, j]
                free.remove(j)
                break
        else:  # unreachable: the optimum's own column always qualifies
            raise RuntimeError("head matching found no feasible column")
    return col


# ------------------------------------------------------------ low-rank DINO graph (3.6)

def low_rank_graph(keys: torch.Tensor, scale: float, rank: int, rescale: bool,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Exact rank-``rank`` part of ``scale * keys keys^T`` (PSD), optionally
    with its eigenvalues rescaled from [min, max] to [0.5 min, 1.5 max].

    keys (B, h, N, d) -> (B, h, N, N) in ``dtype``. The top eigenpairs come
    from the d x d Gram matrix in float64; eigenvectors ``U = keys V / sigma``.
    """
    n, d = keys.shape[-2], keys.shape[-1]
    k64 = keys.double()
    evals, evecs = torch.linalg.eigh(k64.transpose(-1, -2) @ k64)  # ascending, (B,h,d), (B,h,d,d)
    r = min(rank, n, d)
    sigma2 = evals[..., -r:].flip(-1).clamp_min(0)        # (B, h, r) descending
    vecs = evecs[..., -r:].flip(-1)                         # (B, h, d, r)
    sigma = sigma2.sqrt()
    # Directions of (numerically) zero singular values carry no weight; zero
    # them instead of dividing by ~0.
    tiny = sigma <= sigma[..., :1] * 1e-12
    u = (k64 @ vecs) / torch.where(tiny, torch.ones_like(sigma), sigma)[..., None, :]
    u = u.masked_fill(tiny[..., None, :], 0.0)              # (B, h, N, r)
    sv = sigma2 * scale
    if rescale:
        sv = rescale_eigenvalues(sv)
    u = u.to(dtype)
    return (u * sv.to(dtype)[..., None, :]) @ u.transpose(-1, -2)


def rescale_eigenvalues(sv: torch.Tensor) -> torch.Tensor:
    """Affine map of each row from [min, max] to [0.5 min, 1.5 max] (3.6)."""
    lo, hi = sv.amin(-1, keepdim=True), sv.amax(-1, keepdim=True)
    span = hi - lo
    unit = (sv - lo) / torch.where(span > 0, span, torch.ones_like(span))
    return unit * (1.5 * hi - 0.5 * lo) + 0.5 * lo


# ------------------------------------------------------------ spatial prior (3.8)

def gaussian_prior(grid: tuple[int, int], sigma: float, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Omega (N, N): exp(-|p - q|^2 / (2 sigma^2)) over patch grid positions
    (row-major, as the tokens), untruncated."""
    gh, gw = grid
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float64),
                            torch.arange(gw, dtype=torch.float64), indexing="ij")
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], -1)  # (N, 2)
    sq = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)
    return torch.exp(-sq / (2.0 * sigma * sigma)).to(dtype=dtype, device=device)


# ------------------------------------------------------------ the whole step

@dataclass
class FusionInfo:
    """What the head matching chose, per crop (for tests and diagnostics)."""

    col: np.ndarray      # (B, h) DINO head fused into output head t
    weight: np.ndarray   # (B, h) w of output head t
    cost: np.ndarray     # (B, h, h) float64, rows DINO heads, columns CLIP heads


def fused_graphs(k: torch.Tensor, kd: torch.Tensor, params: SpectralParams,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, FusionInfo]:
    """Fused key graphs F (B, h, N, N) before the spatial prior (3.4 to 3.7).

    k: CLIP keys (B, h, N, d); kd: DINO keys on CLIP's grid, range-mapped to
    k (B, h, N, d).
    """
    b, h, _, d = k.shape
    scale = d ** -0.5
    kw = k.to(dtype)
    graph_clip = (kw @ kw.transpose(-1, -2)) * scale  # A (B, h, N, N)
    if params.attention == "spectral":
        cost = spectral_cost(top_eigenvalues(kd, scale, params.k_eigen),
                             top_eigenvalues(k, scale, params.k_eigen))  # (B, h, h)
        cost_np = cost.cpu().numpy()
        col = np.stack([match_heads(c) for c in cost_np])  # (B, h)
        weight = 1.0 - np.take_along_axis(cost_np, col[:, :, None], 2)[..., 0]  # (B, h)
        rescale = params.eigenvalue_scaling
    elif params.attention == "sequential":
        cost_np = np.zeros((b, h, h))
        col = np.tile(np.arange(h), (b, 1))
        weight = np.ones((b, h))
        rescale = False
    else:
        raise ValueError(f"fused_graphs does not handle attention {params.attention!r}")
    index = torch.as_tensor(col, device=kd.device)
    kd_sel = torch.take_along_dim(kd, index[:, :, None, None], 1)  # DINO head col[t] per t
    low = low_rank_graph(kd_sel, scale, params.low_rank, rescale, dtype)  # (B, h, N, N)
    low.diagonal(dim1=-2, dim2=-1).zero_()
    low = match_range(low, graph_clip, (-2, -1))
    if params.attention == "spectral":
        wl = torch.as_tensor(weight * params.fusion_weight, dtype=dtype, device=k.device)
        wl = wl[:, :, None, None]
        fused = (wl * low + graph_clip) / (wl + 1.0)
    else:
        fused = (low + graph_clip) / 2.0
    return fused, FusionInfo(col=col, weight=weight, cost=cost_np)


def cass_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   kd: torch.Tensor | None, grid: tuple[int, int], params: SpectralParams,
                   prior: torch.Tensor | None = None, dtype: torch.dtype = torch.float32
                   ) -> tuple[torch.Tensor, FusionInfo | None]:
    """Per-head outputs ``attn @ v`` (B, h, N, d) of CASS's last layer.

    kd: DINO keys on CLIP's grid before the range mapping (B, h, N, d), or
    None for ``vanilla``. prior: a cached Omega for ``grid`` (else computed).
    """
    d = k.shape[-1]
    if params.attention == "vanilla":
        qw, kw = q.to(dtype), k.to(dtype)
        attn = torch.softmax((qw @ kw.transpose(-1, -2)) * d ** -0.5, -1)
        return attn @ v.to(dtype), None
    if kd is None:
        raise ValueError(f"attention {params.attention!r} needs DINO keys")
    # One affine map over the whole crop (all heads) onto CLIP's key range.
    kd = match_range(kd.to(dtype), k.to(dtype), (1, 2, 3))
    fused, info = fused_graphs(k, kd, params, dtype)
    if prior is None:
        prior = gaussian_prior(grid, params.gaussian_std, dtype, k.device)
    attn = torch.softmax(fused + prior.to(dtype), -1)
    return attn @ v.to(dtype), info
