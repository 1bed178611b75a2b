"""The shared / candidate / independent split (``f``: shared ∪ candidates, ``g``: shared ∪ independent)."""

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

