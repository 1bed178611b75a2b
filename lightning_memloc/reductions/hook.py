"""Reductions in the hook: a tapped layer's output → per-unit means over the views and per-candidate alignment.

Data flow: views → taps → reductions → metric states; alignments are finished once per forward for all layers. The
forwards may run under optional mixed precision (``autocast``); the reductions stay float32 / float64.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, Callable, ContextManager, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_memloc.checks import check_choice
from lightning_memloc.functional.centred_gram import MIN_FEATURES, centred_gram, centred_sq_distances
from lightning_memloc.functional.sslmem import CHUNK_BYTES, pairwise_alignment, sq_distances_from_gram, view_gram
from lightning_memloc.taps.hooks import LayerTaps, unit_activations
from lightning_memloc.taps.probe import model_device_dtype

#: The ``autocast`` choices and their dtypes (off by default: bf16's error exceeds 1e-3, docs/performance.md §4).
AUTOCAST_DTYPES: Dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
AUTOCASTS = tuple(AUTOCAST_DTYPES)


@functools.lru_cache(maxsize=None)
def autocast_runs(device_type: str, device: str, dtype: torch.dtype) -> Optional[str]:
    """``None`` if a conv and a linear layer run in ``dtype`` under autocast on ``device``, else why not (cached)."""
    if not torch.amp.is_autocast_available(device_type):
        return f"torch has no autocast for device type {device_type!r}"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # constant weights: the probe draws nothing from the global RNG (training randomness is untouched)
            x, w_conv, w_linear = (torch.ones(shape, device=device) for shape in ((1, 3, 4, 4), (4, 3, 3, 3), (2, 4)))
            with torch.no_grad(), torch.autocast(device_type=device_type, dtype=dtype):
                out = F.linear(F.conv2d(x, w_conv).mean(dim=(2, 3)), w_linear)
    except (RuntimeError, TypeError, ValueError) as err:  # unsupported dtype or device
        return f"{type(err).__name__}: {err}"
    if out.dtype != dtype:  # torch disabled autocast with a warning
        return "; ".join(str(w.message) for w in caught) or f"the forward ran in {out.dtype}"
    return None


def check_autocast(autocast: Optional[str], *models: Optional[nn.Module]) -> Optional[torch.dtype]:
    """The dtype of ``autocast`` if every model can run under it, else ``ValueError`` (before any work).

    Models must be float32 (autocast lowers nothing else) on a device that runs a conv and a linear in that dtype.
    """
    if autocast is None:
        return None
    dtype = AUTOCAST_DTYPES[check_choice("autocast", autocast, AUTOCASTS)]
    first = (next(iter(model.parameters()), None) for model in models if model is not None)
    for param in (p for p in first if p is not None):
        if param.dtype != torch.float32:
            raise ValueError(f"`autocast={autocast!r}` lowers float32 forwards, but the model is {param.dtype}: "
                             "pass a float32 model, or autocast=None.")
        why = autocast_runs(param.device.type, str(param.device), dtype)
        if why is not None:
            other = "" if autocast == "bf16" else " or autocast='bf16'"
            raise ValueError(f"`autocast={autocast!r}` cannot run on {param.device} ({why}): pass autocast=None "
                             f"(float32){other}.")
    return dtype


def forward_autocast(device: Union[torch.device, str], dtype: Optional[torch.dtype]) -> ContextManager:
    """``torch.autocast`` for a forward on ``device`` in ``dtype``; a no-op for ``None``."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(torch.device(device).type, dtype=dtype)


def reduce_in_float32(device: Union[torch.device, str], dtype: Optional[torch.dtype]) -> ContextManager:
    """Switch autocast off inside a forward hook so that reductions run in float32 / float64."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(torch.device(device).type, enabled=False)


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
