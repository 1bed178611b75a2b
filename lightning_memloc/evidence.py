"""``Evidence``: every memorization figure of a report with its control and its uncertainty.

Two encoders trained from different seeds differ at every layer even if neither memorized
anything: SSLMem of the candidates alone mixes that offset ``o_l`` with memorization
(``../shared/DESIGN.md`` §6). This module compares the candidates (seen by ``f`` only) with

- a **control** set both encoders trained on (``E[Δ] = o_l``): the *excess* of the candidates'
  LayerMem over the control's estimates ``f``'s memorization alone;
- an **unseen** set ``f`` never trained on (a test split, or ``g``'s independent part when
  co-training): for LayerMem ``C − U`` tests "no memorization at all" (with ``g``'s independent
  part it estimates ``f``'s plus ``g``'s memorization); for UnitMem, the argmax membership test
  asks whether units' μmax image is a *training* image more often than chance.

Scale: every group is normalised by the **candidates'** range of raw SSLMem at each layer (the
candidates' own figures are then identical with or without a control), and the tests are run on
raw SSLMem (a t-statistic does not change when both samples are divided by one constant).
Intervals are seeded percentile bootstraps over candidates; p-values are one-sided (Welch, as
the authors' ``Ttest.py``; permutations over images for the membership test) and Holm-corrected
across layers (Wang et al., *Localizing Memorization in SSL Vision Encoders*, NeurIPS 2024).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import Tensor

from lightning_memloc.functional.evidence import (
    standard_error_interval,
    bootstrap_difference_interval,
    bootstrap_indices,
    bootstrap_mean_interval,
    bootstrap_topk_interval,
    holm,
    membership_test,
    samples_for_halfwidth,
    weighted_mean_unitmem,
    welch_greater,
)
from lightning_memloc.evidence_free import reference_free_evidence
from lightning_memloc.functional.unitmem import unitmem

Record = Dict[str, Optional[float]]


@dataclass
class EvidenceOptions:
    """How intervals and tests are computed.

    Attributes:
        bootstrap: bootstrap resamples (and permutations) per interval / test; 0 turns
            intervals and tests off.
        confidence: coverage of the intervals.
        alpha: significance level of the Holm-corrected tests.
        seed: seed of every resampling (results are reproducible).
        target_halfwidth: interval half-width (normalised SSLMem) above which the report prints
            how many candidates would narrow it to this value.
    """

    bootstrap: int = 1000
    confidence: float = 0.95
    alpha: float = 0.05
    seed: int = 0
    target_halfwidth: float = 0.02

    def __post_init__(self) -> None:
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) or self.bootstrap < 0:
            raise ValueError(f"`bootstrap` must be an int >= 0 (0: no intervals or tests), got {self.bootstrap!r}.")
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, (int, float)) or not 0.0 < float(self.confidence) < 1.0:
            raise ValueError(f"`confidence` must be in (0, 1), e.g. 0.95, got {self.confidence!r}.")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 < float(self.alpha) < 1.0:
            raise ValueError(f"`alpha` must be in (0, 1), e.g. 0.05, got {self.alpha!r}.")
        if not float(self.target_halfwidth) > 0:
            raise ValueError(f"`target_halfwidth` must be > 0, got {self.target_halfwidth!r}.")


@dataclass
class Evidence:
    """Intervals, controls and tests of one report, per layer (flat records of floats).

    Attributes:
        layers: layer -> record. Keys (``None`` where the input needed is missing):
            ``layer_mem``, ``delta_layer_mem``, ``layer_mem_top``, ``layer_mem_least`` and
            ``unit_mem_mean``, each with ``_lo`` / ``_hi`` interval bounds; with a control:
            ``control_layer_mem``, ``control_delta_layer_mem``, ``control_layer_mem_top``,
            ``control_layer_mem_least``, ``excess`` (+ ``_lo``/``_hi``), ``excess_p``,
            ``excess_p_holm``; with an unseen set: ``unseen_layer_mem``, ``excess_unseen``
            (+ bounds, ``_p``, ``_p_holm``), ``unit_mem_seen``, ``unit_mem_unseen`` (mean UnitMem
            on equal-size samples of candidates and unseen images), ``unit_mem_excess``
            (+ bounds, ``_p``, ``_p_holm``), ``membership``, ``membership_chance``,
            ``membership_p``, ``membership_p_holm``, ``membership_alive``; with an unseen set and
            ``f``'s alignments (no reference needed): ``align_gap`` (+ ``_lo``/``_hi``, ``_p``,
            ``_p_holm``), ``align_f_candidates``, ``align_f_unseen``, ``align_auc``
            (:mod:`lightning_memloc.evidence_free`).
        group_sslmem: group (``"control"``, ``"unseen"``) -> layer -> per-image SSLMem on the
            candidates' scale.
        meta: options, group sizes, significant layers and the hint; with ``align_gap``,
            ``align_membership`` (layer -> per-candidate membership score) and ``align_scale``.
    """

    layers: Dict[str, Record]
    group_sslmem: Dict[str, Dict[str, List[float]]] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)

    def significant_layers(self, test: str = "excess") -> List[str]:
        """Layers whose Holm-corrected ``test`` p-value (``"excess"``, ``"excess_unseen"``,
        ``"membership"``, ``"unit_mem_excess"``, ``"align_gap"``) is below ``alpha``."""
        alpha = float(self.meta.get("alpha", 0.05))
        key = f"{test}_p_holm"
        return [layer for layer, rec in self.layers.items() if rec.get(key) is not None and rec[key] < alpha]

    def has(self, key: str) -> bool:
        """Whether any layer has a value for ``key`` (e.g. ``"excess"`` needs a control)."""
        return any(rec.get(key) is not None for rec in self.layers.values())

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready (non-finite floats become ``None``)."""
        clean = {layer: {k: _finite_or_none(v) for k, v in rec.items()} for layer, rec in self.layers.items()}
        return {"layers": clean, "group_sslmem": self.group_sslmem, "meta": self.meta}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Evidence":
        """Inverse of :meth:`to_dict`."""
        layers = {str(layer): {str(k): (None if v is None else float(v)) for k, v in rec.items()}
                  for layer, rec in dict(data["layers"]).items()}
        groups = {str(g): {str(layer): [float(x) for x in values] for layer, values in per.items()}
                  for g, per in dict(data.get("group_sslmem") or {}).items()}
        return cls(layers=layers, group_sslmem=groups, meta=dict(data.get("meta") or {}))


