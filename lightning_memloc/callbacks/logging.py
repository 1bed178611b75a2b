"""Turn a :class:`~lightning_memloc.MemorizationReport` into logger scalars and TensorBoard extras."""

from __future__ import annotations

import math
import numbers
import os
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

from lightning_memloc.plots.figure import figure_array
from lightning_memloc.plots.heatmap import heatmap_figure
from lightning_memloc.plots.profile import profile_figure
from lightning_memloc.report.report import MemorizationReport
from lightning_memloc.report.tags import (FIGURE_NAMES, HIST_QUANTITY, IMAGE_NAMES, LABEL_QUANTITIES, LAYER_QUANTITIES,
                                          LAYER_RUNS_FOLDER, MARGINS, PREFIX, QUANTITIES, REFERENCE_QUANTITIES,
                                          UNIT_QUANTITIES, by_layer_tag, figure_tag, hist_tag, image_tag, named_layout,
                                          named_scalars, named_tag, scalar_tag, significant_tag, summary_tag,
                                          verdict_tag)

#: Summary name of the text saying where the learning-rate warm-up ends.
WARMUP_NOTE = "lr_warmup"


def steps_per_epoch(trainer: Any) -> Optional[int]:
    """Optimizer steps per training epoch (``None`` when unknown, e.g. an iterable dataset of unknown length)."""
    batches = getattr(trainer, "num_training_batches", None)
    accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
    if not isinstance(batches, numbers.Real) or not math.isfinite(batches) or batches <= 0:
        return None
    return math.ceil(int(batches) / accumulate)


def warmup_end_step(module: Any, per_epoch: Optional[int]) -> Optional[int]:
    """Global step at which ``module``'s warm-up ends (``warmup_steps``, or ``warmup_epochs`` × ``per_epoch``), or ``None``.

    Example:
        >>> class Module: warmup_epochs = 2
        >>> warmup_end_step(Module(), per_epoch=15), warmup_end_step(object(), per_epoch=15)
        (30, None)
    """
    steps = getattr(module, "warmup_steps", None)
    if isinstance(steps, numbers.Real) and not isinstance(steps, bool) and steps > 0:
        return int(steps)
    epochs = getattr(module, "warmup_epochs", None)
    if isinstance(epochs, numbers.Real) and not isinstance(epochs, bool) and epochs > 0 and per_epoch:
        return int(round(float(epochs) * per_epoch))
    return None


def log_figures(writer: Any, report: MemorizationReport, history: Sequence[Mapping[str, Any]], step: int, *,
                warmup_step: Optional[int] = None) -> None:
    """Log the profile of ``report`` and the heat maps of ``history`` as images at ``step``."""
    profile, over_training = FIGURE_NAMES
    writer.add_image(figure_tag(profile), figure_array(profile_figure(report, warmup_step=warmup_step)),
                     global_step=step, dataformats="HWC")
    alpha = float(report.evidence.meta.get("alpha", 0.05)) if report.evidence is not None else 0.05
    heatmaps = heatmap_figure(history, report.layers, warmup_step=warmup_step, alpha=alpha)
    writer.add_image(figure_tag(over_training), figure_array(heatmaps), global_step=step, dataformats="HWC")


def log_warmup(writer: Any, module: Any, end: int, step: int) -> None:
    """Write where the warm-up ends, and what it was read from, as ``memloc/lr_warmup``."""
    epochs = getattr(module, "warmup_epochs", None)
    source = f"`warmup_epochs={epochs}`" if getattr(module, "warmup_steps", None) is None else \
        f"`warmup_steps={module.warmup_steps}`"
    writer.add_text(summary_tag(WARMUP_NOTE), f"The learning-rate warm-up ends at global step {end} ({source} of "
                    f"`{type(module).__name__}`); the heat maps `memloc/profile_over_training` draw it as a dashed "
                    "line.", global_step=step)


