"""Turn a :class:`~lightning_memloc.MemorizationReport` into logger scalars and TensorBoard extras.

Every value is logged against one x-axis, the trainer's ``global_step`` at the moment of the
measurement: scalars, histograms and image grids line up in TensorBoard. Tags:

- ``memloc/layer_mem/<layer>``, ``memloc/delta_layer_mem/<layer>``,
  ``memloc/layer_mem_top/<layer>``, ``memloc/layer_mem_least/<layer>`` (with a reference);
- ``memloc/unit_mem_mean/<layer>``, ``memloc/unit_mem_frac_above/<layer>``,
  ``memloc/dead_units/<layer>`` and ``memloc/class_mem_mean/<layer>`` (with labels);
- histograms ``memloc_hist/unit_mem/<layer>``; images ``memloc_images/most_memorized`` and
  ``memloc_images/least_memorized``; a custom-scalars layout "memloc" with one multi-line chart
  per quantity (all layers on one chart).
"""

from __future__ import annotations

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
    return out


def custom_scalar_layout(report: MemorizationReport) -> Dict[str, Dict[str, List]]:
    """A TensorBoard custom-scalars layout putting every layer of a quantity on one chart."""
    quantities = ["unit_mem_mean", "unit_mem_frac_above", "dead_units"]
    if report.has_reference:
        quantities = ["layer_mem", "delta_layer_mem", "layer_mem_top", "layer_mem_least"] + quantities
    if report.class_mem is not None:
        quantities.append("class_mem_mean")
    charts = {q: ["Multiline", [f"{PREFIX}/{q}/{layer}" for layer in report.layers]] for q in quantities}
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
) -> None:
    """Histograms, image grids and (once) the custom-scalars layout on a ``SummaryWriter``."""
    if layout:
        writer.add_custom_scalars(custom_scalar_layout(report))
    if histograms:
        for layer in report.layers:
            writer.add_histogram(f"{PREFIX}_hist/unit_mem/{layer}", report.unit_mem[layer].float(), global_step=step)
    if images is not None and grid_size > 0:
        for name, grid in image_grids(report, images, grid_size).items():
            writer.add_image(f"{PREFIX}_images/{name}", grid, global_step=step)
    writer.flush()
