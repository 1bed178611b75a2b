"""UnitMem's evidence: the interval of mean UnitMem, UnitMem seen − unseen and the argmax membership test.

The negative policy runs on the candidates alone for their UnitMem, and once over candidates ∪ unseen for the
comparisons (one shared zero; per-group shifts inflate false positives).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from lightning_memloc.functional.statistics import (bootstrap_indices, membership_test, standard_error_interval,
                                                  weighted_mean_unitmem)
from lightning_memloc.functional.unitmem import apply_negative_policy, unitmem
from lightning_memloc.report.layer_evidence import Nulls, Record

__all__ = ["TEST_NAMES", "median_unitmem_resamples", "policy_means", "unit_mem_evidence"]
#: How each UnitMem family is tested (recorded in ``Evidence.meta["tests"]``).
TEST_NAMES = {"membership": "permutation of the seen / unseen labels over the images; tied units split their credit",
              "unit_mem_excess": "permutation of the seen / unseen labels over equal-size samples of the images"}


def policy_means(layer: str, mu: Tensor, negative: str) -> Tensor:
    """``apply_negative_policy`` in float64 on ``mu``'s device (the GPU of the pass, if any), its errors naming ``layer``."""
    try:
        return apply_negative_policy(mu.detach().double(), negative)
    except ValueError as err:
        raise ValueError(f"layer {layer!r}: {err}") from err


def _unitmem_resamples(mu: Tensor, weights: Tensor, reduction: str) -> Tensor:
    """Mean UnitMem per multiset (rows of ``weights``, equal row sums), batched on ``mu``'s device."""
    return (weighted_mean_unitmem if reduction == "mean" else median_unitmem_resamples)(mu, weights)


