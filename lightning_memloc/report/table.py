"""Plain-text summary of a :class:`~lightning_memloc.MemorizationReport`: figures, intervals, tests, verdict."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Protocol

from lightning_memloc.report.evidence import Evidence, halfwidths


class SummarySource(Protocol):
    """What the table reads of a :class:`~lightning_memloc.MemorizationReport` (which imports this module)."""

    layers: List[str]
    layer_kinds: Dict[str, str]
    layer_mem: Optional[Dict[str, float]]
    delta_layer_mem: Optional[Dict[str, float]]
    layer_mem_top: Optional[Dict[str, float]]
    layer_mem_least: Optional[Dict[str, float]]
    evidence: Optional[Evidence]

    @property
    def has_reference(self) -> bool: ...
    def unit_mem_mean(self) -> Dict[str, float]: ...
    def unit_mem_frac_above(self, threshold: float = 0.5) -> Dict[str, float]: ...
    def num_dead_units(self) -> Dict[str, int]: ...

__all__ = ["align_verdict", "format_summary", "verdict_lines"]


def _num(value: Optional[float], fmt: str = ".3f") -> str:
    if value is None or value == -math.inf:  # a bound no p-value can reach is -inf
        return "n/a"
    return "nan" if math.isnan(value) else format(value, fmt)


def _ci(rec: Dict[str, Optional[float]], key: str, fmt: str = ".3f") -> str:
    lo, hi = rec.get(f"{key}_lo"), rec.get(f"{key}_hi")
    return "" if lo is None or hi is None else f"[{_num(lo, fmt)}, {_num(hi, fmt)}]"


def _p(value: Optional[float], alpha: float) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"
    return text + (" *" if value < alpha else "  ")


def _table(rows: List[List[str]], left: int) -> List[str]:
    """``rows`` (the header first) in columns, the first ``left`` left-aligned, with a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             .rstrip() for row in rows]
    return [lines[0], "-" * len(lines[0]), *lines[1:]]


def _plain_table(report: SummarySource, threshold: float) -> List[str]:
    """The table of a report measured without evidence (figures only)."""
    frac, mean_um, dead = report.unit_mem_frac_above(threshold), report.unit_mem_mean(), report.num_dead_units()
    figures = ("layer_mem", "delta_layer_mem", "layer_mem_top", "layer_mem_least") if report.has_reference else ()
    head = ["layer", "kind", *(["LayerMem", "ΔLayerMem", "top-k", "least-k"] if figures else []), "UnitMem",
            f">{threshold:g}", "dead"]
    rows = [head]
    for layer in report.layers:
        values = [format(getattr(report, f)[layer], "+.3f" if f == "delta_layer_mem" else ".3f") for f in figures]
        rows.append([layer, report.layer_kinds.get(layer, "?"), *values, f"{mean_um[layer]:.3f}", f"{frac[layer]:.1%}",
                     str(dead[layer])])
    return _table(rows, 2)


def _sizes(ev: "Evidence", *groups: str) -> str:
    sizes = ev.meta.get("groups") or {}
    return ", ".join(f"{sizes[g]} {g}" for g in ("candidates",) + groups if g in sizes)


def _test_line(ev: "Evidence", test: str, claim: str) -> str:
    """``claim at k of L layers: ...`` or, with none, what could still hide below the noise."""
    sig = ev.significant_layers(test)
    width = None if test == "membership" else max(halfwidths(ev.layers, test).values(), default=None)
    spread = "" if width is None else f", 95 % CI up to ±{width:.3f}"
    line = f"{claim} at {len(sig)} of {len(ev.layers)} layers"
    if sig:
        return line + f": {', '.join(sig)}."
    if (ev.meta.get("verdict") or {}).get("attainable") is False:
        return line + f" — none could pass with bootstrap = {ev.meta.get('bootstrap')} (see the verdict){spread}."
    groups = _sizes(ev, "control" if test == "excess" else "unseen")
    return line + f" — not distinguishable at n = {groups}{spread}; a smaller effect is not excluded."


