"""Figures of :mod:`lightning_memloc.analyses` results (as stored in ``report.analyses``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
from torch import Tensor

from lightning_memloc.analyses.atypicality import max_unit_mem
from lightning_memloc.io import PathLike
from lightning_memloc.plots.figure import layer_of, new_figure, save_png, show_image
from lightning_memloc.report.report import MemorizationReport

#: File name of each figure written by :func:`plot_analyses`.
ANALYSIS_FILENAMES = {name: f"{name}.png" for name in ("consistency", "exchange", "atypicality", "neighbours",
                                                        "unit_restore")}


def _need(result: Any, keys: List[str], what: str) -> Mapping[str, Any]:
    if not isinstance(result, Mapping) or any(key not in result for key in keys):
        raise ValueError(f"`result` is not a {what} result (expected the keys {keys}): pass what "
                         f"lightning_memloc.analyses returned or report.analyses[{what!r}].")
    return result


def plot_consistency(result: Mapping[str, Any], path: PathLike) -> Path:
    """Heat maps over layer pairs of :func:`~lightning_memloc.analyses.layer_consistency`: top-k overlap, Kendall's τ."""
    result = _need(result, ["layers", "k", "top_k_overlap", "kendall_tau"], "consistency")
    layers = list(result["layers"])
    size = len(layers)
    fig = new_figure(4.0 + 1.1 * size, 2.4 + 0.45 * size)
    axes = fig.subplots(1, 2)
    chance = result.get("chance_overlap")
    panels = ((f"top-{result['k']} overlap" + (f" (chance {chance:.2f})" if chance is not None else ""),
               result["top_k_overlap"], 0.0, 1.0, "viridis"),
              ("Kendall's τ of the rankings", result["kendall_tau"], -1.0, 1.0, "RdBu_r"))
    for ax, (title, matrix, low, high, cmap) in zip(axes, panels):
        values = np.asarray(matrix, dtype=float)
        image = ax.imshow(values, vmin=low, vmax=high, cmap=cmap)
        ax.set_xticks(range(size), layers, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(size), layers, fontsize=7)
        if size <= 12:
            for (i, j), value in np.ndenumerate(values):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if cmap == "viridis" and value < 0.5 else "black")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle("Are the most memorized candidates the same at every layer? (SSLMem rankings)", fontsize=10)
    return save_png(fig, path)


def plot_exchange(result: Mapping[str, Any], path: PathLike) -> Path:
    """Bars: SSLMem drop after exchanging each layer / group (:func:`~lightning_memloc.analyses.layer_exchange_study`)."""
    result = _need(result, ["single", "groups", "baseline", "k", "measure_layer"], "exchange")
    names, groups, k = list(result["single"]), result["groups"], result["k"]
    drops = [result["single"][n]["drop_normalised"] for n in names]
    chosen = {"top_layer_mem": f"top-{k} LayerMem", "top_delta_layer_mem": f"top-{k} ΔLayerMem", "last": f"last {k}"}
    labels = [f"{title}\n{', '.join(groups[g]['layers'])}" for g, title in chosen.items()]
    group_drops = [groups[g]["drop_normalised"] for g in chosen]
    random = [d["drop_normalised"] for d in groups.get("random") or []]
    scale = result["baseline"]["range"] or 1.0  # control drops in the same units as the bars (÷ f's range)
    fig = new_figure(6.0 + 0.5 * len(names), 4.2)
    left, right = fig.subplots(1, 2, width_ratios=[max(len(names), 1), 4])
    left.bar(range(len(names)), drops, color="C0", label="candidates")
    if "control_drop" in result["single"][names[0]]:  # the same exchange on control images
        left.scatter(range(len(names)), [result["single"][n]["control_drop"] / scale for n in names], marker="x", color="k",
                     zorder=3, label="control images")
        left.legend(fontsize=7)
    left.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    left.set_title("one layer exchanged", fontsize=9)
    left.set_ylabel(f"SSLMem drop at {result['measure_layer']}\n(÷ range of f's SSLMem)")
    positions = list(range(len(group_drops)))
    right.bar(positions, group_drops, color=["C1", "C2", "C3"])
    if "control_drop" in groups["last"]:
        right.scatter(positions, [groups[g]["control_drop"] / scale for g in chosen], marker="x", color="k", zorder=3)
    if random:
        right.bar([len(positions)], [float(np.mean(random))], color="0.6",
                  yerr=[float(np.std(random))] if len(random) > 1 else None, capsize=4)
        right.scatter([len(positions)] * len(random), random, color="k", s=10, zorder=3)
        labels.append(f"random {k}\n({len(random)} draws)")
    right.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    right.set_title(f"{k} layers exchanged", fontsize=9)
    for ax in (left, right):
        ax.axhline(0, color="k", lw=0.6)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Layer exchange: drop of SSLMem when layers of f come from g (> 0: memorization removed)", fontsize=10)
    return save_png(fig, path)


