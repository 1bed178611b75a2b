"""Two-sample statistics every evidence family can reuse: a test, its matching bound, an interval.

- :func:`studentized_permutation_test`: one-sided test of ``mean(a) > mean(b)``. The statistic is
  Welch's t, its null the t of every relabelling of the pooled values. It is exact when the two
  groups are exchangeable (a random control: the null of every family here) at any group sizes
  and skew, and studentizing keeps it asymptotically valid when their spreads differ, where a
  permutation of the plain difference of means is not (Janssen, *Stat. Probab. Lett.* 1997;
  Chung & Romano, *Ann. Statist.* 2013). Welch's t-distribution is not: on lognormal values,
  80 vs 10 images, it rejected 16.6 % of true nulls at α = 0.05 (``benchmarks/evidence_calibration.py``).
- :func:`permutation_lower_bound`: ``estimate − c·scale`` with ``c`` the test's own critical
  value, so the bound is above 0 exactly when the test rejects at that level.
- :func:`bootstrap_t_interval`: studentized bootstrap interval of a mean or a difference of
  means (better coverage on skewed values than the percentile interval).

Every function is vectorised over leading dimensions (layers): rows share one set of
permutations / resamples, so a candidate is drawn at every layer together.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["bootstrap_t_interval", "permutation_lower_bound", "studentized_permutation_test"]


def _rows(x: Tensor) -> Tensor:
    return x.detach().double().cpu()


def _welch(sum_a: Tensor, sq_a: Tensor, sum_b: Tensor, sq_b: Tensor, na: int, nb: int) -> Tuple[Tensor, Tensor]:
    """``(mean(a) − mean(b), Welch SE)`` from sums and sums of squares (of centred values)."""
    ma, mb = sum_a / na, sum_b / nb
    va = ((sq_a - sum_a * ma) / (na - 1)).clamp(min=0)
    vb = ((sq_b - sum_b * mb) / (nb - 1)).clamp(min=0)
    return ma - mb, (va / na + vb / nb).sqrt()


def _t(diff: Tensor, se: Tensor) -> Tensor:
    """``diff / se``; ``±inf`` (or 0 for ``diff = 0``) where ``se`` is 0 (both groups constant)."""
    ok = se > 0
    flat = torch.where(diff > 0, math.inf, torch.where(diff < 0, -math.inf, 0.0)).to(diff.dtype)
    return torch.where(ok, diff / torch.where(ok, se, torch.ones_like(se)), flat)


def studentized_permutation_test(a: Tensor, b: Tensor, n_perm: int = 1000, seed: int = 0) -> Dict[str, Tensor]:
    """One-sided studentized permutation test of ``mean(a) > mean(b)``.

    ``t = (mean(a) − mean(b)) / sqrt(var(a)/n_a + var(b)/n_b)`` (Welch's statistic); its null is
    the same statistic after each of ``n_perm`` random relabellings of the pooled ``n_a + n_b``
    values, and ``p = (1 + #{t* ≥ t}) / (1 + n_perm)``. Sums come from one matrix product, so
    the cost is ``O(n_perm · (n_a + n_b) · rows)``.

    Args:
        a: ``(..., n_a)`` values of the first group (e.g. the candidates), ``n_a ≥ 2``.
        b: ``(..., n_b)`` values of the second group (e.g. the control), ``n_b ≥ 2``; same
            leading shape as ``a``. Every row is relabelled with the same permutations.
        n_perm: relabellings (≥ 1).
        seed: seed of the relabellings.

    Returns:
        ``{"estimate": mean(a) − mean(b), "se": Welch SE, "t": t, "p": p}``, each of the leading
        shape, and ``"null"``: ``(n_perm, ...)`` permuted t. Rows holding a non-finite value get
        NaN ``p``.

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
    out = {"estimate": torch.where(finite[:, None], diff, nan), "se": torch.where(finite[:, None], se, nan),
           "t": torch.where(finite[:, None], t, nan), "p": torch.where(finite[:, None], p, nan)}
    out = {k: v.reshape(lead) for k, v in out.items()}
    out["null"] = null.T.reshape(n_perm, *lead)
    return out


def permutation_lower_bound(estimate: Tensor, scale: Tensor, null: Tensor, level: float) -> Tensor:
    """One-sided lower bound that agrees with a permutation test: ``estimate − c · scale``.

    ``c`` is the test's critical value at ``level``: the ``(k+1)``-th largest of the ``B`` null
    statistics, ``k = ⌊level · (B + 1)⌋ − 1``. With ``t = estimate / scale`` and the test's
    ``p = (1 + #{null ≥ t}) / (B + 1)``, the bound is > 0 exactly when ``p ≤ level``. As a
    confidence bound for the size of the effect it is approximate (the null is that of no effect).
    ``−inf`` where ``level · (B + 1) < 1`` (no p-value can reach ``level``) or ``scale`` is not > 0.

    Args:
        estimate: the tested quantity, any shape ``S``.
        scale: its scale (the SE for a studentized test, 1 for a plain difference), shape ``S``.
        null: ``(B, *S)`` null statistics (on the scale of ``estimate / scale``).
        level: one-sided level, e.g. ``alpha / m`` for a bound simultaneous over ``m`` tests.

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
    """Studentized (bootstrap-t) interval of ``mean(a)``, or of ``mean(a) − mean(b)``.

    For each resample, ``t* = (est* − est) / se*``; the interval is
    ``[est − q_hi · se, est − q_lo · se]`` with ``q`` the quantiles of ``t*``. It corrects for
    skew where the percentile interval does not (measured on lognormal values, n = 20: coverage
    0.92 vs 0.86). Resamples with ``se* = 0`` are left out; constant data give ``[est, est]``.

    Args:
        a: ``(..., n_a)``, ``n_a ≥ 2``; leading rows are resampled with the same indices.
        b: optional ``(..., n_b)`` second group (resampled independently of ``a``).
        n_boot: resamples.
        level: two-sided coverage.
        seed: seed of the resampling.

    Returns:
        ``(lower, upper)`` of the leading shape (NaN for rows with a non-finite value).

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
    """``(mean, se, mean*, se*)`` of ``x`` over its last dim and of ``n_boot`` resamples (``(..., B)``)."""
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
    se = (xc.var(dim=-1, unbiased=True) / n).sqrt()
    return centre.squeeze(-1), se, centre + mean_b, se_b
