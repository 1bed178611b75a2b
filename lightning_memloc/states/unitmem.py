"""Streaming UnitMem and ClassMem (Wang et al., *Localizing Memorization in SSL Vision Encoders*, NeurIPS 2024)."""

from __future__ import annotations

from typing import Any, Dict, Union

import torch
from torch import Tensor

from lightning_memloc.checks import NEGATIVE_POLICIES, REDUCTIONS, check_choice, check_id_vector, check_int
from lightning_memloc.functional.classmem import class_means, classmem
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


class ClassMem(UnitMem):
    """ClassMem of every unit of one layer over batches of labelled candidates.

    :class:`UnitMem`'s states plus each candidate's label (``max``-reduced; ``label_sums`` catches two labels).

    Example:
        >>> metric = ClassMem(num_candidates=3, num_units=2)
        >>> metric.update(torch.tensor([[4.0, 1.0], [2.0, 1.0], [1.0, 1.0]]), torch.arange(3),
        ...               labels=torch.tensor([5, 5, 8]))
        >>> out = metric.compute()
        >>> out["class_mem"], out["class_argmax"]
        (tensor([0.5000, 0.0000]), tensor([5, 5]))
    """

    labels: Tensor
    label_sums: Tensor

    def __init__(self, num_candidates: int, num_units: int, reduction: str = "mean", negative: str = "clamp",
                 state_dtype: torch.dtype = torch.float32, **kwargs: Any) -> None:
        super().__init__(num_candidates, num_units, reduction=reduction, negative=negative, state_dtype=state_dtype, **kwargs)
        self.add_state("labels", torch.full((num_candidates,), -1, dtype=torch.long), dist_reduce_fx="max")
        self.add_state("label_sums", torch.zeros(num_candidates, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, activations: Tensor, index: Tensor, labels: Tensor) -> None:  # type: ignore[override]
        """Add ``(B, U)`` or ``(B, K, U)`` activations of candidates ``index`` with class ``labels`` ``(B,)``."""
        x = self._check_activations(activations, self.num_units)
        idx = self._check_index(index, x.shape[0], "activations")
        labels = check_id_vector("labels", labels, x.shape[0], "activations", "class id")
        lab = labels.to(device=self.labels.device, dtype=self.labels.dtype)
        if bool((lab < 0).any()):
            raise ValueError("`labels` must be >= 0 (a negative id such as -1 means 'no label').")
        known = self.labels[idx]
        if bool(((known >= 0) & (known != lab)).any()):
            raise ValueError("`labels` disagree with the labels given earlier for the same candidate ids.")
        self.labels.scatter_reduce_(0, idx, lab, reduce="amax")
        self.label_sums.index_add_(0, idx, lab)
        self.sums.index_add_(0, idx, x)
        self._add_counts(idx)

    def compute(self) -> Dict[str, Tensor]:  # type: ignore[override]
        """``class_mem`` ``(U,)``, ``class_argmax`` (a class), plus UnitMem's ``unit_mem``, ``unit_argmax``, ``dead_units``."""
        units = super().compute()
        ids, mu = self.mean_activations()
        labels = self.labels[ids].long()
        counts = self.counts[ids].to(torch.float64)
        if not torch.equal(self.label_sums[ids].to(torch.float64), labels.to(torch.float64) * counts):
            raise ValueError("some candidate ids were updated with different `labels` (on this or another process).")
        means, classes = class_means(mu, labels)
        return {"class_mem": classmem(mu, labels, reduction=self.reduction, negative=self.negative),
                "class_argmax": take_ids(classes, unit_argmax(means, negative=self.negative)),
                **{key: units[key] for key in ("unit_mem", "unit_argmax", "dead_units")}}
