"""Weighted cosine kNN accuracy (Wu et al., CVPR 2018; voting by lightly's ``knn_predict``): the utility probe."""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor

from lightning_memloc.checks import check_int


def check_knn_args(ks: Sequence[int], temperature: float) -> Tuple[Tuple[int, ...], float]:
    """Validate ``ks`` and ``temperature``; returns ``(sorted ks, temperature)``.

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


def knn_correct(bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor, num_classes: int,
                ks: Sequence[int] = (20, 200), temperature: float = 0.1, chunk: int = 256) -> Dict[int, int]:
    """``{k: correct top-1 predictions}`` of ``(M, D)`` queries against an ``(N, D)`` labelled bank.

    Vote weight ``exp(cosine / temperature)``; ``chunk`` queries per ``(chunk, N)`` similarity matrix.

    Example:
        >>> bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.2]])
        >>> knn_correct(bank, torch.tensor([0, 1, 0]), torch.tensor([[1.0, 0.1]]), torch.tensor([0]), 2, ks=(1, 3))
        {1: 1, 3: 1}
    """
    from lightly.utils.benchmarking import knn_predict  # lightly is a core dependency; imported on use

    ks, temperature = check_knn_args(ks, temperature)
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D) with the same D, got bank {tuple(bank.shape)} "
                         f"and queries {tuple(queries.shape)}.")
    if bank_labels.shape != (bank.shape[0],) or query_labels.shape != (queries.shape[0],):
        raise ValueError(f"labels must be (N,) and (M,) matching the features, got {tuple(bank_labels.shape)} "
                         f"and {tuple(query_labels.shape)}.")
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
    """Top-1 accuracy per ``k`` (see :func:`knn_correct`).

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
