"""Dataset items: images as float tensors, ``(image, label)`` items, and a uint8 tensor image dataset."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

_HALF = (torch.float16, torch.bfloat16)


def as_float_image(img: Any) -> Tensor:
    """A dataset image (PIL, uint8 or float tensor) as a float (C, H, W) tensor (uint8 / 255; half precision as
    float32: half-precision views would shift LayerMem by up to 0.05).

    Example:
        >>> as_float_image(torch.full((1, 2, 2), 255, dtype=torch.uint8)).max().item()
        1.0
    """
    if isinstance(img, Tensor):
        img = img.as_subclass(Tensor)
        out = img.float() / 255 if img.dtype == torch.uint8 else img.float() if img.dtype in _HALF else img
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
    """``(image, label)`` of an image or an ``(image, label, ...)`` item (label -1: missing or not an int); refuses
    ``(label, image)`` items and one-hot labels."""
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


class TensorImageDataset(Dataset):
    """``(image, label)`` dataset over uint8 images ``(N, C, H, W)`` (labels -1: missing), for SSL training loops.

    ``transform`` gets the uint8 ``(C, H, W)`` image; without it the raw image is returned (for a batched
    augmentation inside the model).

    Example:
        >>> ds = TensorImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([3, 5]))
        >>> ds[1][0].dtype, ds[1][1]
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


class CheckedImages(Dataset):
    """``dataset`` whose tensor images are checked as they are read (messages name ``name[i]``; ``strict``: 0-255
    floats raise, else warn).

    Example:
        >>> ds = CheckedImages([torch.full((1, 2, 2), float("nan"))], "control")
        >>> ds[0]  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: `control[0]` holds 4 NaN or inf pixel value(s): ...
    """

    def __init__(self, dataset: Any, name: str, strict: bool = True) -> None:
        self.dataset, self.name, self.strict = dataset, name, strict

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        from lightning_memloc.checks import check_image_layout, check_image_range
        item = self.dataset[i]
        image = split_item(item)[0]
        if isinstance(image, Tensor):
            check_image_layout(image.shape, f"{self.name}[{i}]")
            check_image_range(image, f"{self.name}[{i}]", strict=self.strict)
        return item
