"""Markdown tables and the paper's findings, checked, for ``reproduce_gpu.py``.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024), ResNet9 / SimCLR /
CIFAR-10: LayerMem 0.091 → 0.308 from layer 1 to 8, top-50 0.144 → 0.817, least-50 ≈ 0 → 0.09;
fine-tuning the most memorizing layers beats fine-tuning the last ones; pruning the most
memorizing units costs more accuracy than pruning random or the least memorizing ones.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from scipy import stats

from lightning_memloc import MemorizationReport
from lightning_memloc.tags import scalar_tag

PAPER_FIRST_LAST = {"layer_mem": (0.091, 0.308), "top": (0.144, 0.817), "least": ("≈0", 0.09)}


def _f(value: Optional[float], digits: int = 3, sign: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _p(value: Optional[float]) -> str:
    return "—" if value is None else (f"{value:.1e}" if value < 1e-3 else f"{value:.3f}")


def _interval(rec: Mapping[str, Optional[float]], key: str, sign: bool = False) -> str:
    lo, hi = rec.get(f"{key}_lo"), rec.get(f"{key}_hi")
    bounds = "" if lo is None or hi is None else f" [{_f(lo, sign=sign)}, {_f(hi, sign=sign)}]"
    return _f(rec.get(key), sign=sign) + bounds


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; floats with 3 decimals."""
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def evidence_table(report: MemorizationReport, top_k: int) -> str:
    """Per layer: LayerMem with its interval, ΔLayerMem, top-k / least-k, mean UnitMem, fraction of
    units above 0.5, the control's LayerMem, the excess over the control (interval, Holm p), the
    candidates minus the unseen images (Holm p), argmax membership vs chance, and the paper's values."""
    ev, um, frac = report.evidence.layers, report.unit_mem_mean(), report.unit_mem_frac_above(0.5)
    last = len(report.layers) - 1
    rows = []
    for i, layer in enumerate(report.layers):
        rec = ev[layer]
        paper = [PAPER_FIRST_LAST[k][0] if i == 0 else PAPER_FIRST_LAST[k][1] if i == last else ""
                 for k in ("layer_mem", "top", "least")]
        membership = (f"{_f(rec.get('membership'))} vs {_f(rec.get('membership_chance'))} "
                      f"(p {_p(rec.get('membership_p_holm'))})")
        rows.append([f"{i + 1} `{layer}`", _interval(rec, "layer_mem"), _f(report.delta_layer_mem[layer], sign=True),
                     report.layer_mem_top[layer], report.layer_mem_least[layer], _interval(rec, "unit_mem_mean"),
                     frac[layer], _f(rec.get("control_layer_mem")), _interval(rec, "excess", sign=True),
                     _p(rec.get("excess_p_holm")),
                     f"{_f(rec.get('excess_unseen'), sign=True)} (p {_p(rec.get('excess_unseen_p_holm'))})",
                     membership, *paper])
    return md_table(["layer", "LayerMem [95 % CI]", "ΔLayerMem", f"top-{top_k}", f"least-{top_k}",
                     "mean UnitMem [95 % CI]", "UnitMem > 0.5", "LayerMem control", "excess over control [95 % CI]",
                     "p (Holm)", "cand − unseen (p Holm)", "μmax on candidates vs chance (p Holm)",
                     "paper LayerMem", "paper top-50", "paper least-50"], rows)


def history_tables(history: Sequence[Mapping[str, Any]], layers: Sequence[str]) -> Dict[str, str]:
    """Two tables over the monitor's measurements: mean UnitMem / fraction above 0.5, and LayerMem /
    excess over the control, per layer (columns: layer numbers, in forward order)."""
    def rows(first: str, second: str, sign: bool) -> List[List[Any]]:
        out = []
        for h in history:
            epoch = "before training" if h["epoch"] < 0 else h["epoch"] + 1
            cells = [f"{_f(h.get(scalar_tag(first, layer)))} / {_f(h.get(scalar_tag(second, layer)), sign=sign)}"
                     for layer in layers]
            out.append([epoch, h["global_step"], *cells])
        return out

    header = ["epoch", "step", *[f"{i + 1} `{layer}`" for i, layer in enumerate(layers)]]
    return {"(a) over epochs: mean UnitMem / fraction of units above 0.5":
            md_table(header, rows("unit_mem_mean", "unit_mem_frac_above", sign=False)),
            "(a) over epochs: LayerMem / excess over control":
            md_table(header, rows("layer_mem", "excess", sign=True))}


