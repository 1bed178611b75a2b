"""The monitor's pictures on TensorBoard: the profile by depth and the heat maps, with the warm-up's end."""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Optional, Sequence

from lightning_memloc.plots.figure import figure_array
from lightning_memloc.plots.heatmap import heatmap_figure
from lightning_memloc.plots.profile import profile_figure
from lightning_memloc.report.report import MemorizationReport
from lightning_memloc.report.tags import FIGURE_NAMES, figure_tag, summary_tag

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
