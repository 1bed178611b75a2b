"""Train an encoder and its reference side by side in one ``Trainer.fit`` (no shared parameters: the sum of
their losses gives each exactly its own gradients)."""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Dict, Optional, Type

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import CombinedLoader
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from lightning_memloc.data import SplitIndices, TensorImageDataset

LossFn = Callable[[nn.Module, Any], Tensor]


def _default_loss(model: nn.Module, batch: Any) -> Tensor:
    if not hasattr(model, "training_loss"):
        raise TypeError(f"{type(model).__name__} has no `training_loss(batch)`: pass `loss_fn=`.")
    return model.training_loss(batch)


class CoTraining:
    """The logic of :class:`CoTrainedPair`, mixed in before either Lightning package's ``LightningModule``."""

    def __init__(self, encoder: nn.Module, reference: nn.Module, loss_fn: Optional[LossFn] = None, lr: float = 0.06,
                 weight_decay: float = 5e-4, warmup_epochs: int = 2, max_epochs: int = 100) -> None:
        super().__init__()
        if encoder is reference:
            raise ValueError("`encoder` and `reference` must be two separate models.")
        if max_epochs < 1 or warmup_epochs < 0:
            raise ValueError(f"need `max_epochs` >= 1 and `warmup_epochs` >= 0, got {max_epochs} and {warmup_epochs}.")
        self.encoder, self.reference = encoder, reference
        self.loss_fn = loss_fn or _default_loss
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_epochs, self.max_epochs = warmup_epochs, max_epochs

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> Tensor:
        loss_f = self.loss_fn(self.encoder, batch["encoder"])
        loss_g = self.loss_fn(self.reference, batch["reference"])
        self.log("loss/encoder", loss_f, prog_bar=True)
        self.log("loss/reference", loss_g)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss_f + loss_g

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Store the global RNG states: a resumed run draws the same augmentations as an uninterrupted one."""
        checkpoint["memloc_rng_states"] = {
            "torch": torch.get_rng_state(),
            # plain types only: Lightning reads checkpoints with weights_only=True
            "numpy": [torch.from_numpy(np.random.get_state()[1].astype(np.int64))]
            + [float(x) if isinstance(x, float) else int(x) for x in np.random.get_state()[2:]],
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        states = checkpoint.get("memloc_rng_states")
        if states:
            torch.set_rng_state(states["torch"])
            keys, pos, has_gauss, gauss = states["numpy"]
            np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            random.setstate(states["python"])

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        # the module's own `max_epochs`: a run resumed with a longer Trainer keeps the same learning rates
        trainer_epochs = max(1, self.trainer.max_epochs or self.max_epochs)
        per_epoch = max(1, int(self.trainer.estimated_stepping_batches) // trainer_epochs)
        steps = per_epoch * self.max_epochs
        warmup = self.warmup_epochs * per_epoch

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, steps - warmup))
            return 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class CoTrainedPair(CoTraining, pl.LightningModule):
    """An SSL encoder (trained on shared ∪ candidates) and its reference (shared ∪ independent), trained side by
    side on batches ``{"encoder": ..., "reference": ...}`` (:func:`cotraining_loader`).

    Args:
        loss_fn: ``(model, batch) -> loss``; default ``model.training_loss(batch)``.
        lr: peak learning rate of SGD (momentum 0.9), after ``warmup_epochs`` of linear warm-up; cosine decay to 0.

    Example:
        >>> from lightning_memloc import BatchedSimCLRAugment
        >>> from lightning_memloc.models import TinyCNN
        >>> from lightning_memloc.models.ssl import SimCLR
        >>> make = lambda: SimCLR(TinyCNN(), 16, augment=BatchedSimCLRAugment(16))
        >>> pair = CoTrainedPair(make(), make(), max_epochs=2)
        >>> sorted(n for n, _ in pair.named_children())
        ['encoder', 'reference']
    """


def cotraining_loader(images: Tensor, split: SplitIndices, batch_size: int = 256, num_workers: int = 0,
                      transform: Optional[Callable] = None, labels: Optional[Tensor] = None,
                      combined: Type = CombinedLoader) -> CombinedLoader:
    """Training batches for :class:`CoTrainedPair` from uint8 ``images`` (N, C, H, W): shared ∪ candidates and
    shared ∪ independent (``transform``: per image, ``None``: uint8; ``combined``: the ``CombinedLoader`` class)."""
    dataset = TensorImageDataset(images, labels, transform=transform)

    def loader(part: Tensor) -> DataLoader:
        indices = torch.cat([torch.as_tensor(split.shared), torch.as_tensor(part)]).tolist()
        return DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=True, drop_last=True,
                          num_workers=num_workers, persistent_workers=num_workers > 0)

    return combined({"encoder": loader(split.candidates), "reference": loader(split.independent)},
                    mode="max_size_cycle")
