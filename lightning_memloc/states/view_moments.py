"""Streaming per-channel mean and std of the views of a measurement pass (recorded in the report's ``meta``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_memloc.checks import check_int
from lightning_memloc.states.base import CandidateIndexedMetric
from lightning_memloc.views.stats import ViewStatistics, candidate_moments, statistics_from_sums


class ViewMoments(CandidateIndexedMetric):
    """Per-channel mean and std over every pixel of every view: ``std_c = sqrt(mean_i E_i[x_c²] − mean_c²)``.

    Example:
        >>> m = ViewMoments(2, 1)
        >>> m.update(torch.tensor([0.0, 2.0]).view(2, 1, 1, 1, 1), torch.tensor([0, 1]))
        >>> m.compute()
        ViewStatistics(mean=(1.0,), std=(1.0,))
    """

    sums: Tensor
    squares: Tensor

    def __init__(self, num_candidates: int, num_channels: int, **kwargs: Any) -> None:
        super().__init__(num_candidates, state_dtype=torch.float64, **kwargs)
        self.num_channels = check_int("num_channels", num_channels, 1)
        for name in ("sums", "squares"):
            self.add_state(name, torch.zeros(num_candidates, num_channels, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, views: Tensor, index: Tensor) -> None:
        """Add views (B, K, C, H, W) of candidates ``index`` (B,)."""
        if views.ndim != 5 or views.shape[2] != self.num_channels:
            raise ValueError(f"`views` must be (B, K, {self.num_channels}, H, W), got {tuple(views.shape)}.")
        idx = self._check_index(index, views.shape[0], "views")
        means, squares = candidate_moments(views)
        self.sums.index_add_(0, idx, means.to(self.sums.device))
        self.squares.index_add_(0, idx, squares.to(self.sums.device))
        self._add_counts(idx)

    def compute(self) -> ViewStatistics:  # type: ignore[override]
        """The :class:`~lightning_memloc.views.stats.ViewStatistics` of the candidates seen."""
        ids = self._seen()
        counts = self.counts[ids].unsqueeze(1)  # the mean of per-candidate means, as one "pixel" each
        return statistics_from_sums((self.sums[ids] / counts).mean(0), (self.squares[ids] / counts).mean(0), 1)
