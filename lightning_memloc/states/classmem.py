"""Streaming ClassMem (Wang et al., *Localizing Memorization in SSL Vision Encoders*, NeurIPS 2024)."""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor

from lightning_memloc.functional.classmem import class_means, classmem
from lightning_memloc.checks import check_id_vector
from lightning_memloc.functional.unitmem import take_ids, unit_argmax
from lightning_memloc.states.unitmem import UnitMem

__all__ = ["ClassMem"]


class ClassMem(UnitMem):
    """ClassMem of every unit of one layer, accumulated over batches of labelled candidates.

    Same per-candidate states as :class:`UnitMem` plus each candidate's label (reduced with
    ``max`` across processes; a ``label_sums`` state summed like the counts detects a candidate
    given two different labels). :meth:`compute` applies
    :func:`lightning_memloc.functional.classmem` to the per-candidate means of the candidates seen.

    Args:
        num_candidates: size of the candidate set; ids are ``0 .. num_candidates - 1``.
        num_units: number of units ``U`` of the layer.
        reduction: ``"mean"`` (the paper) or ``"median"`` over the other classes.
        negative: ``"clamp"``, ``"shift"`` or ``"error"``, applied to the class means.
        state_dtype: ``torch.float32`` (default) or ``torch.float64`` for the sums.
        kwargs: passed to :class:`torchmetrics.Metric`.

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

    def __init__(
        self,
        num_candidates: int,
        num_units: int,
        reduction: str = "mean",
        negative: str = "clamp",
        state_dtype: torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_candidates, num_units, reduction=reduction, negative=negative, state_dtype=state_dtype, **kwargs)
        self.add_state("labels", torch.full((num_candidates,), -1, dtype=torch.long), dist_reduce_fx="max")
        self.add_state("label_sums", torch.zeros(num_candidates, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, activations: Tensor, index: Tensor, labels: Tensor) -> None:  # type: ignore[override]
        """Add a batch of unit activations with the candidates' class labels.

        Args:
            activations: ``(B, U)`` or ``(B, K, U)`` unit activations.
            index: ``LongTensor[B]`` candidate ids of the rows.
            labels: ``LongTensor[B]`` class ids (``>= 0``) of the rows.
        """
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
        """ClassMem of the candidates seen.

        Returns:
            ``{"class_mem": Tensor[U] in [0, 1], "class_argmax": LongTensor[U] class labels}`` plus the
            UnitMem results of the same states (``"unit_mem"``, ``"unit_argmax"``, ``"dead_units"``):
            one metric serves both without storing the sums twice.
        """
        units = super().compute()
        ids, mu = self.mean_activations()
        labels = self.labels[ids].long()
        counts = self.counts[ids].to(torch.float64)
        if not torch.equal(self.label_sums[ids].to(torch.float64), labels.to(torch.float64) * counts):
            raise ValueError("some candidate ids were updated with different `labels` (on this or another process).")
        means, classes = class_means(mu, labels)
        return {
            "class_mem": classmem(mu, labels, reduction=self.reduction, negative=self.negative),
            "class_argmax": take_ids(classes, unit_argmax(means, negative=self.negative)),
            "unit_mem": units["unit_mem"],
            "unit_argmax": units["unit_argmax"],
            "dead_units": units["dead_units"],
        }
