"""UnitMem (Wang et al., NeurIPS 2024, Sec. 3) from ``(N, U)`` per-candidate mean activations."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_memloc.checks import NEGATIVE_POLICIES, REDUCTIONS, check_choice, check_mean_activations

#: ``negative="shift"``: a unit whose μ spread over the candidates is at most this fraction of its
#: largest ``|μ|`` is constant (float32 noise is ~1e-7 of it; a 1e-5 difference is no memorization).
SHIFT_TOLERANCE = 1e-5


def apply_negative_policy(mean_activations: Tensor, negative: str = "clamp") -> Tensor:
    """Non-negative copy of ``(N, U)`` mean activations, as UnitMem requires.

    ``"clamp"``: ``max(μ, 0)``; ``"shift"``: ``μ − min_i μ`` per unit (spread within
    :data:`SHIFT_TOLERANCE` counts as constant, i.e. dead); ``"error"``: ``ValueError`` on any ``μ < 0``.

    Example:
        >>> apply_negative_policy(torch.tensor([[1.0, -0.5], [3.0, 0.5]]), "shift")
        tensor([[0., 0.],
                [2., 1.]])
    """
    check_choice("negative", negative, NEGATIVE_POLICIES)
    mu = check_mean_activations(mean_activations)
    if negative == "clamp":
        return mu.clamp(min=0)
    if negative == "shift":
        shifted = mu - mu.amin(dim=0, keepdim=True)
        constant = shifted.amax(dim=0, keepdim=True) <= SHIFT_TOLERANCE * mu.abs().amax(dim=0, keepdim=True)
        return shifted.masked_fill(constant, 0.0)
    if bool((mu < 0).any()):
        raise ValueError(f"`mean_activations` has {int((mu < 0).sum())} negative value(s) (min {float(mu.min()):.4g}) "
                         "and `negative='error'`; use negative='clamp' or 'shift' for layers whose outputs can be "
                         "negative (GELU, pre-activation, attention).")
    return mu.clone()


def unit_argmax(mean_activations: Tensor, negative: str = "clamp") -> Tensor:
    """Position ``(U,)`` of each unit's ``μmax`` candidate (first on ties), ``-1`` for dead units.

    Example:
        >>> unit_argmax(torch.tensor([[1.0, 4.0, 0.0], [3.0, 2.0, 0.0]]))
        tensor([ 1,  0, -1])
    """
    mu = apply_negative_policy(mean_activations, negative)
    pos = mu.argmax(dim=0)
    return torch.where(mu.amax(dim=0) == 0, torch.full_like(pos, -1), pos)


def take_ids(ids: Tensor, positions: Tensor) -> Tensor:
    """``ids[positions]`` with ``-1`` (a dead unit) passed through.

    Example:
        >>> take_ids(torch.tensor([10, 11]), torch.tensor([1, -1, 0])).tolist()
        [11, -1, 10]
    """
    pos = positions.to(ids.device)
    return torch.where(pos >= 0, ids[pos.clamp(min=0)], torch.full_like(pos, -1))


def dead_units(mean_activations: Tensor, negative: str = "clamp") -> Tensor:
    """``(U,)`` mask of units zero on every candidate after the negative policy (UnitMem 0 / 0, reported 0).

    Example:
        >>> dead_units(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
        tensor([ True, False])
    """
    return apply_negative_policy(mean_activations, negative).amax(dim=0) == 0


def unitmem(mean_activations: Tensor, reduction: str = "mean", negative: str = "clamp") -> Tensor:
    """UnitMem ``(U,)`` in ``[0, 1]`` of ``(N, U)`` mean activations, ``N >= 2`` (Wang et al., NeurIPS 2024, Eq. 1).

    ``UnitMem_u = (μmax_u − μ-max_u) / (μmax_u + μ-max_u)``, ``μ-max_u`` the mean (paper) or numpy median
    (authors' code) over the other ``N − 1`` candidates; dead units score 0.

    Example:
        >>> unitmem(torch.tensor([[4.0, 0.0], [1.0, 0.0], [1.0, 0.0]]))
        tensor([0.6000, 0.0000])
    """
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("negative", negative, NEGATIVE_POLICIES)
    check_mean_activations(mean_activations, min_candidates=2)
    mu = apply_negative_policy(mean_activations, negative)
    n = mu.shape[0]
    if reduction == "mean":
        mu_max, pos = mu.max(dim=0)
        # zero the argmax row and sum the rest: no cancellation as in (sum - max)
        rest = mu.scatter(0, pos.unsqueeze(0), 0.0).sum(dim=0) / (n - 1)
    else:
        ordered = mu.sort(dim=0).values  # ascending; the last row is the max
        mu_max, m = ordered[-1], n - 1  # the other candidates are ordered[:m], still sorted
        rest = ordered[m // 2] if m % 2 == 1 else (ordered[m // 2 - 1] + ordered[m // 2]) / 2
    denom = mu_max + rest
    dead = denom == 0  # both are >= 0, so this is exactly the all-zero (dead) unit
    score = (mu_max - rest) / torch.where(dead, torch.ones_like(denom), denom)
    return torch.where(dead, torch.zeros_like(score), score).clamp(0.0, 1.0)
