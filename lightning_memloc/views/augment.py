"""Batched SimCLR augmentation (Chen et al., ICML 2020) with per-sample parameters from counter-based seeds: view ``k``
of candidate ``i`` under ``seed`` depends on nothing else, so f and g see the same views (fast, device-agnostic)."""

from __future__ import annotations

import math
import operator
import random
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_memloc.checks import as_long_tensor, check_int

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


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    return (x[:, :3] * w.view(1, 3, 1, 1)).sum(1, keepdim=True)


_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)


class BatchedSimCLRAugment(nn.Module):
    """SimCLR augmentation of a whole batch, sample ``b``'s parameters drawn from ``seeds[b]`` alone.

    Resized crop and flip are one ``grid_sample``; colour jitter (hue as a YIQ rotation, approximating
    torchvision's HSV shift), grayscale and optional ``mean``/``std`` normalisation follow, batched.

    Example:
        >>> BatchedSimCLRAugment(size=8)(torch.rand(4, 3, 16, 16), torch.arange(4)).shape
        torch.Size([4, 3, 8, 8])
    """

    batched = True

    def __init__(self, size: int, scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 flip_p: float = 0.5, jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
                 jitter_p: float = 0.8, gray_p: float = 0.2, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        super().__init__()
        size = check_int("size", size, 1)
        for name, rng in (("scale", scale), ("ratio", ratio)):
            if len(rng) != 2 or not 0 < rng[0] <= rng[1]:
                raise ValueError(f"`{name}` must be (low, high) with 0 < low <= high, got {rng!r}")
        for name, p in (("flip_p", flip_p), ("jitter_p", jitter_p), ("gray_p", gray_p)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"`{name}` must be a probability in [0, 1], got {p!r}")
        if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
            raise ValueError(f"`jitter` must be 4 non-negative strengths with hue <= 0.5, got {jitter!r}")
        if (mean is None) != (std is None):
            raise ValueError("`mean` and `std` must be given together")
        if std is not None and min(std) <= 0:
            raise ValueError(f"`std` must be positive, got {std!r}")
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)
        self.flip_p, self.jitter, self.jitter_p, self.gray_p = flip_p, tuple(jitter), jitter_p, gray_p
        self.mean, self.std = (None if v is None else tuple(float(m) for m in v) for v in (mean, std))

    def extra_repr(self) -> str:
        return (f"size={self.size}, scale={self.scale}, ratio={self.ratio}, flip_p={self.flip_p}, "
                f"jitter={self.jitter}, jitter_p={self.jitter_p}, gray_p={self.gray_p}, mean={self.mean}, std={self.std}")

    def normalize(self, x: Tensor) -> Tensor:
        """The normalisation alone on (B, C, H, W) (identity without ``mean``/``std``)."""
        if self.mean is None or self.std is None:
            return x
        mean, std = (torch.tensor(v, dtype=x.dtype, device=x.device) for v in (self.mean, self.std))
        if mean.numel() not in (1, x.shape[1]) or std.numel() not in (1, x.shape[1]):
            raise ValueError(f"`mean`/`std` have {mean.numel()}/{std.numel()} values for {x.shape[1]} channels")
        return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)

    def _params(self, seeds: Tensor, height: int, width: int) -> dict[str, Tensor]:
        u = uniforms(seeds, 29)
        lo, hi = self.scale
        area = lo + (hi - lo) * u[:, :10]
        lr0, lr1 = math.log(self.ratio[0]), math.log(self.ratio[1])
        r = torch.exp(lr0 + (lr1 - lr0) * u[:, 10:20])
        wf, hf = torch.sqrt(area * r * height / width), torch.sqrt(area / r * width / height)
        ok = (wf <= 1) & (hf <= 1)
        first = ok.double().argmax(1, keepdim=True)  # torchvision: first of 10 valid attempts
        in_ratio = width / height  # fallback: central crop with the ratio clamped
        fw, fh = (1.0, width / self.ratio[0] / height) if in_ratio < self.ratio[0] else (
            (height * self.ratio[1] / width, 1.0) if in_ratio > self.ratio[1] else (1.0, 1.0))
        w = torch.where(ok.any(1), wf.gather(1, first)[:, 0], torch.full_like(u[:, 0], fw))
        h = torch.where(ok.any(1), hf.gather(1, first)[:, 0], torch.full_like(u[:, 0], fh))
        cx, cy = 2 * u[:, 20] * (1 - w) + w - 1, 2 * u[:, 21] * (1 - h) + h - 1
        sx = torch.where(u[:, 22] < self.flip_p, -w, w)
        zero = torch.zeros_like(w)
        theta = torch.stack([sx, zero, cx, zero, h, cy], 1).view(-1, 2, 3)
        jit = u[:, 23] < self.jitter_p
        bj, cj, sj, hj = self.jitter
        factors = [torch.where(jit, max(0.0, 1 - s) + (1 + s - max(0.0, 1 - s)) * u[:, 24 + n], 1.0)
                   for n, s in enumerate((bj, cj, sj))]
        ang = torch.where(jit, 2 * math.pi * hj * (2 * u[:, 27] - 1), 0.0)  # hue as a YIQ rotation
        rot = torch.zeros(len(ang), 3, 3, dtype=torch.float64)
        rot[:, 0, 0], rot[:, 1, 1], rot[:, 2, 2] = 1.0, ang.cos(), ang.cos()
        rot[:, 1, 2], rot[:, 2, 1] = ang.sin(), -ang.sin()  # same direction as torchvision's adjust_hue
        hue = torch.linalg.inv(_YIQ) @ rot @ _YIQ
        hue = torch.where((ang != 0).view(-1, 1, 1), hue, torch.eye(3, dtype=torch.float64))
        return {"theta": theta, "b": factors[0], "c": factors[1], "s": factors[2], "hue": hue,
                "gray": u[:, 28] < self.gray_p}

    def forward(self, images: Tensor, seeds: Tensor) -> Tensor:
        """Augment float (B, C, H, W) ``images`` in [0, 1] with (B,) ``seeds``."""
        if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
            raise TypeError("`images` must be a float tensor (B, C, H, W), got "
                            f"{type(images).__name__} {getattr(images, 'shape', '')} {getattr(images, 'dtype', '')}")
        seeds = as_long_tensor(seeds, "seeds").reshape(-1).cpu()
        B, C, H, W = images.shape
        if seeds.numel() != B:
            raise ValueError(f"`seeds` must have one entry per image ({B}), got {seeds.numel()}")
        if B == 0:
            return images.new_zeros(0, C, self.size, self.size)
        p = {k: v.to(device=images.device, dtype=images.dtype if v.is_floating_point() else v.dtype)
             for k, v in self._params(seeds, H, W).items()}
        grid = F.affine_grid(p["theta"], [B, C, self.size, self.size], align_corners=False)
        x = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        view = (-1, 1, 1, 1)
        x = (x * p["b"].view(view)).clamp(0, 1)
        m = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (p["c"].view(view) * x + (1 - p["c"].view(view)) * m).clamp(0, 1)
        if C == 3:
            x = (p["s"].view(view) * x + (1 - p["s"].view(view)) * _gray(x)).clamp(0, 1)
            if self.jitter[3] > 0:
                x = torch.einsum("bij,bjhw->bihw", p["hue"], x).clamp(0, 1)
            x = torch.where(p["gray"].view(view), _gray(x).expand_as(x), x)
        return self.normalize(x)
