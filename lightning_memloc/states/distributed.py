"""DDP helpers: every collective of a sharded measurement in one place (no-ops in one process; ``docs/ddp.md``)."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, ContextManager, Iterator, List, Optional

import torch
from torch import Tensor, nn
from torchmetrics.utilities.distributed import gather_all_tensors


def is_distributed(world_size: int) -> bool:
    """More than one rank and an initialised process group."""
    return world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def max_across_ranks(tensor: Tensor, world_size: int) -> Tensor:
    """``tensor`` replaced in place by its element-wise maximum over the ranks (collective when distributed)."""
    if is_distributed(world_size):
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return tensor


def sum_across_ranks(tensor: Tensor, world_size: int) -> Tensor:
    """``tensor`` replaced in place by its element-wise sum over the ranks (collective when ``world_size > 1``)."""
    if world_size > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def synced_states(metric: Any) -> ContextManager[None]:
    """A metric's states synced once for the context, so ``compute()`` and the evidence share one sync (collective)."""
    return metric.sync_context(dist_sync_fn=metric.dist_sync_fn)


def reduce_states_in_place(tensor: Tensor, group: Optional[Any] = None) -> List[Tensor]:
    """``dist_sync_fn`` of the meter's metrics: sum floating states with an in-place ``all_reduce``.

    The default all-gather holds ~``2·W + 2`` copies of an ``N × U`` state; in place, ~4. Safe because
    torchmetrics restores the cached local states after ``compute``; integer states keep the all-gather.
    """
    if not tensor.is_floating_point():
        return gather_all_tensors(tensor, group)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM, group=group)
    return [tensor]


@contextmanager
def rank_zero_buffers(world_size: int, *modules: Optional[nn.Module]) -> Iterator[None]:
    """Give every rank rank 0's buffers (BatchNorm statistics) for a pass; each rank's own are restored on exit.

    DDP lets the ranks' buffers drift apart; checkpoints hold rank 0's, so a sharded measurement
    must use them. Collective: call on every rank.
    """
    unique = {id(buf): buf for module in modules if module is not None for buf in module.buffers()}  # shared once
    buffers: List[Tensor] = list(unique.values()) if is_distributed(world_size) else []
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
    """All ranks' strided shards (rank r holds rows ``r::world_size``) reassembled in order on every rank (collective)."""
    if world_size == 1:
        return local
    padded = local.new_zeros((math.ceil(total / world_size), local.shape[1]))
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    torch.distributed.all_gather(parts, padded)
    full = local.new_empty((total, local.shape[1]))
    for rank, part in enumerate(parts):
        full[rank::world_size] = part[:len(range(rank, total, world_size))]
    return full
