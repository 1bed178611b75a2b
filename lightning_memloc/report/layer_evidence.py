"""LayerMem's evidence: intervals of LayerMem / ΔLayerMem / top-k; candidates against a control and an unseen set.

Every group is on the candidates' scale (their range of raw SSLMem per layer); excesses are tested on raw SSLMem.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from lightning_memloc.functional.statistics import bootstrap_topk_interval
from lightning_memloc.functional.two_sample import bootstrap_t_interval, studentized_permutation_test

__all__ = ["TEST_NAMES", "Nulls", "layer_mem_evidence"]

Record = Dict[str, Optional[float]]
#: test -> (layers, estimate (L,), scale (L,), null (B, L)): what a bound matching the test needs.
Nulls = Dict[str, Tuple[List[str], Tensor, Tensor, Tensor]]
#: How each group's excess is tested (recorded in ``Evidence.meta["tests"]``).
TEST_NAMES = {"excess": "studentized permutation test of the mean raw SSLMem, candidates > control (Welch t)",
              "excess_unseen": "studentized permutation test of the mean raw SSLMem, candidates > unseen (Welch t)"}


def _normalise(raw: Tensor, scale: Tensor) -> Tensor:
    """``raw / scale`` per layer (rows); 0 where the candidates' range is 0, NaN where it is NaN."""
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, raw / safe, torch.where(torch.isnan(scale), scale, torch.zeros_like(raw)))


def _topk_means(norm: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    if not bool(torch.isfinite(norm[-1]).all()):  # the ranking layer is undefined: so is every top-k
        nan = torch.full_like(norm[:, 0], math.nan)
        return nan, nan
    order = norm[-1].argsort(descending=True, stable=True)
    k = min(k, norm.shape[1])
    return norm[:, order[:k]].mean(1), norm[:, order[norm.shape[1] - k:]].mean(1)


def _warn_nonfinite(layers: List[str], values: Tensor, group: str, meta: Dict[str, Any]) -> Tensor:
    """Warn per layer whose ``values`` row holds NaN / inf; returns the bad-row mask."""
    bad = ~torch.isfinite(values).all(dim=1)
    for i in bad.nonzero().flatten().tolist():
        count = int((~torch.isfinite(values[i])).sum())
        warnings.warn(f"[memloc] layer {layers[i]!r}: {count} non-finite raw SSLMem value(s) among the {group}; "
                      "its LayerMem figures are NaN (not 0) — check the encoders' outputs at that layer.",
                      RuntimeWarning, stacklevel=3)
        meta.setdefault("nonfinite", {}).setdefault(layers[i], []).append(group)
    return bad


def layer_mem_evidence(layers: List[str], cand: Tensor, groups: Mapping[str, Tensor], top_k: int, options: Any,
                       records: Dict[str, Record], group_sslmem: Dict[str, Dict[str, List[float]]],
                       nulls: Nulls, meta: Dict[str, Any]) -> None:
    """Fill ``records``, ``group_sslmem`` (per-image, candidates' scale) and ``nulls`` with LayerMem's evidence.

    ``cand``: ``(L, N)`` candidates' raw SSLMem; ``groups``: ``"control"`` / ``"unseen"`` -> ``(L, M)`` raw SSLMem.
    """
    bad = _warn_nonfinite(layers, cand, "candidates", meta)
    finite = torch.where(bad[:, None], torch.zeros_like(cand), cand)
    scale = finite.amax(1, keepdim=True) - finite.amin(1, keepdim=True)
    scale = torch.where(bad[:, None], torch.full_like(scale, math.nan), scale)  # (L, 1), the candidates' range
    norm = _normalise(cand, scale)
    delta = norm - torch.cat([torch.zeros_like(norm[:1]), norm[:-1]])
    top, least = _topk_means(norm, top_k)
    for i, layer in enumerate(layers):
        rec = records[layer]
        rec["layer_mem"], rec["delta_layer_mem"] = float(norm[i].mean()), float(delta[i].mean())
        rec["layer_mem_top"], rec["layer_mem_least"] = float(top[i]), float(least[i])
    boot, conf, seed = options.bootstrap, options.confidence, options.seed
    if boot and cand.shape[1] >= 2:
        lm_lo, lm_hi = bootstrap_t_interval(norm, None, boot, conf, seed)
        d_lo, d_hi = bootstrap_t_interval(delta, None, boot, conf, seed)
        t_lo, t_hi, l_lo, l_hi = bootstrap_topk_interval(norm, top_k, boot, conf, seed)
        if not bool(torch.isfinite(norm[-1]).all()):
            t_lo = t_hi = l_lo = l_hi = torch.full_like(lm_lo, math.nan)
        for i, layer in enumerate(layers):
            for key, lo, hi in (("layer_mem", lm_lo, lm_hi), ("delta_layer_mem", d_lo, d_hi),
                                ("layer_mem_top", t_lo, t_hi), ("layer_mem_least", l_lo, l_hi)):
                records[layer][f"{key}_lo"], records[layer][f"{key}_hi"] = float(lo[i]), float(hi[i])
    for group, raw in groups.items():
        _warn_nonfinite(layers, raw, group, meta)
        g_norm = _normalise(raw, scale)
        group_sslmem[group] = {layer: g_norm[i].tolist() for i, layer in enumerate(layers)}
        key = "excess" if group == "control" else "excess_unseen"
        if group == "control":
            g_delta = g_norm - torch.cat([torch.zeros_like(g_norm[:1]), g_norm[:-1]])
            g_top, g_least = _topk_means(g_norm, top_k)
        excess = norm.mean(1) - g_norm.mean(1)
        lo = hi = p = None
        if boot and raw.shape[1] >= 2 and cand.shape[1] >= 2:
            lo, hi = bootstrap_t_interval(norm, g_norm, boot, conf, seed + 7)
            test = studentized_permutation_test(cand, raw, boot, seed + (29 if group == "control" else 31))
            p = test["p"]
            se_norm = torch.where(scale[:, 0] > 0, test["se"] / scale[:, 0], torch.full_like(test["se"], math.nan))
            nulls[key] = (list(layers), excess, se_norm, test["null"])
        for i, layer in enumerate(layers):
            rec = records[layer]
            if group == "control":
                rec.update(control_layer_mem=float(g_norm[i].mean()), control_delta_layer_mem=float(g_delta[i].mean()),
                           control_layer_mem_top=float(g_top[i]), control_layer_mem_least=float(g_least[i]))
            else:
                rec["unseen_layer_mem"] = float(g_norm[i].mean())
            rec[key] = float(excess[i])
            rec[f"{key}_lo"] = None if lo is None else float(lo[i])
            rec[f"{key}_hi"] = None if hi is None else float(hi[i])
            rec[f"{key}_p"] = None if p is None or math.isnan(float(p[i])) else float(p[i])
