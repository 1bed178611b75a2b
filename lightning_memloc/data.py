"""Data sources and the shared / candidate / independent split.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) train the encoder
``f`` on shared ∪ candidates and the reference ``g`` on shared ∪ independent (CIFAR-10: 40k / 5k /
5k of the 50k training images); memorization is then measured on the candidates, which only
``f`` has seen. Every loader returns ``(uint8 Tensor[N, C, H, W], LongTensor[N])``.

Example:
    >>> images, labels = load_digits(size=16)
    >>> split = split_candidates(len(images), shared=0.8, candidates=0.1, independent=0.1)
    >>> images[split.encoder].shape[0], images[split.reference].shape[0]
    (1616, 1616)
"""

from __future__ import annotations

import operator
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "SplitIndices",
    "TensorImageDataset",
    "as_float_image",
    "load_data",
    "load_digits",
    "load_image_folder",
    "load_npz",
    "load_torchvision",
    "split_candidates",
    "split_item",
]

NAMED_DATASETS = ("digits", "cifar10", "stl10", "svhn")


def _resize(images: Tensor, size: int | None) -> Tensor:
    """Bilinear resize of uint8 (N, C, H, W) images to ``size`` x ``size`` (no-op if ``None`` or equal)."""
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"`size` must be a positive int, got {size!r}")
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                        antialias=size < max(images.shape[-2:]))
    return out.round().clamp(0, 255).to(torch.uint8)


def load_digits(size: int = 32, channels: int = 3) -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled handwritten digits (1797 images, 10 classes), fully offline.

    The 8x8 images (values 0..16) are rescaled to uint8 0..255, resized (bilinear) to ``size``
    and replicated to ``channels``: a small stand-in for CIFAR-10 in tests and examples.

    Args:
        size: output side length.
        channels: number of (identical) channels.

    Returns:
        ``(uint8 Tensor[1797, channels, size, size], LongTensor[1797])``.

    Example:
        >>> x, y = load_digits(size=8, channels=1)
        >>> tuple(x.shape), x.dtype, int(y.max())
        ((1797, 1, 8, 8), torch.uint8, 9)
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"`size` must be a positive int, got {size!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"`channels` must be a positive int, got {channels!r}")
    bunch = _sk_load_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0))).to(torch.uint8).unsqueeze(1)
    images = _resize(images, size).expand(-1, channels, -1, -1).contiguous()
    return images, torch.as_tensor(bunch.target, dtype=torch.long)


