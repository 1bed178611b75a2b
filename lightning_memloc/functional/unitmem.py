"""UnitMem: per-unit memorization scores from per-candidate mean activations.

Definitions follow Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024),
Sec. 3: for a unit ``u`` with mean activation ``μ_u(x_i)`` over the augmented views of
candidate ``x_i``,

``UnitMem_u = (μmax_u − μ-max_u) / (μmax_u + μ-max_u)``

where ``μmax_u = max_i μ_u(x_i)`` and ``μ-max_u`` is the mean (the paper) or the median (the
authors' released code) of ``μ_u`` over the other ``N − 1`` candidates.

All functions take a ``(N, U)`` matrix of mean activations (candidates × units), are batched (no
Python loops over candidates or units), keep the floating dtype of their input and run on
whatever device the input lives on.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_memloc.checks import NEGATIVE_POLICIES, REDUCTIONS, check_choice, check_mean_activations
from lightning_memloc.checks import check_id_vector  # noqa: F401  (its home was here: the old import keeps working)

__all__ = ["SHIFT_TOLERANCE", "apply_negative_policy", "dead_units", "take_ids", "unit_argmax", "unitmem"]

#: ``negative="shift"``: a unit whose μ spread over the candidates is at most this fraction of its
#: largest ``|μ|`` is constant (float32 noise is ~1e-7 of it; a 1e-5 difference is no memorization).
SHIFT_TOLERANCE = 1e-5


def apply_negative_policy(mean_activations: Tensor, negative: str = "clamp") -> Tensor:
    """Make mean activations non-negative, as the UnitMem formula requires.

    UnitMem (Wang et al., NeurIPS 2024) assumes post-ReLU, non-negative activations. Layers whose
    outputs can be negative (GELU, pre-activation outputs, attention outputs) need a policy:

    * ``"clamp"`` (default): ``μ ← max(μ, 0)``; a no-op on post-ReLU layers.
    * ``"shift"``: subtract each unit's minimum ``μ`` over the candidates (``μ ← μ − min_i μ``),
      which makes the score invariant to a per-unit offset. Note that it also changes the scores of
      layers that are already non-negative, and a unit constant over candidates becomes dead. A
      unit whose spread ``max μ − min μ`` is at most :data:`SHIFT_TOLERANCE` times its largest
      ``|μ|`` counts as constant: float32 rounding alone (one ulp, which the batch size changes)
      would otherwise give it any score in [0, 1].
    * ``"error"``: raise ``ValueError`` if any ``μ < 0``.

    Args:
        mean_activations: ``(N, U)`` mean activation of each unit per candidate.
        negative: one of ``"clamp"``, ``"shift"``, ``"error"``.

    Returns:
        A non-negative ``(N, U)`` tensor (a new tensor; the input is never modified).

    Raises:
        ValueError: on a wrong shape, an unknown policy, NaN/inf values, or negative values
            under ``negative="error"``.

    Example:
        >>> mu = torch.tensor([[1.0, -0.5], [3.0, 0.5]])
        >>> apply_negative_policy(mu, "clamp")
        tensor([[1.0000, 0.0000],
                [3.0000, 0.5000]])
        >>> apply_negative_policy(mu, "shift")
        tensor([[0., 0.],
                [2., 1.]])
        >>> apply_negative_policy(torch.tensor([[0.17147639], [0.17147642]]), "shift")  # one float32 ulp apart
        tensor([[0.],
                [0.]])
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
        raise ValueError(
            f"`mean_activations` has {int((mu < 0).sum())} negative value(s) (min "
            f"{float(mu.min()):.4g}) and `negative='error'`; use negative='clamp' or 'shift' for "
            "layers whose outputs can be negative (GELU, pre-activation, attention)."
        )
    return mu.clone()


def unit_argmax(mean_activations: Tensor, negative: str = "clamp") -> Tensor:
    """Candidate each unit "memorizes": the position of ``μmax_u`` (first one on ties).

    A dead unit (zero on every candidate, see :func:`dead_units`) has no μmax candidate: its
    entry is ``-1`` (never position 0, which would credit whatever image sits first).

    Args:
        mean_activations: ``(N, U)`` mean activation of each unit per candidate.
        negative: negative-value policy, see :func:`apply_negative_policy`.

    Returns:
        ``LongTensor[U]`` with positions in ``0 .. N-1``, ``-1`` for dead units.

    Example:
        >>> unit_argmax(torch.tensor([[1.0, 4.0, 0.0], [3.0, 2.0, 0.0]]))
        tensor([ 1,  0, -1])
    """
    mu = apply_negative_policy(mean_activations, negative)
    pos = mu.argmax(dim=0)
    return torch.where(mu.amax(dim=0) == 0, torch.full_like(pos, -1), pos)


