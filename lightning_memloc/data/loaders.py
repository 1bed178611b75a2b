"""Loaders of data sets, ``.npz`` files and image folders: ``(uint8 Tensor[N, C, H, W], LongTensor[N])``; and dataset
items: images as float tensors, ``(image, label)`` items, and a uint8 tensor image dataset."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from lightning_memloc.checks import check_int

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


#: Data set names :func:`load_data` takes besides a path.
NAMED_DATASETS = ("digits", "cifar10", "stl10", "svhn")


def resize_images(images: Tensor, size: int | None) -> Tensor:
    """Bilinear resize of uint8 (N, C, H, W) images to ``size`` x ``size`` (no-op if ``None`` or equal)."""
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    size = check_int("size", size, 1)
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                        antialias=size < max(images.shape[-2:]))
    return out.round().clamp(0, 255).to(torch.uint8)


def load_digits(size: int = 32, channels: int = 3) -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled digits (1797 images, 10 classes) as uint8 ``(1797, channels, size, size)``.

    Example:
        >>> x, y = load_digits(size=8, channels=1)
        >>> tuple(x.shape), x.dtype, int(y.max())
        ((1797, 1, 8, 8), torch.uint8, 9)
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    size, channels = check_int("size", size, 1), check_int("channels", channels, 1)
    bunch = _sk_load_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0))).to(torch.uint8).unsqueeze(1)
    images = resize_images(images, size).expand(-1, channels, -1, -1).contiguous()
    return images, torch.as_tensor(bunch.target, dtype=torch.long)


def _to_nchw(x: np.ndarray, source: str) -> Tensor:
    """uint8 N×H×W×C (or N×H×W, or N×C×H×W when unambiguous) → uint8 Tensor[N, C, H, W]."""
    if x.dtype != np.uint8:
        raise TypeError(f"{source}: images must be uint8 (0..255), got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"{source}: images must be N×H×W×C or N×H×W, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{source}: holds no images (shape {x.shape}): pass a file with images.")
    t = torch.from_numpy(np.ascontiguousarray(x))
    if x.shape[-1] not in (1, 3, 4) and x.shape[1] in (1, 3, 4):
        return t  # already N×C×H×W
    return t.permute(0, 3, 1, 2).contiguous()


def _labels(y: Any, n: int, source: str) -> Tensor:
    array = np.asarray(y)
    whole = array.dtype.kind in "iub" or (array.dtype.kind == "f" and bool(np.all(np.isfinite(array) & (array == np.round(array)))))
    if not whole:  # NaN would become -2**63, strings a bare int() error
        raise ValueError(f"{source}: labels must be integer class ids (-1: none), got {array.dtype.name} values such as "
                         f"{array.reshape(-1)[:3].tolist()}: store ids, e.g. y=numpy.unique(names, return_inverse=True)[1] "
                         "for class names, -1 where a label is missing.")
    labels = torch.as_tensor(array.astype(np.int64)).reshape(-1)
    if labels.numel() != n:
        raise ValueError(f"{source}: {labels.numel()} labels for {n} images")
    return labels


def load_npz(path: str | os.PathLike) -> tuple[Tensor, Tensor]:
    """Images and labels from an ``.npz`` with keys ``x``/``y`` (or ``images``/``labels``); no labels: -1.

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
    try:
        f = np.load(path, allow_pickle=False)
    except _BAD_ARCHIVE as err:
        raise _unreadable(path, err) from err
    if not isinstance(f, np.lib.npyio.NpzFile):  # a .npy array under an .npz name
        raise ValueError(f"{str(path)!r} holds a single array ({type(f).__name__}), not an .npz archive with "
                         "'x' (and 'y'): write it with numpy.savez(path, x=images, y=labels).")
    with f:
        keys = list(f.keys())
        xkey = next((k for k in ("x", "images") if k in keys), None)
        ykey = next((k for k in ("y", "labels") if k in keys), None)
        if xkey is None:
            raise KeyError(f"{str(path)!r} has no image array: expected keys 'x'/'y' or 'images'/'labels', "
                           f"found {keys}")
        try:
            x, y = f[xkey], None if ykey is None else f[ykey]
        except _BAD_ARCHIVE as err:  # a damaged member (CRC error, cut short) or an object array
            raise _unreadable(path, err) from err
    images = _to_nchw(x, str(path))
    labels = torch.full((len(images),), -1, dtype=torch.long) if y is None else _labels(y, len(images), str(path))
    return images, labels


