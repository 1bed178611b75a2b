"""A fair before-training baseline: BatchNorm statistics estimated on the measured views.

An untrained encoder's BatchNorm layers hold their default running statistics (mean 0,
variance 1), so in eval mode they do not normalise at all, while after any training they hold
the data's statistics. Measured that way, the untrained point's UnitMem is inflated (in the
paper's ResNet9 most units' activations are not centred) and a curve over training starts
from an artificial high. :func:`recalibrated_copies` measures *copies* whose BatchNorm
statistics are the cumulative average over the measured views (the same images and views
every later measurement sees); the models themselves are never modified. The statistics use no
label and no training step, so no image is memorized by them (Wang et al., *Localizing
Memorization in SSL Vision Encoders*, NeurIPS 2024, measure UnitMem over training from
initialisation).
"""

from __future__ import annotations

import copy
from typing import Optional, Tuple

import torch
from torch import nn

from lightning_memloc.views import SeededViews

__all__ = ["INIT_BATCHNORM", "recalibrated_copies", "recalibrate_batchnorm"]

#: Choices of the monitor's ``init_batchnorm``.
INIT_BATCHNORM = ("recalibrate", "default")


def _norm_layers(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, views: SeededViews, batch_size: int = 32, max_batches: Optional[int] = None) -> nn.Module:
    """Re-estimate ``model``'s BatchNorm running statistics on ``views`` (in place).

    Every BatchNorm's statistics are reset and accumulated as a cumulative average
    (``momentum=None``) over the views, with only the BatchNorm layers in training mode (dropout
    and the like stay off); modes and momenta are restored afterwards.

    Args:
        model: the model to recalibrate (use a copy: see :func:`recalibrated_copies`).
        views: the seeded views to estimate the statistics on.
        batch_size: candidates per forward (each contributes K views).
        max_batches: stop after this many batches (``None``: all).

    Returns:
        ``model``.

    Example:
        >>> import torch
        >>> from lightning_memloc.models import TinyCNN
        >>> from lightning_memloc.views import SeededViews
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        >>> _ = recalibrate_batchnorm(model, SeededViews(torch.rand(4, 3, 8, 8), views=2))
        >>> bool(model[1].running_var.ne(1).any()), model.training
        (True, True)
    """
    norms = _norm_layers(model)
    if not norms:
        return model
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in norms]
    device = next(iter(list(model.parameters()) + list(model.buffers()))).device
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for b, (index, x, _) in enumerate(views.dataloader(batch_size=batch_size)):
            if max_batches is not None and b >= max_batches:
                break
            batch = views.finalize(x, index, device)
            model(batch.reshape(-1, *batch.shape[2:]))
    finally:
        for m, momentum in momenta:
            m.momentum = momentum
        for m, training in modes:
            m.training = training
    return model


def recalibrated_copies(
    encoder: nn.Module, reference: Optional[nn.Module], views: SeededViews, batch_size: int = 32
) -> Tuple[nn.Module, Optional[nn.Module]]:
    """Copies of ``encoder`` (and ``reference``) with BatchNorm statistics from ``views``.

    Models without BatchNorm are returned as they are (nothing to recalibrate, no copy made).
    """
    out = []
    for model in (encoder, reference):
        if model is None or not _norm_layers(model):
            out.append(model)
            continue
        out.append(recalibrate_batchnorm(copy.deepcopy(model), views, batch_size=batch_size))
    return out[0], out[1]
