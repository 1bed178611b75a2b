"""Seeded K-view generation for a candidate set: view ``k`` of candidate ``i`` depends only on ``(seed, i, k)``."""

from __future__ import annotations

import functools
import operator
import warnings
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, TensorDataset

from lightning_memloc.views.augment import BatchedSimCLRAugment, seeded_rng, view_seed
from lightning_memloc.checks import (as_label_tensor, as_long_tensor, check_dense, check_image_layout,
                                    check_image_range, check_int, check_labels_layout, check_seed)
from lightning_memloc.data import as_float_image, split_item
from lightning_memloc.views.stats import normalize_views, view_normalization


class SeededViews(Dataset):
    """Dataset of K seeded views per candidate; items ``(i, x, label)``, :meth:`finalize` makes (B, K, C, H, W).

    ``candidates``: (N, C, H, W) uint8/float images, precomputed (N, K, C, H, W) or (N, K, D) views, or a
    ``Dataset`` of images or ``(image, label, ...)``. ``transform``: ``None`` (:class:`BatchedSimCLRAugment`), a
    per-image callable run under ``seeded_rng(view_seed(seed, i, k))``, or a batched module (``batched = True``).
    ``labels``: one class id per candidate; else from dataset items, else -1.

    Example:
        >>> ds = SeededViews(torch.rand(8, 3, 16, 16), views=4, seed=0)
        >>> index, x, label = next(iter(ds.dataloader(batch_size=8)))
        >>> ds.finalize(x, index, "cpu").shape
        torch.Size([8, 4, 3, 16, 16])
    """

    def __init__(self, candidates: Tensor | Dataset, views: int | None = 10, transform: Any = None,
                 seed: int = 0, labels: Sequence[int] | Tensor | None = None, normalize: Any = None) -> None:
        self.seed = check_seed(seed)
        self._images = self._views = self._dataset = None  # the form given is set below
        if isinstance(candidates, Tensor):
            check_dense(candidates, "candidates")
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
                check_image_layout(candidates.shape)
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
        self.num_candidates, self.views = n, check_int("views", views, 1)
        self.labels: Tensor | None = None
        if labels is not None:
            given = as_label_tensor(labels)
            check_labels_layout(given, n)
            if given.is_floating_point() or given.is_complex():
                raise TypeError(f"`labels` must hold integer class ids, got dtype {given.dtype}: "
                                "pass e.g. labels.long() (floats would be truncated silently)")
            self.labels = given.to(torch.long).reshape(-1)
            if self.labels.numel() != n:
                raise ValueError(f"`labels` has {self.labels.numel()} entries for {n} candidates: "
                                 "pass one class id per candidate, in the candidates' order")
        if transform is None and self._views is None:
            transform = BatchedSimCLRAugment(size=int(self.raw(0).shape[-2]))
        if transform is not None and not callable(transform):
            raise TypeError(f"`transform` must be callable, got {type(transform).__name__}")
        self.transform, self.normalize = transform, normalize
        self.normalization = view_normalization(normalize, transform, self._views)
        self._reproducible_checked = False
        if self._images is not None:  # checked once here; dataset items are checked as they are read
            check_image_range(self._images, strict=self._clamping_transform)

    @property
    def _clamping_transform(self) -> bool:  # the batched SimCLR augmentation clamps views to [0, 1]
        return isinstance(self.transform, BatchedSimCLRAugment)

    def pooled(self, groups: Sequence[Tensor | Dataset]) -> "SeededViews":
        """These candidates (same positions, same views) followed by image ``groups`` of their form as one view set."""
        if not groups:
            return self
        labels = None if self.labels is None else torch.cat(
            [self.labels] + [torch.full((len(g),), -1, dtype=torch.long) for g in groups])  # type: ignore[arg-type]
        if self._views is not None:
            for g in groups:
                if not isinstance(g, Tensor) or g.ndim != self._views.ndim or tuple(g.shape[1:]) != tuple(self._views.shape[1:]):
                    raise ValueError(f"the candidates are precomputed views of shape (N, {', '.join(map(str, self._views.shape[1:]))}): "
                                     f"pass control/unseen views of that shape too, got "
                                     f"{f'shape {tuple(g.shape)}' if isinstance(g, Tensor) else type(g).__name__}")
            source: Tensor | Dataset = torch.cat([_as_float(self._views)] + [_as_float(g) for g in groups])
            return SeededViews(source, views=None, transform=None, seed=self.seed, labels=labels, normalize=self.normalize)
        shape = tuple(self.raw(0).shape)
        for g in groups:
            got = tuple(as_float_image(g[0] if isinstance(g, Tensor) else split_item(g[0])[0]).shape)
            if got != shape:
                raise ValueError(f"control/unseen images have shape {got} but the candidates have {shape}: "
                                 "pass images of the candidates' channels and size")
        if self._images is not None and all(isinstance(g, Tensor) and g.ndim == 4 for g in groups):
            tensors = [self._images] + list(groups)  # type: ignore[list-item]
            same = len({t.dtype for t in tensors}) == 1  # e.g. all uint8: no float copy
            source = torch.cat([t if same else _as_float(t) for t in tensors])
        else:
            own = self._dataset if self._dataset is not None else TensorDataset(self._images)  # type: ignore[arg-type]
            source = ConcatDataset([own] + [g if isinstance(g, Dataset) else TensorDataset(g) for g in groups])
        return SeededViews(source, self.views, self.transform, self.seed, labels, normalize=self.normalize)

    @property
    def is_batched(self) -> bool:
        """Whether views are made in :meth:`finalize` by a batched transform."""
        return self._views is None and getattr(self.transform, "batched", False) is True

    def __len__(self) -> int:
        return self.num_candidates

    def _item(self, i: int) -> tuple[Any, int]:
        if self._dataset is not None:
            img, label = split_item(self._dataset[i])
            if isinstance(img, Tensor) and hasattr(self, "transform"):  # (the constructor reads item 0 first)
                check_image_layout(img.shape, f"candidates[{i}]")
                check_image_range(img, f"candidates[{i}]", strict=self._clamping_transform)
        else:
            img, label = self._images[i], -1  # type: ignore[index]
        return img, (int(self.labels[i]) if self.labels is not None else label)

    def raw(self, i: int) -> Tensor:
        """Candidate ``i`` as stored, a float image (no transform)."""
        return as_float_image(self._item(i)[0])

    stored = property(lambda self: self._images if self._images is not None else self._views,
                      doc="The candidate tensor as stored (images or precomputed views); ``None`` for a dataset.")

    def _index(self, i: int) -> int:
        i = operator.index(i)
        if not -self.num_candidates <= i < self.num_candidates:
            raise IndexError(f"candidate {i} out of range for {self.num_candidates} candidates")
        return i % self.num_candidates

    def __getitem__(self, i: int) -> tuple[int, Tensor, int]:
        i = self._index(i)
        if self._views is not None:
            return i, _as_float(self._views[i]), int(self.labels[i]) if self.labels is not None else -1
        img, label = self._item(i)
        if self.is_batched:
            return i, as_float_image(img), label
        out = []
        for k in range(self.views):
            with seeded_rng(view_seed(self.seed, i, k)):
                v = self.transform(img)
            if not isinstance(v, Tensor) or not v.is_floating_point() or v.ndim != 3:
                many = isinstance(v, (list, tuple))
                raise TypeError("`transform` must return a float tensor (C, H, W), got "
                                f"{type(v).__name__} {getattr(v, 'dtype', '')} {tuple(getattr(v, 'shape', ()))}: "
                                + ("it returned several views (a multi-view transform such as lightly's "
                                   "SimCLRTransform): pass one view's transform, e.g. `transform.transforms[0]`, "
                                   "or lightly's SimCLRViewTransform" if many else
                                   "end the pipeline with e.g. v2.ToDtype(torch.float32, scale=True)"))
            out.append(v.as_subclass(Tensor))
        if len({tuple(v.shape) for v in out}) > 1:
            raise ValueError(f"`transform` made views of different shapes for candidate {i}: "
                             f"{sorted({tuple(v.shape) for v in out})}; use a fixed output size")
        return i, torch.stack(out), label

    def collate(self, batch: Sequence[tuple[int, Tensor, int]]) -> tuple[Tensor, Tensor, Tensor]:
        """Collate ``(i, x, label)`` items into ``(index, x, labels)``."""
        ids = {tuple(x.shape): i for i, x, _ in reversed(batch)}  # the first candidate of each shape
        if len(ids) > 1:
            raise ValueError("candidates in a batch have different shapes: " + ", ".join(
                f"{s} (e.g. candidate {ids[s]})" for s in sorted(ids)) +
                "; resize the images (e.g. load_image_folder(path, size)) or use a fixed-size transform")
        return (torch.tensor([b[0] for b in batch], dtype=torch.long), torch.stack([b[1] for b in batch]),
                torch.tensor([b[2] for b in batch], dtype=torch.long))

    def dataloader(self, batch_size: int = 32, num_workers: int = 0, **kwargs: Any) -> DataLoader:
        """An unshuffled ``DataLoader`` using :meth:`collate`, seeded by its own ``generator``, not the global RNG."""
        kwargs.setdefault("generator", torch.Generator().manual_seed(self.seed & (2**63 - 1)))
        return DataLoader(self, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                          collate_fn=self.collate, **kwargs)

    def finalize(self, x: Tensor, index: Tensor | Sequence[int], device: torch.device | str | None = None) -> Tensor:
        """Float views (B, K, C, H, W) on ``device`` from a collated ``x`` and its candidate ``index``."""
        device = x.device if device is None else torch.device(device)
        index = as_long_tensor(index, "index").reshape(-1)
        if index.numel() != x.shape[0]:
            raise ValueError(f"`index` has {index.numel()} entries for a batch of {x.shape[0]}")
        if not self.is_batched:
            ndim = 5 if self._views is None else self._views.ndim
            if x.ndim != ndim:
                raise ValueError(f"expected collated views with {ndim} dims (B, K, ...), got {tuple(x.shape)}")
            dtype = x.dtype if x.is_floating_point() else torch.float32
            return normalize_views(x.to(device=device, dtype=dtype, non_blocking=True), self.normalization)
        if x.ndim != 4:
            raise ValueError(f"expected collated images (B, C, H, W), got {tuple(x.shape)}")
        B, K = x.shape[0], self.views
        imgs = x.to(device, non_blocking=True).unsqueeze(1).expand(B, K, *x.shape[1:]).reshape(B * K, *x.shape[1:])
        seeds = view_seed(self.seed, index.cpu().view(-1, 1), torch.arange(K).view(1, -1)).reshape(-1)
        out = normalize_views(self.transform(imgs, seeds), self.normalization)
        return out.reshape(B, K, *out.shape[1:])

    @property
    def has_labels(self) -> bool:
        return self.labels is not None or (self._dataset is not None and self._item(0)[1] >= 0)

    def example_batch(self, device: torch.device | str | None = None) -> Tensor:
        """Views of up to 2 candidates as one (B·K, C, H, W) batch, for probing layers.

        The first call warns when the same seeds give other views again (``f`` and ``g`` would see different views).
        """
        device = device if device is not None else "cpu"
        index, x, _ = self.collate([self[i] for i in range(min(2, len(self)))])
        views = self.finalize(x, index, device)
        if not self._reproducible_checked:  # a transform with its own generator ignores seeded_rng
            self._reproducible_checked = True
            items = x if self.is_batched else self.collate([self[int(i)] for i in index])[1]
            again = self.finalize(items, index, device)
            if again.shape != views.shape or not torch.equal(again, views):
                warnings.warn("`transform` made other views from the same seeds on a second call: it draws from its "
                              "own random generator, not torch's / numpy's / random's global ones that the measurement "
                              "seeds, so the encoder and the reference see different views and repeated measurements "
                              "differ. Draw from the global RNGs (torchvision and lightly transforms do), or use "
                              "BatchedSimCLRAugment.", UserWarning, stacklevel=2)
        return views.reshape(-1, *views.shape[2:])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one stored candidate (a view for precomputed views), untransformed."""
        return tuple(self._views.shape[2:]) if self._views is not None else tuple(self.raw(0).shape)

    @functools.cached_property
    def view_shape(self) -> tuple[int, ...]:
        """Shape (C, H, W) of one view ((D,) for feature views)."""
        return self.input_shape if self._views is not None else tuple(
            self.finalize(self[0][1][None], [0], "cpu").shape[2:])

    def anchor(self, i: int) -> Tensor:
        """The un-augmented float (C, H, W) image of candidate ``i``, normalised like the views, for ``pairing="anchor"``."""
        if self._views is not None:
            raise ValueError("precomputed views carry no un-augmented image: pairing='anchor' needs "
                             "`candidates` as images or a dataset")
        i = self._index(i)
        a = self.raw(i)
        if self.is_batched and callable(getattr(self.transform, "normalize", None)):
            a = self.transform.normalize(a[None])[0]
        a = normalize_views(a, self.normalization)
        if tuple(a.shape) != self.view_shape:
            raise ValueError(f"anchor of candidate {i} has shape {tuple(a.shape)} but the views have shape "
                             f"{self.view_shape}: pairing='anchor' needs images at the view size")
        return a

    def anchors(self, index: Tensor | Sequence[int], device: torch.device | str | None = None) -> Tensor:
        """Stacked :meth:`anchor` images (B, C, H, W) of the candidates in ``index``."""
        return torch.stack([self.anchor(int(i)) for i in as_long_tensor(index, "index").reshape(-1)]).to(device)

    def display_images(self, index: Tensor | Sequence[int]) -> Tensor:
        """Un-normalised candidate images (B, C, H, W) in [0, 1] at the view size, for image grids."""
        positions = [self._index(int(i)) for i in as_long_tensor(index, "index").reshape(-1)]
        if self._views is not None:
            return self._views[positions, 0].float().clamp(0, 1)
        size = tuple(self.view_shape[-2:])
        images = [self.raw(i) for i in positions]
        return torch.stack([F.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0]
                            if img.ndim == 3 and tuple(img.shape[-2:]) != size else img for img in images]).clamp(0, 1)


def _as_float(x: Tensor) -> Tensor:
    return x.float() / 255 if x.dtype == torch.uint8 else x


def make_views(candidates: Tensor | Dataset, views: int | None, transform: Any = None, seed: int = 0) -> Tensor:
    """All views (N, K, C, H, W) of a small candidate set, on CPU.

    Example:
        >>> x = torch.rand(3, 1, 8, 8)
        >>> bool(torch.equal(make_views(x, 2, seed=1), make_views(x, 2, seed=1)))
        True
    """
    ds = SeededViews(candidates, views=views, transform=transform, seed=seed)
    return torch.cat([ds.finalize(x, index, "cpu") for index, x, _ in ds.dataloader(batch_size=64)])
