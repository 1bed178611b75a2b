"""Cosine kNN accuracy with temperature-weighted votes: the SSL community's standard utility probe.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) read memorization
next to downstream utility (the SSLMem paper's point is that the two go together). The utility
probe here is the weighted kNN classifier of Wu et al. (*Unsupervised Feature Learning via
Non-Parametric Instance Discrimination*, CVPR 2018), as used to monitor SimCLR/MoCo/DINO: cosine
similarity to a labelled feature bank, the k most similar bank items vote for their class with
weight ``exp(similarity / temperature)``, the class with the largest summed weight wins. The
voting is :func:`lightly.utils.benchmarking.knn_predict`; this module only normalises, checks
arguments and counts hits.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor

from lightning_memloc.checks import check_int

__all__ = ["check_knn_args", "knn_correct", "knn_accuracy"]


def check_knn_args(ks: Sequence[int], temperature: float) -> Tuple[Tuple[int, ...], float]:
    """Validate neighbour counts and temperature; returns them as a sorted tuple of ints and a float.

    Example:
        >>> check_knn_args([200, 20], 0.1)
        ((20, 200), 0.1)
    """
    if isinstance(ks, (int, str)) or not len(ks):
        raise ValueError(f"`ks` must be a non-empty sequence of ints >= 1 such as (20, 200), got {ks!r}.")
    out = [check_int("ks", k, 1) for k in ks]
    if len(set(out)) != len(out):
        raise ValueError(f"`ks` has repeated values: {ks!r}.")
    if not float(temperature) > 0:
        raise ValueError(f"`temperature` must be > 0 (0.1 is the standard), got {temperature!r}.")
    return tuple(sorted(out)), float(temperature)


def _check_features(bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor) -> None:
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D) with the same D, got bank {tuple(bank.shape)} "
                         f"and queries {tuple(queries.shape)}.")
    if bank_labels.shape != (bank.shape[0],) or query_labels.shape != (queries.shape[0],):
        raise ValueError(f"labels must be (N,) and (M,) matching the features, got {tuple(bank_labels.shape)} "
                         f"and {tuple(query_labels.shape)}.")


def knn_correct(bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor, num_classes: int,
                ks: Sequence[int] = (20, 200), temperature: float = 0.1, chunk: int = 256) -> Dict[int, int]:
    """Number of queries that the weighted cosine kNN classifier labels correctly, per ``k``.

    Features are L2-normalised here (cosine similarity). Queries are processed ``chunk`` at a time,
    so a shard of a test set can be counted on each rank and the counts summed.

    Args:
        bank: (N, D) features of the labelled bank (e.g. the training set).
        bank_labels: (N,) integer labels in ``[0, num_classes)``.
        queries: (M, D) features to classify (e.g. a held-out test set).
        query_labels: (M,) their true labels.
        num_classes: number of classes.
        ks: neighbour counts; each must be ≤ N.
        temperature: the vote weight is ``exp(cosine / temperature)``.
        chunk: queries per similarity matrix (memory: ``chunk × N``).

    Returns:
        ``{k: number of correct top-1 predictions}``.

    Example:
        >>> bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.2]])
        >>> knn_correct(bank, torch.tensor([0, 1, 0]), torch.tensor([[1.0, 0.1]]), torch.tensor([0]), 2, ks=(1, 3))
        {1: 1, 3: 1}
    """
    from lightly.utils.benchmarking import knn_predict  # lightly is a core dependency; imported on use

    ks, temperature = check_knn_args(ks, temperature)
    _check_features(bank, bank_labels, queries, query_labels)
    if ks[-1] > bank.shape[0]:
        raise ValueError(f"`ks` asks for {ks[-1]} neighbours but the bank holds {bank.shape[0]} items: "
                         "use a larger bank or smaller `ks`.")
    bank_t = torch.nn.functional.normalize(bank.float(), dim=1).t().contiguous()
    bank_labels = bank_labels.long().to(bank.device)
    correct = {k: 0 for k in ks}
    for start in range(0, queries.shape[0], chunk):
        q = torch.nn.functional.normalize(queries[start:start + chunk].float(), dim=1)
        truth = query_labels[start:start + chunk].long().to(q.device)
        for k in ks:
            pred = knn_predict(q, bank_t, bank_labels, num_classes=num_classes, knn_k=k, knn_t=temperature)[:, 0]
            correct[k] += int((pred == truth).sum())
    return correct


def knn_accuracy(bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor, num_classes: int,
                 ks: Sequence[int] = (20, 200), temperature: float = 0.1) -> Dict[int, float]:
    """Top-1 accuracy of the weighted cosine kNN classifier, per ``k`` (see :func:`knn_correct`).

    Example:
        >>> bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.2]])
        >>> knn_accuracy(bank, torch.tensor([0, 1, 0]), torch.tensor([[1.0, 0.1], [0.1, 1.0]]),
        ...              torch.tensor([0, 0]), 2, ks=(1,))
        {1: 0.5}
    """
    if queries.shape[0] == 0:
        raise ValueError("`queries` is empty: kNN accuracy needs at least one labelled test item.")
    correct = knn_correct(bank, bank_labels, queries, query_labels, num_classes, ks, temperature)
    return {k: c / queries.shape[0] for k, c in correct.items()}
