"""Seeded K-view generation for a candidate set.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) measure UnitMem and
LayerMem on K augmented views of every candidate, and the **same views** must go through the
encoder ``f`` and the reference ``g``. Here the view ``k`` of candidate ``i`` under ``seed``
depends only on ``(seed, i, k)`` (:func:`view_seed`): never on batch size or order, epoch,
DataLoader worker, device or rank, and the training RNG is never perturbed.

Example:
    >>> import torch
    >>> from lightning_memloc.views import SeededViews
    >>> ds = SeededViews(torch.rand(8, 3, 16, 16), views=4, seed=0)
    >>> index, x, label = next(iter(ds.dataloader(batch_size=8)))
    >>> ds.finalize(x, index, "cpu").shape
    torch.Size([8, 4, 3, 16, 16])
"""

from __future__ import annotations

import math
import operator
import random
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_memloc.data import as_float_image, split_item

__all__ = ["view_seed", "seeded_rng", "BatchedSimCLRAugment", "SeededViews", "make_views"]

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


def _as_long(x: Any, name: str) -> Tensor:
    t = torch.as_tensor(x)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"`{name}` must hold integers, got dtype {t.dtype}")
    return t.to(torch.long)


def view_seed(seed: int | Tensor, index: int | Tensor, view: int | Tensor) -> int | Tensor:
    """Seed of view ``view`` of candidate ``index`` (splitmix64 mixing, 63-bit, non-negative).

    Args:
        seed: measurement seed.
        index: candidate id, or a ``LongTensor`` of ids (vectorised, broadcast with ``view``).
        view: view number ``k`` (int or tensor).

    Returns:
        An ``int`` in ``[0, 2**63)`` when every argument is an int, else a ``LongTensor``.

    Example:
        >>> import torch
        >>> view_seed(0, 3, 1) == int(view_seed(0, torch.tensor([3]), 1)[0])
        True
    """
    if not any(isinstance(a, Tensor) for a in (seed, index, view)):
        s, i, k = (operator.index(a) for a in (seed, index, view))
        h = _mix_int(s + _GOLDEN)
        h = _mix_int(h ^ ((i + 2 * _GOLDEN) & _MASK64))
        return _mix_int(h ^ ((k + 3 * _GOLDEN) & _MASK64)) >> 1
    s, i, k = (_as_long(a if isinstance(a, Tensor) else _signed(operator.index(a)), name)
               for a, name in ((seed, "seed"), (index, "index"), (view, "view")))
    h = _mix_tensor(s + _signed(_GOLDEN))
    h = _mix_tensor(h ^ (i + _signed(2 * _GOLDEN)))
    return _srl(_mix_tensor(h ^ (k + _signed(3 * _GOLDEN))), 1)


