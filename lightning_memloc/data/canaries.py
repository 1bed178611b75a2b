"""Planted canaries: atypical image crops whose memorization a short CPU run shows (``docs/evidence.md``)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lightning_memloc.data import SplitIndices

__all__ = ["CanaryLayout", "canary_layout", "photo_canaries"]


def photo_canaries(count: int, size: int = 16, crop: int = 64, channels: int = 3, seed: int = 0) -> Tensor:
    """``count`` random ``crop``×``crop`` (≤ 427) gray crops of scikit-learn's sample photos, as uint8
    ``(count, channels, size, size)``.

    Example:
        >>> photo_canaries(3, size=8).shape
        torch.Size([3, 3, 8, 8])
    """
    from sklearn.datasets import load_sample_images
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"`count` must be an int >= 1, got {count!r}.")
    # torch.tensor copies: the arrays are read-only
    photos = [torch.tensor(img).permute(2, 0, 1).float().mean(0) for img in load_sample_images().images]
    height, width = photos[0].shape
    if not 1 <= crop <= min(height, width):
        raise ValueError(f"`crop` must be in [1, {min(height, width)}], got {crop!r}.")
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(0, len(photos), (count,), generator=g)
    top = torch.randint(0, height - crop + 1, (count,), generator=g)
    left = torch.randint(0, width - crop + 1, (count,), generator=g)
    crops = torch.stack([photos[w][t:t + crop, l:l + crop] for w, t, l in zip(which.tolist(), top.tolist(), left.tolist())])
    small = torch.nn.functional.interpolate(crops[:, None], size=(size, size), mode="area")
    return small.round().clamp(0, 255).to(torch.uint8).expand(-1, channels, -1, -1).contiguous()


class CanaryLayout(NamedTuple):
    """Indices into ``cat([base, canaries])``: ``split`` (shared = base ∪ control), ``control`` (both encoders
    train on them: LayerMem's null), ``unseen`` (neither does: the null of UnitMem's test)."""

    split: SplitIndices
    control: Tensor
    unseen: Tensor


def canary_layout(num_base: int, per_group: int, seed: int = 0) -> CanaryLayout:
    """Assign ``4 · per_group`` canaries (after ``num_base`` images) at random to the four groups.

    Example:
        >>> lay = canary_layout(5, 2)
        >>> len(lay.split.shared), len(lay.split.candidates), len(lay.control), len(lay.unseen)
        (7, 2, 2, 2)
    """
    if per_group < 2:
        raise ValueError(f"`per_group` must be >= 2 (the tests compare groups), got {per_group!r}.")
    perm = num_base + torch.randperm(4 * per_group, generator=torch.Generator().manual_seed(seed))
    cand, ind, control, unseen = (perm[i * per_group:(i + 1) * per_group].sort().values for i in range(4))
    shared = torch.cat([torch.arange(num_base), control]).sort().values
    return CanaryLayout(SplitIndices(shared, cand, ind), control, unseen)
