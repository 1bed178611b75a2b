"""DDP helpers: every collective of a sharded measurement in one place.

Under DDP the candidates are sharded across ranks while the metric states stay indexed by
candidate id, so a sharded pass gives the single-process answer of Wang et al., *Localizing
Memorization in SSL Vision Encoders* (NeurIPS 2024). The collectives it needs live here: the
in-place sum of the metric states (``dist_sync_fn``), rank 0's buffers for the duration of a
pass, the reassembly of strided shards, and the agreement of all ranks before raising. Each is a
no-op in a single process; see ``docs/ddp.md``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional

import torch
from torch import Tensor, nn
from torchmetrics.utilities.distributed import gather_all_tensors

__all__ = ["gather_rows", "is_distributed", "max_across_ranks", "rank_zero_buffers", "reduce_states_in_place",
           "sum_across_ranks", "synced_states"]


def is_distributed(world_size: int) -> bool:
    """Whether collectives are needed: more than one rank and an initialised process group."""
    return world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def max_across_ranks(tensor: Tensor, world_size: int) -> Tensor:
    """``tensor`` replaced, in place, by its element-wise maximum over the ranks (e.g. "any rank saw NaN").

    Collective when :func:`is_distributed`; otherwise ``tensor`` unchanged.
    """
    if is_distributed(world_size):
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return tensor


def sum_across_ranks(tensor: Tensor, world_size: int) -> Tensor:
    """``tensor`` replaced, in place, by its element-wise sum over the ranks (counts of the shards).

    Collective when ``world_size > 1`` (a process group must then be initialised).
    """
    if world_size > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


@contextmanager
def synced_states(metric: Any) -> Iterator[None]:
    """A torchmetrics metric's states summed over the ranks once, for the duration of the context.

    The meter builds its metrics with ``sync_on_compute=False`` and syncs them here, so that
    ``compute()`` and the evidence's per-candidate means of one metric share a single sync (with
    the metric's own ``dist_sync_fn``, e.g. :func:`reduce_states_in_place`); the local states are
    restored on exit. A no-op in a single process. Collective: enter on every rank, in one order.
    """
    with metric.sync_context(dist_sync_fn=metric.dist_sync_fn):
        yield


def reduce_states_in_place(tensor: Tensor, group: Optional[Any] = None) -> List[Tensor]:
    """``dist_sync_fn`` of the meter's metrics: sum floating states with an in-place ``all_reduce``.

    torchmetrics' default sync all-gathers every state, so during ``compute`` each rank briefly
    holds ``W`` gathered copies plus ``W`` stacked copies of an ``N × U`` state (``W`` = world
    size): about ``2·W + 2`` copies, 18 on 8 GPUs; reduced in place, about 4 whatever ``W`` is.
    Every floating state of ``UnitMem`` / ``ClassMem`` / ``LayerMem`` (per-candidate sums and
    counts) is reduced with ``sum``, so an in-place ``all_reduce(SUM)`` returned as a one-element
    list gives torchmetrics' ``sum`` the same result with no gathered copies. torchmetrics caches
    the local states before syncing and restores them after ``compute``, so reducing the live
    tensor is safe. Integer states (ClassMem's labels, reduced with ``max``; 16 bytes per
    candidate) keep the default all-gather.
    """
    if not tensor.is_floating_point():
        return gather_all_tensors(tensor, group)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM, group=group)
    return [tensor]


@contextmanager
def rank_zero_buffers(world_size: int, *modules: Optional[nn.Module]) -> Iterator[None]:
    """Give every rank rank 0's buffers (BatchNorm running statistics) for the duration of a pass.

    DDP keeps the parameters identical on every rank, but not the buffers: it broadcasts rank 0's
    at the start of each training forward, after which every rank updates its BatchNorm running
    statistics with its own batch. At the end of an epoch the ranks therefore hold slightly
    different encoders, and a sharded measurement would mix them; checkpoints, and the weights
    ``ddp_spawn`` hands back, hold rank 0's. Inside this context every rank measures with rank 0's
    buffers, so the sharded result equals a single-process measurement of the checkpointed
    weights; each rank's own buffers are restored on exit (training is left untouched, also with
    ``broadcast_buffers=False``). A no-op in a single process. Collective: call on every rank.
    """
    buffers: List[Tensor] = []
    if is_distributed(world_size):
        seen = set()
        for module in modules:
            for buf in [] if module is None else module.buffers():
                if id(buf) not in seen:
                    seen.add(id(buf))
                    buffers.append(buf)
    saved = [buf.detach().clone() for buf in buffers]
    try:
        with torch.no_grad():
            for buf in buffers:
                torch.distributed.broadcast(buf, src=0)
        yield
    finally:
        with torch.no_grad():
            for buf, value in zip(buffers, saved):
                buf.copy_(value)


def gather_rows(local: Tensor, total: int, world_size: int) -> Tensor:
    """All ranks' strided shards (rank r holds rows ``r::world_size``) reassembled in order, on every rank.

    Shards differ in length by at most one; they are padded to the same length for
    ``all_gather`` and the padding is dropped (no duplicated rows). Collective under DDP.
    """
    if world_size == 1:
        return local
    rows = math.ceil(total / world_size)
    padded = local.new_zeros((rows, local.shape[1]))
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    torch.distributed.all_gather(parts, padded)
    full = local.new_empty((total, local.shape[1]))
    for rank, part in enumerate(parts):
        count = len(range(rank, total, world_size))
        full[rank::world_size] = part[:count]
    return full
