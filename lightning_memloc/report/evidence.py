"""``Evidence``: every memorization figure of a report with its control, its uncertainty and one verdict.

The candidates (seen by ``f`` only) are compared with a **control** set both encoders trained on and an **unseen**
set ``f`` never trained on, on the candidates' scale; one Holm correction over every test × layer gives the verdict.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from lightning_memloc.functional.statistics import holm, samples_for_halfwidth
from lightning_memloc.functional.two_sample import permutation_lower_bound
from lightning_memloc.report import layer_evidence, unit_evidence
from lightning_memloc.report.layer_evidence import Record

#: Every test family of the verdict, by record key prefix (``<test>_p`` in; ``<test>_p_holm`` out).
VERDICT_TESTS: Tuple[str, ...] = ("excess", "excess_unseen", "membership", "unit_mem_excess", "align_gap")


def overall_verdict(records: Mapping[str, MutableMapping[str, Optional[float]]], alpha: float, bootstrap: int,
                    tests: Sequence[str] = VERDICT_TESTS) -> Dict[str, Any]:
    """Holm over every ``<test>_p`` of ``records`` (None / NaN left out); writes each ``<test>_p_holm`` in place.

    Returns:
        ``{"memorization" (None: nothing tested), "method", "alpha", "family_size", "tests", "layers": test ->
        significant layers, "min_p_holm", "min_attainable_p_holm" (from ``bootstrap``), "attainable"}``.

    Example:
        >>> records = {"a": {"excess_p": 0.001, "membership_p": 0.2}, "b": {"excess_p": 0.03, "membership_p": 0.5}}
        >>> v = overall_verdict(records, alpha=0.05, bootstrap=999)
        >>> v["memorization"], v["family_size"], v["layers"], records["a"]["excess_p_holm"]
        (True, 4, {'excess': ['a'], 'membership': []}, 0.004)
    """
    keys: List[Tuple[str, str]] = []
    for test in tests:
        for layer, rec in records.items():
            if f"{test}_p" in rec:
                rec[f"{test}_p_holm"] = None
                if rec[f"{test}_p"] is not None and not math.isnan(float(rec[f"{test}_p"])):
                    keys.append((test, layer))
    adjusted = holm([float(records[layer][f"{test}_p"]) for test, layer in keys])  # type: ignore[arg-type]
    for (test, layer), p in zip(keys, adjusted):
        records[layer][f"{test}_p_holm"] = p
    present = [test for test in tests if any(t == test for t, _ in keys)]
    layers = {test: [layer for (t, layer), p in zip(keys, adjusted) if t == test and p is not None and p < alpha]
              for test in present}
    m = len(keys)
    floor = min(1.0, m / (bootstrap + 1)) if m and bootstrap else None
    return {"memorization": any(layers.values()) if m else None,
            "method": f"Holm over every test x layer ({m} tests), family-wise error <= {alpha:g}",
            "alpha": alpha, "family_size": m, "tests": present, "layers": layers,
            "min_p_holm": min((p for p in adjusted if p is not None), default=None),
            "min_attainable_p_holm": floor, "attainable": None if floor is None else floor <= alpha}


def min_bootstrap_for(family_size: int, alpha: float) -> int:
    """Smallest ``bootstrap`` whose smallest Holm p over ``m`` tests, ``m / (B + 1)``, reaches ``alpha``.

    Example:
        >>> min_bootstrap_for(32, 0.05)
        639
    """
    return max(0, math.ceil(family_size / alpha - 1 - 1e-9))


#: Fewest resamples ``bootstrap`` may ask for (0: evidence off): below it a 95 % interval's ends rest on < 5 draws.
MIN_BOOTSTRAP = 200
#: Fewest images a control / unseen set should have without a warning (tests exact only if exchangeable).
MIN_GROUP_SIZE = 10
#: How the intervals are computed (recorded in ``Evidence.meta["intervals"]``).
INTERVALS = {
    "layer_mem, delta_layer_mem, excess, excess_unseen": "two-sided studentized bootstrap (bootstrap-t), per layer, "
                                                         "not adjusted for multiple tests: descriptive",
    "layer_mem_top, layer_mem_least": "two-sided percentile bootstrap re-ranking the candidates, per layer: descriptive",
    "align_gap": "two-sided percentile bootstrap of the difference, per layer: descriptive",
    "unit_mem_mean, unit_mem_excess": "estimate ± z · bootstrap SD, per layer: descriptive",
    "<test>_lb": "one-sided lower bound from the test's permutation critical value at alpha / m (m: tests in the "
                 "verdict): above 0 exactly when the test passes at alpha / m, which implies its Holm p < alpha",
}


@dataclass
class EvidenceOptions:
    """How intervals and tests are computed.

    Attributes:
        bootstrap: resamples (and permutations) per interval / test: 0 (off) or at least :data:`MIN_BOOTSTRAP`;
            the verdict needs ``bootstrap + 1 >= m / alpha`` for ``m`` tests (8 layers x 5 tests: 799).
        alpha: family-wise error rate of the verdict (Holm over every test x layer).
        target_halfwidth: half-width above which the report says how many candidates would narrow it to this.
    """

    bootstrap: int = 1000
    confidence: float = 0.95
    alpha: float = 0.05
    seed: int = 0
    target_halfwidth: float = 0.02

    def __post_init__(self) -> None:
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) or self.bootstrap < 0:
            raise ValueError(f"`bootstrap` must be an int >= 0 (0: no intervals or tests), got {self.bootstrap!r}.")
        if 0 < self.bootstrap < MIN_BOOTSTRAP:
            raise ValueError(f"`bootstrap` must be 0 (no intervals or tests) or at least {MIN_BOOTSTRAP}, got "
                             f"{self.bootstrap}: with fewer resamples the intervals' ends rest on a handful of draws. "
                             f"Pass bootstrap={MIN_BOOTSTRAP} or more (1000 by default).")
        for name, example in (("confidence", 0.95), ("alpha", 0.05)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
                raise ValueError(f"`{name}` must be in (0, 1), e.g. {example}, got {value!r}.")
        if not float(self.target_halfwidth) > 0:
            raise ValueError(f"`target_halfwidth` must be > 0, got {self.target_halfwidth!r}.")


@dataclass
class Evidence:
    """Intervals, controls, tests and the overall verdict of one report, per layer (flat records).

    Attributes:
        layers: layer -> record with keys of :data:`~lightning_memloc.report.tags.EVIDENCE_QUANTITIES` (``None``
            where the input is missing); ``<test>_p_holm`` Holm-adjusted over every test x layer, ``<test>_lb``
            the matching one-sided lower bound (see :data:`INTERVALS`).
        group_sslmem: ``"control"`` / ``"unseen"`` -> layer -> per-image SSLMem on the candidates' scale.
        meta: options, group sizes, ``verdict``, significant layers per test, tests and intervals, warnings, hint.
    """

    layers: Dict[str, Record]
    group_sslmem: Dict[str, Dict[str, List[float]]] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def shows_memorization(self) -> Optional[bool]:
        """The overall verdict (Holm over every test x layer); ``None`` when nothing was tested."""
        return (self.meta.get("verdict") or {}).get("memorization")

    def significant_layers(self, test: str = "excess") -> List[str]:
        """Layers where ``test`` passes the verdict: Holm p over every test x layer below ``alpha``."""
        alpha = float(self.meta.get("alpha", 0.05))
        key = f"{test}_p_holm"
        return [layer for layer, rec in self.layers.items() if rec.get(key) is not None and rec[key] < alpha]

    def has(self, key: str) -> bool:
        """Whether any layer has a value for ``key`` (e.g. ``"excess"`` needs a control)."""
        return any(rec.get(key) is not None for rec in self.layers.values())

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready (non-finite floats become ``None``)."""
        clean = {layer: {k: None if v is None or not math.isfinite(float(v)) else float(v) for k, v in rec.items()}
                 for layer, rec in self.layers.items()}
        return {"layers": clean, "group_sslmem": self.group_sslmem, "meta": self.meta}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Evidence":
        """Inverse of :meth:`to_dict`."""
        layers = {str(layer): {str(k): (None if v is None else float(v)) for k, v in rec.items()}
                  for layer, rec in dict(data["layers"]).items()}
        groups = {str(g): {str(layer): [float(x) for x in values] for layer, values in per.items()}
                  for g, per in dict(data.get("group_sslmem") or {}).items()}
        return cls(layers=layers, group_sslmem=groups, meta=dict(data.get("meta") or {}))


