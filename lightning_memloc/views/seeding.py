"""Counter-based seeds: view ``k`` of candidate ``i`` under ``seed`` depends on nothing else (f and g see the same)."""

from __future__ import annotations

import operator
import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from lightning_memloc.checks import as_long_tensor

_MASK64 = (1 << 64) - 1
_GOLDEN, _M1, _M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(c: int) -> int:
    c &= _MASK64
    return c - (1 << 64) if c >= 1 << 63 else c


def _mix_int(z: int) -> int:
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def _srl(z: Tensor, n: int) -> Tensor:  # logical shift right of int64 seen as uint64
    return (z >> n) & ((1 << (64 - n)) - 1)


def _mix_tensor(z: Tensor) -> Tensor:  # int64 arithmetic wraps like uint64
    z = (z ^ _srl(z, 30)) * _signed(_M1)
    z = (z ^ _srl(z, 27)) * _signed(_M2)
    return z ^ _srl(z, 31)


def view_seed(seed: int | Tensor, index: int | Tensor, view: int | Tensor) -> int | Tensor:
    """Splitmix64 seed in ``[0, 2**63)`` of view ``view`` of candidate ``index``: an int, or a broadcast ``LongTensor``.

    Example:
        >>> view_seed(0, 3, 1) == int(view_seed(0, torch.tensor([3]), 1)[0])
        True
    """
    if not any(isinstance(a, Tensor) for a in (seed, index, view)):
        s, i, k = (operator.index(a) for a in (seed, index, view))
        h = _mix_int(s + _GOLDEN)
        h = _mix_int(h ^ ((i + 2 * _GOLDEN) & _MASK64))
        return _mix_int(h ^ ((k + 3 * _GOLDEN) & _MASK64)) >> 1
    s, i, k = (as_long_tensor(a if isinstance(a, Tensor) else _signed(operator.index(a)), name)
               for a, name in ((seed, "seed"), (index, "index"), (view, "view")))
    h = _mix_tensor(s + _signed(_GOLDEN))
    h = _mix_tensor(h ^ (i + _signed(2 * _GOLDEN)))
    return _srl(_mix_tensor(h ^ (k + _signed(3 * _GOLDEN))), 1)


@contextmanager
def seeded_rng(s: int) -> Iterator[None]:
    """Seed the CPU ``torch``, ``numpy`` and ``random`` global RNGs; restore them on exit (CUDA left alone).

    Example:
        >>> with seeded_rng(7):
        ...     a = torch.rand(2)
        >>> with seeded_rng(7):
        ...     b = torch.rand(2)
        >>> bool(torch.equal(a, b))
        True
    """
    s = operator.index(s)
    if not 0 <= s < 1 << 64:
        raise ValueError(f"`s` must be in [0, 2**64), got {s}")
    states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    try:
        torch.default_generator.manual_seed(s)
        np.random.seed([s & 0xFFFFFFFF, s >> 32])
        random.seed(s)
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


def uniforms(seeds: Tensor, n: int) -> Tensor:
    """``n`` splitmix64 uniforms in [0, 1) per seed: float64 (B, n) on CPU."""
    j = torch.arange(1, n + 1, dtype=torch.long) * _signed(_GOLDEN)
    return _srl(_mix_tensor(seeds.reshape(-1, 1) + j), 11).double() * 2.0**-53
