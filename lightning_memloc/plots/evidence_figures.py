"""Figures of the evidence: each memorization figure next to its control, with its interval and test."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import List, Optional

import numpy as np

from lightning_memloc.errors import ReportFormatError
from lightning_memloc.io import PathLike
from lightning_memloc.plots.figure import (colormap, depth_axis, draw_series, new_figure, p_labels, save_png,
                                           training_axis, training_x)
from lightning_memloc.plots.profile import profile_data
from lightning_memloc.plots.io import PREFIX, History, load_history
from lightning_memloc.report.report import MemorizationReport


def plot_evidence(report: MemorizationReport, path: PathLike) -> Path:
    """Candidates against their nulls by depth: LayerMem vs control, alignment gap, UnitMem seen vs unseen."""
    ev = report.evidence
    if ev is None:
        raise ValueError("plot_evidence needs a report with evidence (intervals and controls): measure with "
                         "measure(..., control=..., unseen=...) or the monitor.")
    layers, x, data = report.layers, np.arange(1, len(report.layers) + 1), profile_data(report)
    alpha = float(ev.meta.get("alpha", 0.05))

    def values(key: str) -> np.ndarray:
        return data.get(key, np.full(len(layers), np.nan))

    panels = (["layer_mem"] if report.has_reference else []) + (["align_gap"] if ev.has("align_gap") else []) + ["unit_mem"]
    fig = new_figure(5.2 * len(panels) + 1.0, 4.4)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    if report.has_reference:
        ax = axes[0]
        draw_series(ax, x, data, "layer_mem", f"candidates ({ev.meta['groups']['candidates']})", marker="o", color="C0",
                    lw=2)
        if ev.has("control_layer_mem"):
            ax.plot(x, values("control_layer_mem"), marker="s", color="0.45", ls="--",
                    label=f"control, both encoders trained on it ({ev.meta['groups'].get('control')})")
            draw_series(ax, x + 0.08, data, "excess", "excess over control ± CI", marker="D", color="C3", ls="none")
            p_labels(ax, x + 0.08, values("excess_hi"), values("excess_p_holm"), alpha, 5)
        if ev.has("unseen_layer_mem"):
            ax.plot(x, values("unseen_layer_mem"), marker="v", color="C2", ls=":",
                    label=f"unseen ({ev.meta['groups'].get('unseen')})")
        ax.set_ylabel("normalised SSLMem (candidates' scale)")
        title = "LayerMem vs its control" if ev.has("control_layer_mem") else "LayerMem (no control: includes the f–g offset)"
        ax.set_title(title, fontsize=10)
    if ev.has("align_gap"):  # reference-free: f's alignment gap of the candidates against unseen images
        ax = axes[panels.index("align_gap")]
        draw_series(ax, x, data, "align_gap", "gap under f alone ± CI (f's range)", marker="o", color="C4", lw=2)
        p_labels(ax, x, values("align_gap_hi"), values("align_gap_p_holm"), alpha, offset=5)
        draw_series(ax, x + 0.08, data, "excess_unseen", "C − unseen through g ± CI (candidates' SSLMem scale)",
                    marker="v", color="C2", ls=":")
        ax.set_ylabel("d_f(unseen) − d_f(candidates), normalised")
        ax.set_title("Alignment gap, no reference (> 0: candidates' views tighter)", fontsize=10)
    ax = axes[-1]
    if ev.has("membership"):
        ax.plot(x, values("unit_mem_seen"), marker="o", color="C0", label="mean UnitMem, seen (candidates)")
        ax.plot(x, values("unit_mem_unseen"), marker="v", color="C2", ls=":", label="mean UnitMem, unseen")
        member = values("membership")
        ax.plot(x, member, marker="D", color="C3", label="share of units whose μmax image was seen")
        ax.plot(x, values("membership_chance"), color="C3", ls="--", lw=0.8, label="chance")
        p_labels(ax, x, member, values("membership_p_holm"), alpha, offset=5)
        ax.set_ylim(0, 1.05)
        ax.set_title("UnitMem: seen vs unseen images", fontsize=10)
    else:
        draw_series(ax, x, data, "unit_mem_mean", "mean UnitMem ± CI", marker="o", color="C0")
        ax.set_title("UnitMem (no unseen set: no null)", fontsize=10)
    for ax in axes:
        if ax is not axes[-1]:  # the LayerMem and gap panels: a zero line, room for the p-values above the bars
            ax.axhline(0.0, color="0.3", lw=0.8)
            ax.margins(y=0.15)
        ax.legend(fontsize=7, loc="best")
        depth_axis(ax, layers)
    return save_png(fig, path)


def plot_evidence_history(history: History, path: PathLike) -> Path:
    """Over training: excess over the control, alignment gap and membership (or mean UnitMem) per layer, with bands."""
    entries = sorted(load_history(history), key=lambda e: (e["epoch"], e.get("global_step", 0)))
    keys = set().union(*(e.keys() for e in entries))
    found = {k[len(PREFIX):].partition("/")[0] for k in keys if k.startswith(PREFIX) and "/" in k}  # quantities
    panels = [panel for panel in (("excess", "LayerMem excess over control (± CI)", None),
                                  ("align_gap", "alignment gap under f alone (± CI)", None),
                                  ("membership", "share of units whose μmax image was seen", "membership_chance"))
              if panel[0] in found]
    if "membership" not in found and "unit_mem_mean_lo" in found:
        panels.append(("unit_mem_mean", "mean UnitMem (± CI)", None))
    if not panels:
        raise ReportFormatError("the history holds no evidence scalars (memloc.excess/..., memloc.membership/... or "
                                "memloc.unit_mem_mean_lo/...): measure with control= / unseen= and bootstrap > 0.")
    fig = new_figure(5.0 * len(panels) + 1.5, 4.0)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    x, xlabel = training_x(entries)
    for ax, (quantity, label, chance) in zip(axes, panels):
        prefix = f"{PREFIX}{quantity}/"
        layers = sorted({k[len(prefix):] for k in keys if k.startswith(prefix)},
                        key=lambda name: list(entries[-1]).index(prefix + name) if prefix + name in entries[-1] else 0)
        for i, layer in enumerate(layers):
            color = colormap(i, len(layers))
            values = np.array([e.get(prefix + layer, np.nan) for e in entries], dtype=float)
            ax.plot(x, values, marker="o", ms=3, color=color, label=layer)
            lo, hi = (np.array([e.get(f"{PREFIX}{quantity}_{end}/{layer}", np.nan) for e in entries], dtype=float)
                      for end in ("lo", "hi"))
            if not np.isnan(lo).all():
                ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
        if chance is not None:
            level = [e.get(f"{PREFIX}{chance}/{layers[0]}", np.nan) for e in entries] if layers else []
            ax.plot(x, level, color="k", ls="--", lw=1, label="chance")
        if quantity in ("excess", "align_gap"):
            ax.axhline(0.0, color="k", ls="--", lw=1)
        ax.set_title(label, fontsize=10)
        training_axis(ax, xlabel)
    axes[-1].legend(title="layer", fontsize=7, title_fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save_png(fig, path)


def evidence_figures(report: Optional[MemorizationReport], history: Optional[History], out: Path) -> List[Path]:
    """The evidence figures that apply (used by :func:`lightning_memloc.plots.plot_report`)."""
    written: List[Path] = []
    if report is not None and report.evidence is not None:
        written.append(plot_evidence(report, out / "evidence.png"))
    if history is not None:
        with suppress(ReportFormatError):  # a history without evidence scalars (older runs): nothing to draw
            written.append(plot_evidence_history(history, out / "evidence_history.png"))
    return written
