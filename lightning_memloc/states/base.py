"""Shared validation and state helpers of the candidate-indexed metrics."""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_memloc.checks import check_finite_tensor, check_id_vector, check_int

STATE_DTYPES = (torch.float32, torch.float64)


class CandidateIndexedMetric(Metric):
    """Base of metrics whose states are per-candidate sums and counts (``sum``-reduced).

    Views depend only on (seed, candidate, view): a candidate seen twice (sampler padding) keeps ``sum / count``.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    counts: Tensor

    def __init__(self, num_candidates: int, state_dtype: torch.dtype = torch.float32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_candidates = check_int("num_candidates", num_candidates, 1)
        if state_dtype not in STATE_DTYPES:
            raise ValueError(f"`state_dtype` must be one of {STATE_DTYPES}, got {state_dtype!r}.")
        self.state_dtype = state_dtype
        self.add_state("counts", torch.zeros(num_candidates, dtype=state_dtype), dist_reduce_fx="sum")

    def _wrap_compute(self, compute: Callable) -> Callable:
        """Keep 1-element outputs 1-D: torchmetrics squeezes them to 0-d."""
        wrapped = super()._wrap_compute(compute)

        @functools.wraps(compute)
        def unsqueezed(*args: Any, **kwargs: Any) -> Any:
            value = wrapped(*args, **kwargs)
            if not isinstance(value, dict):
                return value
            return {k: v.reshape(1) if isinstance(v, Tensor) and v.ndim == 0 else v for k, v in value.items()}

        return unsqueezed

    def _check_index(self, index: Any, batch: int, batch_name: str) -> Tensor:
        """``index`` as ``LongTensor[batch]`` of ids in ``[0, num_candidates)``."""
        index = check_id_vector("index", index, batch, batch_name, "candidate id")
        if batch and (bool((index < 0).any()) or bool((index >= self.num_candidates).any())):
            raise ValueError(f"`index` ids must lie in [0, num_candidates - 1] = [0, {self.num_candidates - 1}], "
                             f"got min {int(index.min())} and max {int(index.max())}.")
        return index.to(device=self.counts.device, dtype=torch.long)

    def _check_activations(self, activations: Any, num_units: int) -> Tensor:
        """``(B, U)`` or ``(B, K, U)`` activations as ``(B, U)`` in the state dtype."""
        if not isinstance(activations, Tensor):
            raise TypeError(f"`activations` must be a torch.Tensor of shape (B, U) or (B, K, U), got "
                            f"{type(activations).__name__}.")
        if activations.ndim not in (2, 3) or activations.shape[-1] != num_units:
            raise ValueError(f"`activations` must have shape (B, U) or (B, K, U) with U = num_units = {num_units}, "
                             f"got {tuple(activations.shape)}.")
        if activations.ndim == 3 and activations.shape[1] < 1:
            raise ValueError("`activations` of shape (B, K, U) needs K >= 1 views.")
        check_finite_tensor("activations", activations)
        x = activations.detach().to(device=self.counts.device, dtype=self.counts.dtype)
        return x.mean(dim=1) if x.ndim == 3 else x

    def _check_align(self, name: str, value: Any) -> Tensor:
        """``(L, B)`` alignments (``L = self.num_layers`` of the subclass) in the state dtype."""
        if not isinstance(value, Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor of shape (L, B), got {type(value).__name__}.")
        if value.ndim != 2 or value.shape[0] != self.num_layers:
            raise ValueError(f"`{name}` must have shape (L, B) with L = num_layers = {self.num_layers}, got "
                             f"{tuple(value.shape)}.")
        check_finite_tensor(name, value)
        return value.detach().to(device=self.counts.device, dtype=self.counts.dtype)

    def _add_counts(self, index: Tensor) -> None:
        self.counts.index_add_(0, index, torch.ones_like(index, dtype=self.counts.dtype))

    def _seen(self) -> Tensor:
        """Candidate ids with count > 0 (at least 2)."""
        ids = (self.counts > 0).nonzero().squeeze(1)
        if ids.numel() < 2:
            raise ValueError(f"{type(self).__name__}.compute() needs at least 2 candidates updated, got "
                             f"{ids.numel()}: call update() with more candidates before compute().")
        return ids
