"""The memorization profile of one measurement by depth, each figure next to its null (series ``gid``: data key)."""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
from matplotlib.figure import Figure

from lightning_memloc.plots.figure import depth_axis, draw_series, new_figure, p_labels
from lightning_memloc.report.report import MemorizationReport
from lightning_memloc.report.tags import QUANTITIES, REFERENCE_QUANTITIES

#: Short names of the tests in the title.
TEST_NAMES = {"excess": "excess", "excess_unseen": "excess vs unseen", "membership": "membership",
              "unit_mem_excess": "UnitMem seen > unseen"}


def profile_data(report: MemorizationReport) -> Dict[str, np.ndarray]:
    """Per-layer values (depth order, NaN where missing) of every quantity the report has.

    Example:
        >>> import torch
        >>> r = MemorizationReport(layers=["a", "b"], layer_kinds={"a": "conv", "b": "conv"}, candidate_ids=torch.arange(2),
        ...     unit_mem={"a": torch.tensor([0.2, 0.4]), "b": torch.tensor([0.6, 0.8])},
        ...     unit_argmax={"a": torch.tensor([0, 1]), "b": torch.tensor([1, 0])},
        ...     dead_units={"a": torch.tensor([False, False]), "b": torch.tensor([False, False])})
        >>> profile_data(r)["unit_mem_mean"].round(2).tolist()
        [0.3, 0.7]
    """
    layers, ev = report.layers, report.evidence
    records = [] if ev is None else [ev.layers[layer] for layer in layers]
    keys = dict.fromkeys(k for rec in records for k, v in rec.items() if v is not None)
    data = {key: np.array([rec.get(key) for rec in records], dtype=float) for key in keys}  # None: NaN
    if report.has_reference:
        for quantity in REFERENCE_QUANTITIES:  # a hand-made report may leave some out
            values = getattr(report, quantity, None)
            if values is not None:
                data.setdefault(quantity, np.array([values.get(layer, np.nan) for layer in layers], dtype=float))
    means = report.unit_mem_mean()
    data.setdefault("unit_mem_mean", np.array([means[layer] for layer in layers], dtype=float))
    return data


def measurement_title(meta: Dict[str, Any]) -> str:
    """``"epoch 4 · step 150"`` (``"before training"`` for the init point) from a report's ``meta``."""
    epoch, step = meta.get("epoch"), meta.get("global_step")
    when = "before training" if epoch is not None and int(epoch) < 0 else (f"epoch {epoch}" if epoch is not None else "")
    return " · ".join(part for part in (when, None if step is None else f"step {step}") if part)


def _top(data: Dict[str, np.ndarray], *keys: str) -> Optional[np.ndarray]:
    present = [data[k] for k in keys if k in data]
    return np.fmax.reduce(present) if present else None


def profile_figure(report: MemorizationReport, *, warmup_step: Optional[int] = None) -> Figure:
    """LayerMem, excess, membership and UnitMem panels by depth; the title says which side of ``warmup_step`` it is.

    Example:
        >>> import torch
        >>> r = MemorizationReport(layers=["a"], layer_kinds={"a": "conv"}, candidate_ids=torch.arange(2),
        ...     unit_mem={"a": torch.tensor([0.2, 0.4])}, unit_argmax={"a": torch.tensor([0, 1])},
        ...     dead_units={"a": torch.tensor([False, False])})
        >>> [ax.get_title() for ax in profile_figure(r).axes]
        ['mean UnitMem (no unseen set: no null)']
    """
    data, layers, ev = profile_data(report), report.layers, report.evidence
    x = np.arange(1, len(layers) + 1, dtype=float)
    alpha = float(ev.meta.get("alpha", 0.05)) if ev is not None else 0.05
    drawn = {key for key, values in data.items() if not np.isnan(values).all()}
    panels = [panel for panel, keys in (("layer_mem", {"layer_mem"}), ("excess", {"excess", "excess_unseen"}),
                                        ("membership", {"membership"})) if keys & drawn] + ["unit_mem"]
    columns = 2 if len(panels) == 4 else len(panels)
    rows = (len(panels) + columns - 1) // columns
    fig = new_figure(min(max(5.4, 0.75 * len(layers)), 8.0) * columns, 3.6 * rows + 0.6)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax, panel in zip(axes, panels):
        if panel == "layer_mem":
            draw_series(ax, x, data, "layer_mem", "candidates ± CI", marker="o", color="C0", lw=2)
            draw_series(ax, x, data, "control_layer_mem", "control (both encoders trained on it)", marker="s",
                        color="0.45", ls="--")
            draw_series(ax, x, data, "unseen_layer_mem", "unseen images", marker="v", color="C2", ls=":")
            ax.set_title("LayerMem" if "control_layer_mem" in data else "LayerMem (no control: includes the f–g offset)")
        elif panel == "excess":
            drawn = draw_series(ax, x, data, "excess", "over the control ± CI", marker="D", color="C3", lw=2)
            draw_series(ax, x + 0.1, data, "excess_unseen", "over unseen images ± CI", marker="v", color="C2", ls=":")
            key = "excess" if drawn else "excess_unseen"
            p_labels(ax, x, _top(data, key, f"{key}_hi"), data.get(f"{key}_p_holm"), alpha)
            ax.axhline(0.0, color="0.3", lw=0.8)
            ax.set_title(f"LayerMem excess (Holm p; * below α={alpha:g})")
        elif panel == "membership":
            draw_series(ax, x, data, "membership", "units whose μmax image was seen", marker="D", color="C3", lw=2)
            draw_series(ax, x, data, "membership_chance", "chance", color="k", ls="--", lw=1)
            top = _top(data, "membership", "membership_hi", "membership_chance")
            p_labels(ax, x, top, data.get("membership_p_holm"), alpha)
            ax.set(ylim=(0, 1.1), title="μmax membership vs chance")
        elif draw_series(ax, x, data, "unit_mem_seen", "seen (candidates)", marker="o", color="C0", lw=2):  # unit_mem
            draw_series(ax, x, data, "unit_mem_unseen", "unseen", marker="v", color="C2", ls=":")
            p_labels(ax, x, _top(data, "unit_mem_seen", "unit_mem_unseen"), data.get("unit_mem_excess_p_holm"), alpha)
            ax.set_title("mean UnitMem: seen vs unseen (Holm p)")
        else:
            draw_series(ax, x, data, "unit_mem_mean", QUANTITIES["unit_mem_mean"].label, marker="o", color="C0", lw=2)
            ax.set_title("mean UnitMem (no unseen set: no null)")
        ax.margins(y=0.18)
        ax.legend(fontsize=7, loc="best")
        depth_axis(ax, layers)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(_suptitle(report, warmup_step), fontsize=10)
    return fig


def _suptitle(report: MemorizationReport, warmup_step: Optional[int]) -> str:
    first = ["memorization by depth", measurement_title(report.meta)]
    step = report.meta.get("global_step")
    if warmup_step is not None and step is not None:
        first.append("in the LR warm-up" if int(step) < warmup_step else f"after the LR warm-up (ended at step {warmup_step})")
    title = " · ".join(part for part in first if part)
    ev = report.evidence
    if ev is not None and ev.meta.get("significant"):
        alpha = float(ev.meta.get("alpha", 0.05))
        counts = " · ".join(f"{TEST_NAMES.get(test, test)} {len(names)}/{len(report.layers)}"
                            for test, names in ev.meta["significant"].items())
        title += f"\nsignificant layers (Holm p < {alpha:g}): {counts}"
    return title