_PerLayer = Optional[Mapping[str, Tensor]]


def compute_evidence(layers: List[str], *, unit_means: Mapping[str, Tensor], reduction: str = "mean", top_k: int = 50,
                     sslmem_raw: _PerLayer = None, control_raw: _PerLayer = None, unseen_raw: _PerLayer = None,
                     unseen_unit_means: _PerLayer = None, options: Optional[EvidenceOptions] = None,
                     negative: str = "clamp", align: _PerLayer = None, unseen_align: _PerLayer = None) -> Evidence:
    """Intervals, control comparisons, tests and the overall verdict (``meta["verdict"]``) of one measurement.

    Args:
        unit_means, unseen_unit_means: layer -> ``(N, U)`` / ``(M, U)`` mean activations before the negative policy.
        sslmem_raw, control_raw, unseen_raw: layer -> ``(N,)`` / ``(S,)`` / ``(M,)`` raw SSLMem of each group.
        align, unseen_align: layer -> ``(N,)`` / ``(M,)`` raw alignments under ``f``: the ``align_gap`` family.

    Example:
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
                            "groups": {"candidates": n}, "negative": negative}
    nulls: layer_evidence.Nulls = {}
    groups: Dict[str, Tensor] = {}
    if sslmem_raw is not None:
        cand = torch.stack([sslmem_raw[layer].double().cpu() for layer in layers])
        for name, raw in (("control", control_raw), ("unseen", unseen_raw)):
            if raw is not None:
                groups[name] = torch.stack([raw[layer].double().cpu() for layer in layers])
                meta["groups"][name] = int(groups[name].shape[1])
    if unseen_unit_means is not None:
        meta["groups"]["unseen"] = int(next(iter(unseen_unit_means.values())).shape[0])
    for name in ("control", "unseen"):
        size = meta["groups"].get(name)
        if size is not None and size < MIN_GROUP_SIZE and opts.bootstrap:
            message = (f"[memloc] `{name}` has {size} images, fewer than {MIN_GROUP_SIZE}: its tests hold their error "
                       f"rate only if `{name}` and the candidates are exchangeable, and its intervals are unreliable. "
                       f"Pass at least {MIN_GROUP_SIZE} {name} images (as many as the candidates is best).")
            warnings.warn(message, UserWarning, stacklevel=2)
            meta.setdefault("warnings", []).append(message)
    if sslmem_raw is not None:
        layer_evidence.layer_mem_evidence(layers, cand, groups, top_k, opts, records, group_sslmem, nulls, meta)
    unit_evidence.unit_mem_evidence(layers, unit_means, unseen_unit_means, reduction, negative, opts, records, nulls)
    if align is not None and unseen_align is not None:
        layer_evidence.reference_free_evidence(layers, align, unseen_align, records, meta, bootstrap=opts.bootstrap,
                                              confidence=opts.confidence, seed=opts.seed, nulls=nulls)
    evidence = Evidence(layers=records, group_sslmem=group_sslmem, meta=meta)
    tests = {**layer_evidence.TEST_NAMES, **unit_evidence.TEST_NAMES}
    meta["tests"] = {test: tests[test] for test in VERDICT_TESTS if test in tests and evidence.has(f"{test}_p")}
    meta["intervals"] = dict(INTERVALS)
    finish_verdict(evidence, nulls)
    meta["hint"] = _hint(evidence, n, opts)
    return evidence


def finish_verdict(evidence: Evidence, nulls: Optional[layer_evidence.Nulls] = None) -> Dict[str, Any]:
    """(Re)compute every ``<test>_p_holm``, ``meta["verdict"]`` / ``["significant"]``; ``nulls``' tests get ``_lb``."""
    meta = evidence.meta
    alpha, boot = float(meta.get("alpha", 0.05)), int(meta.get("bootstrap", 0))
    verdict = overall_verdict(evidence.layers, alpha, boot)
    m = verdict["family_size"]
    if verdict["attainable"] is False:
        verdict["needs_bootstrap"] = min_bootstrap_for(m, alpha)
        warnings.warn(f"[memloc] with bootstrap={boot} and {m} tests (tests x layers) the smallest attainable Holm p is "
                      f"{verdict['min_attainable_p_holm']:.3f} > alpha={alpha:g}: no test can pass, whatever the data. "
                      f"Use bootstrap >= {verdict['needs_bootstrap']}.", UserWarning, stacklevel=3)
    for test, (layers, estimate, scale, null) in (nulls or {}).items():
        bound = permutation_lower_bound(estimate, scale, null, alpha / max(m, 1))
        for i, layer in enumerate(layers):
            evidence.layers[layer][f"{test}_lb"] = float(bound[i]) if math.isfinite(float(bound[i])) else None
    meta["verdict"] = verdict
    meta["significant"] = dict(verdict["layers"])
    return verdict


