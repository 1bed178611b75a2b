"""Reductions in the hook: a tapped layer's output → per-unit means over the views and per-candidate alignment.

Data flow: views → taps → reductions → metric states; alignments are finished once per forward for all layers.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from lightning_memloc.functional.centred_gram import MIN_FEATURES, centred_gram, centred_sq_distances
from lightning_memloc.functional.sslmem import CHUNK_BYTES, pairwise_alignment, sq_distances_from_gram, view_gram
from lightning_memloc.reductions.precision import forward_autocast, reduce_in_float32
from lightning_memloc.taps.probe import model_device_dtype
from lightning_memloc.taps.hooks import LayerTaps, unit_activations


def flat_view(out: Tensor) -> Tensor:
    """``(B, D)`` flattening of a layer output in memory order (any fixed feature order will do), without a copy."""
    if out.ndim == 4 and not out.is_contiguous() and out.is_contiguous(memory_format=torch.channels_last):
        return out.permute(0, 2, 3, 1).reshape(out.shape[0], -1)
    return out.reshape(out.shape[0], -1)


def view_unit_means(out: Tensor, batch: int, views: int) -> Tensor:
    """UnitMem's μ_u(x_i) ``(batch, U)``: unit activations of ``batch · views`` outputs (views adjacent) averaged."""
    if out.ndim == 4 and out.shape[2] * out.shape[3] == 1:
        return out.reshape(batch, views, -1).mean(dim=1)
    return unit_activations(out).reshape(batch, views, -1).mean(dim=1)


def alignment_from_gram(gram: Tensor) -> Tensor:
    """All-pairs alignment ``mean_{a<b} ‖r_a − r_b‖₂`` of normalised views, Gram ``(..., K, K)`` → ``(...)`` float64."""
    return sq_distances_from_gram(gram).sqrt_().mean(dim=-1)


def view_sq_distances(reps: Tensor, chunk_bytes: int = 0) -> Tensor:
    """Squared distances of each candidate's normalised views, ``(N, K, D)`` float32 → ``(N, K(K−1)/2)`` float64.

    From the float32 centred Gram; flagged candidates and small layers use the float64 :func:`view_gram`.
    Synchronises with the device once per call (the hook uses it on CPU only).
    """
    reps = reps.detach()
    chunk_bytes = chunk_bytes if chunk_bytes > 0 else CHUNK_BYTES["cpu" if reps.device.type == "cpu" else "other"]
    if reps.shape[-1] < MIN_FEATURES:
        return sq_distances_from_gram(view_gram(reps, chunk_bytes))
    d2, risky = centred_sq_distances(centred_gram(reps, chunk_bytes))
    if bool(risky.any()):
        rows = risky.nonzero().squeeze(1)
        d2[rows] = sq_distances_from_gram(view_gram(reps[rows], chunk_bytes))
    return d2


def finish_alignments(parts: Dict[str, Tensor], finish: Callable[[Tensor], Tensor], aligns: Dict[str, Tensor]) -> None:
    """``aligns[name] = finish(parts[name])`` in float32, stacked over the layers when they share a device."""
    if len({part.device for part in parts.values()}) == 1:  # one stacked finish
        aligns.update(zip(parts, finish(torch.stack(list(parts.values()))).to(torch.float32).unbind(0)))
    else:
        aligns.update((name, finish(part).to(torch.float32)) for name, part in parts.items())


def forward_reduce(model: nn.Module, inputs: Tensor, names: Sequence[str], batch: int, views: int, *, units: bool,
                   align: bool, anchor: bool, autocast: Optional[torch.dtype] = None
                   ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    """Forward ``inputs`` (B·K views [+ B anchors]) and reduce every tapped layer in its hook.

    Returns per layer the unit means ``(B, U)`` (with ``units``) and the alignments ``(B,)`` (with ``align``).
    With ``autocast``, the forward runs under ``torch.autocast`` and hooks reduce in float32.
    """
    unit_means: Dict[str, Tensor] = {}
    aligns: Dict[str, Tensor] = {}
    grams: Dict[str, Tensor] = {}  # float64 Gram (B, K, K), off CPU
    sq_dists: Dict[str, Tensor] = {}  # squared pair distances (B, K(K-1)/2), on CPU
    n_views = batch * views

    def reduce(name: str, output: Any) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        with reduce_in_float32(out.device, autocast):
            if out.dtype not in (torch.float32, torch.float64):
                out = out.float()
            if units:
                unit_means[name] = view_unit_means(out[:n_views], batch, views)
            if align:
                # A view without copy: normalising slice by slice avoids a full-size temporary and a sync.
                rep = flat_view(out)
                reps = rep[:n_views].reshape(batch, views, -1)
                if anchor or out.dtype == torch.float64:
                    aligns[name] = pairwise_alignment(reps, rep[n_views:] if anchor else None)
                elif out.device.type == "cpu":
                    sq_dists[name] = view_sq_distances(reps)
                else:
                    grams[name] = view_gram(reps)

    device, dtype = model_device_dtype(model)
    with LayerTaps(model, names, reduce), forward_autocast(device, autocast):
        model(inputs.to(device=device, dtype=dtype, non_blocking=True))  # views made in float32, outside autocast
    finish_alignments(grams, alignment_from_gram, aligns)
    finish_alignments(sq_dists, lambda d2: d2.sqrt().mean(dim=-1), aligns)
    return unit_means, {name: aligns[name] for name in names if name in aligns}
