"""ClassMem: UnitMem with classes in place of candidates.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024), Sec. 3: the
mean activation of a class is the mean of its members' mean activations, and ClassMem of a
unit is the UnitMem formula over those per-class means. A unit with a high ClassMem responds to
one class much more than to the others (class-level rather than instance-level memorization).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_memloc.checks import NEGATIVE_POLICIES, REDUCTIONS, check_choice, check_id_vector, check_mean_activations
from lightning_memloc.functional.unitmem import unitmem

__all__ = ["class_means", "classmem"]


def _check_labels(labels: object, n: int) -> Tensor:
    """Validate ``labels`` as a ``LongTensor[n]`` of non-negative class ids."""
    labels = check_id_vector("labels", labels, n, "mean_activations", "class id")
    if n > 0 and bool((labels < 0).any()):
        raise ValueError(
            "`labels` must be >= 0; negative ids (e.g. -1 for 'no label') are not classes. "
            "Drop unlabelled candidates before computing ClassMem."
        )
    return labels.long()


def class_means(mean_activations: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Mean activation of each class: the mean of its members' per-candidate means.

    Args:
        mean_activations: ``(N, U)`` mean activation of each unit per candidate.
        labels: ``LongTensor[N]`` class id (``>= 0``) of each candidate.

    Returns:
        ``(means, classes)``: ``means`` is ``(C, U)`` (same dtype as the input), row ``c`` being
        the mean over the candidates of class ``classes[c]``; ``classes`` is the sorted
        ``LongTensor[C]`` of the class ids present.

    Example:
        >>> mu = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
        >>> means, classes = class_means(mu, torch.tensor([7, 7, 2]))
        >>> means
        tensor([[5., 5.],
                [2., 1.]])
        >>> classes
        tensor([2, 7])
    """
    mu = check_mean_activations(mean_activations)
    labels = _check_labels(labels, mu.shape[0]).to(mu.device)
    classes, inverse = torch.unique(labels, sorted=True, return_inverse=True)
    sums = mu.new_zeros(classes.shape[0], mu.shape[1]).index_add_(0, inverse, mu)
    counts = mu.new_zeros(classes.shape[0]).index_add_(0, inverse, torch.ones_like(mu[:, 0]))
    return sums / counts.unsqueeze(1), classes


def classmem(
    mean_activations: Tensor,
    labels: Tensor,
    reduction: str = "mean",
    negative: str = "clamp",
) -> Tensor:
    """ClassMem of every unit (Wang et al., NeurIPS 2024, Sec. 3).

    The UnitMem formula (:func:`~lightning_memloc.functional.unitmem`) applied to the per-class
    means of :func:`class_means`. The negative-value policy is applied to the class means (the
    quantities that enter the formula), not to the individual candidates.

    Args:
        mean_activations: ``(N, U)`` mean activation of each unit per candidate.
        labels: ``LongTensor[N]`` class id (``>= 0``) of each candidate; at least 2 classes.
        reduction: ``"mean"`` (the paper) or ``"median"`` over the other ``C − 1`` classes.
        negative: ``"clamp"``, ``"shift"`` or ``"error"``, see
            :func:`~lightning_memloc.functional.apply_negative_policy`.

    Returns:
        ``Tensor[U]`` of scores in ``[0, 1]``; dead units score 0.

    Raises:
        ValueError: fewer than 2 classes, labels of the wrong length, NaN/inf, unknown options.

    Example:
        >>> mu = torch.tensor([[4.0, 1.0], [2.0, 1.0], [1.0, 1.0]])
        >>> classmem(mu, torch.tensor([0, 0, 1]))
        tensor([0.5000, 0.0000])
    """
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("negative", negative, NEGATIVE_POLICIES)
    means, classes = class_means(mean_activations, labels)
    if classes.shape[0] < 2:
        raise ValueError(
            f"`labels` must contain at least 2 distinct classes for ClassMem, got "
            f"{classes.tolist()}: ClassMem compares the most activating class with the others."
        )
    return unitmem(means, reduction=reduction, negative=negative)
