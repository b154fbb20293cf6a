"""Section 3 and section 6 of docs/algorithm.md: the fast spectral step
(batched, d x d eigenproblems) against a naive float64 N x N implementation
written here straight from the specification, the tie rule of 3.5 against a
brute force over all permutations, and the smaller pieces (spatial prior,
DINO key resize, range maps, eigenvalue rescaling)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from cass_ros.core import spectral
from cass_ros.core.config import CassConfig
from cass_ros.core.spectral import (
    SpectralParams,
    cass_attention,
    fused_graphs,
    gaussian_prior,
    match_heads,
    rescale_eigenvalues,
    resize_dino_keys,
    spectral_cost,
    top_eigenvalues,
)

TOL = 1e-4  # the tie tolerance of 3.5


def params(**changes) -> SpectralParams:
    """SpectralParams of the default CassConfig with ``changes``."""
    return SpectralParams.from_config(CassConfig(**changes))


def test_spectral_params_are_the_config_fields() -> None:
    """SpectralParams holds no defaults of its own: each field is the
    CassConfig field of that name, with its type, taken by from_config."""
    config_types = {f.name: f.type for f in dataclasses.fields(CassConfig)}
    for f in dataclasses.fields(SpectralParams):
        assert f.default is dataclasses.MISSING, f.name
        assert config_types[f.name] == f.type, f.name
    with pytest.raises(TypeError):
        SpectralParams()  # type: ignore[call-arg]
    config = CassConfig(k_eigen=7, low_rank=3, fusion_weight=2.5, eigenvalue_scaling=False,
                        gaussian_std=1.5, attention="sequential")
    p = SpectralParams.from_config(config)
    assert p == SpectralParams(k_eigen=7, low_rank=3, fusion_weight=2.5, eigenvalue_scaling=False,
                               gaussian_std=1.5, attention="sequential")
    # the round trip: each value read back into a config gives the same params
    back = CassConfig(**{f.name: getattr(p, f.name) for f in dataclasses.fields(p)})
    assert SpectralParams.from_config(back) == p
    d = CassConfig()
    assert params() == SpectralParams(d.k_eigen, d.low_rank, d.fusion_weight,
                                      d.eigenvalue_scaling, d.gaussian_std, d.attention)

# ------------------------------------------------------------------ naive reference


def brute_force_assignment(cost: np.ndarray, tol: float = TOL) -> np.ndarray:
    """Lexicographically smallest permutation whose total is within ``tol``
    of the minimum over all permutations (3.5), by enumeration."""
    h = cost.shape[0]
    perms = np.array(list(itertools.permutations(range(h))))  # lexicographic order
    totals = cost[np.arange(h)[None, :], perms].sum(1)
    ok = np.nonzero(totals <= totals.min() + tol)[0]
    return perms[ok[0]]


def naive_range_map(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) * (target.max() - target.min()) + target.min()


def naive_prior(grid: tuple[int, int], sigma: float) -> torch.Tensor:
    gh, gw = grid
    n = gh * gw
    out = torch.empty(n, n, dtype=torch.float64)
    for a in range(n):
        i, j = divmod(a, gw)
        for b in range(n):
            k, m = divmod(b, gw)
            out[a, b] = np.exp(-((i - k) ** 2 + (j - m) ** 2) / (2 * sigma ** 2))
    return out


def naive_spectrum(graph: torch.Tensor, k_eigen: int) -> torch.Tensor:
    """Top-k eigenvalues of an N x N symmetric graph, descending, L2- then
    L1-normalised, sorted ascending (3.5)."""
    ev = torch.linalg.eigvalsh(graph).flip(0)[:k_eigen]
    ev = ev / ev.norm(p=2)
    ev = ev / ev.abs().sum()
    return ev.sort().values


def naive_low_rank(graph: torch.Tensor, rank: int, rescale: bool) -> torch.Tensor:
    """Exact top-``rank`` eigendecomposition of a PSD N x N graph (3.6)."""
    evals, evecs = torch.linalg.eigh(graph)
    r = min(rank, graph.shape[0])
    sv = evals.flip(0)[:r]
    u = evecs.flip(1)[:, :r]
    if rescale:
        lo, hi = sv.min(), sv.max()
        sv = (sv - lo) / (hi - lo) * (1.5 * hi - 0.5 * lo) + 0.5 * lo
    return u @ torch.diag(sv) @ u.T


def naive_fused(k: torch.Tensor, kd_mapped: torch.Tensor, p: SpectralParams):
    """One crop: k, kd_mapped (h, N, d) float64 -> (fused (h, N, N), col, w, cost)."""
    h, n, d = k.shape
    s = d ** -0.5
    graph_a = [s * k[t] @ k[t].T for t in range(h)]
    graph_g = [s * kd_mapped[t] @ kd_mapped[t].T for t in range(h)]
    if p.attention == "spectral":
        spec_a = [naive_spectrum(graph_a[t], p.k_eigen) for t in range(h)]
        spec_g = [naive_spectrum(graph_g[t], p.k_eigen) for t in range(h)]
        cost = np.empty((h, h))
        for i in range(h):          # rows: DINO heads
            for j in range(h):      # columns: CLIP heads
                cost[i, j] = 1.0 - float((spec_g[i] - spec_a[j]).abs().sum())
        # scipy gives the optimum; the tie rule picks among the near-optimal.
        rr, cc = linear_sum_assignment(cost)
        col = brute_force_assignment(cost)
        assert cost[np.arange(h), col].sum() <= cost[rr, cc].sum() + TOL
        weight = np.array([1.0 - cost[t, col[t]] for t in range(h)])
        rescale = p.eigenvalue_scaling
    else:  # sequential
        cost = None
        col = np.arange(h)
        weight = np.ones(h)
        rescale = False
    fused = []
    for t in range(h):
        low = naive_low_rank(graph_g[col[t]], p.low_rank, rescale)
        low = low - torch.diag(torch.diag(low))
        low = naive_range_map(low, graph_a[t])
        if p.attention == "spectral":
            wl = weight[t] * p.fusion_weight
            fused.append((wl * low + graph_a[t]) / (wl + 1.0))
        else:
            fused.append((low + graph_a[t]) / 2.0)
    return torch.stack(fused), col, weight, cost


def naive_attention(q, k, v, kd, grid, p: SpectralParams):
    """One crop, (h, N, d) float64 -> per-head outputs (h, N, d)."""
    d = k.shape[-1]
    if p.attention == "vanilla":
        return torch.stack([torch.softmax(q[t] @ k[t].T * d ** -0.5, -1) @ v[t]
                            for t in range(k.shape[0])])
    kd_mapped = naive_range_map(kd, k)  # one map over all heads (3.3)
    fused, *_ = naive_fused(k, kd_mapped, p)
    prior = naive_prior(grid, p.gaussian_std)
    return torch.stack([torch.softmax(fused[t] + prior, -1) @ v[t] for t in range(k.shape[0])])


# ------------------------------------------------------------------ inputs


def make_inputs(seed: int, b: int, h: int, grid: tuple[int, int], d: int, shift: float = 0.0,
                near_tied: bool = False, skewed: bool = False):
    """Random q, k, v, kd (B, h, N, d) float64. ``skewed``: DINO keys whose
    values bunch at the bottom of their range, so that after the range map
    of 3.3 they share a large common component: one dominant eigenvalue per
    DINO head, a separable cost, and every assignment tied (3.5)."""
    gen = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    q = torch.randn(b, h, n, d, generator=gen, dtype=torch.float64)
    k = torch.randn(b, h, n, d, generator=gen, dtype=torch.float64)
    v = torch.randn(b, h, n, d, generator=gen, dtype=torch.float64)
    kd = torch.randn(b, h, n, d, generator=gen, dtype=torch.float64) + shift
    if skewed:
        kd = kd ** 2
    if near_tied:
        # DINO keys with singular values in groups of (nearly) equal values,
        # all groups inside the kept rank (no tie across the rank cut).
        r = min(n, d)
        svals = torch.tensor([6.0, 6.0, 6.0, 5.0, 5.0, 4.0, 4.0, 4.0, 3.0, 2.5]
                             + [1.0 - 0.01 * i for i in range(max(0, r - 10))],
                             dtype=torch.float64)[:r]
        for bi in range(b):
            for t in range(h):
                u, _ = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64))
                w, _ = torch.linalg.qr(torch.randn(d, r, generator=gen, dtype=torch.float64))
                jitter = 1.0 + 1e-9 * torch.randn(r, generator=gen, dtype=torch.float64)
                kd[bi, t] = u @ torch.diag(svals * jitter) @ w.T
        # and CLIP keys with exactly repeated singular values
        for bi in range(b):
            for t in range(h):
                u, _ = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64))
                w, _ = torch.linalg.qr(torch.randn(d, r, generator=gen, dtype=torch.float64))
                k[bi, t] = u @ torch.diag(torch.full((r,), 2.0, dtype=torch.float64)
                                          - 0.5 * (torch.arange(r) // 4)) @ w.T
    return q, k, v, kd


CASES = [
    # (seed, B, h, grid, d, shift, near_tied, skewed)
    (0, 1, 2, (4, 5), 16, 0.0, False, False),
    (1, 2, 3, (5, 5), 12, 0.0, False, False),
    (2, 1, 4, (3, 7), 24, 3.0, False, True),     # separable costs, all assignments tied
    (3, 2, 5, (6, 4), 8, 0.5, False, False),     # d < low_rank
    (4, 1, 6, (4, 4), 32, 0.0, False, True),     # N < d, tied
    (5, 1, 3, (2, 3), 16, 0.0, False, False),    # N < low_rank
    (6, 1, 4, (5, 6), 16, 0.0, True, False),     # near-tied eigenvalues
    (7, 2, 2, (7, 3), 20, 2.0, True, False),
    (8, 1, 7, (3, 4), 16, 0.0, False, False),
]


@pytest.mark.parametrize("scaling", [True, False])
@pytest.mark.parametrize("case", CASES, ids=[f"seed{c[0]}-h{c[2]}-N{c[3][0] * c[3][1]}-d{c[4]}"
                                             for c in CASES])
def test_spectral_attention_matches_naive(case, scaling):
    seed, b, h, grid, d, shift, near_tied, skewed = case
    q, k, v, kd = make_inputs(seed, b, h, grid, d, shift, near_tied, skewed)
    p = params(k_eigen=20, low_rank=10, fusion_weight=10.0, eigenvalue_scaling=scaling,
               gaussian_std=5.0 if seed % 2 else 1.5, attention="spectral")
    out, info = cass_attention(q, k, v, kd, grid, p, dtype=torch.float64)
    assert out.shape == (b, h, grid[0] * grid[1], d) and out.dtype == torch.float64
    kd_mapped = torch.stack([naive_range_map(kd[bi], k[bi]) for bi in range(b)])
    fused, finfo = fused_graphs(k, kd_mapped, p, dtype=torch.float64)
    for bi in range(b):
        ref_fused, col, weight, cost = naive_fused(k[bi], naive_range_map(kd[bi], k[bi]), p)
        np.testing.assert_allclose(finfo.cost[bi], cost, rtol=0, atol=1e-10)
        np.testing.assert_array_equal(finfo.col[bi], col)
        np.testing.assert_array_equal(info.col[bi], col)
        np.testing.assert_allclose(finfo.weight[bi], weight, rtol=0, atol=1e-10)
        torch.testing.assert_close(fused[bi], ref_fused, rtol=1e-8, atol=1e-8)
        ref = naive_attention(q[bi], k[bi], v[bi], kd[bi], grid, p)
        torch.testing.assert_close(out[bi], ref, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("k_eigen,low_rank,fusion", [(5, 3, 2.0), (30, 12, 0.5)])
def test_spectral_other_hyperparameters_match_naive(k_eigen, low_rank, fusion):
    grid = (5, 6)
    q, k, v, kd = make_inputs(11, 1, 3, grid, 16, shift=1.0)
    p = params(k_eigen=k_eigen, low_rank=low_rank, fusion_weight=fusion,
               eigenvalue_scaling=True, gaussian_std=2.0)
    out, _ = cass_attention(q, k, v, kd, grid, p, dtype=torch.float64)
    torch.testing.assert_close(out[0], naive_attention(q[0], k[0], v[0], kd[0], grid, p),
                               rtol=1e-8, atol=1e-8)


def test_spectral_float32_close_to_naive():
    grid = (4, 6)
    q, k, v, kd = make_inputs(21, 2, 3, grid, 16)
    p = params()
    out, info = cass_attention(q.float(), k.float(), v.float(), kd.float(), grid, p)
    assert out.dtype == torch.float32
    assert info.cost.dtype == np.float64  # the matching always runs in float64 (3.5)
    for bi in range(2):
        k32, kd32 = k[bi].float().double(), kd[bi].float().double()
        _, col, _, cost = naive_fused(k32, naive_range_map(kd32, k32), p)
        np.testing.assert_allclose(info.cost[bi], cost, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(info.col[bi], col)
        ref = naive_attention(q[bi], k[bi], v[bi], kd[bi], grid, p)
        torch.testing.assert_close(out[bi].double(), ref, rtol=1e-4, atol=1e-4)


def test_common_dino_component_gives_exact_ties_and_the_tie_rule_decides():
    """DINO keys with a large common component after the range map (3.3):
    the cost is separable, every assignment ties up to float rounding, and
    the rounding alone would pick different optima; the rule picks col = 0..h-1."""
    h = 6
    arbitrary = 0
    for seed in range(5):
        _, k, _, kd = make_inputs(seed, 1, h, (4, 5), 24, skewed=True)
        _, info = fused_graphs(k, naive_range_map(kd, k), params(), dtype=torch.float64)
        cost = info.cost[0]
        perms = np.array(list(itertools.permutations(range(h))))
        totals = cost[np.arange(h)[None, :], perms].sum(1)
        assert np.ptp(totals) < 1e-12, "expected all assignments tied in this case"
        arbitrary += int(totals.argmin() != 0)
        np.testing.assert_array_equal(info.col[0], np.arange(h))
        np.testing.assert_array_equal(info.col[0], brute_force_assignment(cost))
    assert arbitrary > 0  # the plain minimum depends on rounding


@pytest.mark.parametrize("seed,h,grid,d", [(0, 2, (4, 4), 16), (1, 3, (3, 5), 8), (2, 4, (6, 5), 24)])
def test_sequential_matches_naive(seed, h, grid, d):
    q, k, v, kd = make_inputs(seed, 2, h, grid, d, shift=1.0)
    # eigenvalue_scaling on must be ignored by sequential (section 6)
    p = params(attention="sequential", eigenvalue_scaling=True, gaussian_std=3.0)
    out, info = cass_attention(q, k, v, kd, grid, p, dtype=torch.float64)
    np.testing.assert_array_equal(info.col, np.tile(np.arange(h), (2, 1)))
    for bi in range(2):
        torch.testing.assert_close(out[bi], naive_attention(q[bi], k[bi], v[bi], kd[bi], grid, p),
                                   rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("seed,h,n,d", [(0, 2, 12, 16), (1, 3, 30, 8)])
def test_vanilla_matches_naive(seed, h, n, d):
    q, k, v, _ = make_inputs(seed, 2, h, (n, 1), d)
    p = params(attention="vanilla")
    out, info = cass_attention(q, k, v, None, (n, 1), p, dtype=torch.float64)
    assert info is None
    for bi in range(2):
        torch.testing.assert_close(out[bi], naive_attention(q[bi], k[bi], v[bi], None, (n, 1), p),
                                   rtol=1e-10, atol=1e-10)


def test_strategies_differ_and_dino_is_required():
    grid = (4, 4)
    q, k, v, kd = make_inputs(5, 1, 3, grid, 16)
    outs = {a: cass_attention(q, k, v, kd, grid, params(attention=a), dtype=torch.float64)[0]
            for a in ("spectral", "sequential", "vanilla")}
    assert not torch.allclose(outs["spectral"], outs["sequential"])
    assert not torch.allclose(outs["spectral"], outs["vanilla"])
    assert not torch.allclose(outs["sequential"], outs["vanilla"])
    with pytest.raises(ValueError, match="spectral"):
        cass_attention(q, k, v, None, grid, params(), dtype=torch.float64)


def test_cached_prior_is_used():
    grid = (3, 4)
    q, k, v, kd = make_inputs(8, 1, 2, grid, 16)
    p = params(gaussian_std=2.0)
    a, _ = cass_attention(q, k, v, kd, grid, p, dtype=torch.float64)
    b, _ = cass_attention(q, k, v, kd, grid, p, prior=gaussian_prior(grid, 2.0, torch.float64),
                          dtype=torch.float64)
    c, _ = cass_attention(q, k, v, kd, grid, p, prior=torch.zeros(12, 12, dtype=torch.float64),
                          dtype=torch.float64)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


# ------------------------------------------------------------------ pieces


@pytest.mark.parametrize("grid,sigma", [((3, 4), 5.0), ((5, 2), 1.0), ((1, 1), 0.7), ((6, 6), 2.5)])
def test_gaussian_prior(grid, sigma):
    prior = gaussian_prior(grid, sigma, torch.float64)
    torch.testing.assert_close(prior, naive_prior(grid, sigma), rtol=1e-12, atol=1e-14)
    assert torch.equal(prior, prior.T)
    assert torch.all(prior.diagonal() == 1)
    assert gaussian_prior(grid, sigma).dtype == torch.float32


def test_top_eigenvalues_against_full_graph():
    _, k, _, _ = make_inputs(3, 2, 3, (4, 5), 8)
    ev = top_eigenvalues(k, 8 ** -0.5, 20)  # 20 > d = 8: zeros padded
    assert ev.shape == (2, 3, 20)
    for bi in range(2):
        for t in range(3):
            full = torch.linalg.eigvalsh(8 ** -0.5 * k[bi, t] @ k[bi, t].T).flip(0)[:20]
            torch.testing.assert_close(ev[bi, t], full, rtol=0, atol=1e-10)
    assert torch.all(ev[..., 8:] == 0)
    # N < k: only N eigenvalues exist
    _, k2, _, _ = make_inputs(3, 1, 2, (2, 3), 16)
    assert top_eigenvalues(k2, 0.25, 20).shape == (1, 2, 6)


def test_spectral_cost_formula():
    gen = torch.Generator().manual_seed(0)
    eg = torch.rand(1, 3, 7, generator=gen, dtype=torch.float64)
    ea = torch.rand(1, 3, 7, generator=gen, dtype=torch.float64)
    cost = spectral_cost(eg, ea)[0]
    for i in range(3):
        for j in range(3):
            a = eg[0, i] / eg[0, i].norm()
            a = torch.sort(a / a.sum()).values
            c = ea[0, j] / ea[0, j].norm()
            c = torch.sort(c / c.sum()).values
            assert cost[i, j].item() == pytest.approx(1 - (a - c).abs().sum().item(), abs=1e-14)


def test_resize_dino_keys_against_per_channel_interpolation():
    gen = torch.Generator().manual_seed(1)
    keys = torch.randn(2, 3, 6 * 6, 5, generator=gen)
    out = resize_dino_keys(keys, (6, 6), (3, 4))
    assert out.shape == (2, 3, 12, 5)
    for bi in range(2):
        for t in range(3):
            for c in range(5):
                m = keys[bi, t, :, c].reshape(1, 1, 6, 6)
                ref = F.interpolate(m, size=(3, 4), mode="bilinear", align_corners=False).reshape(-1)
                torch.testing.assert_close(out[bi, t, :, c], ref)


def test_rescale_eigenvalues():
    sv = torch.tensor([[4.0, 3.0, 1.0], [2.0, 2.0, 2.0]], dtype=torch.float64)
    out = rescale_eigenvalues(sv)
    # [1, 4] -> [0.5, 6]: 3 -> 0.5 + (3 - 1) / (4 - 1) * (6 - 0.5)
    torch.testing.assert_close(out[0], torch.tensor([6.0, 0.5 + 2.0 / 3.0 * 5.5, 0.5],
                                                    dtype=torch.float64))
    assert out[0].min() == 0.5 * 1.0 and out[0].max() == 1.5 * 4.0
    assert torch.all(out[1] == 1.0)  # constant row: maps to 0.5 * min


# ------------------------------------------------------------------ tie rule (3.5)


def tied_cost(rng: np.random.Generator, h: int, forbid: float) -> np.ndarray:
    """A separable cost u_i + v_j (every allowed assignment ties, up to float
    rounding), with some pairs forbidden by a large penalty."""
    u = rng.random(h) * 0.3
    v = rng.random(h) * 0.3
    cost = 0.4 + u[:, None] + v[None, :]
    mask = rng.random((h, h)) < forbid
    mask[np.arange(h), rng.permutation(h)] = False  # keep one allowed assignment
    return np.where(mask, cost + 5.0, cost)


@pytest.mark.parametrize("h", [1, 2, 3, 4, 5, 6, 7])
def test_tie_rule_on_separable_costs(h):
    rng = np.random.default_rng(100 + h)
    hits_non_identity = 0
    for trial in range(25):
        cost = tied_cost(rng, h, forbid=0.0 if trial < 3 else 0.5)
        col = match_heads(cost)
        expected = brute_force_assignment(cost)
        np.testing.assert_array_equal(col, expected)
        hits_non_identity += int(not np.array_equal(col, np.arange(h)))
        if trial < 3:  # everything tied: the identity is the smallest col
            np.testing.assert_array_equal(col, np.arange(h))
    if h >= 3:
        assert hits_non_identity > 0


@pytest.mark.parametrize("h", [2, 3, 4, 5, 6, 7])
def test_tie_rule_with_perturbed_ties(h):
    rng = np.random.default_rng(200 + h)
    for _ in range(25):
        cost = tied_cost(rng, h, forbid=0.4)
        # totals move by < h * 1e-5 < 1e-4: still tied under the rule
        cost = cost + rng.uniform(-1e-5, 1e-5, size=cost.shape)
        np.testing.assert_array_equal(match_heads(cost), brute_force_assignment(cost))


@pytest.mark.parametrize("h", [3, 5, 7])
def test_tie_rule_on_small_integer_costs(h):
    rng = np.random.default_rng(300 + h)
    for _ in range(25):
        cost = rng.integers(0, 3, size=(h, h)).astype(np.float64) * 0.1
        np.testing.assert_array_equal(match_heads(cost), brute_force_assignment(cost))


def test_tie_rule_is_not_plain_scipy():
    # scipy returns some optimum; the rule wants the lexicographically smallest
    cost = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])[::-1].copy()
    # optima: every permutation avoiding the 1s; smallest col first
    np.testing.assert_array_equal(match_heads(cost), brute_force_assignment(cost))
    cost2 = np.zeros((4, 4))
    np.testing.assert_array_equal(match_heads(cost2), np.arange(4))
    # a gap just above the tolerance is not a tie
    cost3 = np.array([[0.0, 0.0], [0.0, -2e-4]])
    np.testing.assert_array_equal(match_heads(cost3), [0, 1])
    cost4 = np.array([[0.0, 0.0], [0.0, 2e-4]])
    np.testing.assert_array_equal(match_heads(cost4), [1, 0])
    cost5 = np.array([[0.0, 0.0], [0.0, 5e-5]])  # within 1e-4: tied, identity wins
    np.testing.assert_array_equal(match_heads(cost5), [0, 1])


@pytest.mark.parametrize("h", [2, 5, 7, 12])
def test_untied_random_costs_equal_scipy(h):
    rng = np.random.default_rng(400 + h)
    for _ in range(10):
        cost = rng.random((h, h))
        rr, cc = linear_sum_assignment(cost)
        # make sure the optimum is unique by a margin larger than the tolerance
        if h <= 7:
            perms = np.array(list(itertools.permutations(range(h))))
            totals = np.sort(cost[np.arange(h)[None, :], perms].sum(1))
            if totals[1] - totals[0] <= 2 * TOL:
                continue
        col = match_heads(cost)
        np.testing.assert_array_equal(col, cc[np.argsort(rr)])


def test_tie_tolerance_constant():
    assert spectral.TIE_TOLERANCE == 1e-4
