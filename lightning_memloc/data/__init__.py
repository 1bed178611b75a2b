"""Data sources (loaders return ``(uint8 Tensor[N, C, H, W], LongTensor[N])``) and the shared / candidate /
independent split: ``f`` trains on shared ∪ candidates, the reference ``g`` on shared ∪ independent.

Example:
    >>> images, labels = load_digits(size=16)
    >>> split = split_candidates(len(images), shared=0.8, candidates=0.1, independent=0.1)
    >>> images[split.encoder].shape[0], images[split.reference].shape[0]
    (1616, 1616)
"""

from lightning_memloc.data.loaders import (NAMED_DATASETS, TensorImageDataset, as_float_image, load_data, load_digits,
                                           load_image_folder, load_npz, load_torchvision, split_item)
from lightning_memloc.data.splits import SplitIndices, split_candidates

__all__ = ["NAMED_DATASETS", "SplitIndices", "TensorImageDataset", "as_float_image", "load_data", "load_digits",
           "load_image_folder", "load_npz", "load_torchvision", "split_candidates", "split_item"]
