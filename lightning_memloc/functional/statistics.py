"""Statistics that turn memorization figures into evidence: intervals, tests and their nulls (seeded, vectorised)."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) & (2**63 - 1))


def bootstrap_indices(n: int, n_boot: int, seed: int) -> Tensor:
    """``(n_boot, n)`` indices drawn with replacement from ``0 .. n-1`` (seeded, CPU).

    Example:
        >>> bootstrap_indices(4, 3, seed=0).shape
        torch.Size([3, 4])
    """
    if n < 1 or n_boot < 1:
        raise ValueError(f"bootstrap needs n >= 1 and n_boot >= 1, got n={n}, n_boot={n_boot}.")
    return torch.randint(0, n, (n_boot, n), generator=_generator(seed))


def percentile_interval(samples: Tensor, level: float = 0.95) -> Tuple[Tensor, Tensor]:
    """Percentile interval of bootstrap ``samples`` along dim 0: ``(lower, upper)``.

    Example:
        >>> [float(v) for v in percentile_interval(torch.arange(101.0), level=0.9)]
        [5.0, 95.0]
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"`level` must be in (0, 1), got {level!r}.")
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=samples.dtype)
    lower, upper = torch.quantile(samples, q, dim=0)
    return lower, upper


def standard_error_interval(samples: Tensor, estimate: float, level: float = 0.95) -> Tuple[float, float]:
    """Normal interval ``estimate ± z·sd(samples)`` from the bootstrap standard error.

    For max-based statistics (UnitMem) resamples are biased low but their spread is right: centre on the estimate.

    Example:
        >>> [round(v, 3) for v in standard_error_interval(torch.tensor([0.0, 2.0]), 5.0, level=0.95)]
        [2.228, 7.772]
    """
    from scipy.special import ndtri

    sd = float(samples.detach().double().cpu().reshape(-1).std(unbiased=True))
    z = float(ndtri((1 + level) / 2))
    return estimate - z * sd, estimate + z * sd


