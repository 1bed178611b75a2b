"""Figures of a :class:`~lightning_memloc.MemorizationReport` and of a monitor history (Agg canvas, atomic PNGs).

Example:
    >>> import tempfile, torch
    >>> from lightning_memloc import MemorizationReport
    >>> r = MemorizationReport(layers=["a", "b"], layer_kinds={"a": "conv", "b": "conv"},
    ...     candidate_ids=torch.arange(3), unit_mem={"a": torch.tensor([0.1, 0.7]), "b": torch.tensor([0.2, 0.9])},
    ...     unit_argmax={"a": torch.tensor([0, 2]), "b": torch.tensor([1, 2])},
    ...     dead_units={"a": torch.tensor([False, False]), "b": torch.tensor([False, False])})
    >>> plot_unit_mem_distribution(r, tempfile.mkdtemp() + "/unit_mem.png").name
    'unit_mem.png'
"""

from lightning_memloc.plots.report_figures import (FILENAMES, max_unit_mem_per_candidate, plot_candidate_grid,
                                                   plot_history, plot_layer_mem, plot_report, plot_sslmem_vs_unitmem,
                                                   plot_unit_mem_distribution)
from lightning_memloc.plots.io import History, load_history

__all__ = ["FILENAMES", "History", "load_history", "max_unit_mem_per_candidate", "plot_candidate_grid",
           "plot_history", "plot_layer_mem", "plot_report", "plot_sslmem_vs_unitmem", "plot_unit_mem_distribution"]
