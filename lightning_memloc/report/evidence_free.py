"""The ``align_gap`` family of :class:`~lightning_memloc.report.evidence.Evidence`: evidence without reference.

For candidates ``C`` and unseen images ``U`` exchangeable before training the reference cancels:
``E[SSLMem(C)] − E[SSLMem(U)] = E[d_f(U)] − E[d_f(C)]``, ``d_f`` the view alignments under ``f``
(``docs/evidence.md``); ``align_gap = (mean d_f(U) − mean d_f(C)) / range of d_f over C ∪ U``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import Tensor

from lightning_memloc.functional.statistics import bootstrap_difference_interval, holm
from lightning_memloc.functional.reference_free import alignment_gap, alignment_scale, membership_scores, normalise
from lightning_memloc.functional.two_sample import studentized_permutation_test

__all__ = ["ALIGN_SCALE", "TEST_NAME", "candidate_membership", "reference_free_evidence"]

#: ``meta["align_scale"]``: how ``align_gap`` is normalised.
ALIGN_SCALE = "range of f's alignments over candidates and unseen images per layer; tests on raw alignments"
#: How ``align_gap`` is tested (recorded in ``Evidence.meta["tests"]``).
TEST_NAME = "studentized permutation test of the mean raw alignment under f, unseen > candidates (Welch t)"


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
