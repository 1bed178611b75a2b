"""Layer × measurement heat maps of a monitor history (``*``: Holm test passes; dashed: end of the warm-up)."""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from lightning_memloc.errors import ReportFormatError
from lightning_memloc.plots.figure import new_figure
from lightning_memloc.plots.io import History, load_history
from lightning_memloc.report.tags import QUANTITIES, parse_scalar_tag, scalar_tag

#: Cells drawn with their value written in them at most (more: colour only).
MAX_ANNOTATED = 160
#: Quantities drawn on a diverging scale centred on 0.
SIGNED = ("excess", "excess_unseen", "unit_mem_excess", "delta_layer_mem")


class Heatmap(NamedTuple):
    """One quantity over layers (rows) and measurements (columns)."""

    quantity: str
    layers: List[str]
    epochs: List[int]
    steps: List[int]
    values: np.ndarray  # (layers, measurements), NaN where not measured
    pvalues: Optional[np.ndarray]  # Holm-corrected p-values of the quantity's test, same shape, or None


def heatmap_data(history: History, quantity: str, layers: Optional[Sequence[str]] = None) -> Heatmap:
    """The ``memloc.<quantity>/<layer>`` scalars of ``history`` as a (layers, measurements) matrix.

    Example:
        >>> h = [{"epoch": 0, "global_step": 5, "memloc.excess/a": 0.1, "memloc.excess/b": 0.3},
        ...      {"epoch": 1, "global_step": 10, "memloc.excess/a": 0.2, "memloc.excess/b": 0.4}]
        >>> heatmap_data(h, "excess").values.tolist()
        [[0.1, 0.2], [0.3, 0.4]]
    """
    entries = load_history(history)
    if quantity not in QUANTITIES:
        raise ValueError(f"`quantity` must be one of {sorted(QUANTITIES)}, got {quantity!r}.")
    tags = (parse_scalar_tag(str(key)) for entry in entries for key in entry)
    rows = list(layers) if layers is not None else list(dict.fromkeys(
        tag[1] for tag in tags if tag is not None and tag[0] == quantity))
    if not rows:
        raise ReportFormatError(f"the history holds no {scalar_tag(quantity, '<layer>')} scalars.")

    def matrix(key: str) -> np.ndarray:
        return np.array([[float(e.get(scalar_tag(key, layer), np.nan)) for e in entries] for layer in rows], dtype=float)

    pvalues = matrix(f"{quantity}_p_holm") if QUANTITIES[quantity].test else None
    return Heatmap(quantity, rows, [int(e["epoch"]) for e in entries], [int(e.get("global_step", -1)) for e in entries],
                   matrix(quantity), pvalues)


def warmup_boundary(steps: Sequence[int], warmup_step: Optional[int]) -> Optional[float]:
    """The column boundary after the last measurement taken by the end of the warm-up (``None``: outside).

    Example:
        >>> warmup_boundary([0, 10, 20, 30], 20), warmup_boundary([0, 10], 20), warmup_boundary([30, 40], 20)
        (2.5, None, None)
    """
    if warmup_step is None or not len(steps):
        return None
    done = sum(1 for step in steps if step <= warmup_step)
    if done == 0 or (done == len(steps) and steps[-1] != warmup_step):
        return None
    return done - 0.5


def _draw(fig: Figure, ax: Any, data: Heatmap, alpha: float, warmup: Optional[float], warmup_step: Optional[int]) -> None:
    values, signed = data.values, data.quantity in SIGNED
    finite = values[np.isfinite(values)]
    bound = max(float(np.abs(finite).max()) if finite.size else 0.0, 1e-9)
    scale = dict(cmap="RdBu_r", vmin=-bound, vmax=bound) if signed else dict(cmap="viridis")
    image = ax.imshow(values, aspect="auto", gid=data.quantity, **scale)
    fig.colorbar(image, ax=ax, shrink=0.9)
    rows, columns = values.shape
    if rows * columns <= MAX_ANNOTATED:
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                p = np.nan if data.pvalues is None else data.pvalues[i, j]
                shade = float(image.norm(value))
                ax.text(j, i, f"{value:{'+.2f' if signed else '.2f'}}" + ("*" if p < alpha else ""), ha="center",
                        va="center", fontsize=7, color="w" if (shade < 0.25 or (signed and shade > 0.75)) else "k")
    ax.set_yticks(range(rows), data.layers, fontsize=8)
    if len(set(data.epochs)) == len(data.epochs):
        labels, axis = ["init" if epoch < 0 else str(epoch) for epoch in data.epochs], "epoch"
    else:  # several measurements per epoch
        labels, axis = [str(step) for step in data.steps], "global step"
    every = max(1, -(-columns // 16))
    ax.set_xticks(range(0, columns, every), labels[::every], fontsize=8)
    if warmup is not None:
        ax.axvline(warmup, color="k", ls="--", lw=1.5, gid="warmup")
        axis += f"   (dashed: end of the learning-rate warm-up, step {warmup_step})"
    ax.set_xlabel(axis, fontsize=9)
    title = QUANTITIES[data.quantity].label
    ax.set_title(title + (f" (* Holm p < {alpha:g})" if data.pvalues is not None else ""), fontsize=10)


def heatmap_figure(history: History, layers: Optional[Sequence[str]] = None, *, warmup_step: Optional[int] = None,
                   alpha: float = 0.05) -> Figure:
    """Heat maps (layers × measurements) of the excess over the control (else LayerMem) and of mean UnitMem.

    Example:
        >>> h = [{"epoch": e, "global_step": 10 * e, "memloc.unit_mem_mean/a": 0.1 * e} for e in range(3)]
        >>> fig = heatmap_figure(h, warmup_step=10)
        >>> [line.get_xdata()[0] for line in fig.axes[0].lines]
        [1.5]
    """
    entries = load_history(history)
    found = {tag[0] for tag in map(parse_scalar_tag, set().union(*entries)) if tag is not None}  # quantities
    quantities = [q for q in ("excess", "layer_mem") if q in found][:1] + ["unit_mem_mean"]
    maps = [heatmap_data(entries, q, layers) for q in quantities if q in found]
    if not maps:
        raise ReportFormatError("the history holds no memloc.excess/..., memloc.layer_mem/... or memloc.unit_mem_mean/... scalars.")
    rows, columns = len(maps[0].layers), len(entries)
    fig = new_figure(min(11.0, 3.5 + 0.5 * columns), (1.3 + 0.34 * rows) * len(maps) + 0.4)
    axes = np.atleast_1d(fig.subplots(len(maps), 1))
    warmup = warmup_boundary(maps[0].steps, warmup_step)
    for ax, data in zip(axes, maps):
        _draw(fig, ax, data, alpha, warmup, warmup_step)
    fig.suptitle("memorization over training, layer by layer", fontsize=10)
    return fig
