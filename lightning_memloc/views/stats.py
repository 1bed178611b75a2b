"""Per-channel statistics of what the encoder receives, and when two of them disagree."""

from __future__ import annotations

import math
from typing import Any, Dict, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

#: Largest std ratio (the larger over the smaller, per channel) taken as the same pipeline.
SCALE_TOLERANCE = 1.5
#: Largest mean difference, in units of the larger std (per channel), taken as the same pipeline.
SHIFT_TOLERANCE = 1.0


class ViewStatistics(NamedTuple):
    """Per-channel mean and std of a set of images (every pixel counts once)."""

    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    def as_meta(self) -> Dict[str, Any]:
        """``{"mean": [...], "std": [...]}`` (JSON)."""
        return {"mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std]}


def channel_sums(x: Tensor) -> Tuple[Tensor, Tensor, int]:
    """Per-channel ``(Σx, Σx², pixels)`` of images (B, C, H, W), sums float64 (C,).

    Example:
        >>> s, q, n = channel_sums(torch.tensor([[[[1.0, 3.0]]]]))
        >>> s.tolist(), q.tolist(), n
        ([4.0], [10.0], 2)
    """
    x = x.detach()
    dims = (0, *range(2, x.ndim))
    return (x.sum(dim=dims, dtype=torch.float64), x.float().square().sum(dim=dims, dtype=torch.float64),
            x.numel() // x.shape[1])


def statistics_from_sums(sums: Tensor, squares: Tensor, count: float) -> ViewStatistics:
    """``ViewStatistics`` from per-channel ``Σx``, ``Σx²`` over ``count`` pixels: std = sqrt(E[x²] − E[x]²)."""
    mean = sums.double().cpu() / count
    var = (squares.double().cpu() / count - mean.square()).clamp_min(0)
    return ViewStatistics(tuple(mean.tolist()), tuple(var.sqrt().tolist()))


def candidate_moments(views: Tensor) -> Tuple[Tensor, Tensor]:
    """Float64 (B, C) ``(means, squares)`` of ``x`` and ``x²`` over the views and pixels of (B, K, C, H, W)."""
    flat = views.detach().reshape(views.shape[0], views.shape[1], views.shape[2], -1)
    return flat.mean(dim=(1, 3), dtype=torch.float64), flat.float().square().mean(dim=(1, 3), dtype=torch.float64)


def gaps(views: ViewStatistics, batches: ViewStatistics) -> Tuple[Tensor, Tensor]:
    """Per-channel ``(max(σ)/min(σ), |μ_v − μ_t| / max(σ))``; constant in both: ratio 1, in one: ``inf``."""
    sv, st = torch.tensor(views.std, dtype=torch.float64), torch.tensor(batches.std, dtype=torch.float64)
    big, small = torch.maximum(sv, st), torch.minimum(sv, st)
    ratio = torch.where(big == 0, torch.ones_like(big), big / small)
    diff = (torch.tensor(views.mean, dtype=torch.float64) - torch.tensor(batches.mean, dtype=torch.float64)).abs()
    return ratio, torch.where(big == 0, torch.where(diff == 0, 0.0, math.inf), diff / big.clamp_min(1e-300))


def mismatch(views: ViewStatistics, batches: ViewStatistics, scale_tolerance: float = SCALE_TOLERANCE,
             shift_tolerance: float = SHIFT_TOLERANCE) -> Optional[str]:
    """Why ``views`` do not look like ``batches``, or ``None`` (also for different channel counts).

    They disagree when a channel's std ratio ``max(σ)/min(σ)`` exceeds ``scale_tolerance`` or its mean shift
    ``|μ_v − μ_t| / max(σ)`` exceeds ``shift_tolerance`` (calibrated: ``benchmarks/view_check_calibration.py``).

    Example:
        >>> a = ViewStatistics(mean=(0.45, 0.45, 0.45), std=(0.25, 0.25, 0.25))
        >>> mismatch(a, ViewStatistics(mean=(0.0, 0.1, 0.2), std=(1.1, 1.1, 1.15))) is not None, mismatch(a, a)
        (True, None)
    """
    if len(views.mean) != len(batches.mean):
        return None
    ratio, shift = gaps(views, batches)
    worst_ratio, worst_shift = float(ratio.max()), float(shift.max())
    if worst_ratio <= scale_tolerance and worst_shift <= shift_tolerance:
        return None
    return (f"per-channel mean {_fmt(views.mean)} and std {_fmt(views.std)} in the views vs mean {_fmt(batches.mean)} "
            f"and std {_fmt(batches.std)} in the training batches (std ratio {worst_ratio:.2f}, tolerance "
            f"{scale_tolerance}; mean shift {worst_shift:.2f} std, tolerance {shift_tolerance})")


def _fmt(values: Tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


@torch.no_grad()
def sample_statistics(view_set: Any, device: Any = "cpu", max_candidates: int = 64, batch_size: int = 32) -> ViewStatistics:
    """Statistics of the views (transform and ``normalize`` applied) of the first ``max_candidates`` candidates.

    Example:
        >>> from lightning_memloc.views.seeded import SeededViews
        >>> views = torch.tensor([0.25, 0.75]).repeat(4, 2, 1, 1, 1, 1).reshape(4, 2, 1, 1, 2)  # (N, K, C, H, W)
        >>> sample_statistics(SeededViews(views, views=None, normalize=([0.5], [0.25])))
        ViewStatistics(mean=(0.0,), std=(1.0,))
    """
    n = min(len(view_set), max_candidates)
    sums, squares, count = None, None, 0
    for start in range(0, n, batch_size):
        index, x, _ = view_set.collate([view_set[i] for i in range(start, min(n, start + batch_size))])
        views = view_set.finalize(x, index, device)
        s, q, c = channel_sums(views.reshape(-1, *views.shape[2:]))
        sums, squares, count = (s, q, c) if sums is None else (sums + s, squares + q, count + c)
    return statistics_from_sums(sums, squares, count)  # type: ignore[arg-type]
