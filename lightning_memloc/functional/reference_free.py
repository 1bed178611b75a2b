"""Memorization evidence from the encoder alone: the alignment gap of candidates against unseen images.

For candidates ``C`` (seen by ``f``) and images ``U`` that ``f`` never saw, drawn from one
distribution, any reference ``g`` that saw neither has ``E[d_g(C)] = E[d_g(U)]``, so
``E[SSLMem(C)] − E[SSLMem(U)] = E[d_f(U)] − E[d_f(C)]``: a difference of ``f``'s own view
alignments ``d_f`` (mean L2 distance between normalised views, in ``[0, 2]``), the same for every
such ``g`` (``../shared/DESIGN.md`` §8; Wang et al., *Memorization in Self-Supervised Learning
Improves Downstream Generalization*, ICLR 2024, for the alignment). Per layer (rows):

- :func:`alignment_scale`: one scale for both groups, the range of ``d_f`` over ``C ∪ U``;
- :func:`alignment_gap`: ``(mean d_f(U) − mean d_f(C)) / scale`` (> 0: candidates' views tighter);
- :func:`membership_scores`: per candidate, the share of unseen images aligned worse (ties count
  half); uniform on ``[0, 1]`` under the null, and its mean is the AUC of telling the groups apart;
- :func:`gap_greater`: Welch's one-sided p of ``d_f(U) > d_f(C)`` on raw alignments (scale-free;
  the evidence tests with the studentized permutation test instead, which holds α on skewed,
  unequal groups: :mod:`lightning_memloc.functional.two_sample`).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from lightning_memloc.functional.evidence import welch_greater

__all__ = ["alignment_gap", "alignment_scale", "gap_greater", "membership_scores", "normalise"]


def _rows(name: str, values: Tensor) -> Tensor:
    if not isinstance(values, Tensor) or values.ndim != 2 or values.shape[1] < 1:
        raise ValueError(f"`{name}` must be a tensor (L, n) of alignments per layer and image, "
                         f"got {getattr(values, 'shape', type(values).__name__)}.")
    return values.detach().double().cpu()


def alignment_scale(candidates: Tensor, unseen: Tensor) -> Tensor:
    """Range (max − min) of the alignments of both groups together, per layer: ``(L, 1)``.

    Example:
        >>> alignment_scale(torch.tensor([[0.2, 0.4]]), torch.tensor([[0.6, 1.0]]))
        tensor([[0.8000]], dtype=torch.float64)
    """
    pooled = torch.cat([_rows("candidates", candidates), _rows("unseen", unseen)], dim=1)
    return pooled.amax(1, keepdim=True) - pooled.amin(1, keepdim=True)


def normalise(values: Tensor, scale: Tensor) -> Tensor:
    """``values / scale`` per row; 0 where the scale is 0 (both groups aligned identically)."""
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, values.double() / safe, torch.zeros_like(values, dtype=torch.float64))


def alignment_gap(candidates: Tensor, unseen: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The candidates' alignment gap on the shared scale, per layer.

    ``gap_l = (mean_u d_f,l(u) − mean_c d_f,l(c)) / (max − min of d_f,l over C ∪ U)``; positive
    when ``f`` aligns its candidates' views more tightly than unseen images' (memorization).

    Args:
        candidates: ``(L, N)`` raw alignments of the candidates under ``f``.
        unseen: ``(L, M)`` raw alignments of the unseen images under ``f`` (same views, layers).

    Returns:
        ``(gap, mean_candidates, mean_unseen)``, each ``(L,)`` float64 (means raw).

    Example:
        >>> gap, c, u = alignment_gap(torch.tensor([[0.2, 0.4]]), torch.tensor([[0.6, 1.0]]))
        >>> round(float(gap), 4), round(float(c), 4), round(float(u), 4)  # (0.8 - 0.3) / 0.8
        (0.625, 0.3, 0.8)
    """
    c, u = _rows("candidates", candidates), _rows("unseen", unseen)
    if c.shape[0] != u.shape[0]:
        raise ValueError(f"`candidates` and `unseen` must have the same layers (rows), got {c.shape[0]} and {u.shape[0]}.")
    mean_c, mean_u = c.mean(1), u.mean(1)
    return normalise((mean_u - mean_c)[:, None], alignment_scale(c, u))[:, 0], mean_c, mean_u


def membership_scores(candidates: Tensor, unseen: Tensor) -> Tensor:
    """Per candidate and layer, the share of unseen images whose views ``f`` aligns worse.

    ``s_l(c) = (#{u : d_l(u) > d_l(c)} + ½ #{u : d_l(u) = d_l(c)}) / M``: 1 when the candidate's
    views are tighter than every unseen image's, 0.5 in the middle of them. Exchangeable groups
    (nothing memorized) give scores uniform on ``[0, 1]``; the mean over candidates is the AUC
    (Mann–Whitney ``U / (N·M)``).

    Args:
        candidates: ``(L, N)`` raw alignments of the candidates.
        unseen: ``(L, M)`` raw alignments of the unseen images.

    Returns:
        ``(L, N)`` float64 scores in ``[0, 1]``.

    Example:
        >>> membership_scores(torch.tensor([[0.1, 0.5, 0.9]]), torch.tensor([[0.2, 0.5, 0.7, 0.8]]))
        tensor([[1.0000, 0.6250, 0.0000]], dtype=torch.float64)
    """
    c, u = _rows("candidates", candidates), _rows("unseen", unseen)
    ordered = u.sort(dim=1).values.contiguous()
    query = c.contiguous()
    below = torch.searchsorted(ordered, query, right=False)  # unseen < candidate
    at_or_below = torch.searchsorted(ordered, query, right=True)  # unseen <= candidate
    m = u.shape[1]
    return ((m - at_or_below) + 0.5 * (at_or_below - below)).double() / m


def gap_greater(candidates: Tensor, unseen: Tensor) -> float:
    """One-sided p-value of ``mean d_f(U) > mean d_f(C)`` for one layer (raw alignments).

    Welch's analytic approximation (:func:`~lightning_memloc.functional.evidence.welch_greater`),
    liberal on skewed, unequal groups; :mod:`lightning_memloc.evidence_free` tests with
    :func:`~lightning_memloc.functional.two_sample.studentized_permutation_test`. NaN when a
    group has fewer than 2 images.

    Example:
        >>> round(gap_greater(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.1, 0.2, 0.3])), 6)
        0.5
    """
    return welch_greater(unseen, candidates)[2]
