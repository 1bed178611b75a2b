"""``CoTrainingData``: the shared / candidates / independent split as a LightningDataModule."""

from __future__ import annotations

from typing import Any, Optional, Type

import pytorch_lightning as pl
from pytorch_lightning.utilities import CombinedLoader

from lightning_memloc.data.candidates import IndexSpec, load_candidates, read_indices
from lightning_memloc.data import SplitIndices

__all__ = ["CoTrainingData", "CoTrainingSplit"]


class CoTrainingSplit:
    """The logic of :class:`CoTrainingData`, mixed in before either Lightning package's ``LightningDataModule``."""

    combined: Type = CombinedLoader

    def __init__(self, data: str = "digits", candidates: IndexSpec = "0:64", independent: IndexSpec = "64:128",
                 size: Optional[int] = None, batch_size: int = 64, num_workers: int = 0) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}.")
        self.data, self.size, self.batch_size, self.num_workers = data, size, batch_size, num_workers
        self.candidates_spec, self.independent_spec = candidates, independent
        self.images: Any = None
        self.split: Optional[SplitIndices] = None

    def setup(self, stage: str) -> None:
        """Load the images and split them (candidates and independent must not overlap)."""
        if self.split is not None:
            return
        import torch
        images, _ = load_candidates(self.data, size=self.size)
        n = len(images)
        candidates, independent = read_indices(self.candidates_spec, n), read_indices(self.independent_spec, n)
        overlap = set(candidates.tolist()) & set(independent.tolist())
        if overlap:
            raise ValueError(f"`candidates` and `independent` share images {sorted(overlap)[:5]}: give disjoint selections.")
        rest = torch.ones(n, dtype=torch.bool)
        rest[candidates], rest[independent] = False, False
        self.images = images
        self.split = SplitIndices(rest.nonzero().flatten(), candidates.unique(), independent.unique())

    def train_dataloader(self) -> Any:
        from lightning_memloc.models.cotrain import cotraining_loader
        return cotraining_loader(self.images, self.split, batch_size=self.batch_size, num_workers=self.num_workers,
                                 combined=self.combined)


class CoTrainingData(CoTrainingSplit, pl.LightningDataModule):
    """Batches ``{"encoder": shared ∪ candidates, "reference": shared ∪ independent}`` for
    :class:`~lightning_memloc.CoTrainedPair`.

    Args:
        data: an ``.npz`` file, a ``.pt`` tensor file, an image folder or ``"digits"``.
        candidates, independent: the images only the encoder / the reference sees (disjoint; the rest is
            shared): a slice ``"start:stop"``, a list of ints or an index file.

    Example:
        >>> dm = CoTrainingData("digits", candidates="0:8", independent="8:16", size=8, batch_size=4)
        >>> dm.setup("fit")
        >>> [len(part) for part in dm.split]
        [1781, 8, 8]
    """
