"""Memorization vs atypicality: Spearman's ρ of kNN / class-mean distances in the embedding with SSLMem, UnitMem."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_memloc.checks import check_int
from lightning_memloc.report.report import MemorizationReport
from lightning_memloc.taps.hooks import eval_mode
from lightning_memloc.taps.probe import model_device_dtype


@torch.no_grad()
def embed(encoder: nn.Module, images: Tensor, *, batch_size: int = 256, normalize: bool = True,
          preprocess: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """``(N, D)`` embeddings of un-augmented images in eval mode (uint8 / 255; L2-normalised with ``normalize``)."""
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ValueError(f"`images` must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images).__name__)}.")
    check_int("batch_size", batch_size, 1)
    device, dtype = model_device_dtype(encoder)
    out = []
    with eval_mode(encoder):
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size]
            x = (x.float().div(255) if x.dtype == torch.uint8 else x.float()).to(device=device, dtype=dtype)
            if preprocess is not None:
                x = preprocess(x)
            out.append(encoder(x).flatten(1).float().cpu())
    z = torch.cat(out) if out else torch.zeros(0, 0)
    return F.normalize(z, dim=1) if normalize else z


def knn_distance(query: Tensor, pool: Tensor, k: int, exclude: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Mean Euclidean distance ``(N,)`` of each query ``(N, D)`` to its ``k`` nearest ``pool`` ``(M, D)`` points, and
    their indices; ``exclude`` ``(N,)``: a pool index to skip per query, or −1.

    Example:
        >>> d, i = knn_distance(torch.tensor([[0.0], [10.0]]), torch.tensor([[1.0], [3.0], [9.0]]), k=2)
        >>> d.tolist(), i.tolist()
        ([2.0, 4.0], [[0, 1], [2, 1]])
    """
    if query.ndim != 2 or pool.ndim != 2 or query.shape[1] != pool.shape[1]:
        raise ValueError(f"`query` (N, D) and `pool` (M, D) must be 2-d with the same D, got {tuple(query.shape)} "
                         f"and {tuple(pool.shape)}.")
    usable = pool.shape[0] - (1 if exclude is not None and bool((exclude >= 0).any()) else 0)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= usable:
        raise ValueError(f"`k` must be an int in [1, {usable}] (pool images available per candidate), got {k!r}.")
    dist = torch.cdist(query.double(), pool.double())
    if exclude is not None:
        exclude = torch.as_tensor(exclude, dtype=torch.long)
        if exclude.shape != (query.shape[0],):
            raise ValueError(f"`exclude` must have shape ({query.shape[0]},), got {tuple(exclude.shape)}.")
        rows = (exclude >= 0).nonzero().flatten()
        dist[rows, exclude[rows]] = float("inf")
    values, index = torch.topk(dist, k, dim=1, largest=False, sorted=True)
    return values.mean(1), index


def class_mean_distance(query: Tensor, query_labels: Tensor, pool: Tensor, pool_labels: Tensor) -> Tensor:
    """(N,) Euclidean distance of each query to the mean pool embedding of its class.

    Example:
        >>> class_mean_distance(torch.tensor([[0.0], [5.0]]), torch.tensor([0, 1]),
        ...                     torch.tensor([[1.0], [3.0], [9.0]]), torch.tensor([0, 0, 1])).tolist()
        [2.0, 4.0]
    """
    query_labels, pool_labels = torch.as_tensor(query_labels).long(), torch.as_tensor(pool_labels).long()
    if query_labels.shape != (query.shape[0],) or pool_labels.shape != (pool.shape[0],):
        raise ValueError("`query_labels` / `pool_labels` must hold one label per query / pool embedding.")
    missing = sorted(set(query_labels.tolist()) - set(pool_labels.tolist()))
    if missing:
        raise ValueError(f"classes {missing} have no pool images: a class mean needs pool images of every class.")
    out = torch.empty(query.shape[0], dtype=torch.float64)
    for c in query_labels.unique().tolist():
        rows = query_labels == c
        out[rows] = (query[rows].double() - pool[pool_labels == c].double().mean(0)).norm(dim=1)
    return out


def max_unit_mem(report: MemorizationReport, layer: str) -> Tensor:
    """``(N,)`` each candidate's highest UnitMem among the units of ``layer`` that single it out (else 0)."""
    position = {int(c): i for i, c in enumerate(report.candidate_ids.tolist())}
    out = torch.zeros(report.num_candidates, dtype=torch.float64)
    for score, owner in zip(report.unit_mem[layer].double().tolist(), report.unit_argmax[layer].tolist()):
        i = position.get(int(owner)) if int(owner) >= 0 else None
        if i is not None and score > out[i]:
            out[i] = score
    return out


