"""lightning_memloc: localize memorization inside self-supervised vision encoders while they train.

Implements UnitMem, ClassMem, SSLMem and LayerMem / ΔLayerMem from Wang et al., *Localizing
Memorization in SSL Vision Encoders* (NeurIPS 2024), on top of SSLMem (Wang et al.,
*Memorization in Self-Supervised Learning Improves Downstream Generalization*, ICLR 2024), as
torchmetrics, a one-pass ``measure()`` function and PyTorch Lightning callbacks.
"""

from lightning_memloc.callbacks import MemorizationFinetuning, MemorizationMonitor, MemorizationPruning, prune_units
from lightning_memloc.cotrain import CoTrainedPair, cotraining_loader
from lightning_memloc.errors import (
    ArchitectureMismatchError,
    CheckpointError,
    LayerNotFoundError,
    MemlocError,
    NonFiniteActivationError,
    ReportFormatError,
)
from lightning_memloc.loading import load_encoder
from lightning_memloc.measure import measure
from lightning_memloc.meter import MemorizationMeter
from lightning_memloc.metrics import ClassMem, LayerMem, UnitMem
from lightning_memloc.report import MemorizationReport
from lightning_memloc.selection import select_layers, select_units
from lightning_memloc.vit import group_by_kind  # importing vit registers the ViT auto rule
from lightning_memloc.views import BatchedSimCLRAugment, SeededViews, make_views

__version__ = "0.1.0"

__all__ = [
    "ArchitectureMismatchError",
    "BatchedSimCLRAugment",
    "CheckpointError",
    "ClassMem",
    "CoTrainedPair",
    "LayerMem",
    "LayerNotFoundError",
    "MemlocError",
    "MemorizationMeter",
    "MemorizationFinetuning",
    "MemorizationMonitor",
    "MemorizationPruning",
    "MemorizationReport",
    "NonFiniteActivationError",
    "ReportFormatError",
    "SeededViews",
    "UnitMem",
    "cotraining_loader",
    "group_by_kind",
    "load_encoder",
    "make_views",
    "measure",
    "prune_units",
    "select_layers",
    "select_units",
]
