"""torchmetrics classes over :mod:`lightning_memloc.functional` (streaming, DDP-safe states).

States are per-candidate sums and counts indexed by candidate id with ``dist_reduce_fx="sum"``,
so batch size, order, sharding and ``DistributedSampler`` padding do not change the results.
"""

from lightning_memloc.metrics.alignment import ViewAlignment
from lightning_memloc.metrics.classmem import ClassMem
from lightning_memloc.metrics.layermem import LayerMem
from lightning_memloc.metrics.unitmem import UnitMem

__all__ = ["ClassMem", "LayerMem", "UnitMem", "ViewAlignment"]
