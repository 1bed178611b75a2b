"""Memorization evidence from the encoder alone: the alignment gap of candidates against unseen images.

``E[SSLMem(C)] − E[SSLMem(U)] = E[d_f(U)] − E[d_f(C)]`` for any reference that saw neither (``DESIGN.md`` §8).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from lightning_memloc.functional.statistics import welch_greater


def _rows(name: str, values: Tensor) -> Tensor:
    if not isinstance(values, Tensor) or values.ndim != 2 or values.shape[1] < 1:
        raise ValueError(f"`{name}` must be a tensor (L, n) of alignments per layer and image, "
                         f"got {getattr(values, 'shape', type(values).__name__)}.")
    return values.detach().double().cpu()


def alignment_scale(candidates: Tensor, unseen: Tensor) -> Tensor:
    """Range (max − min) of both groups' alignments per layer: ``(L, 1)``.

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
    """``(gap, mean_candidates, mean_unseen)`` per layer from ``(L, N)`` and ``(L, M)`` raw alignments.

    ``gap = (mean d_f(U) − mean d_f(C)) / (max − min of d_f over C ∪ U)``; > 0 means memorization.

    Example:
        >>> [round(float(v), 4) for v in alignment_gap(torch.tensor([[0.2, 0.4]]), torch.tensor([[0.6, 1.0]]))]
        [0.625, 0.3, 0.8]
    """
    c, u = _rows("candidates", candidates), _rows("unseen", unseen)
    if c.shape[0] != u.shape[0]:
        raise ValueError(f"`candidates` and `unseen` must have the same layers (rows), got {c.shape[0]} and {u.shape[0]}.")
    mean_c, mean_u = c.mean(1), u.mean(1)
    return normalise((mean_u - mean_c)[:, None], alignment_scale(c, u))[:, 0], mean_c, mean_u


def membership_scores(candidates: Tensor, unseen: Tensor) -> Tensor:
    """``(L, N)`` share of unseen images aligned worse than each candidate: ``s(c) = (#{d(u) > d(c)} + ½ #{d(u) = d(c)}) / M``.

    (Uniform on ``[0, 1]`` under the null; its mean over candidates is the AUC.)

    Example:
        >>> membership_scores(torch.tensor([[0.1, 0.5, 0.9]]), torch.tensor([[0.2, 0.5, 0.7, 0.8]]))
        tensor([[1.0000, 0.6250, 0.0000]], dtype=torch.float64)
    """
    c, u = _rows("candidates", candidates), _rows("unseen", unseen)
    ordered, query, m = u.sort(dim=1).values.contiguous(), c.contiguous(), u.shape[1]
    below = torch.searchsorted(ordered, query, right=False)  # unseen < candidate
    at_or_below = torch.searchsorted(ordered, query, right=True)  # unseen <= candidate
    return ((m - at_or_below) + 0.5 * (at_or_below - below)).double() / m


def gap_greater(candidates: Tensor, unseen: Tensor) -> float:
    """Welch's one-sided p of ``mean d_f(U) > mean d_f(C)`` for one layer; NaN when a group has < 2 images.

    Example:
        >>> round(gap_greater(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.1, 0.2, 0.3])), 6)
        0.5
    """
    return welch_greater(unseen, candidates)[2]