def bootstrap_mean_interval(values: Tensor, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """Percentile-bootstrap ``(lower, upper)``, each ``(...)``, of the mean of ``(..., N)`` ``values`` over ``N``.

    Leading rows share the resampled candidate indices (layers stay paired).

    Example:
        >>> [float(v) for v in bootstrap_mean_interval(torch.tensor([1.0, 1.0, 1.0]))]
        [1.0, 1.0]
    """
    v = values.detach().double().cpu()
    return percentile_interval(v[..., bootstrap_indices(v.shape[-1], n_boot, seed)].mean(dim=-1).movedim(-1, 0), level)


def bootstrap_difference_interval(a: Tensor, b: Tensor, n_boot: int = 1000, level: float = 0.95,
                                  seed: int = 0) -> Tuple[Tensor, Tensor]:
    """Interval of ``mean(a) − mean(b)`` over the last dimension, ``a`` and ``b`` resampled independently.

    Example:
        >>> [float(v) for v in bootstrap_difference_interval(torch.full((5,), 2.0), torch.full((3,), 0.5))]
        [1.5, 1.5]
    """
    va, vb = a.detach().double().cpu(), b.detach().double().cpu()
    ia, ib = bootstrap_indices(va.shape[-1], n_boot, seed), bootstrap_indices(vb.shape[-1], n_boot, seed + 1)
    return percentile_interval((va[..., ia].mean(dim=-1) - vb[..., ib].mean(dim=-1)).movedim(-1, 0), level)


def bootstrap_topk_interval(scores: Tensor, k: int, n_boot: int = 1000, level: float = 0.95,
                            seed: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(top_lower, top_upper, least_lower, least_upper)``, each ``(L,)``: intervals of top-k / least-k LayerMem.

    ``scores`` is ``(L, N)`` normalised SSLMem; each resample re-ranks by the last layer (``min(k, N)`` per group).
    """
    s = scores.detach().double().cpu()
    n = s.shape[-1]
    k = min(k, n)
    drawn = s[:, bootstrap_indices(n, n_boot, seed)]  # (L, B, N)
    order = drawn[-1].argsort(dim=-1, descending=True, stable=True)  # (B, N)
    top = torch.gather(drawn, 2, order[None, :, :k].expand(s.shape[0], -1, -1)).mean(-1)
    least = torch.gather(drawn, 2, order[None, :, n - k:].expand(s.shape[0], -1, -1)).mean(-1)
    return (*percentile_interval(top.T, level), *percentile_interval(least.T, level))


def welch_greater(a: Tensor, b: Tensor) -> Tuple[float, float, float]:
    """One-sided Welch t-test ``(t, df, p)`` of ``mean(a) > mean(b)``, as the authors' ``Ttest.py``.

    ``p`` is NaN when a group has fewer than 2 values.

    Example:
        >>> [round(v, 6) for v in welch_greater(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0]))[::2]]
        [0.0, 0.5]
    """
    from scipy.special import stdtr

    x, y = a.detach().double().cpu().reshape(-1), b.detach().double().cpu().reshape(-1)
    na, nb = x.numel(), y.numel()
    if na < 2 or nb < 2:
        return math.nan, math.nan, math.nan
    va, vb = float(x.var(unbiased=True)) / na, float(y.var(unbiased=True)) / nb
    diff, se2 = float(x.mean() - y.mean()), va + vb
    if se2 == 0.0:
        return (math.inf if diff > 0 else (-math.inf if diff < 0 else 0.0)), math.nan, (0.0 if diff > 0 else 1.0)
    t = diff / math.sqrt(se2)
    df = se2**2 / ((va**2 / (na - 1) if va else 0.0) + (vb**2 / (nb - 1) if vb else 0.0))
    return t, df, float(stdtr(df, -t))


def holm(pvalues: Sequence[Optional[float]]) -> List[Optional[float]]:
    """Holm's step-down adjusted p-values; ``None``/NaN entries stay ``None``.

    Example:
        >>> holm([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
    """
    valid = [(p, i) for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    out: List[Optional[float]] = [None] * len(pvalues)
    m, running = len(valid), 0.0
    for rank, (p, i) in enumerate(sorted(valid)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def weighted_mean_unitmem(mu: Tensor, weights: Tensor, chunk: int = 1024) -> Tensor:
    """Mean UnitMem ``(B,)`` float64 (``reduction="mean"``) of ``(B, N)`` candidate multisets given as counts.

    ``mu`` is ``(N, U)``, non-negative; rows of ``weights`` sum to >= 2. The max walks each unit's candidates from
    the largest μ down until one is drawn (~``1.6·B·U`` lookups, not ``B·N·U``); ``chunk`` resamples per step.

    Example:
        >>> mu = torch.tensor([[4.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
        >>> weighted_mean_unitmem(mu, torch.ones(1, 3))  # UnitMem (0.6, 0) -> mean 0.3
        tensor([0.3000], dtype=torch.float64)
    """
    m = mu.detach().double()
    w = weights.detach().double().to(m.device)
    n_b = w.sum(dim=1, keepdim=True)  # (B, 1)
    if bool((n_b < 2).any()):
        raise ValueError("every multiset needs at least 2 candidates for UnitMem.")
    sums = w @ m  # (B, U)
    n, units = m.shape
    order = m.argsort(dim=0, descending=True)  # (N, U): each unit's candidates, largest μ first
    ranked = m.gather(0, order)
    by_unit, ranked_by_unit = order.t().reshape(-1), ranked.t().reshape(-1)  # (U·N): [u·N + rank]
    maxes = torch.zeros_like(sums)
    for start in range(0, w.shape[0], chunk):
        present = w[start:start + chunk] > 0  # (c, N)
        hit = present[:, order[0]]  # (c, U): the unit's top candidate is drawn
        best = torch.where(hit, ranked[0], torch.zeros((), dtype=torch.float64, device=m.device))
        flat_present, flat_best = present.reshape(-1), best.view(-1)
        pairs = (~hit).view(-1).nonzero().squeeze(1)  # the (resample, unit) pairs still open, as row·U + unit
        rows, cols = pairs // units, pairs % units
        for rank in range(1, n):
            if pairs.numel() == 0:
                break
            hit = flat_present[rows * n + by_unit[cols * n + rank]]  # that pair's candidate at this rank is drawn
            found = hit.nonzero().squeeze(1)
            flat_best[pairs[found]] = ranked_by_unit[cols[found] * n + rank]
            left = (~hit).nonzero().squeeze(1)
            pairs, rows, cols = pairs[left], rows[left], cols[left]
        maxes[start:start + chunk] = best
    rest = sums.sub_(maxes).div_(n_b - 1)  # in place: (B, U) temporaries dominate after the max
    score = maxes - rest
    denom = maxes.add_(rest)
    dead = denom <= 0
    score.div_(denom.masked_fill_(dead, 1.0)).clamp_(0.0, 1.0).masked_fill_(dead, 0.0)
    return score.mean(dim=1)


def membership_test(mu: Tensor, seen: Tensor, n_perm: int = 2000, seed: int = 0) -> Dict[str, float]:
    """Share of alive units whose μmax image is a training image, against a permutation null.

    ``mu``: ``(P, U)`` non-negative means of the pool's images; ``seen``: ``(P,)`` bool, trained-on images.
    Seen/unseen labels are permuted over the *images* (units are not independent draws); a unit tied across
    images splits its credit. Returns ``{"fraction", "chance": seen / P, "p" (one-sided), "alive": alive units,
    "winners": distinct μmax images}``; fraction and p are NaN with no alive unit.

    Example:
        >>> mu = torch.tensor([[5.0, 0.0, 4.0], [0.0, 5.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
        >>> out = membership_test(mu, torch.tensor([True, True, False, False]), n_perm=200)
        >>> out["fraction"], out["chance"], out["alive"]
        (1.0, 0.5, 3)
    """
    m, s = mu.detach().double().cpu(), torch.as_tensor(seen, dtype=torch.bool).cpu().reshape(-1)
    if s.numel() != m.shape[0]:
        raise ValueError(f"`seen` has {s.numel()} entries for a pool of {m.shape[0]} images.")
    chance = float(s.double().mean())
    alive = m.amax(dim=0) > 0
    n_alive = int(alive.sum())
    if n_alive == 0:
        return {"fraction": math.nan, "chance": chance, "p": math.nan, "alive": 0, "winners": 0}
    top = m[:, alive]
    tied = (top == top.amax(dim=0, keepdim=True)).double()  # (P, alive): every image at a unit's max
    wins = (tied / tied.sum(dim=0, keepdim=True)).sum(dim=1)  # (P,) a tied unit's credit is split
    observed = float(wins[s].sum()) / n_alive
    perms = torch.argsort(torch.rand(n_perm, s.numel(), generator=_generator(seed)), dim=1)
    null = s.double()[perms] @ wins / n_alive  # (n_perm,)
    p = (1.0 + float((null >= observed - 1e-12).sum())) / (1.0 + n_perm)
    return {"fraction": observed, "chance": chance, "p": p, "alive": n_alive, "winners": int((wins > 0).sum())}


def samples_for_halfwidth(n: int, halfwidth: float, target: float) -> int:
    """Candidates needed for half-width ``target`` when ``n`` give ``halfwidth`` (shrinks as 1/√n).

    Example:
        >>> samples_for_halfwidth(100, 0.08, 0.02)
        1600
    """
    if target <= 0:
        raise ValueError(f"`target` must be > 0, got {target!r}.")
    if not math.isfinite(halfwidth) or halfwidth <= target:
        return n
    return int(math.ceil(n * (halfwidth / target) ** 2))
