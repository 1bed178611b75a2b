"""A fair before-training baseline: BatchNorm statistics estimated on the views (the defaults inflate UnitMem)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn

from lightning_memloc.taps.hooks import eval_mode
from lightning_memloc.views.seeded import SeededViews

#: Choices of the monitor's ``init_batchnorm``.
INIT_BATCHNORM = ("recalibrate", "default")


def _norm_layers(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, views: SeededViews, batch_size: int = 32) -> nn.Module:
    """Re-estimate ``model``'s BatchNorm running statistics in place as a cumulative average over ``views``.

    Only the BatchNorm layers train (dropout stays off); modes and momenta are restored.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        >>> _ = recalibrate_batchnorm(model, SeededViews(torch.rand(4, 3, 8, 8), views=2))
        >>> bool(model[1].running_var.ne(1).any()), model.training
        (True, True)
    """
    norms = _norm_layers(model)
    if not norms:
        return model
    momenta = [(m, m.momentum) for m in norms]
    device = next(iter(list(model.parameters()) + list(model.buffers()))).device
    try:
        with eval_mode(model):
            for m in norms:
                m.reset_running_stats()
                m.momentum = None
                m.train()
            for index, x, _ in views.dataloader(batch_size=batch_size):
                batch = views.finalize(x, index, device)
                model(batch.reshape(-1, *batch.shape[2:]))
    finally:
        for m, momentum in momenta:
            m.momentum = momentum
    return model


@contextmanager
def recalibrated_batchnorm(*models: Optional[nn.Module], views: SeededViews, batch_size: int = 32) -> Iterator[None]:
    """``models`` with BatchNorm statistics estimated on ``views`` inside the context; buffers restored on exit.

    Buffers are restored rather than models copied: a copy breaks on computed weights (pruning, weight norm).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        >>> with recalibrated_batchnorm(model, views=SeededViews(torch.rand(4, 3, 8, 8), views=2)):
        ...     inside = bool(model[1].running_var.ne(1).any())
        >>> inside, bool(model[1].running_var.eq(1).all())
        (True, True)
    """
    norms = [m for model in models if model is not None for m in _norm_layers(model)]
    saved = [(buf, buf.detach().clone()) for m in norms for buf in m.buffers()]
    try:
        for model in models:
            if model is not None and _norm_layers(model):
                recalibrate_batchnorm(model, views, batch_size=batch_size)
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)