def verdict_lines(report: SummarySource) -> List[str]:
    """What the evidence says, in words: the overall verdict first, then one line per test."""
    ev = report.evidence
    if ev is None:
        return ["no intervals or controls were measured: these figures cannot be told apart from noise "
                "(measure with control= / unseen= and bootstrap > 0)."]
    lines = [_verdict_line(ev)]
    if report.has_reference:
        if ev.has("excess_p"):
            lines.append(_test_line(ev, "excess", "LayerMem: candidates > control"))
        elif ev.has("excess_unseen_p"):
            lines.append("LayerMem: no control set; compared with the unseen images only (below).")
        else:
            lines.append("LayerMem: no control set — these values include the offset between the two encoders and "
                         "show no memorization by themselves: pass control= (images both encoders trained on).")
        if ev.has("excess_unseen_p"):
            lines.append(_test_line(ev, "excess_unseen", "LayerMem: candidates > unseen"))
    if ev.has("align_gap"):
        lines.append(align_verdict(report))
    if ev.has("membership"):
        if ev.has("membership_p"):
            lines.append(_test_line(ev, "membership", "UnitMem: units' μmax image is a training image more often than "
                                    "chance"))
        if ev.has("unit_mem_excess_p"):
            lines.append(_test_line(ev, "unit_mem_excess", "UnitMem: higher on candidates than on unseen images"))
    else:
        lines.append("UnitMem: no unseen set — UnitMem alone cannot tell memorization from selectivity for atypical "
                     "images: pass unseen= (images the encoder never trained on).")
    for layer, groups in dict(ev.meta.get("nonfinite") or {}).items():
        lines.append(f"warning: layer {layer!r} has non-finite raw SSLMem among the {', '.join(groups)}: its LayerMem "
                     "figures are NaN.")
    lines += [f"warning: {w.removeprefix('[memloc] ')}" for w in ev.meta.get("warnings") or []]
    if ev.meta.get("hint"):
        lines.append("hint: " + str(ev.meta["hint"]))
    return lines


def _verdict_line(ev: "Evidence") -> str:
    verdict = ev.meta.get("verdict") or {}
    m, alpha = verdict.get("family_size", 0), float(ev.meta.get("alpha", 0.05))
    if "verdict" not in ev.meta and any(k.endswith("_p_holm") for rec in ev.layers.values() for k in rec):
        return ("verdict: not recorded (a report saved before the overall verdict): its p-values below are Holm-corrected "
                "per test across layers only, so together they overstate the evidence; measure again for one verdict.")
    if not m:
        return "verdict: no test was run (bootstrap=0 or no control / unseen set): memorization is neither shown nor excluded."
    how = f"Holm over {m} tests (every test × layer), family-wise error ≤ {alpha:g}"
    if verdict.get("memorization"):
        found = "; ".join(f"{test} at {', '.join(layers)}" for test, layers in verdict["layers"].items() if layers)
        return f"verdict: MEMORIZATION ({how}): {found}."
    line = f"verdict: no memorization distinguishable from the nulls at n = {_sizes(ev, 'control', 'unseen')} ({how})"
    if verdict.get("attainable") is False:
        line += (f"; with bootstrap = {ev.meta.get('bootstrap')} the smallest attainable Holm p is "
                 f"{verdict['min_attainable_p_holm']:.3f} > {alpha:g}, so no test could pass: use bootstrap >= "
                 f"{verdict.get('needs_bootstrap')}")
    return line + "."


def align_verdict(report: SummarySource) -> str:
    """The reference-free verdict: at how many layers ``f`` aligns the candidates' views more tightly."""
    ev = report.evidence
    assert ev is not None
    if not ev.has("align_gap_p"):
        return "f alone (no reference): alignment gap measured without a test (bootstrap=0)."
    sig = ev.significant_layers("align_gap")
    line = _test_line(ev, "align_gap", "f alone (no reference): the candidates' views align more tightly than unseen "
                      "images'")
    if sig and ev.has("excess_unseen_p"):
        both = [layer for layer in sig if layer in ev.significant_layers("excess_unseen")]
        line += f" With g, C − unseen is significant at {len(both)} of these."
    return line + (" This holds only if candidates and unseen images come from one distribution." if sig else "")


def _align_rows(report: SummarySource, alpha: float, level: str) -> List[str]:
    """The reference-free table: f's mean alignments, the gap with its interval and test, the AUC."""
    ev = report.evidence
    assert ev is not None
    head = ["layer", "d_f(C)", "d_f(U)", "gap", level, "bound", "p (Holm)", "AUC"]
    with_g = ev.has("excess_unseen")
    if with_g:
        head += ["C − unseen (g)", "p (Holm)"]
    rows = [head]
    for layer in report.layers:
        rec = ev.layers[layer]
        row = [layer, _num(rec.get("align_f_candidates")), _num(rec.get("align_f_unseen")), _num(rec.get("align_gap"), "+.3f"),
               _ci(rec, "align_gap", "+.3f"), _bound(rec, "align_gap"), _p(rec.get("align_gap_p_holm"), alpha),
               _num(rec.get("align_auc"), ".2f")]
        if with_g:
            row += [_num(rec.get("excess_unseen"), "+.3f"), _p(rec.get("excess_unseen_p_holm"), alpha)]
        rows.append(row)
    return (["Alignment under f alone, candidates C vs unseen images U (no reference needed)",
             "d_f: mean distance between an image's views; gap: d_f(U) − d_f(C) on the range of d_f over C ∪ U; "
             "AUC: share of (C, U) pairs where C is tighter (0.5: none)"]
            + _table(rows, 1) + [""])


