"""``normalize=``: per-channel normalisation of the views after the augmentation, before the encoder."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

#: Per-channel ``(mean, std)`` tuples.
Normalization = Tuple[Tuple[float, ...], Tuple[float, ...]]
#: What ``normalize=`` accepts: ``None``, a preset name, or a ``(mean, std)`` pair.
NormalizeSpec = Union[None, str, Tuple[Sequence[float], Sequence[float]]]

#: Named ``(mean, std)`` pairs: ImageNet (lightly's ``IMAGENET_NORMALIZE``) and CIFAR-10's training pixels.
NORMALIZE_PRESETS: Dict[str, Normalization] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def _numbers(value: Any, what: str) -> Tuple[float, ...]:
    if isinstance(value, Tensor):
        value = value.detach().cpu().reshape(-1).tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise TypeError(f"`normalize` {what} must be a non-empty sequence of numbers (one per channel), got {value!r}.")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
            raise TypeError(f"`normalize` {what} must hold numbers, got {v!r}.")
        out.append(float(v))
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"`normalize` {what} must be finite, got {out}.")
    return tuple(out)


def check_normalize(spec: NormalizeSpec) -> NormalizeSpec:
    """``spec`` in its canonical form: ``None``, a preset name, or a pair of float tuples."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in NORMALIZE_PRESETS:
            raise ValueError(f"`normalize` must be one of {tuple(NORMALIZE_PRESETS)} or a (mean, std) pair of "
                             f"per-channel sequences, got {spec!r}.")
        return spec
    if isinstance(spec, dict) and set(spec) == {"mean", "std"}:  # lightly's IMAGENET_NORMALIZE form
        spec = (spec["mean"], spec["std"])
    if not isinstance(spec, (tuple, list)) or len(spec) != 2:
        raise TypeError(f"`normalize` must be None, a preset name {tuple(NORMALIZE_PRESETS)} or a (mean, std) pair "
                        f"of per-channel sequences, got {spec!r}.")
    mean, std = _numbers(spec[0], "mean"), _numbers(spec[1], "std")
    if len(mean) != len(std):
        raise ValueError(f"`normalize` has {len(mean)} means but {len(std)} stds: give one of each per channel.")
    if min(std) <= 0:
        raise ValueError(f"`normalize` std must be > 0, got {list(std)}.")
    return mean, std


def resolve_normalize(spec: NormalizeSpec) -> Optional[Normalization]:
    """The validated ``(mean, std)`` tuples of ``spec``, or ``None``.

    Example:
        >>> resolve_normalize("imagenet")[0], resolve_normalize(([0.5], [0.25]))
        ((0.485, 0.456, 0.406), ((0.5,), (0.25,)))
    """
    spec = check_normalize(spec)
    return NORMALIZE_PRESETS[spec] if isinstance(spec, str) else spec  # type: ignore[return-value]


def view_normalization(spec: NormalizeSpec, transform: Any, stored_views: Optional[Tensor]) -> Optional[Normalization]:
    """The normalisation of a view set; ``ValueError`` for feature views or a ``transform`` that normalises already."""
    resolved = resolve_normalize(spec)
    if resolved is None:
        return None
    if stored_views is not None and stored_views.ndim == 3:
        raise ValueError("`normalize` applies per channel to image views, but the candidates are feature views "
                         "(N, K, D): pass normalize=None.")
    if getattr(transform, "batched", False) is True and getattr(transform, "mean", None) is not None:
        raise ValueError(f"`transform` normalises already (mean={transform.mean}, std={getattr(transform, 'std', None)}) "
                         "and `normalize` would normalise again: pass one of them.")
    return resolved


def normalize_meta(spec: NormalizeSpec) -> Optional[Dict[str, Any]]:
    """What a report records of ``spec``: ``None`` or ``{"mean", "std"[, "preset"]}``.

    Example:
        >>> normalize_meta("cifar10")["preset"], normalize_meta(None)
        ('cifar10', None)
    """
    resolved = resolve_normalize(spec)
    if resolved is None:
        return None
    return {"mean": list(resolved[0]), "std": list(resolved[1]), **({"preset": spec} if isinstance(spec, str) else {})}


def normalize_views(x: Tensor, normalization: Optional[Normalization]) -> Tensor:
    """``(x − mean) / std`` per channel of views (…, C, H, W) (a single value applies to every channel).

    Example:
        >>> normalize_views(torch.ones(2, 3, 1, 1), ((0.5, 0.5, 0.5), (0.25, 0.25, 0.5))).flatten().tolist()
        [2.0, 2.0, 1.0, 2.0, 2.0, 1.0]
    """
    if normalization is None:
        return x
    mean, std = normalization
    if x.ndim < 3:
        raise ValueError(f"`normalize` applies per channel to image views (C, H, W), but the views have shape "
                         f"{tuple(x.shape)} (feature views): pass normalize=None.")
    channels = x.shape[-3]
    if len(mean) not in (1, channels):
        raise ValueError(f"`normalize` has {len(mean)} channels but the views have {channels} (shape "
                         f"{tuple(x.shape[-3:])}): give one mean and std per view channel.")
    m, s = (torch.tensor(v, dtype=x.dtype, device=x.device).view(-1, 1, 1) for v in (mean, std))
    return (x - m) / s