def take_ids(ids: Tensor, positions: Tensor) -> Tensor:
    """``ids[positions]`` with ``-1`` (no argmax, a dead unit) passed through as ``-1``.

    Example:
        >>> take_ids(torch.tensor([10, 11]), torch.tensor([1, -1, 0])).tolist()
        [11, -1, 10]
    """
    pos = positions.to(ids.device)
    return torch.where(pos >= 0, ids[pos.clamp(min=0)], torch.full_like(pos, -1))


def dead_units(mean_activations: Tensor, negative: str = "clamp") -> Tensor:
    """Units whose mean activation is zero on every candidate (after the negative policy).

    Their UnitMem is undefined (0 / 0) and reported as 0 by :func:`unitmem`.

    Args:
        mean_activations: ``(N, U)`` mean activation of each unit per candidate.
        negative: negative-value policy, see :func:`apply_negative_policy`.

    Returns:
        ``BoolTensor[U]``, ``True`` for dead units.

    Example:
        >>> dead_units(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
        tensor([ True, False])
    """
    mu = apply_negative_policy(mean_activations, negative)
    return mu.amax(dim=0) == 0


def _rest_statistic(mu: Tensor, reduction: str) -> tuple[Tensor, Tensor]:
    """``(μmax, μ-max)`` per unit for a non-negative ``(N, U)`` matrix with ``N >= 2``."""
    n = mu.shape[0]
    if reduction == "mean":
        mu_max, pos = mu.max(dim=0)
        # zero the argmax row and sum the rest: no cancellation as in (sum - max)
        rest = mu.scatter(0, pos.unsqueeze(0), 0.0).sum(dim=0) / (n - 1)
        return mu_max, rest
    ordered = mu.sort(dim=0).values  # ascending; the last row is the max
    m = n - 1  # the other candidates are ordered[:m], still sorted
    if m % 2 == 1:
        rest = ordered[m // 2]
    else:
        rest = (ordered[m // 2 - 1] + ordered[m // 2]) / 2
    return ordered[-1], rest


def unitmem(mean_activations: Tensor, reduction: str = "mean", negative: str = "clamp") -> Tensor:
    """UnitMem of every unit of a layer (Wang et al., NeurIPS 2024, Eq. 1).

    ``UnitMem_u = (μmax_u − μ-max_u) / (μmax_u + μ-max_u)`` where ``μmax_u`` is the largest mean
    activation over the candidates and ``μ-max_u`` the mean (``reduction="mean"``, the paper) or
    numpy-style median (``reduction="median"``, the authors' code: the average of the two middle
    values for an even count) over the other ``N − 1`` candidates.

    Args:
        mean_activations: ``(N, U)``: for each candidate, each unit's activation averaged over the
            candidate's augmented views. ``N >= 2``.
        reduction: ``"mean"`` or ``"median"``.
        negative: negative-value policy applied first, see :func:`apply_negative_policy`.

    Returns:
        ``Tensor[U]`` of scores in ``[0, 1]`` (same dtype as the input); dead units
        (see :func:`dead_units`) score 0. Never NaN.

    Raises:
        ValueError: ``N < 2``, a wrong shape, an unknown ``reduction``/``negative``, NaN/inf.

    Example:
        >>> mu = torch.tensor([[4.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
        >>> unitmem(mu)
        tensor([0.6000, 0.0000])
        >>> unitmem(torch.tensor([[9.0], [1.0], [2.0], [6.0]]), reduction="median")
        tensor([0.6364])
    """
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("negative", negative, NEGATIVE_POLICIES)
    check_mean_activations(mean_activations, min_candidates=2)
    mu = apply_negative_policy(mean_activations, negative)
    mu_max, rest = _rest_statistic(mu, reduction)
    denom = mu_max + rest
    dead = denom == 0  # both are >= 0, so this is exactly the all-zero (dead) unit
    score = (mu_max - rest) / torch.where(dead, torch.ones_like(denom), denom)
    return torch.where(dead, torch.zeros_like(score), score).clamp(0.0, 1.0)
