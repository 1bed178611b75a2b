"""torchmetrics classes over :mod:`lightning_memloc.functional` (streaming, DDP-safe states)."""

from lightning_memloc.states.alignment import ViewAlignment
from lightning_memloc.states.classmem import ClassMem
from lightning_memloc.states.layermem import LayerMem
from lightning_memloc.states.unitmem import UnitMem

__all__ = ["ClassMem", "LayerMem", "UnitMem", "ViewAlignment"]
