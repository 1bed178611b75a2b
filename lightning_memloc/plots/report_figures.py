"""The figures of one :class:`~lightning_memloc.MemorizationReport`, :func:`plot_report` writing them all, and the
training curves of a monitor's history."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from lightning_memloc.analyses.atypicality import max_unit_mem
from lightning_memloc.checks import check_int
from lightning_memloc.errors import ReportFormatError
from lightning_memloc.io import PathLike
from lightning_memloc.plots.evidence_figures import evidence_figures
from lightning_memloc.plots.figure import (colormap, depth_axis, layer_of, new_figure, save_png, show_image,
                                           training_axis, training_x)
from lightning_memloc.plots.heatmap import heatmap_figure
from lightning_memloc.plots.io import History, PREFIX, load_history
from lightning_memloc.plots.profile import profile_figure
from lightning_memloc.report.report import MemorizationReport


def plot_history(history: History, path: PathLike) -> Path:
    """Mean UnitMem, fraction of highly memorizing units and LayerMem per layer over a monitor ``history``."""
    entries = sorted(load_history(history), key=lambda e: (e["epoch"], e.get("global_step", 0)))
    quantities = (("unit_mem_mean", "mean UnitMem"), ("unit_mem_frac_above", "fraction of units above the threshold"),
                  ("layer_mem", "LayerMem"))
    panels = [(q, label) for q, label in quantities if any(k.startswith(f"{PREFIX}{q}/") for k in entries[-1])]
    if not panels:
        raise ReportFormatError("the history holds no memloc.unit_mem_mean/... or memloc.layer_mem/... scalars.")
    fig = new_figure(4.6 * len(panels) + 1.5, 4.0)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    x, xlabel = training_x(entries)
    for ax, (quantity, label) in zip(axes, panels):
        prefix = f"{PREFIX}{quantity}/"
        layers = [k[len(prefix):] for k in entries[-1] if k.startswith(prefix)]
        for i, layer in enumerate(layers):
            ax.plot(x, [e.get(prefix + layer, np.nan) for e in entries], marker="o", ms=3,
                    color=colormap(i, len(layers)), label=layer)
        ax.set(title=f"{label} per layer", ylabel=label)
        training_axis(ax, xlabel)
    axes[-1].legend(title="layer", fontsize=7, title_fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save_png(fig, path)


#: File name of each figure written by :func:`plot_report`.
FILENAMES = {name: f"{name}.png" for name in ("layer_mem", "unit_mem", "sslmem_vs_unitmem", "candidates", "history",
                                               "evidence", "evidence_history", "profile")}
FILENAMES["heatmap"] = "profile_over_training.png"


def _require_reference(report: MemorizationReport, what: str) -> None:
    if not report.has_reference:
        raise ValueError(f"{what} needs SSLMem / LayerMem, which need a reference encoder: this report was measured "
                         "without one (pass `reference=` to measure(), or --reference to `memloc analyze`).")


def plot_layer_mem(report: MemorizationReport, path: PathLike) -> Path:
    """LayerMem by depth (all, top-k and least-k candidates) and ΔLayerMem per layer; needs a reference."""
    _require_reference(report, "plot_layer_mem")
    layers, x = report.layers, np.arange(1, len(report.layers) + 1)
    k = report.meta.get("top_k", len(report.top_ids) if report.top_ids is not None else "k")
    fig = new_figure(max(8.0, 1.1 * len(layers) + 4), 4.2)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    for values, label, style in (
        (report.layer_mem, f"all {report.num_candidates} candidates", dict(marker="o", lw=2.2, color="C0")),
        (report.layer_mem_top, f"top-{k} (most memorized at the last layer)", dict(marker="^", ls="--", color="C3")),
        (report.layer_mem_least, f"least-{k}", dict(marker="v", ls=":", color="C2")),
    ):
        if values is not None:  # a hand-made report may lack the top / least groups
            left.plot(x, [values[layer] for layer in layers], label=label, **style)
    ev = report.evidence
    if ev is not None and ev.has("layer_mem_lo"):  # the candidates' interval as a band
        left.fill_between(x, [ev.layers[la]["layer_mem_lo"] for la in layers], [ev.layers[la]["layer_mem_hi"] for la in layers],
                          color="C0", alpha=0.15, lw=0, label=f"{float(ev.meta.get('confidence', 0.95)):.0%} CI")
    if ev is not None and ev.has("control_layer_mem"):
        left.plot(x, [ev.layers[la]["control_layer_mem"] for la in layers], color="0.45", marker="s", ls="--", label="control")
    left.axhline(0.0, color="0.5", lw=0.8)
    left.set(ylabel="LayerMem (mean normalised SSLMem)", title="LayerMem by depth")
    left.legend(fontsize=8, loc="best")
    depth_axis(left, layers)
    lm, given = report.layer_mem, report.delta_layer_mem  # ΔLayerMem from LayerMem where a report lacks it
    delta = np.array([given[la] if given is not None else lm[la] - (lm[layers[i - 1]] if i else 0.0)
                      for i, la in enumerate(layers)])
    right.bar(x, delta, color=np.where(delta >= 0, "C0", "C1"), width=0.7)
    for xi, d in zip(x, delta):
        right.annotate(f"{d:+.3f}", (xi, d), ha="center", va="bottom" if d >= 0 else "top", fontsize=7,
                       xytext=(0, 2 if d >= 0 else -2), textcoords="offset points")
    right.axhline(0.0, color="0.3", lw=0.8)
    right.set(ylabel="ΔLayerMem (increase over the previous layer)", title="ΔLayerMem per layer")
    depth_axis(right, layers)
    return save_png(fig, path)


def _violins(ax: Any, data: Sequence[np.ndarray], positions: Sequence[float], color: str, width: float) -> None:
    """Violins where a density exists; a bar marker where all values are equal (no KDE possible)."""
    spread = [i for i, d in enumerate(data) if d.size > 1 and float(d.std()) > 1e-8]
    if spread:
        parts = ax.violinplot([data[i] for i in spread], positions=[positions[i] for i in spread], widths=width,
                              showmedians=True, showextrema=True)
        for body in parts["bodies"]:
            body.set(facecolor=color, edgecolor=color, alpha=0.45)
        for key in {"cmedians", "cmins", "cmaxes", "cbars"} & set(parts):
            parts[key].set_color(color)
    for i, d in enumerate(data):
        if i not in spread and d.size:
            ax.hlines(float(d.mean()), positions[i] - width / 2, positions[i] + width / 2, color=color, lw=2)
        if d.size:
            ax.scatter([positions[i]], [float(d.mean())], marker="D", s=14, color="black", zorder=3)


def plot_unit_mem_distribution(report: MemorizationReport, path: PathLike, threshold: float = 0.5) -> Path:
    """UnitMem (and ClassMem, with labels) distribution per layer, with the fraction of units above ``threshold``."""
    layers, x = report.layers, np.arange(1, len(report.layers) + 1, dtype=float)
    unit = [report.unit_mem[layer].float().numpy() for layer in layers]
    fig = new_figure(max(7.0, 1.0 * len(layers) + 3), 4.4)
    ax = fig.subplots()
    with_class = report.class_mem is not None
    offset, width = (0.2, 0.38) if with_class else (0.0, 0.7)
    _violins(ax, unit, x - offset, "C0", width)
    handles = [ax.fill_between([], [], color="C0", alpha=0.45, label="UnitMem")]
    if with_class:
        _violins(ax, [report.class_mem[layer].float().numpy() for layer in layers], x + offset, "C1", width)
        handles.append(ax.fill_between([], [], color="C1", alpha=0.45, label="ClassMem"))
    ax.axhline(threshold, color="C3", ls="--", lw=1)
    fractions, dead = report.unit_mem_frac_above(threshold), report.num_dead_units()
    for xi, layer in zip(x, layers):
        note = f"{fractions[layer]:.0%} > {threshold:g}" + (f"\n{dead[layer]} dead" if dead[layer] else "")
        ax.annotate(note, (xi, 1.02), ha="center", va="bottom", fontsize=7, annotation_clip=False)
    ax.set(ylim=(-0.02, 1.16), ylabel="UnitMem per unit")
    ax.set_title(f"UnitMem distribution per layer ({report.num_candidates} candidates; ◆ mean)", pad=4)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    depth_axis(ax, layers)
    return save_png(fig, path)


def max_unit_mem_per_candidate(report: MemorizationReport, layer: str) -> np.ndarray:
    """(N,) the max UnitMem among the units of ``layer`` whose μmax candidate is each candidate (else NaN)."""
    out = max_unit_mem(report, layer).numpy()
    owners = set(report.unit_argmax[layer].tolist())
    out[[int(c) not in owners for c in report.candidate_ids.tolist()]] = np.nan
    return out


def plot_sslmem_vs_unitmem(report: MemorizationReport, path: PathLike, layer: Optional[str] = None) -> Path:
    """Per candidate: SSLMem (x) vs the highest UnitMem of the units it excites most (y; 0: none); needs a reference."""
    _require_reference(report, "plot_sslmem_vs_unitmem")
    layer = layer_of(report, layer)
    x = report.sslmem[layer].float().numpy()
    y = max_unit_mem_per_candidate(report, layer)
    owned = ~np.isnan(y)
    fig = new_figure(6.0, 4.6)
    ax = fig.subplots()
    ax.scatter(x[owned], y[owned], s=22, alpha=0.75, color="C0", label=f"μmax candidate of ≥ 1 unit ({owned.sum()})")
    if (~owned).any():
        ax.scatter(x[~owned], np.zeros(int((~owned).sum())), s=18, marker="x", color="0.6",
                   label=f"no unit singles it out ({(~owned).sum()})")
    title = f"SSLMem vs UnitMem at {layer}"
    if owned.sum() > 2 and np.ptp(x[owned]) > 0 and np.ptp(y[owned]) > 0:
        title += f" (Pearson r = {np.corrcoef(x[owned], y[owned])[0, 1]:.2f})"
    ax.set(title=title, xlabel="SSLMem of the candidate (normalised)",
           ylabel="max UnitMem of the units it excites most", ylim=(-0.05, 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_png(fig, path)


def plot_candidate_grid(report: MemorizationReport, images: Union[Tensor, np.ndarray], path: PathLike, k: int = 8,
                        layer: Optional[str] = None) -> Path:
    """The ``k`` most and least memorized candidates by :meth:`~lightning_memloc.MemorizationReport.candidate_scores`.

    ``images``: (N, C, H, W) un-augmented candidate images (uint8 or float), by candidate position.
    """
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) != 4 or shape[0] != report.num_candidates:
        raise ValueError(f"`images` must be (N, C, H, W) with N = {report.num_candidates} candidates "
                         f"(by candidate position), got shape {shape}.")
    k = min(check_int("k", k, 1), report.num_candidates)
    layer = layer_of(report, layer)
    scores = report.candidate_scores(layer)
    order = torch.sort(scores, descending=True, stable=True).indices
    rows = (("most memorized", order[:k]), ("least memorized", order.flip(0)[:k]))
    what = "SSLMem" if report.sslmem is not None else "Σ UnitMem of the units it excites most"
    fig = new_figure(max(4.0, 1.35 * k), 3.6)
    axes = np.asarray(fig.subplots(2, k, squeeze=False))
    for r, (name, positions) in enumerate(rows):
        for c, i in enumerate(positions[:k].tolist()):
            show_image(axes[r, c], images[i], f"#{int(report.candidate_ids[i])}\n{float(scores[i]):.3f}", fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=9)
    fig.suptitle(f"Candidates ranked by {what} at {layer}", fontsize=10)
    return save_png(fig, path)


def plot_report(report: Optional[MemorizationReport], out_dir: PathLike,
                images: Optional[Union[Tensor, np.ndarray]] = None, history: Optional[History] = None, *, k: int = 8,
                layer: Optional[str] = None, threshold: float = 0.5, warmup_step: Optional[int] = None) -> List[Path]:
    """Write every figure that applies into ``out_dir`` (names in :data:`FILENAMES`); return the paths.

    LayerMem and SSLMem-vs-UnitMem need a reference, the candidate grid ``images`` ((N, C, H, W) by candidate
    position), the curves and heat maps ``history``; ``warmup_step`` (end of the LR warm-up) is drawn on them.
    """
    out = Path(out_dir)
    written: List[Path] = []
    if report is not None:
        if report.has_reference:
            written.append(plot_layer_mem(report, out / FILENAMES["layer_mem"]))
        written.append(plot_unit_mem_distribution(report, out / FILENAMES["unit_mem"], threshold=threshold))
        if report.sslmem is not None:
            written.append(plot_sslmem_vs_unitmem(report, out / FILENAMES["sslmem_vs_unitmem"], layer=layer))
        if images is not None:
            written.append(plot_candidate_grid(report, images, out / FILENAMES["candidates"], k=k, layer=layer))
    if history is not None:
        written.append(plot_history(history, out / FILENAMES["history"]))
    written += evidence_figures(report, history, out)
    if report is not None:
        written.append(save_png(profile_figure(report, warmup_step=warmup_step), out / FILENAMES["profile"]))
    if history is not None:
        with suppress(ReportFormatError):  # a history without LayerMem / excess / UnitMem scalars: no heat map
            written.append(save_png(heatmap_figure(history, warmup_step=warmup_step), out / FILENAMES["heatmap"]))
    return written