def _to_nchw(x: np.ndarray, source: str) -> Tensor:
    """uint8 N×H×W×C (or N×H×W, or N×C×H×W when unambiguous) → uint8 Tensor[N, C, H, W]."""
    if x.dtype != np.uint8:
        raise TypeError(f"{source}: images must be uint8 (0..255), got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"{source}: images must be N×H×W×C or N×H×W, got shape {x.shape}")
    t = torch.from_numpy(np.ascontiguousarray(x))
    if x.shape[-1] not in (1, 3, 4) and x.shape[1] in (1, 3, 4):
        return t  # already N×C×H×W
    return t.permute(0, 3, 1, 2).contiguous()


def _labels(y: Any, n: int, source: str) -> Tensor:
    labels = torch.as_tensor(np.asarray(y).astype(np.int64)).reshape(-1)
    if labels.numel() != n:
        raise ValueError(f"{source}: {labels.numel()} labels for {n} images")
    return labels


def load_npz(path: str | os.PathLike) -> tuple[Tensor, Tensor]:
    """Images and labels from an ``.npz`` file with keys ``x``/``y`` (or ``images``/``labels``).

    ``x`` is uint8 N×H×W×C or N×H×W; a file without labels gets labels -1.

    Example:
        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "tiny.npz")
        >>> np.savez(path, x=np.zeros((2, 4, 4, 3), np.uint8), y=np.array([0, 1]))
        >>> x, y = load_npz(path)
        >>> tuple(x.shape), y.tolist()
        ((2, 3, 4, 4), [0, 1])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such .npz file: {str(path)!r}")
    with np.load(path, allow_pickle=False) as f:
        keys = list(f.keys())
        xkey = next((k for k in ("x", "images") if k in keys), None)
        ykey = next((k for k in ("y", "labels") if k in keys), None)
        if xkey is None:
            raise KeyError(f"{str(path)!r} has no image array: expected keys 'x'/'y' or 'images'/'labels', "
                           f"found {keys}")
        images = _to_nchw(f[xkey], str(path))
        labels = (_labels(f[ykey], images.shape[0], str(path)) if ykey is not None
                  else torch.full((images.shape[0],), -1, dtype=torch.long))
    return images, labels


def load_torchvision(name: str, root: str | os.PathLike, train: bool = True,
                     download: bool = True) -> tuple[Tensor, Tensor]:
    """CIFAR-10, STL-10 (labelled split) or SVHN through ``torchvision.datasets``.

    Args:
        name: ``"cifar10"``, ``"stl10"`` or ``"svhn"`` (case-insensitive).
        root: folder holding (or receiving) the torchvision files.
        train: training split (else test).
        download: let torchvision download missing files.

    Raises:
        ValueError: unknown ``name``.
        FileNotFoundError: files missing and ``download=False``.
        RuntimeError: the download failed (e.g. no network).
    """
    import torchvision.datasets as tvd

    key = str(name).lower()
    builders: dict[str, Callable[[], Any]] = {
        "cifar10": lambda: tvd.CIFAR10(str(root), train=train, download=download),
        "stl10": lambda: tvd.STL10(str(root), split="train" if train else "test", download=download),
        "svhn": lambda: tvd.SVHN(str(root), split="train" if train else "test", download=download),
    }
    if key not in builders:
        raise ValueError(f"unknown torchvision dataset {name!r}: expected one of {sorted(builders)}")
    hint = ("or save the images as a local .npz (uint8 x N×H×W×C, y) and pass its path to load_data / load_npz")
    try:
        ds = builders[key]()
    except RuntimeError as e:
        if not download and "not found" in str(e).lower():
            raise FileNotFoundError(f"{key} files not found under {str(root)!r}: pass download=True {hint}") from e
        raise RuntimeError(f"could not load {key} under {str(root)!r} ({e}): check the files {hint}") from e
    except OSError as e:  # download failures (no network, DNS)
        raise RuntimeError(f"could not download {key} to {str(root)!r} ({e}): {hint}") from e
    if key == "cifar10":
        return _to_nchw(ds.data, key), _labels(ds.targets, len(ds.data), key)
    return torch.from_numpy(np.ascontiguousarray(ds.data)), _labels(ds.labels, len(ds.data), key)


def load_image_folder(path: str | os.PathLike, size: int) -> tuple[Tensor, Tensor]:
    """A ``torchvision.datasets.ImageFolder`` (one sub-folder per class) as RGB uint8 tensors.

    Each image is resized (shorter side to ``size``) and centre-cropped to ``size`` x ``size``.

    Returns:
        ``(uint8 Tensor[N, 3, size, size], LongTensor[N])`` with labels in sorted class order.
    """
    from torchvision import datasets, transforms

    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"`size` must be a positive int, got {size!r}")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"no such image folder: {str(path)!r}")
    tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()])
    try:
        ds = datasets.ImageFolder(str(path), transform=tf)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{str(path)!r} is not an image folder (one sub-folder of images per class): {e}") from e
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    return images, torch.as_tensor(ds.targets, dtype=torch.long)


def load_data(spec: str | os.PathLike, root: str | os.PathLike = "data",
              size: int | None = None) -> tuple[Tensor, Tensor]:
    """Load a data set by name or path: ``"digits"``, ``"cifar10"``, ``"stl10"``, ``"svhn"``, an
    ``.npz`` file or an image folder (``size`` is then required).

    Args:
        spec: data set name or path.
        root: torchvision download folder for named data sets.
        size: output side length (``None``: native size; digits default to 32).

    Example:
        >>> x, y = load_data("digits", size=16)
        >>> tuple(x.shape)
        (1797, 3, 16, 16)
    """
    name = str(spec)
    if name.lower() == "digits":
        return load_digits(size=32 if size is None else size)
    if name.lower() in NAMED_DATASETS:
        images, labels = load_torchvision(name, root)
        return _resize(images, size), labels
    path = Path(name)
    if path.suffix.lower() == ".npz":
        images, labels = load_npz(path)
        return _resize(images, size), labels
    if path.is_dir():
        if size is None:
            raise ValueError(f"`size` is required to load the image folder {name!r}")
        return load_image_folder(path, size)
    raise ValueError(f"unknown data spec {name!r}: expected one of {list(NAMED_DATASETS)}, "
                     "a path to an .npz file or a path to an image folder")


def as_float_image(img: Any) -> Tensor:
    """A dataset image (PIL, uint8 or float tensor) as a float (C, H, W) tensor (uint8 / 255).

    Example:
        >>> as_float_image(torch.full((1, 2, 2), 255, dtype=torch.uint8)).max().item()
        1.0
    """
    if isinstance(img, Tensor):
        img = img.as_subclass(Tensor)
        out = img.float() / 255 if img.dtype == torch.uint8 else img
    else:
        from PIL import Image

        if not isinstance(img, Image.Image):
            raise TypeError(f"`candidates` items must be PIL images or tensors, got {type(img).__name__}")
        from torchvision.transforms.functional import to_tensor

        out = to_tensor(img)
    if not out.is_floating_point() or out.ndim != 3:
        raise TypeError(f"`candidates` images must be (C, H, W) uint8/float, got {out.dtype} {tuple(out.shape)}")
    return out


def split_item(item: Any) -> tuple[Any, int]:
    """``(image, label)`` of a dataset item: an image, or a tuple ``(image, label, ...)``.

    The label is -1 when missing or not an integer (e.g. a segmentation target). Items in the
    order ``(label, image)`` and one-hot labels are refused with a message saying so.
    """
    if isinstance(item, (tuple, list)):
        _check_item_order(item)
        try:
            return item[0], int(item[1]) if len(item) > 1 else -1
        except (TypeError, ValueError, RuntimeError):
            return item[0], -1
    return item, -1


def _is_image(x: Any) -> bool:
    return ((isinstance(x, (Tensor, np.ndarray)) and x.ndim >= 2) or type(x).__module__.startswith("PIL"))


def _check_item_order(item: Sequence[Any]) -> None:
    """Refuse ``(label, image)`` items and one-hot labels (they would be read as an image / as no label)."""
    if len(item) < 2:
        return
    first, second = item[0], item[1]
    if not _is_image(first) and _is_image(second):
        raise TypeError(f"dataset items look like (label, image) ({type(first).__name__}, {type(second).__name__}): "
                        "the candidates' items must be (image, label, ...); swap them, e.g. with a wrapper "
                        "Dataset returning (item[1], item[0]).")
    if isinstance(second, Tensor) and second.ndim == 1 and second.numel() > 1:
        values = second.detach().float()
        if bool(((values == 0) | (values == 1)).all()) and float(values.sum()) == 1.0:
            raise ValueError(f"dataset items carry one-hot labels ({second.numel()} classes): pass one class id per "
                             "item, e.g. label.argmax().")


class SplitIndices(NamedTuple):
    """Disjoint sorted index sets: ``f`` trains on ``encoder``, ``g`` on ``reference``."""

    shared: Tensor
    candidates: Tensor
    independent: Tensor

    @property
    def encoder(self) -> Tensor:
        """Training indices of the encoder ``f``: shared ∪ candidates."""
        return torch.cat([self.shared, self.candidates]).sort().values

    @property
    def reference(self) -> Tensor:
        """Training indices of the reference ``g``: shared ∪ independent."""
        return torch.cat([self.shared, self.independent]).sort().values

    def control(self, size: float | int, seed: int = 0) -> Tensor:
        """A seeded random sample of the shared part: images **both** encoders train on.

        The null of LayerMem (``measure(..., control=images[split.control(...)])``): for these
        images the gap between the two encoders is the offset between them, without
        memorization of the candidates (``../shared/DESIGN.md`` §6). Drawn at random — an
        index-ordered slice of a data set is not a random sample. They stay in the shared part.

        Args:
            size: a fraction of the shared part (float) or a count (int), at least 2.
            seed: sampling seed.

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
    """Random disjoint split of ``range(n)`` into shared / candidate / independent indices.

    Each size is a fraction of ``n`` (float, rounded down) or an absolute count (int); the paper's
    CIFAR-10 split is ``split_candidates(50_000, 40_000, 5_000, 5_000)``, equivalently the
    default fractions. The same ``seed`` always gives the same split.

    Raises:
        ValueError: negative sizes, no candidates, or sizes adding up to more than ``n``.

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


class TensorImageDataset(Dataset):
    """``(image, label)`` dataset over uint8 images (N, C, H, W), for SSL training loops.

    Args:
        images: uint8 tensor (N, C, H, W).
        labels: optional labels (length N); -1 when missing.
        transform: applied to the uint8 (C, H, W) image (e.g. a lightly ``SimCLRTransform``,
            which returns a list of views); without it the raw uint8 image is returned, for a
            batched augmentation such as :class:`~lightning_memloc.views.BatchedSimCLRAugment`
            inside the model.

    Example:
        >>> ds = TensorImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([3, 5]))
        >>> x, y = ds[1]
        >>> x.dtype, y
        (torch.uint8, 5)
    """

    def __init__(self, images: Tensor, labels: Sequence[int] | Tensor | None = None,
                 transform: Callable[[Tensor], Any] | None = None) -> None:
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(f"`images` must be a uint8 tensor (N, C, H, W), got {type(images).__name__} "
                            f"{getattr(images, 'dtype', '')} {tuple(getattr(images, 'shape', ()))}")
        self.images, self.transform = images, transform
        self.labels = (torch.full((len(images),), -1, dtype=torch.long) if labels is None
                       else torch.as_tensor(labels, dtype=torch.long).reshape(-1))
        if len(self.labels) != len(images):
            raise ValueError(f"`labels` has {len(self.labels)} entries for {len(images)} images")
        if transform is not None and not callable(transform):
            raise TypeError(f"`transform` must be callable, got {type(transform).__name__}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self.images[i]
        return (img if self.transform is None else self.transform(img)), int(self.labels[i])
