"""Training curves of a :class:`~lightning_memloc.MemorizationMonitor` history."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightning_memloc.errors import ReportFormatError
from lightning_memloc.io import PathLike
from lightning_memloc.plots.figure import colormap, new_figure, save_png, training_axis, training_x
from lightning_memloc.plots.io import PREFIX, History, load_history


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