def spearman(a: Any, b: Any) -> Dict[str, Optional[float]]:
    """Spearman's ρ and its two-sided p-value; ρ = 0, p = None if one side is constant."""
    from scipy.stats import spearmanr

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 3:
        raise ValueError(f"Spearman's ρ needs two 1-d samples of the same size >= 3, got {x.shape} and {y.shape}.")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"rho": 0.0, "p": None}
    rho, p = spearmanr(x, y)[:2]
    return {"rho": float(rho), "p": float(p)}


def atypicality_study(encoder: nn.Module, report: MemorizationReport, candidates: Tensor, pool: Tensor, *, k: int = 5,
                      candidate_labels: Optional[Tensor] = None, pool_labels: Optional[Tensor] = None,
                      exclude: Optional[Tensor] = None, pool_ids: Optional[Sequence[int]] = None, top: int = 8,
                      neighbours: int = 5, batch_size: int = 256, normalize: bool = True) -> Dict[str, Any]:
    """Atypicality of every candidate and its rank correlation with SSLMem and UnitMem.

    Args:
        candidates, pool: ``(N, C, H, W)`` un-augmented candidates (report order), ``(M, C, H, W)`` training images.
        candidate_labels, pool_labels: with both, the class-mean distance is added.
        exclude: ``(N,)`` pool index of each candidate itself (or −1), when the pool holds the candidates.
        pool_ids: ids to report neighbours by (default: pool positions).
        top: how many of the most memorized candidates get their ``neighbours`` listed.

    Returns:
        ``{"k", "normalize", "knn_distance", "class_mean_distance", "spearman": {"sslmem", "max_unit_mem",
        "class_mean_sslmem"}, "most_memorized": {"ids", "positions", "scores", "neighbours",
        "neighbour_positions"}}``.
    """
    if not isinstance(report, MemorizationReport):
        raise TypeError(f"`report` must be a MemorizationReport, got {type(report).__name__}.")
    n = report.num_candidates
    if not isinstance(candidates, Tensor) or candidates.ndim != 4 or candidates.shape[0] != n:
        raise ValueError(f"`candidates` must be (N, C, H, W) images of the report's {n} candidates, "
                         f"got {tuple(getattr(candidates, 'shape', ()))}.")
    if not isinstance(pool, Tensor) or pool.ndim != 4 or tuple(pool.shape[1:]) != tuple(candidates.shape[1:]):
        raise ValueError(f"`pool` must be (M, C, H, W) images shaped like the candidates {tuple(candidates.shape[1:])}, "
                         f"got {tuple(getattr(pool, 'shape', ()))}.")
    check_int("top", top, 1)
    check_int("neighbours", neighbours, 1)
    ids = list(range(len(pool))) if pool_ids is None else [int(i) for i in pool_ids]
    if len(ids) != len(pool):
        raise ValueError(f"`pool_ids` must hold one id per pool image ({len(pool)}), got {len(ids)}.")
    z_c, z_p = (embed(encoder, images, batch_size=batch_size, normalize=normalize) for images in (candidates, pool))
    dist, _ = knn_distance(z_c, z_p, k, exclude)
    usable = z_p.shape[0] - (1 if exclude is not None and bool((torch.as_tensor(exclude) >= 0).any()) else 0)
    _, near = knn_distance(z_c, z_p, min(neighbours, usable), exclude)
    labelled = candidate_labels is not None and pool_labels is not None
    cmd = class_mean_distance(z_c, candidate_labels, z_p, pool_labels) if labelled else None
    layers, ssl = report.layers, report.sslmem if report.has_reference else None
    correlations: Dict[str, Any] = {
        "max_unit_mem": {l: spearman(dist, max_unit_mem(report, l)) for l in layers},
        "sslmem": None if ssl is None else {l: spearman(dist, ssl[l].double()) for l in layers},
        "class_mean_sslmem": None if ssl is None or cmd is None else {l: spearman(cmd, ssl[l].double())
                                                                      for l in layers}}
    scores = report.candidate_scores()
    order = torch.sort(scores, descending=True, stable=True).indices[: min(top, n)]
    most = {"ids": report.candidate_ids[order].tolist(), "positions": order.tolist(), "scores": scores[order].tolist(),
            "neighbours": [[ids[j] for j in near[i].tolist()] for i in order.tolist()],
            "neighbour_positions": [near[i].tolist() for i in order.tolist()]}
    return {"k": k, "normalize": normalize, "knn_distance": dist.tolist(),
            "class_mean_distance": None if cmd is None else cmd.tolist(), "spearman": correlations,
            "most_memorized": most}
