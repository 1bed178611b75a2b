"""What the encoder receives: ``normalize=``, the per-channel normalisation of the views after the augmentation, and
per-channel statistics of the views, with when two of them disagree."""

from __future__ import annotations

import math
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple, Union

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


#: Largest std ratio (the larger over the smaller, per channel) taken as the same pipeline.
SCALE_TOLERANCE = 1.5
#: Largest mean difference, in units of the larger std (per channel), taken as the same pipeline.
SHIFT_TOLERANCE = 1.0


class ViewStatistics(NamedTuple):
    """Per-channel mean and std of a set of images (every pixel counts once)."""

    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    def as_meta(self) -> Dict[str, Any]:
        """``{"mean": [...], "std": [...]}`` (JSON)."""
        return {"mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std]}


def channel_sums(x: Tensor) -> Tuple[Tensor, Tensor, int]:
    """Per-channel ``(Σx, Σx², pixels)`` of images (B, C, H, W), sums float64 (C,).

    Example:
        >>> s, q, n = channel_sums(torch.tensor([[[[1.0, 3.0]]]]))
        >>> s.tolist(), q.tolist(), n
        ([4.0], [10.0], 2)
    """
    x = x.detach()
    dims = (0, *range(2, x.ndim))
    return (x.sum(dim=dims, dtype=torch.float64), x.float().square().sum(dim=dims, dtype=torch.float64),
            x.numel() // x.shape[1])


def statistics_from_sums(sums: Tensor, squares: Tensor, count: float) -> ViewStatistics:
    """``ViewStatistics`` from per-channel ``Σx``, ``Σx²`` over ``count`` pixels: std = sqrt(E[x²] − E[x]²)."""
    mean = sums.double().cpu() / count
    var = (squares.double().cpu() / count - mean.square()).clamp_min(0)
    return ViewStatistics(tuple(mean.tolist()), tuple(var.sqrt().tolist()))


def candidate_moments(views: Tensor) -> Tuple[Tensor, Tensor]:
    """Float64 (B, C) ``(means, squares)`` of ``x`` and ``x²`` over the views and pixels of (B, K, C, H, W)."""
    flat = views.detach().reshape(views.shape[0], views.shape[1], views.shape[2], -1)
    return flat.mean(dim=(1, 3), dtype=torch.float64), flat.float().square().mean(dim=(1, 3), dtype=torch.float64)


def gaps(views: ViewStatistics, batches: ViewStatistics) -> Tuple[Tensor, Tensor]:
    """Per-channel ``(max(σ)/min(σ), |μ_v − μ_t| / max(σ))``; constant in both: ratio 1, in one: ``inf``."""
    sv, st = torch.tensor(views.std, dtype=torch.float64), torch.tensor(batches.std, dtype=torch.float64)
    big, small = torch.maximum(sv, st), torch.minimum(sv, st)
    ratio = torch.where(big == 0, torch.ones_like(big), big / small)
    diff = (torch.tensor(views.mean, dtype=torch.float64) - torch.tensor(batches.mean, dtype=torch.float64)).abs()
    return ratio, torch.where(big == 0, torch.where(diff == 0, 0.0, math.inf), diff / big.clamp_min(1e-300))


def mismatch(views: ViewStatistics, batches: ViewStatistics, scale_tolerance: float = SCALE_TOLERANCE,
             shift_tolerance: float = SHIFT_TOLERANCE) -> Optional[str]:
    """Why ``views`` do not look like ``batches``, or ``None`` (also for different channel counts).

    They disagree when a channel's std ratio ``max(σ)/min(σ)`` exceeds ``scale_tolerance`` or its mean shift
    ``|μ_v − μ_t| / max(σ)`` exceeds ``shift_tolerance`` (calibrated: ``benchmarks/view_check_calibration.py``).

    Example:
        >>> a = ViewStatistics(mean=(0.45, 0.45, 0.45), std=(0.25, 0.25, 0.25))
        >>> mismatch(a, ViewStatistics(mean=(0.0, 0.1, 0.2), std=(1.1, 1.1, 1.15))) is not None, mismatch(a, a)
        (True, None)
    """
    if len(views.mean) != len(batches.mean):
        return None
    ratio, shift = gaps(views, batches)
    worst_ratio, worst_shift = float(ratio.max()), float(shift.max())
    if worst_ratio <= scale_tolerance and worst_shift <= shift_tolerance:
        return None
    return (f"per-channel mean {_fmt(views.mean)} and std {_fmt(views.std)} in the views vs mean {_fmt(batches.mean)} "
            f"and std {_fmt(batches.std)} in the training batches (std ratio {worst_ratio:.2f}, tolerance "
            f"{scale_tolerance}; mean shift {worst_shift:.2f} std, tolerance {shift_tolerance})")


def _fmt(values: Tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


@torch.no_grad()
def sample_statistics(view_set: Any, device: Any = "cpu", max_candidates: int = 64, batch_size: int = 32) -> ViewStatistics:
    """Statistics of the views (transform and ``normalize`` applied) of the first ``max_candidates`` candidates.

    Example:
        >>> from lightning_memloc.views.seeded import SeededViews
        >>> views = torch.tensor([0.25, 0.75]).repeat(4, 2, 1, 1, 1, 1).reshape(4, 2, 1, 1, 2)  # (N, K, C, H, W)
        >>> sample_statistics(SeededViews(views, views=None, normalize=([0.5], [0.25])))
        ViewStatistics(mean=(0.0,), std=(1.0,))
    """
    n = min(len(view_set), max_candidates)
    sums, squares, count = None, None, 0
    for start in range(0, n, batch_size):
        index, x, _ = view_set.collate([view_set[i] for i in range(start, min(n, start + batch_size))])
        views = view_set.finalize(x, index, device)
        s, q, c = channel_sums(views.reshape(-1, *views.shape[2:]))
        sums, squares, count = (s, q, c) if sums is None else (sums + s, squares + q, count + c)
    return statistics_from_sums(sums, squares, count)  # type: ignore[arg-type]
