"""Figures of a :class:`~lightning_memloc.MemorizationReport` and of a monitor history.

The views of memorization in Wang et al., *Localizing Memorization in SSL Vision Encoders*
(NeurIPS 2024): LayerMem / ΔLayerMem by depth with the top-k and least-k candidates (their
Table 1 / Figure 2), the UnitMem distribution per layer (Figure 3), SSLMem against UnitMem per
candidate (Figure 4), the most and least memorized candidates, and UnitMem / LayerMem over
training epochs. Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas (no
``pyplot`` state, no display needed) and written atomically as PNG; every function returns the
path it wrote.

Modules: :mod:`~lightning_memloc.plots.figure` (the shared Agg figure, atomic PNG writer, depth
axis), :mod:`~lightning_memloc.plots.report` (the figures of one report and :func:`plot_report`),
:mod:`~lightning_memloc.plots.history` (training curves), :mod:`~lightning_memloc.plots.evidence`
(the nulls and tests), :mod:`~lightning_memloc.plots.profile` and :mod:`~lightning_memloc.plots.heatmap`
(the profile by depth and the layer × measurement heat maps logged to TensorBoard),
:mod:`~lightning_memloc.plots.analyses` (the paper's other analyses) and
:mod:`~lightning_memloc.plots.io` (reading reports and histories back).

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

from lightning_memloc.plots.history import plot_history
from lightning_memloc.plots.io import History, load_history
from lightning_memloc.plots.report import (
    FILENAMES,
    max_unit_mem_per_candidate,
    plot_candidate_grid,
    plot_layer_mem,
    plot_report,
    plot_sslmem_vs_unitmem,
    plot_unit_mem_distribution,
)

__all__ = [
    "FILENAMES",
    "History",
    "load_history",
    "max_unit_mem_per_candidate",
    "plot_candidate_grid",
    "plot_history",
    "plot_layer_mem",
    "plot_report",
    "plot_sslmem_vs_unitmem",
    "plot_unit_mem_distribution",
]

