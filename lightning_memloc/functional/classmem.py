"""ClassMem: the UnitMem formula over per-class means (Wang et al., NeurIPS 2024, Sec. 3)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_memloc.checks import NEGATIVE_POLICIES, REDUCTIONS, check_choice, check_id_vector, check_mean_activations
from lightning_memloc.functional.unitmem import unitmem


def class_means(mean_activations: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of ``(N, U)`` per-candidate means over each class's members: ``(means (C, U), sorted classes (C,))``.

    Example:
        >>> means, classes = class_means(torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]]), torch.tensor([7, 7, 2]))
        >>> means.tolist(), classes.tolist()
        ([[5.0, 5.0], [2.0, 1.0]], [2, 7])
    """
    mu = check_mean_activations(mean_activations)
    labels = check_id_vector("labels", labels, mu.shape[0], "mean_activations", "class id")
    if mu.shape[0] > 0 and bool((labels < 0).any()):
        raise ValueError("`labels` must be >= 0; negative ids (e.g. -1 for 'no label') are not classes. "
                         "Drop unlabelled candidates before computing ClassMem.")
    labels = labels.long().to(mu.device)
    classes, inverse = torch.unique(labels, sorted=True, return_inverse=True)
    sums = mu.new_zeros(classes.shape[0], mu.shape[1]).index_add_(0, inverse, mu)
    counts = mu.new_zeros(classes.shape[0]).index_add_(0, inverse, torch.ones_like(mu[:, 0]))
    return sums / counts.unsqueeze(1), classes


def classmem(mean_activations: Tensor, labels: Tensor, reduction: str = "mean", negative: str = "clamp") -> Tensor:
    """ClassMem ``(U,)`` in ``[0, 1]``: :func:`~lightning_memloc.functional.unitmem` over :func:`class_means`.

    ``mean_activations`` is ``(N, U)``, ``labels`` ``(N,)`` ids ``>= 0`` of at least 2 classes; ``negative``
    applies to the class means.

    Example:
        >>> classmem(torch.tensor([[4.0, 1.0], [2.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 0, 1]))
        tensor([0.5000, 0.0000])
    """
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("negative", negative, NEGATIVE_POLICIES)
    means, classes = class_means(mean_activations, labels)
    if classes.shape[0] < 2:
        raise ValueError(f"`labels` must contain at least 2 distinct classes for ClassMem, got "
                         f"{classes.tolist()}: ClassMem compares the most activating class with the others.")
    return unitmem(means, reduction=reduction, negative=negative)
