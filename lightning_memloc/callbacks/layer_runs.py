"""TensorBoard as a person reads it: one run per layer, named in depth order.

TensorBoard colours series by *run* and sorts tags alphabetically: logged as
``memloc.layer_mem/<layer>`` tags of one run, every layer gets a chart of its own, and comparing
layers along depth (the axis of the findings of Wang et al., *Localizing Memorization in SSL
Vision Encoders*, NeurIPS 2024) means hovering over them. :class:`LayerRunWriters` also writes
every layer into its own run ``memloc_layers/<NN>_<layer>`` (``NN`` = depth, zero-padded) under the
section name of each quantity (``memloc.layer_mem``, ``memloc.excess``, …, and the histogram
``memloc.unit_mem``): the first chart of each section then holds every layer, one line per run,
listed in depth order. Colours: TensorBoard hands out its 7-colour palette by run order, so
with more than 7 layers runs ``k`` and ``k + 7`` share one (docs/tensorboard.md). The per-layer
``memloc.<quantity>/<layer>`` scalars stay as they are for every other logger, the history and
``callback_metrics``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from lightning_memloc.report import MemorizationReport
from lightning_memloc.tags import HIST_QUANTITY, LAYER_QUANTITIES, LAYER_RUNS_FOLDER, PREFIX, by_layer_tag, scalar_tag

__all__ = ["LAYER_QUANTITIES", "LayerRunWriters", "layer_run_name"]  # LAYER_QUANTITIES: from lightning_memloc.tags


def layer_run_name(index: int, layer: str, total: int) -> str:
    """``"03_res1.conv1"``: the layer's depth (1-based, zero-padded to the layer count) and its name.

    Example:
        >>> [layer_run_name(i, n, 10) for i, n in enumerate(["conv1", "res1.conv1"])]
        ['01_conv1', '02_res1.conv1']
    """
    return f"{index + 1:0{max(2, len(str(total)))}d}_{layer}"


class LayerRunWriters:
    """One ``SummaryWriter`` per layer under ``<log_dir>/<folder>/<NN>_<layer>`` (rank 0 only).

    Args:
        log_dir: the TensorBoard run folder of the logger (``logger.experiment.log_dir``).
        prefix: tag prefix (``"memloc"``, or ``"memloc-<name>"`` for a named monitor).
    """

    def __init__(self, log_dir: str, prefix: str = "memloc") -> None:
        self.log_dir, self.prefix = str(log_dir), prefix
        self.folder = LAYER_RUNS_FOLDER if prefix == PREFIX else f"{prefix}_layers"
        self._writers: Dict[str, Any] = {}

    def _writer(self, run: str) -> Any:
        if run not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[run] = SummaryWriter(os.path.join(self.log_dir, self.folder, run))
        return self._writers[run]

    def log(self, report: MemorizationReport, scalars: Dict[str, float], step: int, histograms: bool = True) -> List[str]:
        """Write every layer's quantities (and UnitMem histogram) at ``step``; returns the run names."""
        runs = []
        for i, layer in enumerate(report.layers):
            run = layer_run_name(i, layer, len(report.layers))
            writer = self._writer(run)
            for quantity in LAYER_QUANTITIES:
                value: Optional[float] = scalars.get(scalar_tag(quantity, layer))
                if value is not None:
                    writer.add_scalar(by_layer_tag(quantity, self.prefix), value, global_step=step)
            if histograms:
                writer.add_histogram(by_layer_tag(HIST_QUANTITY, self.prefix), report.unit_mem[layer].float(), global_step=step)
            writer.flush()
            runs.append(run)
        return runs

    def close(self) -> None:
        """Close every writer (idempotent)."""
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
