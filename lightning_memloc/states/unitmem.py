"""Streaming UnitMem (Wang et al., *Localizing Memorization in SSL Vision Encoders*, NeurIPS 2024)."""

from __future__ import annotations

from typing import Any, Dict, Union

import torch
from torch import Tensor

from lightning_memloc.checks import NEGATIVE_POLICIES, REDUCTIONS, check_choice, check_int
from lightning_memloc.functional.unitmem import dead_units, take_ids, unit_argmax, unitmem
from lightning_memloc.states.base import CandidateIndexedMetric


class UnitMem(CandidateIndexedMetric):
    """UnitMem of every unit of one layer over batches of candidates (per-candidate sums and counts).

    Example:
        >>> metric = UnitMem(num_candidates=3, num_units=2)
        >>> metric.update(torch.tensor([[4.0, 0.0], [1.0, 0.0]]), index=torch.tensor([0, 1]))
        >>> metric.update(torch.tensor([[1.0, 0.0]]), index=torch.tensor([2]))
        >>> out = metric.compute()
        >>> out["unit_mem"], out["unit_argmax"], out["dead_units"], out["num_candidates"]
        (tensor([0.6000, 0.0000]), tensor([ 0, -1]), tensor([False,  True]), 3)
    """

    sums: Tensor

    def __init__(self, num_candidates: int, num_units: int, reduction: str = "mean", negative: str = "clamp",
                 state_dtype: torch.dtype = torch.float32, **kwargs: Any) -> None:
        super().__init__(num_candidates, state_dtype=state_dtype, **kwargs)
        self.num_units = check_int("num_units", num_units, 1)
        check_choice("reduction", reduction, REDUCTIONS)
        check_choice("negative", negative, NEGATIVE_POLICIES)
        self.reduction, self.negative = reduction, negative
        self.add_state("sums", torch.zeros(num_candidates, num_units, dtype=state_dtype), dist_reduce_fx="sum")

    def update(self, activations: Tensor, index: Tensor) -> None:
        """Add ``(B, U)`` view-averaged or ``(B, K, U)`` per-view activations of candidates ``index``."""
        x = self._check_activations(activations, self.num_units)
        idx = self._check_index(index, x.shape[0], "activations")
        self.sums.index_add_(0, idx, x)
        self._add_counts(idx)

    def mean_activations(self) -> tuple[Tensor, Tensor]:
        """``(ids, means)``: the candidate ids seen and their ``(N', U)`` mean activations."""
        ids = self._seen()
        return ids, self.sums[ids] / self.counts[ids].unsqueeze(1)

    def compute(self) -> Dict[str, Union[Tensor, int]]:
        """``unit_mem`` ``(U,)``, ``unit_argmax`` candidate ids (-1: dead), ``dead_units`` ``(U,)``, ``num_candidates`` seen."""
        ids, mu = self.mean_activations()
        return {"unit_mem": unitmem(mu, reduction=self.reduction, negative=self.negative),
                "unit_argmax": take_ids(ids, unit_argmax(mu, negative=self.negative)),
                "dead_units": dead_units(mu, negative=self.negative), "num_candidates": int(ids.numel())}