def finetune_table(rows: Sequence[Sequence[Any]]) -> str:
    """Fine-tuning rows: configuration, layers, probe accuracy, fine-tuned classifier accuracy."""
    return md_table(["fine-tuned", "layers", "linear-probe acc", "fine-tuned classifier acc"], rows)


def prune_table(pruned: Mapping[str, Mapping[str, Any]], amounts: Sequence[float], base_acc: float) -> str:
    """Probe accuracy after pruning, per scope and amount (columns: lowest / random / highest UnitMem)."""
    rows = [[scope, f"{amount:.0%}", *[pruned[f"{scope}/{amount}/{s}"]["probe_acc"] for s in ("lowest", "random", "highest")]]
            for scope in ("layer", "global") for amount in amounts]
    return f"Unpruned probe: {base_acc:.3f}.\n\n" + md_table(
        ["scope", "pruned", "lowest UnitMem", "random", "highest UnitMem"], rows)


def paper_checks(report: MemorizationReport, finetuning: Mapping[str, Any], pruned: Mapping[str, Mapping[str, Any]],
                 amounts: Sequence[float], ft_k: int) -> Dict[str, str]:
    """Each of the paper's findings with this run's numbers and whether the direction holds
    (directions only: no test beyond the report's own; read with the intervals of table (a))."""
    layers = report.layers
    lm = [report.layer_mem[l] for l in layers]
    top = [report.layer_mem_top[l] for l in layers]
    least = [report.layer_mem_least[l] for l in layers]
    rho = float(stats.spearmanr(range(len(lm)), lm)[0]) if len(set(lm)) > 1 else float("nan")
    significant = report.evidence.significant_layers("excess")
    configs = finetuning["configs"]
    top_ft, last_ft, head_ft = (configs[f"top-{ft_k} LayerMem"], configs[f"last {ft_k}"], configs["head only"])
    checks = {
        "LayerMem rises with depth (paper 0.091 → 0.308)":
            f"{lm[0]:.3f} → {lm[-1]:.3f}, Spearman ρ(depth, LayerMem) = {rho:.2f}: {'yes' if rho > 0.5 else 'no'}",
        "memorization beyond the control (excess > 0, Holm)":
            f"significant at {len(significant)} of {len(layers)} layers ({', '.join(significant) or 'none'})",
        "top-k rises with depth (paper 0.144 → 0.817)": f"{top[0]:.3f} → {top[-1]:.3f}: {'yes' if top[-1] > top[0] else 'no'}",
        "least-k stays near 0 (paper ≈0 → 0.09)": f"{least[0]:.3f} → {least[-1]:.3f}",
        f"fine-tuning top-{ft_k} LayerMem beats last {ft_k} (probe)":
            f"{top_ft['probe_acc']:.3f} vs {last_ft['probe_acc']:.3f} (layers {top_ft['layers']} vs {last_ft['layers']}): "
            f"{'yes' if top_ft['probe_acc'] > last_ft['probe_acc'] else 'no'}",
        f"fine-tuning top-{ft_k} LayerMem beats head only (classifier; paper 57.9 % vs 48.6 %)":
            f"{top_ft['finetuned_acc']:.3f} vs {head_ft['finetuned_acc']:.3f}: "
            f"{'yes' if top_ft['finetuned_acc'] > head_ft['finetuned_acc'] else 'no'}",
    }
    for scope in ("layer", "global"):
        for amount in amounts:
            acc = [pruned[f"{scope}/{amount}/{s}"]["probe_acc"] for s in ("lowest", "random", "highest")]
            checks[f"pruning {scope} {amount:.0%}: lowest > random > highest (probe)"] = (
                f"{acc[0]:.3f} / {acc[1]:.3f} / {acc[2]:.3f}: {'yes' if acc[0] > acc[1] > acc[2] else 'no'}")
    return checks
