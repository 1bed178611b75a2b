"""Two-sample statistics of the evidence: a permutation test, its bound, an interval (rows share the resamples)."""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor


def _rows(x: Tensor) -> Tensor:
    return x.detach().double().cpu()


def _welch(sum_a: Tensor, sq_a: Tensor, sum_b: Tensor, sq_b: Tensor, na: int, nb: int) -> Tuple[Tensor, Tensor]:
    """``(mean(a) − mean(b), Welch SE)`` from sums and sums of squares."""
    ma, mb = sum_a / na, sum_b / nb
    va = ((sq_a - sum_a * ma) / (na - 1)).clamp(min=0)
    vb = ((sq_b - sum_b * mb) / (nb - 1)).clamp(min=0)
    return ma - mb, (va / na + vb / nb).sqrt()


def _t(diff: Tensor, se: Tensor) -> Tensor:
    """``diff / se``; ``±inf`` (or 0) where ``se`` is 0."""
    ok = se > 0
    flat = torch.where(diff > 0, math.inf, torch.where(diff < 0, -math.inf, 0.0)).to(diff.dtype)
    return torch.where(ok, diff / torch.where(ok, se, torch.ones_like(se)), flat)


def studentized_permutation_test(a: Tensor, b: Tensor, n_perm: int = 1000, seed: int = 0) -> Dict[str, Tensor]:
    """One-sided studentized permutation test of ``mean(a) > mean(b)`` for ``(..., n_a)``, ``(..., n_b)``, ``n ≥ 2``.

    Welch's ``t``, ``p = (1 + #{t* ≥ t}) / (1 + n_perm)`` over relabellings of the pooled values: it holds α on
    skewed, unequal groups (Chung & Romano 2013). Returns ``estimate``, ``se``, ``t``, ``p`` (NaN on non-finite
    rows) and ``null`` ``(n_perm, ...)``.

    Example:
        >>> out = studentized_permutation_test(torch.tensor([3.0, 4.0, 5.0]), torch.tensor([0.0, 1.0, 2.0]), 2000)
        >>> float(out["estimate"]), round(float(out["t"]), 4), abs(float(out["p"]) - 1 / 20) < 0.02  # 1 of 20 splits
        (3.0, 3.6742, True)
    """
    x, y = _rows(a), _rows(b)
    na, nb = x.shape[-1], y.shape[-1]
    if na < 2 or nb < 2:
        raise ValueError(f"the studentized permutation test needs >= 2 values per group, got {na} and {nb}.")
    if x.shape[:-1] != y.shape[:-1]:
        raise ValueError(f"`a` and `b` need the same leading shape, got {tuple(x.shape)} and {tuple(y.shape)}.")
    if n_perm < 1:
        raise ValueError(f"`n_perm` must be >= 1, got {n_perm}.")
    lead = x.shape[:-1]
    pooled = torch.cat([x, y], dim=-1).reshape(-1, na + nb)
    finite = torch.isfinite(pooled).all(dim=1)
    pooled = torch.where(finite[:, None], pooled, torch.zeros_like(pooled))
    pooled = pooled - pooled.mean(dim=1, keepdim=True)  # centred: sums of squares without cancellation
    sq = pooled * pooled
    total, total_sq = pooled.sum(dim=1, keepdim=True), sq.sum(dim=1, keepdim=True)
    obs_a, obs_sq = pooled[:, :na].sum(dim=1, keepdim=True), sq[:, :na].sum(dim=1, keepdim=True)
    diff, se = _welch(obs_a, obs_sq, total - obs_a, total_sq - obs_sq, na, nb)
    t = _t(diff, se)
    gen = torch.Generator().manual_seed(int(seed) & (2**63 - 1))
    picked = torch.rand(n_perm, na + nb, generator=gen).argsort(dim=1)[:, :na]
    first = torch.zeros(n_perm, na + nb, dtype=torch.float64).scatter_(1, picked, 1.0)
    perm_a, perm_sq = pooled @ first.T, sq @ first.T  # (rows, n_perm)
    null = _t(*_welch(perm_a, perm_sq, total - perm_a, total_sq - perm_sq, na, nb))
    tol = torch.where(torch.isfinite(t), 1e-9 * (1 + t.abs()), torch.zeros_like(t))
    p = (1.0 + (null >= t - tol).sum(dim=1, keepdim=True).double()) / (1.0 + n_perm)
    nan = torch.full_like(p, math.nan)
    out = {k: torch.where(finite[:, None], v, nan).reshape(lead) for k, v in
           (("estimate", diff), ("se", se), ("t", t), ("p", p))}
    out["null"] = null.T.reshape(n_perm, *lead)
    return out


