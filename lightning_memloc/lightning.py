"""lightning_memloc bound to the unified ``lightning`` package (``import lightning.pytorch as pl``).

The callbacks and modules add ``lightning.pytorch``'s base classes; the other names are re-exported unchanged.

Example:
    >>> import lightning.pytorch as L
    >>> from lightning_memloc.lightning import MemorizationMonitor
    >>> issubclass(MemorizationMonitor, L.Callback)
    True
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback as _Callback
from lightning.pytorch import LightningDataModule as _LightningDataModule
from lightning.pytorch import LightningModule as _LightningModule
from lightning.pytorch.callbacks import BaseFinetuning as _BaseFinetuning
from lightning.pytorch.utilities import CombinedLoader as _CombinedLoader

import lightning_memloc as _memloc
from lightning_memloc.models import cotrain as _cotrain
from lightning_memloc.models import datamodule as _datamodule
from lightning_memloc.callbacks import finetuning as _finetuning
from lightning_memloc.callbacks import monitor as _monitor
from lightning_memloc.callbacks import pruning as _pruning
from lightning_memloc.callbacks import utility as _utility
from lightning_memloc.models.ssl import SimCLR

#: The Lightning package the classes of this module are bound to.
PACKAGE = "lightning.pytorch"


class MemorizationMonitor(_monitor.MemorizationMonitor, _Callback):
    __doc__ = _monitor.MemorizationMonitor.__doc__


class MemorizationFinetuning(_finetuning.MemorizationFinetuning, _BaseFinetuning):
    __doc__ = _finetuning.MemorizationFinetuning.__doc__


class MemorizationPruning(_pruning.MemorizationPruning, _Callback):
    __doc__ = _pruning.MemorizationPruning.__doc__


class UtilityMonitor(_utility.UtilityMonitor, _Callback):
    __doc__ = _utility.UtilityMonitor.__doc__


class CoTrainedPair(_cotrain.CoTraining, _LightningModule):
    __doc__ = _cotrain.CoTrainedPair.__doc__


class CoTrainingData(_datamodule.CoTrainingSplit, _LightningDataModule):
    __doc__ = _datamodule.CoTrainingData.__doc__
    combined = _CombinedLoader


def cotraining_loader(*args: Any, **kwargs: Any) -> _CombinedLoader:
    """:func:`lightning_memloc.models.cotrain.cotraining_loader` with ``lightning.pytorch``'s ``CombinedLoader``."""
    return _cotrain.cotraining_loader(*args, combined=_CombinedLoader, **kwargs)


globals().update({name: getattr(_memloc, name) for name in _memloc.__all__ if name not in globals()})  # unbound ones

__all__ = sorted({*_memloc.__all__, "PACKAGE", "SimCLR"})
