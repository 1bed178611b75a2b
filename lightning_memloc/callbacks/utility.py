"""``UtilityMonitor``: kNN accuracy of the encoder on the memorization monitor's schedule (DDP: as one process)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lightning_memloc.callbacks.monitor import MemorizationMonitor, ScheduledCallback
from lightning_memloc.states.distributed import gather_rows, rank_zero_buffers, sum_across_ranks
from lightning_memloc.callbacks.logging import add_merged_layout, has_tensorboard
from lightning_memloc.callbacks.monitor_checks import check_schedule, step_due
from lightning_memloc.callbacks.report_source import ModuleSpec
from lightning_memloc.checks import check_int
from lightning_memloc.functional.knn import check_knn_args, knn_correct
from lightning_memloc.io import atomic_write_text, check_writable_dir
from lightning_memloc.report.tags import PREFIX, by_layer_tag, check_name, knn_tag, named_scalars, named_tag


def utility_layout(ks: Sequence[int], name: Optional[str] = None) -> Dict[str, Dict[str, List[Any]]]:
    r"""TensorBoard custom-scalars charts that put kNN accuracy beside LayerMem and its excess.

    Example:
        >>> utility_layout([20])["memloc utility"]["kNN accuracy and LayerMem"]
        ['Multiline', ['^memloc/knn_acc_k20$', '^memloc\\.layer_mem/[^/]+$']]
    """
    prefix = named_tag(PREFIX, name)
    knn = [f"^{re.escape(knn_tag(k, prefix))}$" for k in ks]
    charts = {"LayerMem": "layer_mem", "LayerMem excess over control": "excess", "mean UnitMem": "unit_mem_mean"}
    layers = {title: f"^{re.escape(by_layer_tag(q, prefix))}/[^/]+$" for title, q in charts.items()}
    return {f"{prefix} utility": {f"kNN accuracy and {title}": ["Multiline", [*knn, p]] for title, p in layers.items()}}


def _check_images(name: str, images: Any, labels: Any) -> tuple:
    if not isinstance(images, Tensor) or images.ndim != 4 or not (images.dtype == torch.uint8 or images.is_floating_point()):
        raise TypeError(f"`{name}` must be a uint8 or float tensor (N, C, H, W), got "
                        f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}.")
    labels = torch.as_tensor(labels)
    if labels.shape != (len(images),) or labels.is_floating_point() or bool((labels < 0).any()):
        raise ValueError(f"`{name}_labels` must be (N,) = ({len(images)},) non-negative integer class labels, "
                         f"got {labels.dtype} {tuple(labels.shape)}.")
    if len(images) == 0:
        raise ValueError(f"`{name}` is empty: pass at least one labelled image.")
    return images, labels.long()


@torch.no_grad()
def embed(encoder: nn.Module, images: Tensor, batch_size: int, transform: Optional[Callable[[Tensor], Tensor]] = None,
          device: Optional[torch.device] = None) -> Tensor:
    """Features (N, D) of ``images`` (uint8 / 255, then ``transform``), spatially averaged; the caller sets eval mode."""
    device = device or next(encoder.parameters()).device
    dtype = next(encoder.parameters()).dtype
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if transform is not None:
            x = transform(x)
        y = encoder(x.to(dtype))
        out.append((y.mean(dim=(2, 3)) if y.ndim == 4 else y.flatten(1)).float())
    return torch.cat(out) if out else torch.zeros(0, 0, device=device)


class UtilityMonitor(ScheduledCallback):
    r"""Weighted cosine kNN accuracy of the encoder during training, logged as ``memloc/knn_acc_k<k>``.

    Runs on a ``MemorizationMonitor`` schedule and adds its scalars to the history of monitors
    measured at the same global step (list it after them).

    Args:
        bank: labelled images (N, C, H, W), uint8 or float, whose features vote (e.g. training images).
        test: held-out images (M, C, H, W) to classify.
        temperature: vote weight ``exp(cosine / temperature)``.
        num_classes: default: the largest label + 1.
        encoder: the encoder inside the LightningModule, as for ``MemorizationMonitor``.
        transform: batched tensor transform applied to the images in [0, 1] (e.g. a normalisation).
        output_dir: if set, rank 0 writes ``utility_history.json`` there.
        name: tags ``memloc-<name>/...`` instead of ``memloc/...``.

    Example:
        >>> import torch
        >>> from lightning_memloc.callbacks.utility import UtilityMonitor
        >>> utility = UtilityMonitor(torch.rand(30, 3, 16, 16), torch.arange(30) % 3, torch.rand(6, 3, 16, 16),
        ...                          torch.arange(6) % 3, ks=(5, 20), encoder="backbone")
        >>> utility.ks
        (5, 20)
    """

    def __init__(self, bank: Tensor, bank_labels: Tensor, test: Tensor, test_labels: Tensor, *,
                 ks: Sequence[int] = (20, 200), temperature: float = 0.1, num_classes: Optional[int] = None,
                 encoder: ModuleSpec = None, transform: Optional[Callable[[Tensor], Tensor]] = None,
                 every_n_epochs: Optional[int] = None, every_n_train_steps: Optional[int] = None,
                 measure_on_train_start: bool = False, batch_size: int = 256,
                 output_dir: Optional[Union[str, os.PathLike]] = None, name: Optional[str] = None) -> None:
        super().__init__()
        self.every_n_epochs, self.every_n_train_steps = check_schedule(every_n_epochs, every_n_train_steps)
        self.ks, self.temperature = check_knn_args(ks, temperature)
        self.bank, self.bank_labels = _check_images("bank", bank, bank_labels)
        self.test, self.test_labels = _check_images("test", test, test_labels)
        if bank.shape[1:] != test.shape[1:]:
            raise ValueError(f"`bank` and `test` images must have the same (C, H, W), got {tuple(bank.shape[1:])} "
                             f"and {tuple(test.shape[1:])}.")
        if self.ks[-1] > len(bank):
            raise ValueError(f"`ks`={self.ks} asks for {self.ks[-1]} neighbours but `bank` holds {len(bank)} images: "
                             "pass a larger bank or smaller `ks`.")
        largest = int(max(self.bank_labels.max(), self.test_labels.max())) + 1
        if num_classes is None:
            num_classes = largest
        elif check_int("num_classes", num_classes, 1) < largest:
            raise ValueError(f"`num_classes`={num_classes} but the labels go up to {largest - 1}: "
                             f"pass num_classes >= {largest} (or None).")
        self.num_classes = int(num_classes)
        if transform is not None and not callable(transform):
            raise TypeError(f"`transform` must be a callable on image batches or None, got {type(transform).__name__}.")
        self.encoder_spec, self.transform = encoder, transform
        self.measure_on_train_start = bool(measure_on_train_start)
        self.batch_size, self.name = check_int("batch_size", batch_size, 1), check_name(name)
        self.output_dir = None if output_dir is None else Path(output_dir) / (name or "")
        self.history: List[Dict[str, Any]] = []
        self._layout_written = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_epochs=self.every_n_epochs, every_n_train_steps=self.every_n_train_steps,
                                         ks=self.ks, bank=len(self.bank), test=len(self.test), name=self.name)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Resolve the encoder and check ``output_dir`` before training starts."""
        if stage == "fit":
            self.encoder(pl_module)
            if trainer.world_size > len(self.bank):
                raise ValueError(f"`bank` holds {len(self.bank)} images for {trainer.world_size} DDP ranks: every rank "
                                 "embeds a shard of it, so pass at least as many bank images as ranks.")
            if self.output_dir is not None and trainer.is_global_zero:
                check_writable_dir(self.output_dir, argument="output_dir")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.measure_on_train_start and not self.history:
            self._measure(trainer, pl_module, epoch=-1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if step_due(1, trainer.global_step, self.history):  # the last step was not measured
            self._measure(trainer, pl_module, epoch=max(trainer.current_epoch - 1, 0))
        self._merge_into_monitors(trainer)

    def compute(self, encoder: nn.Module, world_size: int = 1, rank: int = 0) -> Dict[int, float]:
        """kNN accuracy per k of ``encoder`` (collective when ``world_size > 1``); modes are restored."""
        modes = [(m, m.training) for m in encoder.modules()]
        device = next(encoder.parameters()).device
        encoder.eval()
        try:
            with rank_zero_buffers(world_size, encoder):
                local_bank = embed(encoder, self.bank[rank::world_size], self.batch_size, self.transform, device)
                local_test = embed(encoder, self.test[rank::world_size], self.batch_size, self.transform, device)
            bank = gather_rows(local_bank, len(self.bank), world_size)
            correct = knn_correct(bank, self.bank_labels.to(device), local_test,
                                  self.test_labels[rank::world_size].to(device), self.num_classes, self.ks,
                                  self.temperature) if len(local_test) else {k: 0 for k in self.ks}
        finally:
            for module, mode in modes:
                module.train(mode)
        counts = torch.tensor([correct[k] for k in self.ks], dtype=torch.float64, device=device)
        sum_across_ranks(counts, world_size)
        return {k: float(c) / len(self.test) for k, c in zip(self.ks, counts.tolist())}

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> Dict[str, float]:
        accuracy = self.compute(self.encoder(pl_module), trainer.world_size, trainer.global_rank)
        scalars = {knn_tag(k): acc for k, acc in accuracy.items()}
        self.history.append({"epoch": epoch, "global_step": trainer.global_step, **scalars})
        named = named_scalars(scalars, self.name)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in named.items()})
        for logger in trainer.loggers:
            logger.log_metrics(named, step=trainer.global_step)
            if trainer.is_global_zero and has_tensorboard(logger) and not self._layout_written:
                add_merged_layout(logger.experiment, utility_layout(self.ks, self.name), ("utility", self.name))
                self._layout_written = True
        self._merge_into_monitors(trainer)
        if self.output_dir is not None and trainer.is_global_zero:
            check_writable_dir(self.output_dir, argument="output_dir")
            atomic_write_text(self.output_dir / "utility_history.json", json.dumps(self.history, indent=1))
        return scalars

    def _merge_into_monitors(self, trainer: pl.Trainer) -> None:
        """Add the kNN scalars to the memorization monitors' entries of the same global step."""
        ours = {h["global_step"]: {k: v for k, v in h.items() if k.startswith(f"{PREFIX}/")} for h in self.history}
        for callback in trainer.callbacks:
            if isinstance(callback, MemorizationMonitor) and callback.name == self.name:
                callback.attach_scalars(ours)

    def state_dict(self) -> Dict[str, Any]:
        return {"history": [dict(h) for h in self.history]}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]
