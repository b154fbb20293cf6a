"""Spectral object-level context distillation: CASS's new last-layer
attention (docs/algorithm.md section 3, steps 3 to 8, and section 6).

Everything is batched over crops (B) and heads (h). The speed lever of the
cost note is used throughout: a key graph ``s * k k^T`` (N x N) has rank at
most d, so its non-zero eigenvalues are those of the d x d Gram matrix
``s * k^T k`` and its eigenvectors are ``k V / sigma``. No N x N matrix is
ever eigendecomposed; the small eigenproblems run in float64 (the project's
rule, which makes head matching deterministic across devices).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

if TYPE_CHECKING:
    from .config import CassConfig

# Totals within this of the optimum count as tied (docs/algorithm.md 3.5).
TIE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class SpectralParams:
    """The CassConfig settings this module reads (docs/algorithm.md section 0).

    No defaults of its own: each field is the CassConfig field of the same
    name, taken by ``from_config``, so defaults live in one place.
    """

    k_eigen: int
    low_rank: int
    fusion_weight: float              # lambda
    eigenvalue_scaling: bool
    gaussian_std: float               # sigma
    attention: str                    # spectral | sequential | vanilla

    @classmethod
    def from_config(cls, config: CassConfig) -> SpectralParams:
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


# ------------------------------------------------------------ DINO keys (3.3)

def resize_dino_keys(keys_dino: torch.Tensor, dino_grid: tuple[int, int],
                     clip_grid: tuple[int, int]) -> torch.Tensor:
    """(B, h, n*n, d) DINO keys -> (B, h, N, d) on CLIP's patch grid: each
    key channel is an n x n map, resized bilinearly (align_corners=False)."""
    b, h, _, d = keys_dino.shape
    maps = keys_dino.transpose(-1, -2).reshape(b * h, d, *dino_grid)  # (B*h, d, n, n)
    maps = F.interpolate(maps, size=clip_grid, mode="bilinear", align_corners=False)
    return maps.reshape(b, h, d, -1).transpose(-1, -2)


def match_range(x: torch.Tensor, target: torch.Tensor, start_dim: int) -> torch.Tensor:
    """Map ``x`` affinely so that its min and max over the dims from
    ``start_dim`` on equal those of ``target`` (a constant ``x`` maps to
    target's min)."""
    def minmax(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = t.flatten(start_dim)
        shape = flat.shape[:-1] + (1,) * (t.dim() - start_dim)
        return flat.amin(-1).reshape(shape), flat.amax(-1).reshape(shape)

    x_lo, x_hi = minmax(x)
    t_lo, t_hi = minmax(target)
    span = x_hi - x_lo
    a = (t_hi - t_lo) / torch.where(span > 0, span, torch.ones_like(span))
    return x * a + (t_lo - x_lo * a)


# ------------------------------------------------------------ spectra (3.5)

def gram_eigh(keys: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of each head's d x d Gram matrix ``scale * keys^T keys`` in
    float64, descending: values (B, h, d), vectors (B, h, d, d) as columns.
    Its eigenvalues are the non-zero ones of the N x N graph ``scale * keys keys^T``."""
    k64 = keys.double()
    evals, evecs = torch.linalg.eigh((k64.transpose(-1, -2) @ k64) * scale)
    return evals.flip(-1), evecs.flip(-1)


def top_of_spectrum(evals: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The ``k`` largest eigenvalues of an N x N graph of rank <= d, given the
    d Gram eigenvalues (descending): (B, h, min(k, N)), zero-padded past d."""
    d = evals.shape[-1]
    length = min(k, n)
    if length > d:
        evals = F.pad(evals, (0, length - d))
    return evals[..., :length]


def top_eigenvalues(keys: torch.Tensor, scale: float, k: int) -> torch.Tensor:
    """The ``k`` largest eigenvalues, descending, of each head's graph
    ``scale * keys keys^T`` (N x N), from the d x d Gram matrix in float64.
    keys (B, h, N, d) -> (B, h, min(k, N))."""
    k64 = keys.double()
    evals = torch.linalg.eigvalsh((k64.transpose(-1, -2) @ k64) * scale).flip(-1)
    return top_of_spectrum(evals, keys.shape[-2], k)


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
    with the lexicographically smallest ``col`` (docs/algorithm.md 3.5):
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
                   dtype: torch.dtype = torch.float32,
                   eig: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Exact rank-``rank`` part of ``scale * keys keys^T`` (PSD), optionally
    with its eigenvalues rescaled from [min, max] to [0.5 min, 1.5 max].

    keys (B, h, N, d) -> (B, h, N, N) in ``dtype``. The top eigenpairs come
    from the d x d Gram matrix in float64 (``eig``: its ``gram_eigh``, if
    already computed); eigenvectors of the graph are ``keys V / sigma``.
    """
    n, d = keys.shape[-2], keys.shape[-1]
    evals, evecs = eig if eig is not None else gram_eigh(keys, scale)
    r = min(rank, n, d)
    sv = evals[..., :r].clamp_min(0)                        # (B, h, r) = scale * sigma^2
    sigma = (sv / scale).sqrt()
    # Directions of (numerically) zero singular values carry no weight; zero
    # them instead of dividing by ~0.
    tiny = sigma <= sigma[..., :1] * 1e-12
    u = (keys.double() @ evecs[..., :r]) / torch.where(tiny, torch.ones_like(sigma), sigma)[..., None, :]
    u = u.masked_fill(tiny[..., None, :], 0.0)              # (B, h, N, r)
    if rescale:
        # The rank-``rank`` decomposition keeps min(rank, n) values; beyond
        # the graph's rank d they are exact zeros, which set the minimum of
        # the rescaling (3.6). Their directions keep weight 0.5 * 0 = 0.
        extra = min(rank, n) - r
        sv = rescale_eigenvalues(F.pad(sv, (0, extra)))[..., :r] if extra > 0 else rescale_eigenvalues(sv)
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


def _minmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max over the last two dims: each (B, h, 1, 1). (Two vectorised
    reductions beat torch.aminmax several times over on the CPU.)"""
    return x.amin((-2, -1), keepdim=True), x.amax((-2, -1), keepdim=True)


def fused_graphs(k: torch.Tensor, kd: torch.Tensor, params: SpectralParams,
                 dtype: torch.dtype = torch.float32, prior: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, FusionInfo]:
    """Fused key graphs F (B, h, N, N) (3.4 to 3.7), plus ``prior`` if given.

    k: CLIP keys (B, h, N, d); kd: DINO keys on CLIP's grid, range-mapped to
    k (B, h, N, d). ``sequential`` is the same formula with w * lambda = 1
    (equal weights), identity matching and no eigenvalue rescaling.
    """
    b, h, n, d = k.shape
    scale = d ** -0.5
    eig_dino = gram_eigh(kd, scale)
    if params.attention == "spectral":
        cost = spectral_cost(top_of_spectrum(eig_dino[0], n, params.k_eigen),
                             top_eigenvalues(k, scale, params.k_eigen))  # (B, h, h)
        cost_np = cost.cpu().numpy()
        col = np.stack([match_heads(c) for c in cost_np])  # (B, h)
        weight = 1.0 - np.take_along_axis(cost_np, col[:, :, None], 2)[..., 0]  # (B, h)
        wl_np = weight * params.fusion_weight
        rescale = params.eigenvalue_scaling
    elif params.attention == "sequential":
        cost_np = np.zeros((b, h, h))
        col = np.tile(np.arange(h), (b, 1))
        weight = np.ones((b, h))
        wl_np = weight
        rescale = False
    else:
        raise ValueError(f"fused_graphs does not handle attention {params.attention!r}")
    # DINO graph col[t] for output head t: pick its Gram eigenpairs, no recompute.
    index = torch.as_tensor(col, device=kd.device)
    kd_sel = torch.take_along_dim(kd, index[:, :, None, None], 1)
    eig_sel = (torch.take_along_dim(eig_dino[0], index[:, :, None], 1),
               torch.take_along_dim(eig_dino[1], index[:, :, None, None], 1))
    low = low_rank_graph(kd_sel, scale, params.low_rank, rescale, dtype, eig_sel)  # D (B, h, N, N)
    low.diagonal(dim1=-2, dim2=-1).zero_()

    # F = (wl * D' + A) / (wl + 1) with D' = a D + c the range map of D onto
    # A's [min, max]: folded into one scaled A and one affine pass over D.
    wl = torch.as_tensor(wl_np, dtype=dtype, device=k.device)[:, :, None, None]
    gamma = 1.0 / (wl + 1.0)
    kw = k.to(dtype)
    fused = (kw * (scale * gamma)) @ kw.transpose(-1, -2)   # gamma * A
    a_lo, a_hi = _minmax(fused)                             # gamma * (min A, max A)
    d_lo, d_hi = _minmax(low)
    span = d_hi - d_lo
    a = (a_hi - a_lo) / torch.where(span > 0, span, torch.ones_like(span))  # already times gamma
    low.mul_(wl * a).add_(wl * (a_lo - d_lo * a))
    fused.add_(low)
    if prior is not None:
        fused.add_(prior.to(dtype))
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
    kd = match_range(kd.to(dtype), k.to(dtype), 1)
    if prior is None:
        prior = gaussian_prior(grid, params.gaussian_std, dtype, k.device)
    fused, info = fused_graphs(k, kd, params, dtype, prior)
    return torch.softmax(fused, -1) @ v.to(dtype), info
