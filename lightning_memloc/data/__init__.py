"""Data sources and the shared / candidate / independent split.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) train the encoder
``f`` on shared ∪ candidates and the reference ``g`` on shared ∪ independent (CIFAR-10: 40k / 5k /
5k of the 50k training images); memorization is then measured on the candidates, which only
``f`` has seen. Every loader returns ``(uint8 Tensor[N, C, H, W], LongTensor[N])``. Modules:
:mod:`~lightning_memloc.data.loaders` (the sources), :mod:`~lightning_memloc.data.splits` (the
split) and :mod:`~lightning_memloc.data.datasets` (dataset items).

Example:
    >>> images, labels = load_digits(size=16)
    >>> split = split_candidates(len(images), shared=0.8, candidates=0.1, independent=0.1)
    >>> images[split.encoder].shape[0], images[split.reference].shape[0]
    (1616, 1616)
"""


from lightning_memloc.data.datasets import TensorImageDataset, as_float_image, split_item
from lightning_memloc.data.loaders import (
    NAMED_DATASETS,
    load_data,
    load_digits,
    load_image_folder,
    load_npz,
    load_torchvision,
)
from lightning_memloc.data.splits import SplitIndices, split_candidates

__all__ = [
    "NAMED_DATASETS",
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
