"""The shared / candidate / independent split (``f``: shared ∪ candidates, ``g``: shared ∪ independent), and planted
canaries: atypical image crops whose memorization a short CPU run shows (``docs/evidence.md``)."""

from __future__ import annotations

import operator
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


class SplitIndices(NamedTuple):
    """Disjoint sorted index sets: ``f`` trains on ``encoder``, ``g`` on ``reference``."""

    shared: Tensor
    candidates: Tensor
    independent: Tensor

    @property
    def encoder(self) -> Tensor:
        """Training indices of ``f``: shared ∪ candidates."""
        return torch.cat([self.shared, self.candidates]).sort().values

    @property
    def reference(self) -> Tensor:
        """Training indices of ``g``: shared ∪ independent."""
        return torch.cat([self.shared, self.independent]).sort().values

    def control(self, size: float | int, seed: int = 0) -> Tensor:
        """A seeded sample of the shared part (fraction or count ≥ 2), which both encoders train on: LayerMem's null.

        Example:
            >>> s = split_candidates(20, shared=10, candidates=5, independent=5, seed=0)
            >>> c = s.control(4)
            >>> len(c), bool(torch.isin(c, s.shared).all())
            (4, True)
        """
        k = _count(size, len(self.shared), "size")
        if k < 2 or k > len(self.shared):
            raise ValueError(f"a control set needs 2 .. {len(self.shared)} (the shared part) images, got {k}: "
                             "pass a larger fraction or a count within the shared part.")
        pick = torch.randperm(len(self.shared), generator=torch.Generator().manual_seed(operator.index(seed) + 1))[:k]
        return self.shared[pick].sort().values


def _count(value: float | int, n: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{name}` must be a fraction (float) or a count (int), got {type(value).__name__}")
    if isinstance(value, (float, np.floating)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"`{name}` as a fraction must be in [0, 1], got {value}")
        return int(np.floor(float(value) * n + 1e-9))
    if value < 0:
        raise ValueError(f"`{name}` must be non-negative, got {value}")
    return int(value)


def split_candidates(n: int, shared: float | int = 0.8, candidates: float | int = 0.1,
                     independent: float | int = 0.1, seed: int = 0) -> SplitIndices:
    """Random disjoint split of ``range(n)`` into shared / candidate / independent indices, each size a fraction of
    ``n`` (float, rounded down) or a count (int); the paper's is ``split_candidates(50_000, 40_000, 5_000, 5_000)``.

    Example:
        >>> s = split_candidates(10, shared=6, candidates=2, independent=2, seed=0)
        >>> [len(t) for t in s]
        [6, 2, 2]
    """
    n = operator.index(n)
    if n < 1:
        raise ValueError(f"`n` must be positive, got {n}")
    sizes = [_count(v, n, k) for k, v in (("shared", shared), ("candidates", candidates),
                                            ("independent", independent))]
    if sizes[1] < 1:
        raise ValueError(f"`candidates` gives an empty candidate set for n={n}")
    if sum(sizes) > n:
        raise ValueError(f"shared + candidates + independent = {sizes} = {sum(sizes)} exceeds n={n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(operator.index(seed)))
    a, b = sizes[0], sizes[0] + sizes[1]
    return SplitIndices(perm[:a].sort().values, perm[a:b].sort().values, perm[b:b + sizes[2]].sort().values)


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
