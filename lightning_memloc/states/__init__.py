"""torchmetrics classes over :mod:`lightning_memloc.functional` (streaming, DDP-safe states)."""

from lightning_memloc.states.layermem import LayerMem, ViewAlignment
from lightning_memloc.states.unitmem import ClassMem, UnitMem

__all__ = ["ClassMem", "LayerMem", "UnitMem", "ViewAlignment"]