def median_unitmem_resamples(mu: Tensor, weights: Tensor, max_elements: int = 1 << 24) -> Tensor:
    """Mean UnitMem (``reduction="median"``) of each multiset; ``weights`` ``(B, N)`` counts draws, equal row sums.

    Example:
        >>> mu = torch.tensor([[9.0], [1.0], [2.0], [6.0]], dtype=torch.float64)
        >>> median_unitmem_resamples(mu, torch.tensor([[1, 1, 1, 1], [2, 0, 0, 2]]))  # 9 vs median(1, 2, 6); 9 vs (6, 6, 9)
        tensor([0.6364, 0.2000], dtype=torch.float64)
    """
    m = mu.detach().double()
    counts = weights.detach().long().to(m.device)
    b, n = counts.shape
    per_row = int(counts[0].sum()) if b else 0
    if b and not bool((counts.sum(dim=1) == per_row).all()):
        raise ValueError("every multiset must have the same number of draws.")
    if per_row < 2:
        raise ValueError("every multiset needs at least 2 candidates for UnitMem.")
    drawn = torch.arange(n, device=m.device).repeat(b).repeat_interleave(counts.reshape(-1)).view(b, per_row)
    out = torch.empty(b, dtype=torch.float64, device=m.device)
    step = max(1, max_elements // (per_row * m.shape[1]))
    half = (per_row - 1) // 2  # the others are ordered[:, :per_row - 1], still sorted
    for start in range(0, b, step):
        ordered = m[drawn[start:start + step]].sort(dim=1).values  # (c, n_b, U) ascending
        top = ordered[:, -1]
        rest = ordered[:, half] if (per_row - 1) % 2 else (ordered[:, half - 1] + ordered[:, half]) / 2
        denom = top + rest
        dead = denom == 0
        score = ((top - rest) / torch.where(dead, torch.ones_like(denom), denom)).clamp(0.0, 1.0)
        out[start:start + step] = torch.where(dead, torch.zeros_like(score), score).mean(dim=1)
    return out


def _counts(index: Tensor, n: int, device: torch.device) -> Tensor:
    """Bootstrap indices ``(B, n)`` (drawn on the CPU) as per-candidate counts ``(B, n)`` float64 on ``device``."""
    index = index.to(device)
    return torch.zeros(index.shape[0], n, dtype=torch.float64, device=device).scatter_add_(
        1, index, torch.ones_like(index, dtype=torch.float64))


def unit_mem_evidence(layers: List[str], mu: Mapping[str, Tensor], mu_unseen: Optional[Mapping[str, Tensor]],
                      reduction: str, negative: str, options: Any, records: Dict[str, Record], nulls: Nulls) -> None:
    """Fill ``records`` with mean UnitMem's interval and, with ``mu_unseen``, the tests (their null in ``nulls``).

    ``mu`` / ``mu_unseen``: layer -> ``(N, U)`` / ``(M, U)`` raw mean activations (before the negative policy).
    """
    boot, seed = options.bootstrap, options.seed
    excess: List[Tuple[str, float, Tensor]] = []  # layer, estimate, null
    for li, layer in enumerate(layers):
        rec = records[layer]
        m = policy_means(layer, mu[layer], negative)
        n = m.shape[0]
        rec["unit_mem_mean"] = float(unitmem(m, reduction=reduction, negative="clamp").mean())
        if boot:
            counts = _counts(bootstrap_indices(n, boot, seed + 11 + li), n, m.device)
            lo, hi = standard_error_interval(_unitmem_resamples(m, counts, reduction), rec["unit_mem_mean"], options.confidence)
            rec["unit_mem_mean_lo"], rec["unit_mem_mean_hi"] = lo, hi
        if mu_unseen is None:
            continue
        raw_u = mu_unseen[layer].detach().double().to(m.device)
        pool = policy_means(layer, torch.cat([mu[layer].detach().double(), raw_u]), negative)
        size = min(n, raw_u.shape[0])
        gen = torch.Generator().manual_seed((seed + 13 + li) & (2**63 - 1))  # seeds near 2**64 overflowed
        seen_s = pool[torch.randperm(n, generator=gen)[:size].to(m.device)]
        unseen_s = pool[n + torch.randperm(raw_u.shape[0], generator=gen)[:size].to(m.device)]
        a, b = (float(unitmem(s, reduction=reduction, negative="clamp").mean()) for s in (seen_s, unseen_s))
        rec["unit_mem_seen"], rec["unit_mem_unseen"], rec["unit_mem_excess"] = a, b, a - b
        labels = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(raw_u.shape[0], dtype=torch.bool)])
        member = membership_test(pool, labels, n_perm=max(boot, 1), seed=seed + 17 + li)
        rec["membership"], rec["membership_chance"], rec["membership_alive"] = member["fraction"], member["chance"], float(member["alive"])
        rec["membership_p"] = None if not boot or math.isnan(member["p"]) else member["p"]
        rec["unit_mem_excess_lo"] = rec["unit_mem_excess_hi"] = rec["unit_mem_excess_p"] = None
        if not boot or size < 2:
            continue
        ca = _counts(bootstrap_indices(size, boot, seed + 19 + li), size, m.device)
        cb = _counts(bootstrap_indices(size, boot, seed + 23 + li), size, m.device)
        diff = _unitmem_resamples(seen_s, ca, reduction) - _unitmem_resamples(unseen_s, cb, reduction)
        rec["unit_mem_excess_lo"], rec["unit_mem_excess_hi"] = standard_error_interval(diff, a - b, options.confidence)
        # permutation null: the 2·size images' seen / unseen labels are exchangeable
        both = torch.cat([seen_s, unseen_s])
        perms = torch.argsort(torch.rand(boot, 2 * size, generator=gen), dim=1).to(m.device)
        first = torch.zeros(boot, 2 * size, dtype=torch.float64, device=m.device).scatter_(1, perms[:, :size], 1.0)
        null = _unitmem_resamples(both, first, reduction) - _unitmem_resamples(both, 1.0 - first, reduction)
        rec["unit_mem_excess_p"] = (1.0 + float((null >= a - b - 1e-12).sum())) / (1.0 + boot)
        excess.append((layer, a - b, null.cpu()))
    if excess:
        names, estimates, null_rows = zip(*excess)
        est = torch.tensor(estimates, dtype=torch.float64)
        nulls["unit_mem_excess"] = (list(names), est, torch.ones_like(est), torch.stack(null_rows, dim=1))
