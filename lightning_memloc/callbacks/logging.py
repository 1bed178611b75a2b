"""Turn a :class:`~lightning_memloc.MemorizationReport` into logger scalars and TensorBoard extras.

Every value is logged against one x-axis, the trainer's ``global_step`` at the moment of the
measurement: scalars, histograms and image grids line up in TensorBoard. Tags:

- ``memloc/layer_mem/<layer>``, ``memloc/delta_layer_mem/<layer>``,
  ``memloc/layer_mem_top/<layer>``, ``memloc/layer_mem_least/<layer>`` (with a reference);
- ``memloc/unit_mem_mean/<layer>``, ``memloc/unit_mem_frac_above/<layer>``,
  ``memloc/dead_units/<layer>`` and ``memloc/class_mem_mean/<layer>`` (with labels);
- histograms ``memloc_hist/unit_mem/<layer>``; images ``memloc_images/most_memorized`` and
  ``memloc_images/least_memorized``; a custom-scalars layout "memloc" with one multi-line chart
  per quantity (all layers on one chart);
- with evidence (:mod:`lightning_memloc.evidence`): every interval bound, control value, excess,
  p-value and membership fraction as ``memloc/<key>/<layer>`` (e.g. ``memloc/excess/<layer>``,
  ``memloc/excess_p_holm/<layer>``, ``memloc/membership/<layer>``), the number of significant
  layers per test ``memloc/significant_layers/<test>``, and custom-scalars *margin* charts (value
  with its interval) per layer.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor

from lightning_memloc.report import MemorizationReport

PREFIX = "memloc"


def report_scalars(report: MemorizationReport, threshold: float = 0.5) -> Dict[str, float]:
    """The scalars of a report under their logging tags (see the module docstring).

    Example:
        >>> import torch
        >>> r = MemorizationReport(layers=["a"], layer_kinds={"a": "conv"}, candidate_ids=torch.arange(2),
        ...     unit_mem={"a": torch.tensor([0.2, 0.8])}, unit_argmax={"a": torch.tensor([0, 1])},
        ...     dead_units={"a": torch.tensor([False, False])})
        >>> report_scalars(r)["memloc/unit_mem_frac_above/a"]
        0.5
    """
    out: Dict[str, float] = {}
    means, fractions, dead = report.mean_unit_mem(), report.fraction_above(threshold), report.num_dead()
    for layer in report.layers:
        if report.has_reference:
            out[f"{PREFIX}/layer_mem/{layer}"] = report.layer_mem[layer]
            out[f"{PREFIX}/delta_layer_mem/{layer}"] = report.delta_layer_mem[layer]
            out[f"{PREFIX}/layer_mem_top/{layer}"] = report.layer_mem_top[layer]
            out[f"{PREFIX}/layer_mem_least/{layer}"] = report.layer_mem_least[layer]
        out[f"{PREFIX}/unit_mem_mean/{layer}"] = means[layer]
        out[f"{PREFIX}/unit_mem_frac_above/{layer}"] = fractions[layer]
        out[f"{PREFIX}/dead_units/{layer}"] = float(dead[layer])
        if report.class_mem is not None:
            out[f"{PREFIX}/class_mem_mean/{layer}"] = float(report.class_mem[layer].mean())
    out.update(evidence_scalars(report))
    return out


def evidence_scalars(report: MemorizationReport) -> Dict[str, float]:
    """Every measured evidence value as ``memloc/<key>/<layer>`` (keys of
    :class:`~lightning_memloc.evidence.Evidence` records: ``layer_mem_lo``, ``excess``,
    ``excess_p_holm``, ``membership``, ...), plus ``memloc/significant_layers/<test>``: how many
    layers pass each Holm-corrected test. Values already logged under the same tag are skipped.

    Example:
        >>> import torch
        >>> from lightning_memloc.evidence import compute_evidence
        >>> mu = {"a": torch.rand(6, 3)}
        >>> r = MemorizationReport(layers=["a"], layer_kinds={"a": "conv"}, candidate_ids=torch.arange(6),
        ...     unit_mem={"a": torch.zeros(3)}, unit_argmax={"a": torch.zeros(3, dtype=torch.long)},
        ...     dead_units={"a": torch.zeros(3, dtype=torch.bool)}, evidence=compute_evidence(["a"], unit_means=mu))
        >>> sorted(evidence_scalars(r))
        ['memloc/unit_mem_mean_hi/a', 'memloc/unit_mem_mean_lo/a']
    """
    ev = report.evidence
    if ev is None:
        return {}
    skip = {"layer_mem", "delta_layer_mem", "layer_mem_top", "layer_mem_least", "unit_mem_mean"}
    out: Dict[str, float] = {}
    for layer in report.layers:
        for key, value in ev.layers[layer].items():
            if value is not None and key not in skip and math.isfinite(value):
                out[f"{PREFIX}/{key}/{layer}"] = float(value)
    for test, layers in dict(ev.meta.get("significant") or {}).items():
        out[f"{PREFIX}/significant_layers/{test}"] = float(len(layers))
    return out


#: Margin charts (value, lower, upper) drawn per layer when the report has them.
MARGINS = {
    "LayerMem ± CI": ("layer_mem", "layer_mem_lo", "layer_mem_hi"),
    "excess over control ± CI": ("excess", "excess_lo", "excess_hi"),
    "mean UnitMem ± CI": ("unit_mem_mean", "unit_mem_mean_lo", "unit_mem_mean_hi"),
    "UnitMem seen − unseen ± CI": ("unit_mem_excess", "unit_mem_excess_lo", "unit_mem_excess_hi"),
}


def custom_scalar_layout(report: MemorizationReport, by_layer: bool = False) -> Dict[str, Dict[str, List]]:
    """A TensorBoard custom-scalars layout putting every layer of a quantity on one chart.

    With ``by_layer`` (the monitor writes one run per layer, see
    :mod:`~lightning_memloc.callbacks.layer_runs`) each chart matches the quantity's tag in every
    layer run, so TensorBoard draws each layer in its own colour (series are coloured by run),
    and the margin charts (value with its interval) show every layer on one chart per quantity.
    """
    if by_layer:
        return _by_layer_layout(report)
    quantities = ["unit_mem_mean", "unit_mem_frac_above", "dead_units"]
    if report.has_reference:
        quantities = ["layer_mem", "delta_layer_mem", "layer_mem_top", "layer_mem_least"] + quantities
    if report.class_mem is not None:
        quantities.append("class_mem_mean")
    ev = report.evidence
    if ev is not None:
        for extra in ("excess", "excess_p_holm", "membership", "membership_p_holm", "unit_mem_unseen"):
            if ev.has(extra):
                quantities.append(extra)
    charts = {q: ["Multiline", [f"{PREFIX}/{q}/{layer}" for layer in report.layers]] for q in quantities}
    layout = {PREFIX: charts}
    if ev is not None:
        for title, (value, lo, hi) in MARGINS.items():
            if ev.has(lo):
                layout[f"{PREFIX} {title}"] = {
                    layer: ["Margin", [f"{PREFIX}/{value}/{layer}", f"{PREFIX}/{lo}/{layer}", f"{PREFIX}/{hi}/{layer}"]]
                    for layer in report.layers}
    return layout


def _by_layer_layout(report: MemorizationReport) -> Dict[str, Dict[str, List]]:
    tag = f"{PREFIX}_by_layer"
    quantities = ["unit_mem_mean", "unit_mem_frac_above", "dead_units"]
    if report.has_reference:
        quantities = ["layer_mem", "delta_layer_mem", "layer_mem_top", "layer_mem_least"] + quantities
    ev = report.evidence
    for extra in ("excess", "excess_p_holm", "membership", "membership_p_holm", "unit_mem_unseen"):
        if ev is not None and ev.has(extra):
            quantities.append(extra)
    charts: Dict[str, List] = {q: ["Multiline", [f"^{tag}/{q}$"]] for q in quantities}
    for title, (value, lo, hi) in MARGINS.items():
        if ev is not None and ev.has(lo):
            charts[title] = ["Margin", [f"{tag}/{value}", f"{tag}/{lo}", f"{tag}/{hi}"]]
    return {PREFIX: charts}


def image_grids(report: MemorizationReport, images: Callable[[Tensor], Tensor], count: int) -> Dict[str, Tensor]:
    """Grids (C, H, W) of the ``count`` most and least memorized candidates.

    Args:
        report: the measurement.
        images: maps candidate positions (k,) to their un-augmented images (k, C, H, W) in [0, 1].
        count: images per grid.
    """
    from torchvision.utils import make_grid

    scores = report.candidate_scores()
    count = min(count, scores.numel())
    order = torch.sort(scores, descending=True, stable=True).indices
    grids = {}
    for name, positions in (("most_memorized", order[:count]), ("least_memorized", order.flip(0)[:count])):
        picked = images(positions).detach().cpu().float().clamp(0, 1)
        grids[name] = make_grid(picked, nrow=min(count, 8), padding=1, pad_value=1.0)
    return grids


def log_tensorboard(
    writer: object,
    report: MemorizationReport,
    step: int,
    *,
    images: Optional[Callable[[Tensor], Tensor]] = None,
    grid_size: int = 8,
    histograms: bool = True,
    layout: bool = False,
    by_layer: bool = False,
) -> None:
    """Histograms, image grids and (once) the custom-scalars layout on a ``SummaryWriter``."""
    if layout:
        writer.add_custom_scalars(custom_scalar_layout(report, by_layer=by_layer))
    if histograms:
        for layer in report.layers:
            writer.add_histogram(f"{PREFIX}_hist/unit_mem/{layer}", report.unit_mem[layer].float(), global_step=step)
    if images is not None and grid_size > 0:
        for name, grid in image_grids(report, images, grid_size).items():
            writer.add_image(f"{PREFIX}_images/{name}", grid, global_step=step)
    writer.flush()
