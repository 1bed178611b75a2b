"""Turn a :class:`~lightning_memloc.MemorizationReport` into logger scalars and TensorBoard extras.

Every value is logged against one x-axis, the trainer's ``global_step`` at the moment of the
measurement: scalars, histograms and images line up in TensorBoard. Tags (built by
:mod:`lightning_memloc.tags`; TensorBoard makes one section per quantity):

- ``memloc.layer_mem/<layer>``, ``memloc.delta_layer_mem/<layer>``, ``memloc.layer_mem_top/<layer>``,
  ``memloc.layer_mem_least/<layer>`` (with a reference); ``memloc.unit_mem_mean/<layer>``,
  ``memloc.unit_mem_frac_above/<layer>``, ``memloc.dead_units/<layer>``, ``memloc.class_mem_mean/<layer>``
  (with labels);
- with evidence (:mod:`lightning_memloc.evidence`): every interval bound, control value, excess,
  p-value and membership share as ``memloc.<key>/<layer>`` (``memloc.excess/<layer>``,
  ``memloc.excess_p_holm/<layer>``, ``memloc.membership/<layer>``, ...) and the number of
  significant layers per test ``memloc/significant_layers/<test>``, and the overall verdict
  ``memloc/verdict/memorization`` (1 / 0);
- on TensorBoard: histograms ``memloc.unit_mem/<layer>``; in the summary section ``memloc/`` the
  figures ``memloc/profile`` and ``memloc/profile_over_training``
  (:mod:`~lightning_memloc.callbacks.figures`) and the grids ``memloc/most_memorized`` /
  ``memloc/least_memorized``; a custom-scalars layout "memloc" (one multi-line chart per quantity,
  and *margin* charts: value with its interval).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

from lightning_memloc.callbacks.figures import log_figures, log_warmup, steps_per_epoch, warmup_end_step
from lightning_memloc.callbacks.layer_runs import LayerRunWriters
from lightning_memloc.callbacks.naming import NamedWriter, has_tensorboard, named_scalars, named_tag
from lightning_memloc.report import MemorizationReport
from lightning_memloc.tags import (LABEL_QUANTITIES, MARGINS, PREFIX, QUANTITIES, REFERENCE_QUANTITIES, UNIT_QUANTITIES, by_layer_tag,
                                   hist_tag, image_tag, scalar_tag, significant_tag, verdict_tag)

__all__ = ["MARGINS", "MonitorLoggers", "PREFIX", "custom_scalar_layout", "evidence_scalars", "image_grids", "log_tensorboard",
           "report_scalars"]  # MARGINS, PREFIX: defined in lightning_memloc.tags
#: Evidence-chart quantities (when the report's evidence has them): every tested quantity and its Holm p-value.
_EVIDENCE_CHARTS = tuple(k for name, q in QUANTITIES.items() if q.test for k in (name, f"{name}_p_holm")) + ("unit_mem_unseen",)


def report_scalars(report: MemorizationReport, threshold: float = 0.5) -> Dict[str, float]:
    """The scalars of a report under their logging tags (see the module docstring).

    Example:
        >>> import torch
        >>> r = MemorizationReport(layers=["a"], layer_kinds={"a": "conv"}, candidate_ids=torch.arange(2),
        ...     unit_mem={"a": torch.tensor([0.2, 0.8])}, unit_argmax={"a": torch.tensor([0, 1])},
        ...     dead_units={"a": torch.tensor([False, False])})
        >>> report_scalars(r)["memloc.unit_mem_frac_above/a"]
        0.5
    """
    out: Dict[str, float] = {}
    means, fractions, dead = report.unit_mem_mean(), report.unit_mem_frac_above(threshold), report.num_dead_units()
    for layer in report.layers:
        if report.has_reference:
            for quantity in REFERENCE_QUANTITIES:  # report fields of the same names
                out[scalar_tag(quantity, layer)] = getattr(report, quantity)[layer]
        unit = {"unit_mem_mean": means[layer], "unit_mem_frac_above": fractions[layer], "dead_units": float(dead[layer])}
        out.update({scalar_tag(quantity, layer): unit[quantity] for quantity in UNIT_QUANTITIES})
        if report.class_mem is not None:
            out[scalar_tag(LABEL_QUANTITIES[0], layer)] = float(report.class_mem[layer].mean())
    out.update(evidence_scalars(report))
    return out


def evidence_scalars(report: MemorizationReport) -> Dict[str, float]:
    """Every measured evidence value as ``memloc.<key>/<layer>`` (keys of
    :class:`~lightning_memloc.evidence.Evidence` records: ``layer_mem_lo``, ``excess``,
    ``excess_p_holm``, ``membership``, ...), plus ``memloc/significant_layers/<test>``: how many
    layers pass each test of the verdict, and ``memloc/verdict/memorization`` (1 / 0). Values
    already logged under the same tag are skipped.

    Example:
        >>> import torch
        >>> from lightning_memloc.evidence import compute_evidence
        >>> mu = {"a": torch.rand(6, 3)}
        >>> r = MemorizationReport(layers=["a"], layer_kinds={"a": "conv"}, candidate_ids=torch.arange(6),
        ...     unit_mem={"a": torch.zeros(3)}, unit_argmax={"a": torch.zeros(3, dtype=torch.long)},
        ...     dead_units={"a": torch.zeros(3, dtype=torch.bool)}, evidence=compute_evidence(["a"], unit_means=mu))
        >>> sorted(evidence_scalars(r))
        ['memloc.unit_mem_mean_hi/a', 'memloc.unit_mem_mean_lo/a']
    """
    ev = report.evidence
    if ev is None:
        return {}
    skip = {*REFERENCE_QUANTITIES, "unit_mem_mean"}  # logged by report_scalars
    out: Dict[str, float] = {}
    for layer in report.layers:
        for key, value in ev.layers[layer].items():
            if value is not None and key not in skip and math.isfinite(value):
                out[scalar_tag(key, layer)] = float(value)
    for test, layers in dict(ev.meta.get("significant") or {}).items():
        out[significant_tag(test)] = float(len(layers))
    if ev.shows_memorization is not None:
        out[verdict_tag()] = float(ev.shows_memorization)
    return out


def custom_scalar_layout(report: MemorizationReport, by_layer: bool = False) -> Dict[str, Dict[str, List]]:
    """A TensorBoard custom-scalars layout putting every layer of a quantity on one chart.

    With ``by_layer`` (the monitor writes one run per layer, see
    :mod:`~lightning_memloc.callbacks.layer_runs`) each chart matches the quantity's tag in every
    layer run, so TensorBoard draws each layer as its own run (coloured by run, 7 colours), and the
    margin charts (value with its interval) show every layer on one chart per quantity.
    """
    if by_layer:
        return _by_layer_layout(report)
    quantities = _chart_quantities(report, labels=True)
    charts = {q: ["Multiline", [scalar_tag(q, layer) for layer in report.layers]] for q in quantities}
    layout = {PREFIX: charts}
    ev = report.evidence
    if ev is not None:
        for title, (value, lo, hi) in MARGINS.items():
            if ev.has(lo):
                layout[f"{PREFIX} {title}"] = {
                    layer: ["Margin", [scalar_tag(value, layer), scalar_tag(lo, layer), scalar_tag(hi, layer)]]
                    for layer in report.layers}
    return layout


def _chart_quantities(report: MemorizationReport, labels: bool) -> List[str]:
    quantities = list(REFERENCE_QUANTITIES if report.has_reference else ()) + list(UNIT_QUANTITIES)
    if labels and report.class_mem is not None:
        quantities += LABEL_QUANTITIES
    ev = report.evidence
    return quantities + [extra for extra in _EVIDENCE_CHARTS if ev is not None and ev.has(extra)]


def _by_layer_layout(report: MemorizationReport) -> Dict[str, Dict[str, List]]:
    ev = report.evidence
    charts: Dict[str, List] = {q: ["Multiline", [f"^{re.escape(by_layer_tag(q))}$"]]
                               for q in _chart_quantities(report, labels=False)}
    for title, (value, lo, hi) in MARGINS.items():
        if ev is not None and ev.has(lo):
            charts[title] = ["Margin", [by_layer_tag(value), by_layer_tag(lo), by_layer_tag(hi)]]
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
    history: Optional[Sequence[Mapping[str, Any]]] = None,
    warmup_step: Optional[int] = None,
) -> None:
    """Histograms, image grids, (with a ``history``) the figures, and (once) the custom-scalars layout on a ``SummaryWriter``."""
    if layout:
        writer.add_custom_scalars(custom_scalar_layout(report, by_layer=by_layer))
    if histograms:
        for layer in report.layers:
            writer.add_histogram(hist_tag(layer), report.unit_mem[layer].float(), global_step=step)
    if images is not None and grid_size > 0:
        for name, grid in image_grids(report, images, grid_size).items():
            writer.add_image(image_tag(name), grid, global_step=step)
    if history:
        log_figures(writer, report, history, step, warmup_step=warmup_step)
    writer.flush()


class MonitorLoggers:
    """Writes one monitor's measurements to every logger of a trainer, all at ``trainer.global_step``.

    Scalars go to every logger and into ``trainer.callback_metrics`` (tags renamed for a named
    monitor); on rank 0 a TensorBoard logger also gets histograms, image grids, the figures, the
    custom-scalars layout and the warm-up note (once) and, with ``layer_runs``, one run per layer
    (:class:`~lightning_memloc.callbacks.layer_runs.LayerRunWriters`).

    Args:
        name: the monitor's ``name`` (``None``: plain ``memloc...`` tags).
    """

    def __init__(self, name: Optional[str] = None) -> None:
        self.name = name
        self.layout_written = self.warmup_written = False
        self.layer_writers: Dict[str, LayerRunWriters] = {}

    def log(self, trainer: Any, report: MemorizationReport, scalars: Dict[str, float], *,
            images: Optional[Callable[[Tensor], Tensor]], grid_size: int, histograms: bool, layer_runs: bool,
            history: Optional[Sequence[Mapping[str, Any]]] = None) -> None:
        """Log ``scalars`` (plain tags, from :func:`report_scalars`) and the TensorBoard extras (the figures with a ``history``)."""
        plain, scalars = scalars, named_scalars(scalars, self.name)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in scalars.items()})
        step = trainer.global_step
        module = getattr(trainer, "lightning_module", None)
        warmup = warmup_end_step(module, steps_per_epoch(trainer))
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
            if trainer.is_global_zero and has_tensorboard(logger):
                log_dir = getattr(logger.experiment, "log_dir", None)
                writer = NamedWriter(logger.experiment, self.name)
                log_tensorboard(writer, report, step, images=images, grid_size=grid_size, histograms=histograms,
                                layout=not self.layout_written, by_layer=layer_runs and bool(log_dir), history=history,
                                warmup_step=warmup)
                self.layout_written = True
                if warmup is not None and not self.warmup_written:
                    log_warmup(writer, module, warmup, step)
                    self.warmup_written = True
                if layer_runs and log_dir:
                    writers = self.layer_writers.setdefault(str(log_dir),
                                                            LayerRunWriters(str(log_dir), named_tag(PREFIX, self.name)))
                    writers.log(report, plain, step, histograms=histograms)

    def close(self) -> None:
        """Close the per-layer writers (end of fit)."""
        for writers in self.layer_writers.values():
            writers.close()
        self.layer_writers = {}