def _finite_or_none(value: Optional[float]) -> Optional[float]:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _normalise(raw: Tensor, scale: Tensor) -> Tensor:
    """``raw / scale`` per layer (rows), 0 where the candidates' range is 0 (as ``sslmem``)."""
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, raw / safe, torch.zeros_like(raw))


def _topk_means(norm: Tensor, k: int) -> tuple[Tensor, Tensor]:
    order = norm[-1].argsort(descending=True, stable=True)
    k = min(k, norm.shape[1])
    return norm[:, order[:k]].mean(1), norm[:, order[norm.shape[1] - k:]].mean(1)


def _unitmem_resamples(mu: Tensor, weights: Tensor, reduction: str) -> Tensor:
    """Mean UnitMem per multiset (rows of ``weights``); the median path draws each explicitly."""
    if reduction == "mean":
        return weighted_mean_unitmem(mu, weights)
    out = []
    positions = torch.arange(mu.shape[0])
    for row in weights:
        drawn = positions.repeat_interleave(row.long())
        out.append(float(unitmem(mu[drawn].double(), reduction="median", negative="clamp").mean()))
    return torch.tensor(out, dtype=torch.float64)


def _layer_mem_evidence(layers: List[str], cand: Tensor, groups: Mapping[str, Tensor], top_k: int,
                        opts: EvidenceOptions, records: Dict[str, Record], group_sslmem: Dict[str, Dict[str, List[float]]]) -> None:
    """LayerMem / ΔLayerMem / top-k intervals and the control / unseen comparisons (in place)."""
    scale = cand.amax(1, keepdim=True) - cand.amin(1, keepdim=True)  # (L, 1), the candidates' range
    norm = _normalise(cand, scale)
    delta = norm - torch.cat([torch.zeros_like(norm[:1]), norm[:-1]])
    top, least = _topk_means(norm, top_k)
    for i, layer in enumerate(layers):
        rec = records[layer]
        rec["layer_mem"], rec["delta_layer_mem"] = float(norm[i].mean()), float(delta[i].mean())
        rec["layer_mem_top"], rec["layer_mem_least"] = float(top[i]), float(least[i])
    if opts.bootstrap and cand.shape[1] >= 2:
        lm_lo, lm_hi = bootstrap_mean_interval(norm, opts.bootstrap, opts.confidence, opts.seed)
        d_lo, d_hi = bootstrap_mean_interval(delta, opts.bootstrap, opts.confidence, opts.seed)
        t_lo, t_hi, l_lo, l_hi = bootstrap_topk_interval(norm, top_k, opts.bootstrap, opts.confidence, opts.seed)
        for i, layer in enumerate(layers):
            for key, lo, hi in (("layer_mem", lm_lo, lm_hi), ("delta_layer_mem", d_lo, d_hi),
                                ("layer_mem_top", t_lo, t_hi), ("layer_mem_least", l_lo, l_hi)):
                records[layer][f"{key}_lo"], records[layer][f"{key}_hi"] = float(lo[i]), float(hi[i])
    for group, raw in groups.items():
        g_norm = _normalise(raw, scale)
        group_sslmem[group] = {layer: g_norm[i].tolist() for i, layer in enumerate(layers)}
        excess_key = "excess" if group == "control" else "excess_unseen"
        if group == "control":
            g_delta = g_norm - torch.cat([torch.zeros_like(g_norm[:1]), g_norm[:-1]])
            g_top, g_least = _topk_means(g_norm, top_k)
            for i, layer in enumerate(layers):
                records[layer]["control_layer_mem"] = float(g_norm[i].mean())
                records[layer]["control_delta_layer_mem"] = float(g_delta[i].mean())
                records[layer]["control_layer_mem_top"], records[layer]["control_layer_mem_least"] = float(g_top[i]), float(g_least[i])
        else:
            for i, layer in enumerate(layers):
                records[layer]["unseen_layer_mem"] = float(g_norm[i].mean())
        lo = hi = None
        if opts.bootstrap:
            lo, hi = bootstrap_difference_interval(norm, g_norm, opts.bootstrap, opts.confidence, opts.seed + 7)
        pvalues = []
        for i, layer in enumerate(layers):
            rec = records[layer]
            rec[excess_key] = float(norm[i].mean() - g_norm[i].mean())
            rec[f"{excess_key}_lo"] = None if lo is None else float(lo[i])
            rec[f"{excess_key}_hi"] = None if hi is None else float(hi[i])
            _, _, p = welch_greater(cand[i], raw[i]) if opts.bootstrap else (None, None, None)
            rec[f"{excess_key}_p"] = None if p is None or math.isnan(p) else p
            pvalues.append(rec[f"{excess_key}_p"])
        for layer, p in zip(layers, holm(pvalues)):
            records[layer][f"{excess_key}_p_holm"] = p


