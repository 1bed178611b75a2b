"""LayerMem's evidence: intervals of LayerMem / ΔLayerMem / top-k; candidates against a control and an unseen set.

Every group is on the candidates' scale (their range of raw SSLMem per layer); excesses are tested on raw SSLMem.

The ``align_gap`` family is evidence without reference: for candidates ``C`` and unseen images ``U`` exchangeable before
training the reference cancels, ``E[SSLMem(C)] − E[SSLMem(U)] = E[d_f(U)] − E[d_f(C)]``, ``d_f`` the view alignments
under ``f`` (``docs/evidence.md``); ``align_gap = (mean d_f(U) − mean d_f(C)) / range of d_f over C ∪ U``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from lightning_memloc.functional.sslmem import alignment_gap, alignment_scale, membership_scores, normalise
from lightning_memloc.functional.statistics import bootstrap_difference_interval, bootstrap_topk_interval, holm
from lightning_memloc.functional.two_sample import bootstrap_t_interval, studentized_permutation_test

__all__ = ["ALIGN_SCALE", "TEST_NAMES", "Nulls", "candidate_membership", "layer_mem_evidence",
           "reference_free_evidence"]

Record = Dict[str, Optional[float]]
#: test -> (layers, estimate (L,), scale (L,), null (B, L)): what a bound matching the test needs.
Nulls = Dict[str, Tuple[List[str], Tensor, Tensor, Tensor]]
#: How each group's excess, and ``align_gap``, is tested (recorded in ``Evidence.meta["tests"]``).
TEST_NAMES = {"excess": "studentized permutation test of the mean raw SSLMem, candidates > control (Welch t)",
              "excess_unseen": "studentized permutation test of the mean raw SSLMem, candidates > unseen (Welch t)",
              "align_gap": "studentized permutation test of the mean raw alignment under f, unseen > candidates "
                           "(Welch t)"}


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


#: ``meta["align_scale"]``: how ``align_gap`` is normalised.
ALIGN_SCALE = "range of f's alignments over candidates and unseen images per layer; tests on raw alignments"


def reference_free_evidence(layers: List[str], candidates: Mapping[str, Tensor], unseen: Mapping[str, Tensor],
                            records: Dict[str, Dict[str, Optional[float]]], meta: Dict[str, Any], *,
                            bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0,
                            nulls: Optional[Dict[str, Any]] = None) -> None:
    """Add ``align_gap`` (``_lo`` / ``_hi`` / ``_p`` / ``_p_holm``), ``align_f_candidates`` / ``align_f_unseen``
    (mean raw alignments), ``align_auc`` (mean membership score) to ``records``; ``align_membership`` and
    ``align_scale`` to ``meta``.

    Args:
        candidates, unseen: layer -> ``(N,)`` / ``(M,)`` raw alignments under ``f``.
        bootstrap: resamples of the interval and relabellings of the test (0: neither); ``nulls`` gets the test's null.

    Example:
        >>> records, meta = {"a": {}}, {}
        >>> reference_free_evidence(["a"], {"a": torch.tensor([0.2, 0.3, 0.4])}, {"a": torch.tensor([0.5, 0.6, 0.7])},
        ...                         records, meta, bootstrap=0)
        >>> round(records["a"]["align_gap"], 3), records["a"]["align_auc"], meta["align_membership"]["a"]
        (0.6, 1.0, [1.0, 1.0, 1.0])
    """
    c = torch.stack([candidates[layer].detach().double().cpu() for layer in layers])
    u = torch.stack([unseen[layer].detach().double().cpu() for layer in layers])
    gap, mean_c, mean_u = alignment_gap(c, u)
    scores = membership_scores(c, u)
    lo = hi = test = None
    if bootstrap:
        scale = alignment_scale(c, u)
        lo, hi = bootstrap_difference_interval(normalise(u, scale), normalise(c, scale), bootstrap, confidence, seed + 29)
        if c.shape[1] >= 2 and u.shape[1] >= 2:
            test = studentized_permutation_test(u, c, bootstrap, seed + 37)
            if nulls is not None:
                se = torch.where(scale[:, 0] > 0, test["se"] / scale[:, 0], torch.full_like(test["se"], math.nan))
                nulls["align_gap"] = (list(layers), gap, se, test["null"])
    for i, layer in enumerate(layers):
        rec = records[layer]
        rec["align_gap"], rec["align_f_candidates"], rec["align_f_unseen"] = float(gap[i]), float(mean_c[i]), float(mean_u[i])
        rec["align_auc"] = float(scores[i].mean())
        rec["align_gap_lo"] = None if lo is None else float(lo[i])
        rec["align_gap_hi"] = None if hi is None else float(hi[i])
        p = math.nan if test is None else float(test["p"][i])
        rec["align_gap_p"] = None if math.isnan(p) else p
    pvalues = [records[layer]["align_gap_p"] for layer in layers]
    for layer, p_holm in zip(layers, holm(pvalues)):  # this family alone; the overall verdict corrects again
        records[layer]["align_gap_p_holm"] = p_holm
    meta["align_membership"] = {layer: scores[i].tolist() for i, layer in enumerate(layers)}
    meta["align_scale"] = ALIGN_SCALE
    meta.setdefault("groups", {})["unseen"] = int(u.shape[1])


def candidate_membership(evidence: Any, layer: str) -> Tensor:
    """Per-candidate membership scores of ``layer`` from a report's evidence (needs ``unseen=``)."""
    per_layer = dict(getattr(evidence, "meta", {}) or {}).get("align_membership")
    if not per_layer:
        raise ValueError("this evidence has no membership scores: measure with `unseen=` (images the encoder never "
                         "trained on) and pairing='anchor' or views >= 2.")
    if layer not in per_layer:
        raise KeyError(f"layer {layer!r} has no membership scores; layers: {sorted(per_layer)}.")
    return torch.tensor(per_layer[layer], dtype=torch.float64)
