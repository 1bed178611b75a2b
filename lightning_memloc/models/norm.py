"""Normalisation layers of the encoders: BatchNorm (the paper's) or GroupNorm (per-image, e.g. for DP-SGD)."""

from __future__ import annotations

from typing import Tuple

from torch import nn

#: Allowed values of the encoders' ``norm`` argument.
NORMS: Tuple[str, ...] = ("batch", "group")


def group_count(channels: int, max_groups: int = 32, min_group_size: int = 2) -> int:
    """GroupNorm groups for ``channels``: the largest divisor ≤ ``max_groups`` leaving ≥ ``min_group_size`` per
    group (not a per-channel InstanceNorm on narrow layers).

    Example:
        >>> [group_count(c) for c in (1, 2, 8, 32, 48, 64, 256)]
        [1, 1, 4, 16, 24, 32, 32]
    """
    if channels < 1:
        raise ValueError(f"`channels` must be >= 1, got {channels}.")
    return max([1] + [g for g in range(1, min(max_groups, channels) + 1)
                      if channels % g == 0 and channels // g >= min_group_size])


def make_norm(norm: str, channels: int) -> nn.Module:
    """``nn.BatchNorm2d`` for ``norm="batch"``, ``nn.GroupNorm(group_count(channels), channels)`` for ``"group"``.

    Example:
        >>> make_norm("group", 64)
        GroupNorm(32, 64, eps=1e-05, affine=True, bias=True)
    """
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(group_count(channels), channels)
    raise ValueError(f"`norm` must be one of {NORMS}, got {norm!r}: 'batch' (the paper's BatchNorm) or "
                     "'group' (GroupNorm, per-image, e.g. for DP-SGD).")