@contextmanager
def seeded_rng(s: int) -> Iterator[None]:
    """Seed the CPU ``torch``, ``numpy`` and ``random`` global RNGs; restore them on exit.

    The previous states come back even when the body raises, so a measurement inside a training
    loop never changes the training randomness. CUDA generators are left alone.

    Example:
        >>> import torch
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


def _uniforms(seeds: Tensor, n: int) -> Tensor:
    """``n`` splitmix64 uniforms in [0, 1) per seed: float64 (B, n), computed on CPU."""
    j = torch.arange(1, n + 1, dtype=torch.long) * _signed(_GOLDEN)
    return _srl(_mix_tensor(seeds.reshape(-1, 1) + j), 11).double() * 2.0**-53


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    return (x[:, :3] * w.view(1, 3, 1, 1)).sum(1, keepdim=True)


_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)


class BatchedSimCLRAugment(nn.Module):
    """SimCLR augmentation of a whole batch, with per-sample parameters drawn from ``seeds``.

    Random resized crop and horizontal flip are one ``affine_grid``/``grid_sample`` (bilinear,
    continuous crop boxes, no antialiasing); colour jitter (brightness, contrast, saturation,
    hue as a YIQ rotation, a linear approximation of torchvision's HSV shift; applied in this fixed order with probability ``jitter_p``), random
    grayscale and optional normalisation follow, batched. The parameters of sample ``b`` are
    drawn on CPU in float64 from a splitmix64 stream keyed by ``seeds[b]`` alone, so a sample's
    view does not depend on the rest of the batch, its order or the device. Used by
    :class:`SeededViews` as the default transform for the views of Wang et al. (NeurIPS 2024).

    Args:
        size: output side length.
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop aspect ratio (width / height), sampled log-uniformly.
        flip_p: probability of a horizontal flip.
        jitter: brightness, contrast, saturation, hue strengths (torchvision ``ColorJitter``).
        jitter_p: probability of applying the colour jitter.
        gray_p: probability of converting to grayscale (C = 3 only).
        mean: per-channel normalisation mean (with ``std``), or ``None``.
        std: per-channel normalisation std, or ``None``.

    Example:
        >>> import torch
        >>> aug = BatchedSimCLRAugment(size=8)
        >>> aug(torch.rand(4, 3, 16, 16), torch.arange(4)).shape
        torch.Size([4, 3, 8, 8])
    """

    batched = True

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        gray_p: float = 0.2,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"`size` must be a positive int, got {size!r}")
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
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)

    def extra_repr(self) -> str:
        return (f"size={self.size}, scale={self.scale}, ratio={self.ratio}, flip_p={self.flip_p}, "
                f"jitter={self.jitter}, jitter_p={self.jitter_p}, gray_p={self.gray_p}, mean={self.mean}, std={self.std}")

    def normalize(self, x: Tensor) -> Tensor:
        """Apply the normalisation only (identity without ``mean``/``std``); ``x`` is (B, C, H, W)."""
        if self.mean is None or self.std is None:
            return x
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)
        if mean.numel() not in (1, x.shape[1]) or std.numel() not in (1, x.shape[1]):
            raise ValueError(f"`mean`/`std` have {mean.numel()}/{std.numel()} values for {x.shape[1]} channels")
        return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)

    def _params(self, seeds: Tensor, height: int, width: int) -> dict[str, Tensor]:
        u = _uniforms(seeds, 29)
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
        """Augment ``images`` (float (B, C, H, W) in [0, 1]) with per-sample ``seeds`` (LongTensor (B,))."""
        if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
            raise TypeError("`images` must be a float tensor (B, C, H, W), got "
                            f"{type(images).__name__} {getattr(images, 'shape', '')} {getattr(images, 'dtype', '')}")
        seeds = _as_long(seeds, "seeds").reshape(-1).cpu()
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


class SeededViews(Dataset):
    """Dataset of K seeded views per candidate, for the measurements of Wang et al. (NeurIPS 2024).

    Args:
        candidates: uint8/float tensor (N, C, H, W) (uint8 is divided by 255), a views tensor
            (N, K, C, H, W) used as is (also (N, K, D) feature views for MLP encoders), or a
            ``Dataset`` of images or ``(image, label, ...)``.
        views: K, the number of views per candidate (``None`` or K for a views tensor).
        transform: ``None`` (a :class:`BatchedSimCLRAugment` at the image size), a per-image
            callable returning a float (C, H, W) tensor (torchvision / lightly single-view
            transform, run under ``seeded_rng(view_seed(seed, i, k))`` on the image as stored),
            or a batched module (attribute ``batched = True``, called ``transform(images, seeds)``)
            applied in :meth:`finalize`.
        seed: the measurement seed.
        labels: optional labels (length N); else taken from dataset items, else -1.

    ``__getitem__(i)`` returns ``(i, x, label)``: ``x`` is the (K, C, H, W) views, or for a batched
    transform the raw float (C, H, W) image; :meth:`finalize` turns a collated ``x`` into
    (B, K, C, H, W) views on a device. Use :meth:`collate` (or :meth:`dataloader`) to batch.

    Example:
        >>> import torch
        >>> ds = SeededViews(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), views=2)
        >>> i, x, label = ds[1]
        >>> i, tuple(x.shape), label
        (1, (3, 8, 8), -1)
    """

    def __init__(self, candidates: Tensor | Dataset, views: int | None = 10, transform: Any = None,
                 seed: int = 0, labels: Sequence[int] | Tensor | None = None) -> None:
        self.seed = operator.index(seed)
        self._images: Tensor | None = None
        self._views: Tensor | None = None
        self._dataset: Dataset | None = None
        if isinstance(candidates, Tensor):
            if candidates.dtype != torch.uint8 and not candidates.is_floating_point():
                raise TypeError(f"`candidates` must be a uint8 or float tensor, got {candidates.dtype}")
            if candidates.ndim not in (3, 4, 5):
                raise ValueError("`candidates` must be (N, C, H, W) images, (N, K, C, H, W) views or (N, K, D) "
                                 f"feature views, got shape {tuple(candidates.shape)}")
            n = candidates.shape[0]
            if candidates.ndim != 4:
                if views is not None and views != candidates.shape[1]:
                    raise ValueError(f"`views`={views} but the precomputed views tensor has K="
                                     f"{candidates.shape[1]}: pass views=None or views={candidates.shape[1]}")
                if transform is not None:
                    raise ValueError("`transform` must be None for a precomputed views tensor")
                views = candidates.shape[1]
                self._views = candidates
            else:
                self._images = candidates
        elif isinstance(candidates, Dataset):
            try:
                n = len(candidates)  # type: ignore[arg-type]
            except TypeError as e:
                raise TypeError("`candidates` dataset must define __len__ (map-style Dataset)") from e
            self._dataset = candidates
        else:
            raise TypeError("`candidates` must be a tensor (N, C, H, W) / (N, K, C, H, W) or a torch Dataset, "
                            f"got {type(candidates).__name__}")
        if n == 0:
            raise ValueError("`candidates` is empty: the measurement needs at least one candidate")
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ValueError(f"`views` must be an int >= 1, got {views!r}")
        self.num_candidates, self.views = n, views
        self.labels: Tensor | None = None
        if labels is not None:
            self.labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
            if self.labels.numel() != n:
                raise ValueError(f"`labels` has {self.labels.numel()} entries for {n} candidates")
        if transform is None and self._views is None:
            transform = BatchedSimCLRAugment(size=int(self._raw(0).shape[-2]))
        if transform is not None and not callable(transform):
            raise TypeError(f"`transform` must be callable, got {type(transform).__name__}")
        self.transform = transform
        self._view_shape: tuple[int, ...] | None = None

    @property
    def is_batched(self) -> bool:
        """Whether views are made in :meth:`finalize` by a batched transform."""
        return self._views is None and getattr(self.transform, "batched", False) is True

    def __len__(self) -> int:
        return self.num_candidates

    def _item(self, i: int) -> tuple[Any, int]:
        if self._dataset is not None:
            img, label = split_item(self._dataset[i])
        else:
            img, label = self._images[i], -1  # type: ignore[index]
        return img, (int(self.labels[i]) if self.labels is not None else label)

    def _raw(self, i: int) -> Tensor:
        return as_float_image(self._item(i)[0])

    def _index(self, i: int) -> int:
        i = operator.index(i)
        if not -self.num_candidates <= i < self.num_candidates:
            raise IndexError(f"candidate {i} out of range for {self.num_candidates} candidates")
        return i % self.num_candidates

    def __getitem__(self, i: int) -> tuple[int, Tensor, int]:
        i = self._index(i)
        if self._views is not None:
            v = self._views[i]
            return i, (v.float() / 255 if v.dtype == torch.uint8 else v), (
                int(self.labels[i]) if self.labels is not None else -1)
        img, label = self._item(i)
        if self.is_batched:
            return i, as_float_image(img), label
        out = []
        for k in range(self.views):
            with seeded_rng(view_seed(self.seed, i, k)):
                v = self.transform(img)
            if not isinstance(v, Tensor) or not v.is_floating_point() or v.ndim != 3:
                raise TypeError("`transform` must return a float tensor (C, H, W), got "
                                f"{type(v).__name__} {getattr(v, 'dtype', '')} {tuple(getattr(v, 'shape', ()))}: "
                                "end the pipeline with e.g. v2.ToDtype(torch.float32, scale=True)")
            out.append(v.as_subclass(Tensor))
        if len({tuple(v.shape) for v in out}) > 1:
            raise ValueError(f"`transform` made views of different shapes for candidate {i}: "
                             f"{sorted({tuple(v.shape) for v in out})}; use a fixed output size")
        return i, torch.stack(out), label

    def collate(self, batch: Sequence[tuple[int, Tensor, int]]) -> tuple[Tensor, Tensor, Tensor]:
        """Collate ``(i, x, label)`` items into ``(index, x, labels)``; clear error on mixed shapes."""
        shapes = {tuple(x.shape) for _, x, _ in batch}
        if len(shapes) > 1:
            ids: dict[tuple[int, ...], int] = {}
            for i, x, _ in batch:
                ids.setdefault(tuple(x.shape), i)
            raise ValueError("candidates in a batch have different shapes: " + ", ".join(
                f"{s} (e.g. candidate {ids[s]})" for s in sorted(shapes)) +
                "; resize the images (e.g. load_image_folder(path, size)) or use a fixed-size transform")
        return (torch.tensor([b[0] for b in batch], dtype=torch.long), torch.stack([b[1] for b in batch]),
                torch.tensor([b[2] for b in batch], dtype=torch.long))

    def dataloader(self, batch_size: int = 32, num_workers: int = 0, **kwargs: Any) -> DataLoader:
        """An unshuffled ``DataLoader`` using :meth:`collate`.

        It gets its own ``generator`` (unless given): a plain ``DataLoader`` draws its base seed
        from the global torch RNG on every ``iter()``, which would shift the training randomness.
        """
        kwargs.setdefault("generator", torch.Generator().manual_seed(self.seed & (2**63 - 1)))
        return DataLoader(self, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                          collate_fn=self.collate, **kwargs)

    def finalize(self, x: Tensor, index: Tensor | Sequence[int], device: torch.device | str | None = None) -> Tensor:
        """Views (B, K, C, H, W) float on ``device`` from a collated ``x`` and its candidate ``index``.

        Precomputed views are only moved; for a batched transform the B·K views are made as one
        batch with seeds ``view_seed(seed, index[b], k)``.
        """
        device = x.device if device is None else torch.device(device)
        index = _as_long(index, "index").reshape(-1)
        if index.numel() != x.shape[0]:
            raise ValueError(f"`index` has {index.numel()} entries for a batch of {x.shape[0]}")
        if not self.is_batched:
            ndim = 5 if self._views is None else self._views.ndim
            if x.ndim != ndim:
                raise ValueError(f"expected collated views with {ndim} dims (B, K, ...), got {tuple(x.shape)}")
            return x.to(device=device, dtype=x.dtype if x.is_floating_point() else torch.float32)
        if x.ndim != 4:
            raise ValueError(f"expected collated images (B, C, H, W), got {tuple(x.shape)}")
        B, K = x.shape[0], self.views
        imgs = x.to(device).unsqueeze(1).expand(B, K, *x.shape[1:]).reshape(B * K, *x.shape[1:])
        seeds = view_seed(self.seed, index.cpu().view(-1, 1), torch.arange(K).view(1, -1)).reshape(-1)
        out = self.transform(imgs, seeds)
        return out.reshape(B, K, *out.shape[1:])

    @property
    def has_labels(self) -> bool:
        """Whether candidates carry class labels (``labels=`` given, or dataset items with labels)."""
        return self.labels is not None or (self._dataset is not None and self._item(0)[1] >= 0)

    def example_batch(self, device: torch.device | str | None = None) -> Tensor:
        """Views of the first (up to 2) candidates as one input batch (B·K, C, H, W), for probing layers."""
        index, x, _ = self.collate([self[i] for i in range(min(2, len(self)))])
        views = self.finalize(x, index, device if device is not None else "cpu")
        return views.reshape(-1, *views.shape[2:])

    @property
    def view_shape(self) -> tuple[int, ...]:
        """Shape (C, H, W) of one view ((D,) for feature views)."""
        if self._view_shape is None:
            if self._views is not None:
                self._view_shape = tuple(self._views.shape[2:])
            else:
                _, x, _ = self[0]
                self._view_shape = tuple(self.finalize(x[None], [0], "cpu").shape[2:])
        return self._view_shape

    def anchor(self, i: int) -> Tensor:
        """The un-augmented image of candidate ``i`` (float (C, H, W)), for ``pairing="anchor"``.

        A batched transform with a ``normalize`` method (like :class:`BatchedSimCLRAugment`)
        normalises it like the views; it is never resized.
        """
        if self._views is not None:
            raise ValueError("precomputed views carry no un-augmented image: pairing='anchor' needs "
                             "`candidates` as images or a dataset")
        i = self._index(i)
        a = self._raw(i)
        if self.is_batched and callable(getattr(self.transform, "normalize", None)):
            a = self.transform.normalize(a[None])[0]
        if tuple(a.shape) != self.view_shape:
            raise ValueError(f"anchor of candidate {i} has shape {tuple(a.shape)} but the views have shape "
                             f"{self.view_shape}: pairing='anchor' needs images at the view size")
        return a

    def anchors(self, index: Tensor | Sequence[int], device: torch.device | str | None = None) -> Tensor:
        """Stacked :meth:`anchor` images (B, C, H, W) of the candidates in ``index``."""
        return torch.stack([self.anchor(int(i)) for i in _as_long(index, "index").reshape(-1)]).to(device)

    def display_images(self, index: Tensor | Sequence[int]) -> Tensor:
        """Candidate images (B, C, H, W) in [0, 1] for image grids: the un-augmented image resized
        to the view size, or the first view for precomputed views (never normalised)."""
        positions = [self._index(int(i)) for i in _as_long(index, "index").reshape(-1)]
        if self._views is not None:
            return self._views[positions, 0].float().clamp(0, 1)
        size = self.view_shape[-2:]
        out = []
        for i in positions:
            img = self._raw(i)
            if img.ndim == 3 and tuple(img.shape[-2:]) != tuple(size):
                img = torch.nn.functional.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0]
            out.append(img)
        return torch.stack(out).clamp(0, 1)


def make_views(candidates: Tensor | Dataset, views: int | None, transform: Any = None, seed: int = 0) -> Tensor:
    """All views (N, K, C, H, W) of a small candidate set, on CPU (see :class:`SeededViews`).

    Example:
        >>> import torch
        >>> x = torch.rand(3, 1, 8, 8)
        >>> bool(torch.equal(make_views(x, 2, seed=1), make_views(x, 2, seed=1)))
        True
    """
    ds = SeededViews(candidates, views=views, transform=transform, seed=seed)
    out = [ds.finalize(x, index, "cpu") for index, x, _ in ds.dataloader(batch_size=64)]
    return torch.cat(out)