def format_summary(report: SummarySource, threshold: float = 0.5) -> str:
    """The report's summary: tables of figures with intervals / controls / tests, then the verdict."""
    ev = report.evidence
    if ev is None:
        return "\n".join(_plain_table(report, threshold) + verdict_lines(report))
    alpha = float(ev.meta.get("alpha", 0.05))
    level = f"{float(ev.meta.get('confidence', 0.95)):.0%} CI"
    frac, dead = report.unit_mem_frac_above(threshold), report.num_dead_units()
    out: List[str] = []
    if report.has_reference:
        head = ["layer", "kind", "LayerMem", level, "ΔLayerMem", "top-k", "least-k"]
        control, unseen = ev.has("excess"), ev.has("excess_unseen")
        if control:
            head += ["control", "excess", level, "bound", "p (Holm)"]
        if unseen:
            head += ["C − unseen", "bound", "p (Holm)"]
        rows = [head]
        for layer in report.layers:
            rec = ev.layers[layer]
            row = [layer, report.layer_kinds.get(layer, "?"), _num(rec.get("layer_mem")), _ci(rec, "layer_mem"),
                   _num(rec.get("delta_layer_mem"), "+.3f"), _num(rec.get("layer_mem_top")), _num(rec.get("layer_mem_least"))]
            if control:
                row += [_num(rec.get("control_layer_mem")), _num(rec.get("excess"), "+.3f"), _ci(rec, "excess", "+.3f"),
                        _bound(rec, "excess"), _p(rec.get("excess_p_holm"), alpha)]
            if unseen:
                row += [_num(rec.get("excess_unseen"), "+.3f"), _bound(rec, "excess_unseen"),
                        _p(rec.get("excess_unseen_p_holm"), alpha)]
            rows.append(row)
        out += ["LayerMem (normalised SSLMem; every group on the candidates' scale)", *_table(rows, 2), ""]
    if ev.has("align_gap"):
        out += _align_rows(report, alpha, level)
    head = ["layer", "UnitMem", level, f">{threshold:g}", "dead"]
    member = ev.has("membership")
    if member:
        head += ["seen", "unseen", "bound", "p (Holm)", "μmax on seen", "chance", "p (Holm)"]
    rows = [head]
    for layer in report.layers:
        rec = ev.layers[layer]
        row = [layer, _num(rec.get("unit_mem_mean")), _ci(rec, "unit_mem_mean"), f"{frac[layer]:.1%}", str(dead[layer])]
        if member:
            row += [_num(rec.get("unit_mem_seen")), _num(rec.get("unit_mem_unseen")), _bound(rec, "unit_mem_excess"),
                    _p(rec.get("unit_mem_excess_p_holm"), alpha), _num(rec.get("membership"), ".1%"),
                    _num(rec.get("membership_chance"), ".1%"), _p(rec.get("membership_p_holm"), alpha)]
        rows.append(row)
    out += ["UnitMem (mean over units; seen / unseen: equal-size samples of candidates and unseen images)",
            *_table(rows, 1), "", *_legend(ev, level), "", *verdict_lines(report)]
    return "\n".join(out)


def _bound(rec: Dict[str, Optional[float]], key: str) -> str:
    value = rec.get(f"{key}_lb")
    return "n/a" if value is None or value == -math.inf else "≥ " + _num(value, "+.3f")


def _legend(ev: "Evidence", level: str) -> List[str]:
    """What the interval, bound and p columns mean (they answer different questions)."""
    m = (ev.meta.get("verdict") or {}).get("family_size", 0)
    alpha = float(ev.meta.get("alpha", 0.05))
    lines = [f"{level}: two-sided, per layer, not adjusted for multiple tests (descriptive: studentized bootstrap for "
             "LayerMem and the excess, percentile for top-k and the alignment gap, ± z·SD for UnitMem)."]
    if m:
        lines.append(f"bound: one-sided lower bound at {alpha:g}/{m}, > 0 exactly where its test passes at that level; "
                     f"p (Holm): adjusted over all {m} tests × layers; *: p < {alpha:g}.")
    return lines
