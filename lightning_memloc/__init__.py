"""lightning_memloc: localize memorization inside self-supervised vision encoders while they train.

UnitMem, ClassMem, SSLMem and LayerMem / ΔLayerMem (Wang et al., NeurIPS 2024) as torchmetrics, a
one-pass ``measure()`` function and PyTorch Lightning callbacks.
"""

from importlib import import_module
from typing import Any

from lightning_memloc.errors import (ArchitectureMismatchError, CheckpointError, LayerNotFoundError, MemlocError,
                                     NonFiniteActivationError, ReportFormatError)
from lightning_memloc.models.loading import load_encoder
from lightning_memloc.measurement import measure
from lightning_memloc.states.meter import MemorizationMeter
from lightning_memloc.options import MeasureOptions
from lightning_memloc.states.reference_cache import ReferenceCache
from lightning_memloc.states import ClassMem, LayerMem, UnitMem
from lightning_memloc.report.report import MemorizationReport
from lightning_memloc.report.selection import select_layers, select_units
from lightning_memloc.taps.vit import group_by_kind  # importing vit registers the ViT auto rule
from lightning_memloc.views.seeded import BatchedSimCLRAugment, SeededViews, make_views

__version__ = "0.1.0"

# Lightning-facing names import pytorch_lightning (seconds): loaded on first use, for a fast import (PEP 562).
_LAZY = {**dict.fromkeys(["MemorizationFinetuning", "MemorizationMonitor", "MemorizationPruning", "UtilityMonitor"],
                         "lightning_memloc.callbacks"),
         "CoTrainedPair": "lightning_memloc.models.cotrain", "cotraining_loader": "lightning_memloc.models.cotrain",
         "CoTrainingData": "lightning_memloc.models.datamodule",
         "prune_units": "lightning_memloc.models.surgery"}  # no Lightning needed


def __getattr__(name: str) -> Any:
    if name in _LAZY:  # cached: later look-ups find it in globals()
        return globals().setdefault(name, getattr(import_module(_LAZY[name]), name))
    raise AttributeError(f"module 'lightning_memloc' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["ArchitectureMismatchError", "BatchedSimCLRAugment", "CheckpointError", "ClassMem", "CoTrainedPair",
           "CoTrainingData", "LayerMem", "LayerNotFoundError", "MemlocError", "MeasureOptions", "MemorizationMeter",
           "MemorizationFinetuning", "MemorizationMonitor", "MemorizationPruning", "MemorizationReport",
           "NonFiniteActivationError", "ReferenceCache", "ReportFormatError", "SeededViews", "UnitMem",
           "UtilityMonitor", "cotraining_loader", "group_by_kind", "load_encoder", "make_views", "measure",
           "prune_units", "select_layers", "select_units"]
