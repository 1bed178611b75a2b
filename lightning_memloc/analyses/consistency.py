"""Consistency of memorization across layers: top-k overlap and Kendall's τ of SSLMem rankings."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
from torch import Tensor

from lightning_memloc.checks import check_int
from lightning_memloc.report.report import MemorizationReport


def _scores(values: Any, argument: str) -> np.ndarray:
    array = np.asarray(values.detach().cpu().double() if isinstance(values, Tensor) else values, dtype=np.float64)
    if array.ndim != 1 or array.size < 2:
        raise ValueError(f"`{argument}` must be a 1-d sequence of at least 2 scores, got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"`{argument}` holds NaN or inf: pass finite scores (SSLMem from a finished measurement).")
    return array


def _pair(a: Any, b: Any) -> tuple:
    x, y = _scores(a, "a"), _scores(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"`a` and `b` must score the same candidates, got {x.size} and {y.size} scores.")
    return x, y


def top_k_overlap(a: Any, b: Any, k: int) -> float:
    """``|top_k(a) ∩ top_k(b)| / k`` for two ``(N,)`` score vectors of the same candidates (ties: by order).

    Example:
        >>> top_k_overlap([4, 3, 2, 1], [1, 3, 4, 2], k=2)
        0.5
    """
    x, y = _pair(a, b)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= x.size:
        raise ValueError(f"`k` must be an int in [1, {x.size}] (the number of candidates), got {k!r}.")
    # stable sort on the negated scores: ties keep candidate order, as MemorizationReport.most_memorized
    top_x, top_y = (set(np.argsort(-scores, kind="stable")[:k].tolist()) for scores in (x, y))
    return len(top_x & top_y) / k


def kendall_tau(a: Any, b: Any) -> float:
    """Kendall's τ-b between two rankings of the same candidates; 0.0 (not NaN) when one is constant.

    Example:
        >>> kendall_tau([1, 2, 3], [3, 2, 1])
        -1.0
    """
    from scipy.stats import kendalltau

    x, y = _pair(a, b)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(kendalltau(x, y)[0])  # [0]: the statistic, in every scipy version


def consistency_matrices(scores: Mapping[str, Any], k: int) -> Dict[str, Any]:
    """``{"layers", "k" (clipped to N), "top_k_overlap", "kendall_tau"}``: L × L nested lists over layer pairs."""
    layers: List[str] = list(scores)
    if not layers:
        raise ValueError("`scores` holds no layers: pass a mapping layer -> per-candidate scores.")
    arrays = [_scores(scores[layer], f"scores[{layer!r}]") for layer in layers]
    n = arrays[0].size
    if any(a.size != n for a in arrays):
        raise ValueError(f"every layer must score the same {n} candidates, got sizes {[a.size for a in arrays]}.")
    k, size = min(check_int("k", k, 1), n), len(layers)
    overlap, tau = [[1.0] * size for _ in range(size)], [[1.0] * size for _ in range(size)]
    for i in range(size):
        for j in range(i + 1, size):
            overlap[i][j] = overlap[j][i] = top_k_overlap(arrays[i], arrays[j], k)
            tau[i][j] = tau[j][i] = kendall_tau(arrays[i], arrays[j])
    return {"layers": layers, "k": k, "top_k_overlap": overlap, "kendall_tau": tau}


def chosen_layers(report: MemorizationReport, layers: Optional[Sequence[str]]) -> List[str]:
    """``layers`` (default: all of the report's, in depth order), checked to be names in ``report``.

    Example:
        >>> import torch
        >>> r = MemorizationReport(layers=["a", "b"], layer_kinds={"a": "conv", "b": "conv"},
        ...     candidate_ids=torch.arange(2), unit_mem={l: torch.zeros(1) for l in "ab"},
        ...     unit_argmax={l: torch.zeros(1, dtype=torch.long) for l in "ab"},
        ...     dead_units={l: torch.zeros(1, dtype=torch.bool) for l in "ab"})
        >>> chosen_layers(r, None), chosen_layers(r, ["b"])
        (['a', 'b'], ['b'])
    """
    if layers is None:
        return list(report.layers)
    if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
        raise TypeError(f"`layers` must be a sequence of layer names (e.g. ['conv1', 'res2.conv2']), got {layers!r}.")
    unknown = [layer for layer in layers if layer not in report.layers]
    if unknown:
        raise ValueError(f"`layers` {unknown} are not in the report; its layers are {report.layers}.")
    return list(layers)


def layer_consistency(report: MemorizationReport, k: int = 50, layers: Sequence[str] | None = None) -> Dict[str, Any]:
    """:func:`consistency_matrices` of the SSLMem rankings (needs a reference), with ``chance_overlap = k / N`` and
    ``mean_adjacent_overlap`` / ``mean_adjacent_tau`` over consecutive layers.

    Example:
        >>> import torch
        >>> r = MemorizationReport(layers=["a", "b"], layer_kinds={"a": "conv", "b": "conv"},
        ...     candidate_ids=torch.arange(3), unit_mem={l: torch.zeros(1) for l in "ab"},
        ...     unit_argmax={l: torch.zeros(1, dtype=torch.long) for l in "ab"},
        ...     dead_units={l: torch.zeros(1, dtype=torch.bool) for l in "ab"},
        ...     sslmem={"a": torch.tensor([0.9, 0.5, 0.1]), "b": torch.tensor([0.2, 0.8, 0.1])})
        >>> round(layer_consistency(r, k=1)["kendall_tau"][0][1], 4)
        0.3333
    """
    if report.sslmem is None:
        raise ValueError("layer_consistency needs per-layer SSLMem, which needs a reference encoder: "
                         "measure with `reference=...`.")
    chosen = chosen_layers(report, layers)
    result = consistency_matrices({layer: report.sslmem[layer] for layer in chosen}, k)
    result["chance_overlap"] = result["k"] / report.num_candidates
    pairs = [(i, i + 1) for i in range(len(chosen) - 1)]
    result["mean_adjacent_overlap"] = float(np.mean([result["top_k_overlap"][i][j] for i, j in pairs])) if pairs else 1.0
    result["mean_adjacent_tau"] = float(np.mean([result["kendall_tau"][i][j] for i, j in pairs])) if pairs else 1.0
    return result