def _unit_mem_evidence(layers: List[str], mu: Mapping[str, Tensor], mu_unseen: Optional[Mapping[str, Tensor]],
                       reduction: str, opts: EvidenceOptions, records: Dict[str, Record]) -> None:
    """Mean UnitMem intervals, UnitMem seen vs unseen and the membership test (in place)."""
    p_excess: List[Optional[float]] = []
    p_member: List[Optional[float]] = []
    for li, layer in enumerate(layers):
        rec = records[layer]
        m = mu[layer].double()
        n = m.shape[0]
        rec["unit_mem_mean"] = float(unitmem(m, reduction=reduction, negative="clamp").mean())
        if opts.bootstrap:
            counts = _counts(bootstrap_indices(n, opts.bootstrap, opts.seed + 11 + li), n)
            lo, hi = standard_error_interval(_unitmem_resamples(m, counts, reduction), rec["unit_mem_mean"], opts.confidence)
            rec["unit_mem_mean_lo"], rec["unit_mem_mean_hi"] = lo, hi
        if mu_unseen is None:
            continue
        u = mu_unseen[layer].double()
        size = min(n, u.shape[0])
        gen = torch.Generator().manual_seed((opts.seed + 13 + li) & (2**63 - 1))  # seeds near 2**64 overflowed
        seen_s, unseen_s = m[torch.randperm(n, generator=gen)[:size]], u[torch.randperm(u.shape[0], generator=gen)[:size]]
        a = float(unitmem(seen_s, reduction=reduction, negative="clamp").mean())
        b = float(unitmem(unseen_s, reduction=reduction, negative="clamp").mean())
        rec["unit_mem_seen"], rec["unit_mem_unseen"], rec["unit_mem_excess"] = a, b, a - b
        member = membership_test(torch.cat([m, u]), torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(u.shape[0], dtype=torch.bool)]),
                                 n_perm=max(opts.bootstrap, 1), seed=opts.seed + 17 + li)
        rec["membership"], rec["membership_chance"], rec["membership_alive"] = member["fraction"], member["chance"], float(member["alive"])
        rec["membership_p"] = None if not opts.bootstrap or math.isnan(member["p"]) else member["p"]
        p_member.append(rec["membership_p"])
        if opts.bootstrap:
            ca = _counts(bootstrap_indices(size, opts.bootstrap, opts.seed + 19 + li), size)
            cb = _counts(bootstrap_indices(size, opts.bootstrap, opts.seed + 23 + li), size)
            diff = _unitmem_resamples(seen_s, ca, reduction) - _unitmem_resamples(unseen_s, cb, reduction)
            lo, hi = standard_error_interval(diff, a - b, opts.confidence)
            rec["unit_mem_excess_lo"], rec["unit_mem_excess_hi"] = lo, hi
            # permutation null: the 2·size images' seen / unseen labels are exchangeable
            pool = torch.cat([seen_s, unseen_s])
            perms = torch.argsort(torch.rand(opts.bootstrap, 2 * size, generator=gen), dim=1)
            first = torch.zeros(opts.bootstrap, 2 * size, dtype=torch.float64).scatter_(1, perms[:, :size], 1.0)
            null = _unitmem_resamples(pool, first, reduction) - _unitmem_resamples(pool, 1.0 - first, reduction)
            rec["unit_mem_excess_p"] = (1.0 + float((null >= a - b - 1e-12).sum())) / (1.0 + opts.bootstrap)
        else:
            rec["unit_mem_excess_lo"] = rec["unit_mem_excess_hi"] = rec["unit_mem_excess_p"] = None
        p_excess.append(rec["unit_mem_excess_p"])
    if mu_unseen is not None:
        for layer, pe, pm in zip(layers, holm(p_excess), holm(p_member)):
            records[layer]["unit_mem_excess_p_holm"], records[layer]["membership_p_holm"] = pe, pm


