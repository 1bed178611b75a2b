"""The paper's analyses beyond UnitMem and LayerMem, as functions (Wang et al., NeurIPS 2024).

- :mod:`~lightning_memloc.analyses.consistency`: top-k overlap and Kendall's τ of the candidates'
  SSLMem rankings between every pair of layers;
- :mod:`~lightning_memloc.analyses.exchange`: :func:`exchange_layers` and the layer-exchange
  study (SSLMem drop after swapping layers of ``f`` for the reference's);
- :mod:`~lightning_memloc.analyses.restore`: :func:`restore_units` and the fine-tune-one-unit helper;
- :mod:`~lightning_memloc.analyses.atypicality`: kNN / class-mean atypicality in the encoder's
  embedding and its Spearman correlation with SSLMem and UnitMem;
- :mod:`~lightning_memloc.analyses.runner`: run several by name and store them in
  ``report.analyses`` (what ``memloc analyze --analyses`` calls).

Figures: :mod:`lightning_memloc.plots.analysis_figures`. Docs: ``docs/analyses.md``.
"""

from lightning_memloc.analyses.atypicality import (
    atypicality_study,
    class_mean_distance,
    embed,
    knn_distance,
    max_unit_mem,
    spearman,
)
from lightning_memloc.analyses.consistency import consistency_matrices, kendall_tau, layer_consistency, top_k_overlap
from lightning_memloc.analyses.exchange import exchange_layers, layer_exchange_study
from lightning_memloc.analyses.restore import finetune_units, restore_units, unit_module
from lightning_memloc.analyses.runner import ANALYSES, parse_analyses, run_analyses

__all__ = [
    "ANALYSES",
    "atypicality_study",
    "class_mean_distance",
    "consistency_matrices",
    "embed",
    "exchange_layers",
    "finetune_units",
    "kendall_tau",
    "knn_distance",
    "layer_consistency",
    "layer_exchange_study",
    "max_unit_mem",
    "parse_analyses",
    "restore_units",
    "run_analyses",
    "spearman",
    "top_k_overlap",
    "unit_module",
]