def report_scalars(report: MemorizationReport, threshold: float = 0.5) -> Dict[str, float]:
    """The scalars of a report under their logging tags.

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
        if report.has_reference:  # report fields of the same names
            out.update({scalar_tag(q, layer): getattr(report, q)[layer] for q in REFERENCE_QUANTITIES})
        unit = {"unit_mem_mean": means[layer], "unit_mem_frac_above": fractions[layer], "dead_units": float(dead[layer])}
        out.update({scalar_tag(quantity, layer): unit[quantity] for quantity in UNIT_QUANTITIES})
        if report.class_mem is not None:
            out[scalar_tag(LABEL_QUANTITIES[0], layer)] = float(report.class_mem[layer].mean())
    out.update(evidence_scalars(report))
    return out


def evidence_scalars(report: MemorizationReport) -> Dict[str, float]:
    """Evidence values as ``memloc.<key>/<layer>``, significant-layer counts and the verdict (1 / 0).

    Example:
        >>> import torch
        >>> from lightning_memloc.report.evidence import compute_evidence
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
    out = {scalar_tag(key, layer): float(value) for layer in report.layers for key, value in ev.layers[layer].items()
           if value is not None and key not in skip and math.isfinite(value)}
    for test, layers in dict(ev.meta.get("significant") or {}).items():
        out[significant_tag(test)] = float(len(layers))
    if ev.shows_memorization is not None:
        out[verdict_tag()] = float(ev.shows_memorization)
    return out


def custom_scalar_layout(report: MemorizationReport, by_layer: bool = False) -> Dict[str, Dict[str, List]]:
    """A TensorBoard custom-scalars layout with every layer of a quantity on one chart (``by_layer``: of the runs)."""
    ev = report.evidence
    margins = {title: tags for title, tags in MARGINS.items() if ev is not None and ev.has(tags[1])}  # (value, lo, hi)
    quantities = list(REFERENCE_QUANTITIES if report.has_reference else ()) + list(UNIT_QUANTITIES)
    if not by_layer and report.class_mem is not None:
        quantities += LABEL_QUANTITIES
    tested = [k for name, q in QUANTITIES.items() if q.test for k in (name, f"{name}_p_holm")] + ["unit_mem_unseen"]
    quantities += [extra for extra in tested if ev is not None and ev.has(extra)]  # charts of the evidence it has
    if by_layer:
        charts = {q: ["Multiline", [f"^{re.escape(by_layer_tag(q))}$"]] for q in quantities}
        charts.update({title: ["Margin", [by_layer_tag(t) for t in tags]] for title, tags in margins.items()})
        return {PREFIX: charts}
    layout = {PREFIX: {q: ["Multiline", [scalar_tag(q, layer) for layer in report.layers]] for q in quantities}}
    for title, tags in margins.items():
        layout[f"{PREFIX} {title}"] = {layer: ["Margin", [scalar_tag(t, layer) for t in tags]] for layer in report.layers}
    return layout


def log_tensorboard(writer: object, report: MemorizationReport, step: int, *,
                    images: Optional[Callable[[Tensor], Tensor]] = None, grid_size: int = 8, histograms: bool = True,
                    layout: bool = False, by_layer: bool = False, history: Optional[Sequence[Mapping[str, Any]]] = None,
                    warmup_step: Optional[int] = None) -> None:
    """Histograms, image grids, (with a ``history``) the figures, and (once) the custom-scalars layout on a ``SummaryWriter``."""
    if layout:
        writer.add_custom_scalars(custom_scalar_layout(report, by_layer=by_layer))
    if histograms:
        for layer in report.layers:
            writer.add_histogram(hist_tag(layer), report.unit_mem[layer].float(), global_step=step)
    if images is not None and grid_size > 0:
        from torchvision.utils import make_grid
        scores = report.candidate_scores()
        count = min(grid_size, scores.numel())
        order = torch.sort(scores, descending=True, stable=True).indices
        for name, positions in zip(IMAGE_NAMES, (order[:count], order.flip(0)[:count])):  # images(positions): [0, 1]
            grid = make_grid(images(positions).detach().cpu().float().clamp(0, 1), nrow=min(count, 8), padding=1,
                             pad_value=1.0)
            writer.add_image(image_tag(name), grid, global_step=step)
    if history:
        log_figures(writer, report, history, step, warmup_step=warmup_step)
    writer.flush()