def halfwidths(records: Mapping[str, Record], key: str) -> Dict[str, float]:
    """Layer -> finite half-width of its ``key`` interval (layers without one left out)."""
    return {layer: (rec[f"{key}_hi"] - rec[f"{key}_lo"]) / 2 for layer, rec in records.items()
            if rec.get(f"{key}_lo") is not None and rec.get(f"{key}_hi") is not None
            and math.isfinite(rec[f"{key}_hi"] - rec[f"{key}_lo"])}


def _hint(evidence: Evidence, n: int, opts: EvidenceOptions) -> Optional[str]:
    """How many candidates would narrow the widest interval to ``target_halfwidth`` (or None)."""
    key, what = ("excess", "excess over the control") if evidence.has("excess_lo") else ("layer_mem", "LayerMem")
    widths = halfwidths(evidence.layers, key)
    layer = max(widths, key=widths.__getitem__, default=None)
    if layer is None or widths[layer] <= opts.target_halfwidth:
        return None
    need = samples_for_halfwidth(n, widths[layer], opts.target_halfwidth)
    extra = " (and as many control images)" if key == "excess" else ""
    return (f"intervals are wide: {what} ±{widths[layer]:.3f} at {layer!r} with {n} candidates; about {need} "
            f"candidates{extra} would narrow it to ±{opts.target_halfwidth:g}.")
