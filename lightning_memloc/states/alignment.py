"""Streaming view alignment of one encoder: the per-candidate ``d_f`` behind SSLMem, without a reference."""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor

from lightning_memloc.checks import check_int
from lightning_memloc.states.base import CandidateIndexedMetric


class ViewAlignment(CandidateIndexedMetric):
    """Per-candidate mean view alignment ``(L, N)`` at every layer (states ``enc_sums`` as in ``LayerMem``).

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
        enc = self._check_align("align_encoder", align_encoder)
        idx = self._check_index(index, enc.shape[1], "align_encoder (its second dimension)")
        self.enc_sums.index_add_(1, idx, enc)
        self._add_counts(idx)

    def compute(self) -> Dict[str, Tensor]:
        """``{"align": [L, N'], "candidate_ids": [N']}`` over the ``N'`` candidates seen."""
        ids = self._seen()
        return {"align": self.enc_sums[:, ids] / self.counts[ids], "candidate_ids": ids}


def mean_alignment(metric: CandidateIndexedMetric) -> Tensor:
    """``(L, N)`` float64 CPU mean alignment of a metric with ``enc_sums``; ``RuntimeError`` if a candidate is missing."""
    counts = metric.counts.detach().double().cpu()
    if bool((counts == 0).any()):
        missing = (counts == 0).nonzero().squeeze(1)[:10].tolist()
        raise RuntimeError(f"{type(metric).__name__} has no alignment for positions {missing}.")
    return metric.enc_sums.detach().double().cpu() / counts  # type: ignore[attr-defined]