#: What NumPy raises for a truncated, corrupt or foreign file (``zlib.error`` and ``BadZipFile`` included).
_BAD_ARCHIVE = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


def _unreadable(path: Path, err: BaseException) -> ValueError:
    why = ("neither a zip archive nor a .npy array" if "pickle" in str(err) and "Object arrays" not in str(err)
           else f"{type(err).__name__}: {err}")  # numpy's own text would suggest unpickling the file
    return ValueError(f"{str(path)!r} is not a readable .npz file (truncated, corrupt or another format: {why}): "
                      "re-create it, e.g. numpy.savez(path, x=images_uint8_NHWC, y=labels).")


def load_torchvision(name: str, root: str | os.PathLike, train: bool = True,
                     download: bool = True) -> tuple[Tensor, Tensor]:
    """CIFAR-10, STL-10 (labelled split) or SVHN through ``torchvision.datasets`` (``train``: else test).

    Raises ``FileNotFoundError`` (files missing and ``download=False``) or ``RuntimeError`` (download failed).
    """
    import torchvision.datasets as tvd
    key = str(name).lower()
    classes = {"cifar10": tvd.CIFAR10, "stl10": tvd.STL10, "svhn": tvd.SVHN}
    if key not in classes:
        raise ValueError(f"unknown torchvision dataset {name!r}: expected one of {sorted(classes)}")
    split = {"train": train} if key == "cifar10" else {"split": "train" if train else "test"}
    hint = "or save the images as a local .npz (uint8 x N×H×W×C, y) and pass its path to load_data / load_npz"
    try:
        ds = classes[key](str(root), download=download, **split)
    except RuntimeError as e:
        if not download and "not found" in str(e).lower():
            raise FileNotFoundError(f"{key} files not found under {str(root)!r}: pass download=True {hint}") from e
        raise RuntimeError(f"could not load {key} under {str(root)!r} ({e}): check the files {hint}") from e
    except OSError as e:  # download failures (no network, DNS)
        raise RuntimeError(f"could not download {key} to {str(root)!r} ({e}): {hint}") from e
    if key == "cifar10":
        return _to_nchw(ds.data, key), _labels(ds.targets, len(ds.data), key)
    return torch.from_numpy(np.ascontiguousarray(ds.data)), _labels(ds.labels, len(ds.data), key)


def _read_image(ds: Any, i: int) -> Tensor:
    try:
        return ds[i][0]
    except (OSError, ValueError, SyntaxError) as err:  # PIL: UnidentifiedImageError (an OSError), truncated data
        raise ValueError(f"{ds.samples[i][0]!r} is not a readable image ({type(err).__name__}: {err}): remove it "
                         "from the folder or save it again.") from err


def load_image_folder(path: str | os.PathLike, size: int) -> tuple[Tensor, Tensor]:
    """An ``ImageFolder`` (one sub-folder per class) as uint8 ``(N, 3, size, size)``, centre-cropped."""
    from torchvision import datasets, transforms
    size = check_int("size", size, 1)
    if not Path(path).is_dir():
        raise FileNotFoundError(f"no such image folder: {str(path)!r}")
    tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()])
    try:
        ds = datasets.ImageFolder(str(path), transform=tf)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{str(path)!r} is not an image folder (one sub-folder of images per class): {e}") from e
    return torch.stack([_read_image(ds, i) for i in range(len(ds))]), torch.as_tensor(ds.targets, dtype=torch.long)


def load_data(spec: str | os.PathLike, root: str | os.PathLike = "data",
              size: int | None = None) -> tuple[Tensor, Tensor]:
    """Load ``"digits"``, ``"cifar10"``, ``"stl10"``, ``"svhn"``, an ``.npz`` or an image folder (with ``size``).

    Example:
        >>> x, y = load_data("digits", size=16)
        >>> tuple(x.shape)
        (1797, 3, 16, 16)
    """
    name = str(spec)
    if name.lower() == "digits":
        return load_digits(size=32 if size is None else size)
    path = Path(name)
    if name.lower() in NAMED_DATASETS or path.suffix.lower() == ".npz":
        images, labels = load_torchvision(name, root) if name.lower() in NAMED_DATASETS else load_npz(path)
        return resize_images(images, size), labels
    if path.is_dir():
        if size is None:
            raise ValueError(f"`size` is required to load the image folder {name!r}")
        return load_image_folder(path, size)
    raise ValueError(f"unknown data spec {name!r}: expected one of {list(NAMED_DATASETS)}, "
                     "a path to an .npz file or a path to an image folder")