def _counts(index: Tensor, n: int) -> Tensor:
    """Bootstrap indices ``(B, n)`` as per-candidate counts ``(B, n)`` (float64)."""
    return torch.zeros(index.shape[0], n, dtype=torch.float64).scatter_add_(1, index, torch.ones_like(index, dtype=torch.float64))


def compute_evidence(
    layers: List[str],
    *,
    unit_means: Mapping[str, Tensor],
    reduction: str = "mean",
    top_k: int = 50,
    sslmem_raw: Optional[Mapping[str, Tensor]] = None,
    control_raw: Optional[Mapping[str, Tensor]] = None,
    unseen_raw: Optional[Mapping[str, Tensor]] = None,
    unseen_unit_means: Optional[Mapping[str, Tensor]] = None,
    options: Optional[EvidenceOptions] = None,
    align: Optional[Mapping[str, Tensor]] = None,
    unseen_align: Optional[Mapping[str, Tensor]] = None,
) -> Evidence:
    """Intervals, control comparisons and tests for one measurement.

    Args:
        layers: layer names in forward order.
        unit_means: layer -> ``(N, U)`` candidates' mean activations, after the negative policy.
        reduction: UnitMem's μ-max reduction (``"mean"`` or ``"median"``).
        top_k: size of the top-k / least-k groups.
        sslmem_raw: layer -> ``(N,)`` candidates' raw SSLMem (with a reference).
        control_raw: layer -> ``(S,)`` raw SSLMem of the control images (seen by both encoders).
        unseen_raw: layer -> ``(M,)`` raw SSLMem of the unseen images.
        unseen_unit_means: layer -> ``(M, U)`` unseen images' mean activations (negative policy applied).
        options: see :class:`EvidenceOptions`.
        align: layer -> ``(N,)`` the candidates' raw alignments under ``f`` (no reference needed).
        unseen_align: layer -> ``(M,)`` the unseen images' raw alignments under ``f``; with
            ``align``, the reference-free ``align_gap`` family (:mod:`lightning_memloc.evidence_free`).

    Returns:
        An :class:`Evidence`.

    Example:
        >>> import torch
        >>> mu = {"a": torch.rand(20, 4, generator=torch.Generator().manual_seed(0))}
        >>> ev = compute_evidence(["a"], unit_means=mu, options=EvidenceOptions(bootstrap=200))
        >>> rec = ev.layers["a"]
        >>> rec["unit_mem_mean_lo"] <= rec["unit_mem_mean"] <= rec["unit_mem_mean_hi"]
        True
    """
    opts = options or EvidenceOptions()
    records: Dict[str, Record] = {layer: {} for layer in layers}
    group_sslmem: Dict[str, Dict[str, List[float]]] = {}
    n = int(next(iter(unit_means.values())).shape[0])
    meta: Dict[str, Any] = {"bootstrap": opts.bootstrap, "confidence": opts.confidence, "alpha": opts.alpha, "seed": opts.seed,
                            "scale": "candidates' range of raw SSLMem per layer; tests on raw SSLMem",
                            "groups": {"candidates": n}}
    if sslmem_raw is not None:
        cand = torch.stack([sslmem_raw[layer].double().cpu() for layer in layers])
        groups = {}
        for name, raw in (("control", control_raw), ("unseen", unseen_raw)):
            if raw is not None:
                groups[name] = torch.stack([raw[layer].double().cpu() for layer in layers])
                meta["groups"][name] = int(groups[name].shape[1])
        _layer_mem_evidence(layers, cand, groups, top_k, opts, records, group_sslmem)
    if unseen_unit_means is not None:
        meta["groups"]["unseen"] = int(next(iter(unseen_unit_means.values())).shape[0])
    _unit_mem_evidence(layers, unit_means, unseen_unit_means, reduction, opts, records)
    if align is not None and unseen_align is not None:
        reference_free_evidence(layers, align, unseen_align, records, meta, bootstrap=opts.bootstrap,
                                confidence=opts.confidence, seed=opts.seed)
    evidence = Evidence(layers=records, group_sslmem=group_sslmem, meta=meta)
    meta["significant"] = {test: evidence.significant_layers(test)
                           for test in ("excess", "excess_unseen", "membership", "unit_mem_excess", "align_gap") if evidence.has(f"{test}_p")}
    meta["hint"] = _hint(evidence, n, opts)
    return evidence


def _hint(evidence: Evidence, n: int, opts: EvidenceOptions) -> Optional[str]:
    """How many candidates would narrow the widest interval to ``target_halfwidth`` (or None)."""
    key, what = ("excess", "excess over the control") if evidence.has("excess_lo") else ("layer_mem", "LayerMem")
    if not evidence.has(f"{key}_lo"):
        return None
    widths = {layer: (rec[f"{key}_hi"] - rec[f"{key}_lo"]) / 2 for layer, rec in evidence.layers.items()
              if rec.get(f"{key}_lo") is not None}
    layer = max(widths, key=lambda k: widths[k])
    if widths[layer] <= opts.target_halfwidth:
        return None
    need = samples_for_halfwidth(n, widths[layer], opts.target_halfwidth)
    extra = " (and as many control images)" if key == "excess" else ""
    return (f"intervals are wide: {what} ±{widths[layer]:.3f} at {layer!r} with {n} candidates; about {need} "
            f"candidates{extra} would narrow it to ±{opts.target_halfwidth:g}.")
