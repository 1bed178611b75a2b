"""Streaming SSLMem / LayerMem / ΔLayerMem, and the view alignment ``d_f`` of one encoder alone (no reference)."""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor

from lightning_memloc.checks import check_int
from lightning_memloc.functional.sslmem import delta_layermem, layermem, sslmem, top_least_indices
from lightning_memloc.states.base import CandidateIndexedMetric


class LayerMem(CandidateIndexedMetric):
    """SSLMem per candidate and LayerMem per layer over batches of candidates.

    Top / least ``top_k`` groups ("Top50"/"Least50") are ranked by normalised SSLMem at the last layer.

    Example:
        >>> metric = LayerMem(num_candidates=3, num_layers=2, top_k=1)
        >>> metric.update(torch.tensor([[0.5, 1.0, 0.5], [0.2, 1.0, 0.6]]),
        ...               torch.tensor([[1.0, 1.0, 0.5], [1.0, 1.0, 1.0]]), torch.arange(3))
        >>> out = metric.compute()
        >>> out["layer_mem"], out["delta_layer_mem"], out["top_ids"], out["least_ids"]
        (tensor([0.3333, 0.5000]), tensor([0.3333, 0.1667]), tensor([0]), tensor([1]))
    """

    enc_sums: Tensor
    ref_sums: Tensor

    def __init__(self, num_candidates: int, num_layers: int, top_k: int = 50, state_dtype: torch.dtype = torch.float32,
                 **kwargs: Any) -> None:
        super().__init__(num_candidates, state_dtype=state_dtype, **kwargs)
        self.num_layers = check_int("num_layers", num_layers, 1)
        self.top_k = check_int("top_k", top_k, 1)
        for name in ("enc_sums", "ref_sums"):
            self.add_state(name, torch.zeros((num_layers, num_candidates), dtype=state_dtype), dist_reduce_fx="sum")

    def update(self, align_encoder: Tensor, align_reference: Tensor, index: Tensor) -> None:
        """Add ``(L, B)`` alignments under the encoder and the reference for candidates ``index``."""
        enc = self._check_align("align_encoder", align_encoder)
        ref = self._check_align("align_reference", align_reference)
        if enc.shape != ref.shape:
            raise ValueError(f"`align_encoder` and `align_reference` must have the same shape, got "
                             f"{tuple(enc.shape)} and {tuple(ref.shape)}.")
        idx = self._check_index(index, enc.shape[1], "align_encoder (its second dimension)")
        self.enc_sums.index_add_(1, idx, enc)
        self.ref_sums.index_add_(1, idx, ref)
        self._add_counts(idx)

    def compute(self) -> Dict[str, Tensor]:
        """``sslmem_raw``/``sslmem`` ``(L, N')``, ``layer_mem``/``delta_layer_mem``/``layer_mem_top``/``layer_mem_least`` ``(L,)``, ids."""
        ids = self._seen()
        enc, ref = (sums[:, ids] / self.counts[ids] for sums in (self.enc_sums, self.ref_sums))
        raw, norm = (sslmem(ref, enc, normalize=normalize) for normalize in (False, True))
        layer_mem = layermem(norm)
        top, least = top_least_indices(norm[-1], self.top_k)
        return {"sslmem_raw": raw, "sslmem": norm, "layer_mem": layer_mem, "delta_layer_mem": delta_layermem(layer_mem),
                "layer_mem_top": layermem(norm, subset=top), "layer_mem_least": layermem(norm, subset=least),
                "candidate_ids": ids, "top_ids": ids[top], "least_ids": ids[least]}


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