def permutation_lower_bound(estimate: Tensor, scale: Tensor, null: Tensor, level: float) -> Tensor:
    """Lower bound ``estimate − c · scale``, ``c`` the ``(B, *S)`` null's critical value at ``level``.

    > 0 exactly when the test rejects at ``level``; ``−inf`` where no p-value can reach it or ``scale`` <= 0.

    Example:
        >>> null = torch.arange(19.0)[:, None]  # 0 .. 18
        >>> permutation_lower_bound(torch.tensor([20.0]), torch.tensor([1.0]), null, 0.1)  # c = 17
        tensor([3.], dtype=torch.float64)
    """
    est, sc, nl = _rows(estimate), _rows(scale), _rows(null)
    k = math.floor(level * (nl.shape[0] + 1) + 1e-9) - 1
    if k < 0 or k >= nl.shape[0]:
        return torch.full_like(est, -math.inf)
    crit = nl.sort(dim=0, descending=True).values[k]
    bound = est - crit * sc
    return torch.where((sc > 0) & torch.isfinite(bound), bound, torch.full_like(bound, -math.inf))


def bootstrap_t_interval(a: Tensor, b: Optional[Tensor] = None, n_boot: int = 1000, level: float = 0.95,
                         seed: int = 0) -> Tuple[Tensor, Tensor]:
    """Bootstrap-t ``(lower, upper)`` of ``mean(a)`` or ``mean(a) − mean(b)`` for ``(..., n)`` values, ``n ≥ 2``.

    ``[est − q_hi · se, est − q_lo · se]``, ``q`` the quantiles of ``t* = (est* − est) / se*``.

    Example:
        >>> lo, hi = bootstrap_t_interval(torch.tensor([1.0, 2.0, 3.0, 4.0]), n_boot=400)
        >>> bool(lo < 2.5 < hi)
        True
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"`level` must be in (0, 1), got {level!r}.")
    gen = torch.Generator().manual_seed(int(seed) & (2**63 - 1))
    est, se, est_b, se_b = _resampled_moments(_rows(a), n_boot, gen)
    if b is not None:
        e2, s2, eb2, sb2 = _resampled_moments(_rows(b), n_boot, gen)
        est, se, est_b, se_b = est - e2, (se**2 + s2**2).sqrt(), est_b - eb2, (se_b**2 + sb2**2).sqrt()
    t = torch.where(se_b > 0, (est_b - est[..., None]) / torch.where(se_b > 0, se_b, torch.ones_like(se_b)),
                    torch.full_like(se_b, math.nan))
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    quant = torch.nanquantile(t, q, dim=-1).nan_to_num(0.0)  # (2, ...); all resamples degenerate: 0
    lo, hi = est - quant[1] * se, est - quant[0] * se
    bad = ~torch.isfinite(est)
    return lo.masked_fill(bad, math.nan), hi.masked_fill(bad, math.nan)


def _resampled_moments(x: Tensor, n_boot: int, gen: torch.Generator) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(mean, se, mean*, se*)`` of ``x`` and of ``n_boot`` resamples."""
    n = x.shape[-1]
    if n < 2:
        raise ValueError(f"a bootstrap-t interval needs >= 2 values, got {n}.")
    counts = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
        1, torch.randint(0, n, (n_boot, n), generator=gen), torch.ones(n_boot, n, dtype=torch.float64))
    centre = x.mean(dim=-1, keepdim=True)
    xc = torch.where(torch.isfinite(x), x - centre, torch.zeros_like(x))
    mean_b = xc @ counts.T / n  # (..., B)
    sq_b = (xc * xc) @ counts.T
    se_b = ((sq_b - n * mean_b**2).clamp(min=0) / (n - 1) / n).sqrt()
    return centre.squeeze(-1), (xc.var(dim=-1, unbiased=True) / n).sqrt(), centre + mean_b, se_b
