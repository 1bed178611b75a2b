"""Streaming view alignment of one encoder: the per-candidate ``d_f`` behind SSLMem, without a reference.

The reference-free evidence (:mod:`lightning_memloc.evidence_free`) compares ``f``'s alignment of
its candidates with that of unseen images; this metric keeps those alignments when no reference
is measured (with one, :class:`~lightning_memloc.metrics.LayerMem` already holds them).
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor

from lightning_memloc.checks import check_finite_tensor, check_int
from lightning_memloc.metrics._base import CandidateIndexedMetric

__all__ = ["ViewAlignment", "mean_alignment"]


class ViewAlignment(CandidateIndexedMetric):
    """Per-candidate mean view alignment at every layer, accumulated over batches of candidates.

    States: per-candidate sums ``enc_sums`` ``(L, N)`` (named as in ``LayerMem``) and a count,
    summed across processes.

    Args:
        num_candidates: size of the candidate set; ids are ``0 .. num_candidates - 1``.
        num_layers: number of layers ``L``.
        state_dtype: ``torch.float32`` (default) or ``torch.float64``.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> metric = ViewAlignment(num_candidates=3, num_layers=2)
        >>> metric.update(torch.tensor([[0.5, 1.0, 0.25], [0.2, 1.0, 0.6]]), torch.arange(3))
        >>> metric.compute()["align"]
        tensor([[0.5000, 1.0000, 0.2500],
                [0.2000, 1.0000, 0.6000]])
    """

    enc_sums: Tensor

    def __init__(self, num_candidates: int, num_layers: int, state_dtype: torch.dtype = torch.float32, **kwargs: Any) -> None:
        super().__init__(num_candidates, state_dtype=state_dtype, **kwargs)
        self.num_layers = check_int("num_layers", num_layers, 1)
        self.add_state("enc_sums", torch.zeros((num_layers, num_candidates), dtype=state_dtype), dist_reduce_fx="sum")

    def update(self, align_encoder: Tensor, index: Tensor) -> None:
        """Add ``(L, B)`` alignments of candidates ``index`` (``LongTensor[B]``)."""
        if not isinstance(align_encoder, Tensor) or align_encoder.ndim != 2 or align_encoder.shape[0] != self.num_layers:
            raise ValueError(f"`align_encoder` must be a tensor of shape (L, B) with L = num_layers = {self.num_layers}, "
                             f"got {getattr(align_encoder, 'shape', type(align_encoder).__name__)}.")
        check_finite_tensor("align_encoder", align_encoder)
        idx = self._check_index(index, align_encoder.shape[1], "align_encoder (its second dimension)")
        self.enc_sums.index_add_(1, idx, align_encoder.detach().to(device=self.counts.device, dtype=self.counts.dtype))
        self._add_counts(idx)

    def compute(self) -> Dict[str, Tensor]:
        """``{"align": [L, N'], "candidate_ids": [N']}`` over the ``N'`` candidates seen."""
        ids = self._seen()
        return {"align": self.enc_sums[:, ids] / self.counts[ids], "candidate_ids": ids}


def mean_alignment(metric: CandidateIndexedMetric) -> Tensor:
    """``(L, N)`` mean encoder alignment per candidate from a metric holding ``enc_sums`` and ``counts``
    (:class:`ViewAlignment` or :class:`~lightning_memloc.metrics.LayerMem`), float64 on the CPU.

    Raises:
        RuntimeError: a candidate was never updated (every one must be measured).
    """
    counts = metric.counts.detach().double().cpu()
    if bool((counts == 0).any()):
        missing = (counts == 0).nonzero().squeeze(1)[:10].tolist()
        raise RuntimeError(f"{type(metric).__name__} has no alignment for positions {missing}.")
    return metric.enc_sums.detach().double().cpu() / counts  # type: ignore[attr-defined]