def plot_atypicality(result: Mapping[str, Any], report: MemorizationReport, path: PathLike,
                     layer: Optional[str] = None) -> Path:
    """Scatter of atypicality (kNN distance) against SSLMem and the highest UnitMem, at ``layer`` (default: last)."""
    result = _need(result, ["knn_distance", "spearman", "k"], "atypicality")
    layer = layer_of(report, layer)
    x = np.asarray(result["knn_distance"], dtype=float)
    if x.size != report.num_candidates:
        raise ValueError(f"`result` scores {x.size} candidates but the report has {report.num_candidates}.")
    panels = []
    if report.has_reference:
        panels.append(("SSLMem (normalised)", report.sslmem[layer].double().numpy(), result["spearman"]["sslmem"][layer]))
    panels.append(("highest UnitMem of the units it excites most", max_unit_mem(report, layer).numpy(),
                   result["spearman"]["max_unit_mem"][layer]))
    fig = new_figure(4.6 * len(panels), 4.0)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (name, y, rho) in zip(axes, panels):
        ax.scatter(x, y, s=12, alpha=0.6)
        p = rho.get("p")
        ax.set_title(f"Spearman ρ = {rho['rho']:.2f}" + (f" (p = {p:.2g})" if p is not None else ""), fontsize=9)
        ax.set_xlabel(f"atypicality: mean distance to {result['k']} nearest training images")
        ax.set_ylabel(name, fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Memorization vs atypicality at {layer}", fontsize=10)
    return save_png(fig, path)


def plot_neighbours(result: Mapping[str, Any], candidates: Tensor, pool: Tensor, path: PathLike) -> Path:
    """Each of the most memorized ``candidates`` (first column, report order) next to its nearest ``pool`` images."""
    result = _need(result, ["most_memorized", "knn_distance"], "atypicality")
    top = result["most_memorized"]
    rows, near = top["positions"], top["neighbour_positions"]
    if not rows:
        raise ValueError("`result` lists no most memorized candidates.")
    if max(rows) >= len(candidates) or max(max(r) for r in near) >= len(pool):
        raise ValueError("`candidates` / `pool` do not hold the images the result indexes: pass the images the "
                         "study was run on.")
    cols = 1 + max(len(r) for r in near)
    fig = new_figure(1.2 * cols + 0.6, 1.25 * len(rows) + 0.6)
    axes = np.asarray(fig.subplots(len(rows), cols, squeeze=False))
    distance = result["knn_distance"]
    for r, (position, neighbours) in enumerate(zip(rows, near)):
        pictures = [candidates[position]] + [pool[j] for j in neighbours]
        show_image(axes[r, 0], pictures[0], f"#{top['ids'][r]} d={distance[position]:.2f}", fontsize=7, color="C3")
        for c in range(1, cols):
            if c < len(pictures):
                show_image(axes[r, c], pictures[c], f"#{top['neighbours'][r][c - 1]}", fontsize=7)
            else:
                axes[r, c].axis("off")
    fig.suptitle("Most memorized candidates (left, by SSLMem) and their nearest training images", fontsize=9)
    return save_png(fig, path)


def plot_unit_restore(result: Mapping[str, Any], path: PathLike) -> Path:
    """Bars: UnitMem of the kept units before and after fine-tuning (:func:`~lightning_memloc.analyses.finetune_units`)."""
    result = _need(result, ["units", "unit_mem_before", "unit_mem_after", "layer"], "unit_restore")
    units = list(result["units"])
    fig = new_figure(2.5 + 0.6 * len(units), 3.6)
    ax = fig.subplots()
    positions = np.arange(len(units))
    ax.bar(positions - 0.2, result["unit_mem_before"], width=0.4, label="before")
    ax.bar(positions + 0.2, result["unit_mem_after"], width=0.4, label="after")
    ax.set_xticks(positions, [str(u) for u in units])
    ax.set(xlabel=f"unit of {result['layer']}", ylabel="UnitMem", ylim=(0, 1.05))
    ax.legend(fontsize=8)
    ax.set_title(f"fine-tuned units (others restored; max change {result.get('other_units_max_change', 0):.1e})",
                 fontsize=8)
    return save_png(fig, path)


def plot_analyses(report: MemorizationReport, out_dir: PathLike, candidates: Optional[Tensor] = None,
                  pool: Optional[Tensor] = None) -> List[Path]:
    """Every figure ``report.analyses`` allows (the neighbour grid needs ``candidates`` and ``pool``)."""
    out = Path(out_dir)
    analyses: Dict[str, Any] = getattr(report, "analyses", None) or {}
    written: List[Path] = []
    if "consistency" in analyses:
        written.append(plot_consistency(analyses["consistency"], out / ANALYSIS_FILENAMES["consistency"]))
    if "exchange" in analyses:
        written.append(plot_exchange(analyses["exchange"], out / ANALYSIS_FILENAMES["exchange"]))
    if "atypicality" in analyses:
        written.append(plot_atypicality(analyses["atypicality"], report, out / ANALYSIS_FILENAMES["atypicality"]))
        if candidates is not None and pool is not None:
            written.append(plot_neighbours(analyses["atypicality"], candidates, pool, out / ANALYSIS_FILENAMES["neighbours"]))
    if "unit_restore" in analyses:
        written.append(plot_unit_restore(analyses["unit_restore"], out / ANALYSIS_FILENAMES["unit_restore"]))
    return written
