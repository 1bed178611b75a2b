"""Co-training under a wall-clock budget, for the GPU run of ``reproduce_gpu.py``.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) co-train a SimCLR
ResNet9 ``f`` (shared ∪ candidates) and a reference ``g`` (shared ∪ independent) for a long
schedule. On a lent GPU the limit is wall-clock time, not epochs, so:

- :class:`WallClockPair` is :class:`~lightning_memloc.CoTrainedPair` without its epoch-based
  scheduler; :class:`WallClockLR` sets the learning rate from the fraction of the budget spent
  (linear warm-up, then cosine decay to 0 at the end of the budget), so training anneals properly
  however many epochs fit;
- Lightning's :class:`~pytorch_lightning.callbacks.Timer` stops training cleanly (after the step
  that exceeds the budget; the monitor's end-of-training measurement still runs);
- :class:`MonitorPacer` spaces a :class:`~lightning_memloc.MemorizationMonitor`'s measurements so
  that about ``points`` of them fall inside the budget, from the first epoch's duration;
- :func:`index_batch_loader` serves whole batches by indexing one tensor (kept on the GPU), instead
  of collating images one by one: at GPU speed the per-image path is the bottleneck.
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, Optional, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, Timer
from pytorch_lightning.utilities import CombinedLoader
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from lightning_memloc import CoTrainedPair
from lightning_memloc.data import SplitIndices


class _IndexBatches(Dataset):
    """``dataset[list_of_positions]`` -> ``(images[idx[positions]], labels)`` in one indexing op."""

    def __init__(self, images: Tensor, indices: Tensor, labels: Optional[Tensor] = None) -> None:
        self.images, self.indices = images, indices.to(images.device)
        self.labels = None if labels is None else labels.to(images.device)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, positions: Sequence[int]) -> Any:
        idx = self.indices[torch.as_tensor(positions, device=self.indices.device)]
        labels = self.labels[idx] if self.labels is not None else torch.zeros(len(idx), dtype=torch.long)
        return self.images[idx], labels


def index_batch_loader(images: Tensor, indices: Tensor, batch_size: int, seed: int,
                       labels: Optional[Tensor] = None) -> DataLoader:
    """Shuffled, full batches (``drop_last``) of ``images[indices]`` without per-image collation.

    Args:
        images: all images (N, C, H, W), on the device that should serve them (the GPU's for speed).
        indices: the images of this loader.
        batch_size: images per batch (capped at ``len(indices)``).
        seed: shuffling seed.
        labels: optional (N,) labels returned with each batch (zeros otherwise).
    """
    data = _IndexBatches(images, torch.as_tensor(indices), labels)
    batch_size = min(batch_size, len(data))
    sampler = BatchSampler(RandomSampler(range(len(data)), generator=torch.Generator().manual_seed(seed)),
                           batch_size=batch_size, drop_last=True)
    return DataLoader(data, sampler=sampler, batch_size=None)


def cotraining_batches(images: Tensor, split: SplitIndices, batch_size: int, seed: int) -> CombinedLoader:
    """Batches ``{"encoder": shared ∪ candidates, "reference": shared ∪ independent}`` for the pair
    (the layout of :func:`~lightning_memloc.cotraining_loader`, served by :func:`index_batch_loader`)."""
    return CombinedLoader({"encoder": index_batch_loader(images, split.encoder, batch_size, seed),
                           "reference": index_batch_loader(images, split.reference, batch_size, seed + 1)},
                          mode="max_size_cycle")


class FullPrecision(nn.Module):
    """Run a batched view augmentation ``(images, seeds) -> views`` outside autocast, in float32:
    the training views are made as precisely as the measurement's (which runs without autocast)."""

    def __init__(self, augment: nn.Module) -> None:
        super().__init__()
        self.augment = augment

    def forward(self, images: Tensor, seeds: Tensor) -> Tensor:
        with torch.autocast(device_type=images.device.type, enabled=False):
            return self.augment(images.float(), seeds)


class WallClockPair(CoTrainedPair):
    """:class:`~lightning_memloc.CoTrainedPair` with plain SGD (momentum 0.9, weight decay) and no
    epoch-based scheduler: :class:`WallClockLR` sets the learning rate."""

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)


def wall_clock_factor(progress: float, warmup: float) -> float:
    """Learning-rate factor at ``progress`` (fraction of the budget spent, 0..1): linear warm-up over
    the first ``warmup`` of the budget, then cosine decay to 0 at 1.

    Example:
        >>> [round(wall_clock_factor(p, 0.1), 3) for p in (0.0, 0.05, 0.1, 0.55, 1.0, 2.0)]
        [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    """
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (progress - warmup) / max(1e-12, 1.0 - warmup)))


class WallClockLR(Callback):
    """Set every param group's learning rate to ``peak * wall_clock_factor(elapsed / budget)``
    before each training step, reading the elapsed training time from Lightning's ``Timer``."""

    def __init__(self, timer: Timer, budget_s: float, peak_lr: float, warmup: float = 0.05) -> None:
        self.timer, self.budget_s, self.peak_lr, self.warmup = timer, float(budget_s), float(peak_lr), float(warmup)
        self.last_lr, self.last_progress = 0.0, 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        progress = self.last_progress = (self.timer.time_elapsed("train") or 0.0) / self.budget_s
        # never exactly 0: the first step would not move the weights
        self.last_lr = self.peak_lr * max(wall_clock_factor(progress, self.warmup), 1e-3)
        for group in trainer.optimizers[0].param_groups:
            group["lr"] = self.last_lr


class MonitorPacer(Callback):
    """After the second epoch, set ``monitor.every_n_epochs`` so that about ``points`` measurements
    fit in the budget (the monitor also measures at the end of training).

    The second epoch's duration is the estimate: the first one also holds cuDNN's autotuning and
    the monitor's before-training measurement. Put the pacer before the monitor in ``callbacks``;
    create the monitor with a large ``every_n_epochs``.
    """

    def __init__(self, monitor: Any, timer: Timer, budget_s: float, points: int = 8) -> None:
        self.monitor, self.timer, self.budget_s, self.points = monitor, timer, float(budget_s), int(points)
        self.every: Optional[int] = None
        self.expected_epochs: Optional[int] = None
        self._first_end: Optional[float] = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every is not None:
            return
        now = self.timer.time_elapsed("train") or 0.0
        if self._first_end is None:
            self._first_end = now
            return
        epoch_s = max(now - self._first_end, 1e-6)
        self.expected_epochs = 2 + max(0, int((self.budget_s - now) / epoch_s))
        self.every = max(1, round(self.expected_epochs / max(1, self.points)))
        self.monitor.every_n_epochs = self.every


class EpochClock(Callback):
    """Per-epoch records (epoch, seconds since the start of training, losses, learning rate) and a log line."""

    def __init__(self, printer: Any = print) -> None:
        self.printer, self.start = printer, time.perf_counter()
        self.records: list[Dict[str, float]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if not k.startswith("memloc")}
        record = {"epoch": trainer.current_epoch, "seconds": round(time.perf_counter() - self.start, 1),
                  "global_step": trainer.global_step, **metrics}
        self.records.append(record)
        self.printer(f"SimCLR epoch {trainer.current_epoch + 1}: {record}")

