"""Reductions in the hook: a tapped layer's output → per-unit means over the views and per-candidate alignment.

Data flow: views → taps → reductions → metric states. The hook keeps per-unit means ``(B, U)`` and
Gram matrices or pair distances; alignments are finished once per forward for all layers.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from lightning_memloc.functional.centred_gram import MIN_FEATURES, centred_gram, centred_sq_distances
from lightning_memloc.functional.sslmem import CHUNK_BYTES, pairwise_alignment
from lightning_memloc.reductions.precision import forward_autocast, reduce_in_float32
from lightning_memloc.taps.probe import model_device_dtype
from lightning_memloc.taps.hooks import LayerTaps, unit_activations

__all__ = ["alignment_from_gram", "finish_alignments", "flat_view", "forward_reduce", "sq_distances_from_gram", "view_gram", "view_sq_distances",
           "view_unit_means"]


def flat_view(out: Tensor) -> Tensor:
    """``(B, D)`` flattening of a layer output in memory order (any fixed feature order will do), without a copy."""
    if out.ndim == 4 and not out.is_contiguous() and out.is_contiguous(memory_format=torch.channels_last):
        return out.permute(0, 2, 3, 1).reshape(out.shape[0], -1)
    return out.reshape(out.shape[0], -1)


def view_unit_means(out: Tensor, batch: int, views: int) -> Tensor:
    """Per-unit activation averaged over the ``views`` views of each of ``batch`` candidates: ``(batch, U)``.

    ``out`` holds ``batch · views`` inputs, views of a candidate adjacent (UnitMem's μ_u(x_i)).
    """
    if out.ndim == 4 and out.shape[2] * out.shape[3] == 1:
        return out.reshape(batch, views, -1).mean(dim=1)
    return unit_activations(out).reshape(batch, views, -1).mean(dim=1)


def view_gram(reps: Tensor, chunk_bytes: int = 0) -> Tensor:
    """Float64 Gram matrix of each candidate's views: ``(N, K, D)`` → ``(N, K, K)``.

    Same slices as :func:`~lightning_memloc.functional.sslmem.pairwise_alignment`, so
    :func:`alignment_from_gram` of it equals that function's all-pairs result.
    """
    n, k, d = reps.shape
    if chunk_bytes <= 0:
        chunk_bytes = CHUNK_BYTES["cpu" if reps.device.type == "cpu" else "other"]
    width = max(1, min(d, chunk_bytes // max(1, n * k * 8)))
    gram = reps.new_zeros((n, k, k), dtype=torch.float64)
    for start in range(0, d, width):
        r = reps[:, :, start:start + width].to(torch.float64)
        gram.baddbmm_(r, r.transpose(1, 2))
    return gram


def sq_distances_from_gram(gram: Tensor) -> Tensor:
    """Squared distances of the L2-normalised views from raw Gram matrices: ``(..., K, K)`` → ``(..., K(K−1)/2)``.

    ``‖r_a − r_b‖² = Ĝ_aa + Ĝ_bb − 2Ĝ_ab`` of the normalised Gram Ĝ, pairs in ``torch.triu_indices`` order.
    """
    k = gram.shape[-1]
    inv = gram.diagonal(dim1=-2, dim2=-1).sqrt().clamp_min(1e-12).reciprocal()
    gram = gram * inv.unsqueeze(-1) * inv.unsqueeze(-2)
    sq = gram.diagonal(dim1=-2, dim2=-1)
    upper = torch.triu_indices(k, k, 1, device=gram.device)
    return (sq[..., upper[0]] + sq[..., upper[1]] - 2 * gram[..., upper[0], upper[1]]).clamp_min_(0)


def alignment_from_gram(gram: Tensor) -> Tensor:
    """All-pairs alignment from Gram matrices ``(..., K, K)`` (any leading dimensions): ``(...)`` in float64.

    ``align = mean_{a<b} ‖r_a − r_b‖₂`` of the L2-normalised views.
    """
    return sq_distances_from_gram(gram).sqrt_().mean(dim=-1)


def view_sq_distances(reps: Tensor, chunk_bytes: int = 0) -> Tensor:
    """Squared distances of each candidate's normalised views, ``(N, K, D)`` float32 → ``(N, K(K−1)/2)`` float64.

    From the float32 centred Gram; flagged candidates and small layers use the float64 Gram
    (:func:`view_gram`). Synchronises with the device once per call (the hook uses it on CPU only).
    """
    reps = reps.detach()
    if chunk_bytes <= 0:
        chunk_bytes = CHUNK_BYTES["cpu" if reps.device.type == "cpu" else "other"]
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
        finished = finish(torch.stack(list(parts.values()))).to(torch.float32)
        aligns.update(zip(parts, finished.unbind(0)))
    else:
        aligns.update((name, finish(part).to(torch.float32)) for name, part in parts.items())


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
    autocast: Optional[torch.dtype] = None,
) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    """Forward ``inputs`` (B·K views [+ B anchors]) and reduce every tapped layer in its hook.

    Returns per layer the unit means ``(B, U)`` (with ``units``) and the alignments ``(B,)`` (with
    ``align``). With ``autocast``, the forward runs under ``torch.autocast`` and hooks reduce in float32.
    """
    unit_means: Dict[str, Tensor] = {}
    aligns: Dict[str, Tensor] = {}
    grams: Dict[str, Tensor] = {}  # float64 Gram (B, K, K), off CPU
    sq_dists: Dict[str, Tensor] = {}  # squared pair distances (B, K(K-1)/2), on CPU
    n_views = batch * views

    def reduce(name: str, output: Any) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        with reduce_in_float32(out.device, autocast):
            reduce_output(name, out)

    def reduce_output(name: str, out: Tensor) -> None:
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
