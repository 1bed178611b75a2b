"""Reductions in the hook: a tapped layer's output → per-unit means over the views and per-candidate alignment.

The data flow of a measurement pass (Wang et al., *Localizing Memorization in SSL Vision
Encoders*, NeurIPS 2024) is views → taps → reductions → metric states: this module holds the
reductions that forward hooks apply to each tapped layer before its activations are dropped.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch
from torch import Tensor, nn

from lightning_memloc.functional.sslmem import pairwise_alignment
from lightning_memloc.probe import model_device_dtype
from lightning_memloc.taps import LayerTaps, unit_activations

__all__ = ["flat_view", "forward_reduce"]


def flat_view(out: Tensor) -> Tensor:
    """``(B, D)`` flattening of a layer output, without a copy whenever the memory layout allows.

    Alignment compares views feature by feature, so any fixed order of the features will do: a
    channels-last conv map is flattened in its memory order (H, W, C) rather than copied to (C, H, W).
    """
    if out.ndim == 4 and not out.is_contiguous() and out.is_contiguous(memory_format=torch.channels_last):
        return out.permute(0, 2, 3, 1).reshape(out.shape[0], -1)
    return out.reshape(out.shape[0], -1)


def forward_reduce(
    model: nn.Module,
    inputs: Tensor,
    names: Sequence[str],
    batch: int,
    views: int,
    *,
    units: bool,
    align: bool,
    anchor: bool,
) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    """Forward ``inputs`` (B·K views [+ B anchors]) and reduce every tapped layer in its hook."""
    unit_means: Dict[str, Tensor] = {}
    aligns: Dict[str, Tensor] = {}
    n_views = batch * views

    def reduce(name: str, output: Any) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        if out.dtype not in (torch.float32, torch.float64):
            out = out.float()
        if units:
            unit_means[name] = unit_activations(out[:n_views]).reshape(batch, views, -1).mean(dim=1)
        if align:
            # Raw flattened output, a view without copy: `pairwise_alignment` normalises slice by
            # slice and the caller checks the results for NaN/inf, so no full-size temporary
            # (normalised copy, isfinite mask) and no device sync are made per layer.
            rep = flat_view(out)
            anchors = rep[n_views:] if anchor else None
            aligns[name] = pairwise_alignment(rep[:n_views].reshape(batch, views, -1), anchors)

    device, dtype = model_device_dtype(model)
    with LayerTaps(model, names, reduce):
        model(inputs.to(device=device, dtype=dtype, non_blocking=True))
    return unit_means, aligns