class MonitorLoggers:
    """Writes one monitor's (``name``) measurements to every logger of a trainer, all at ``trainer.global_step``."""

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


def layer_run_name(index: int, layer: str, total: int) -> str:
    """``"03_res1.conv1"``: the layer's depth (1-based, zero-padded to the layer count) and its name.

    Example:
        >>> [layer_run_name(i, n, 10) for i, n in enumerate(["conv1", "res1.conv1"])]
        ['01_conv1', '02_res1.conv1']
    """
    return f"{index + 1:0{max(2, len(str(total)))}d}_{layer}"


class LayerRunWriters:
    """One ``SummaryWriter`` per layer under ``<log_dir>/<folder>/<NN>_<layer>`` (rank 0 only)."""

    def __init__(self, log_dir: str, prefix: str = "memloc") -> None:
        self.log_dir, self.prefix = str(log_dir), prefix
        self.folder = LAYER_RUNS_FOLDER if prefix == PREFIX else f"{prefix}_layers"
        self._writers: Dict[str, Any] = {}

    def log(self, report: MemorizationReport, scalars: Dict[str, float], step: int, histograms: bool = True) -> List[str]:
        """Write every layer's quantities (and UnitMem histogram) at ``step``; returns the run names."""
        from torch.utils.tensorboard import SummaryWriter
        runs = [layer_run_name(i, layer, len(report.layers)) for i, layer in enumerate(report.layers)]
        for run, layer in zip(runs, report.layers):
            if run not in self._writers:
                self._writers[run] = SummaryWriter(os.path.join(self.log_dir, self.folder, run))
            writer = self._writers[run]
            for quantity in LAYER_QUANTITIES:
                value: Optional[float] = scalars.get(scalar_tag(quantity, layer))
                if value is not None:
                    writer.add_scalar(by_layer_tag(quantity, self.prefix), value, global_step=step)
            if histograms:
                writer.add_histogram(by_layer_tag(HIST_QUANTITY, self.prefix), report.unit_mem[layer].float(), global_step=step)
            writer.flush()
        return runs

    def close(self) -> None:
        """Close every writer (idempotent)."""
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


#: The attribute of a ``SummaryWriter`` holding the layouts written to it, by writer key.
LAYOUTS_ATTRIBUTE = "_memloc_layouts"


def has_tensorboard(logger: Any) -> bool:
    """Whether ``logger.experiment`` is a TensorBoard ``SummaryWriter`` (by capability, not class)."""
    experiment = getattr(logger, "experiment", None)
    return all(callable(getattr(experiment, m, None)) for m in ("add_histogram", "add_image", "add_custom_scalars"))


class NamedWriter:
    """A ``SummaryWriter`` view writing tags and layouts under a monitor's ``name`` (``memloc-<name>``)."""

    def __init__(self, writer: Any, name: Optional[str]) -> None:
        self.writer, self.name = writer, name

    def __getattr__(self, attribute: str) -> Any:
        method = getattr(self.writer, attribute)
        if attribute not in ("add_histogram", "add_image", "add_text", "add_scalar", "add_scalars"):  # not a tagged method
            return method
        return lambda tag, *args, **kwargs: method(named_tag(tag, self.name), *args, **kwargs)

    def add_custom_scalars(self, layout: Dict[str, Any]) -> Any:
        return add_merged_layout(self.writer, named_layout(layout, self.name), self.name)


def add_merged_layout(writer: Any, layout: Dict[str, Any], key: Any) -> Any:
    """Write ``layout`` merged with every layout written so far (TensorBoard keeps one per run)."""
    layouts: Dict[Any, Dict[str, Any]] = getattr(writer, LAYOUTS_ATTRIBUTE, None) or {}
    layouts[key] = layout
    try:
        setattr(writer, LAYOUTS_ATTRIBUTE, layouts)
    except AttributeError:  # pragma: no cover - a writer refusing attributes: write this layout alone
        return writer.add_custom_scalars(layout)
    merged: Dict[str, Any] = {}
    for part in layouts.values():
        for category, charts in part.items():
            merged.setdefault(category, {}).update(charts)
    return writer.add_custom_scalars(merged)
