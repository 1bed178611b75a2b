"""The paper's analyses beyond UnitMem and LayerMem (Wang et al., NeurIPS 2024), as functions (``docs/analyses.md``)."""

from lightning_memloc.analyses.atypicality import (atypicality_study, class_mean_distance, embed, knn_distance,
                                                   max_unit_mem, spearman)
from lightning_memloc.analyses.consistency import consistency_matrices, kendall_tau, layer_consistency, top_k_overlap
from lightning_memloc.analyses.exchange import exchange_layers, layer_exchange_study
from lightning_memloc.analyses.restore import finetune_units, restore_units, unit_module
from lightning_memloc.analyses.runner import ANALYSES, parse_analyses, run_analyses

__all__ = ["ANALYSES", "atypicality_study", "class_mean_distance", "consistency_matrices", "embed", "exchange_layers",
           "finetune_units", "kendall_tau", "knn_distance", "layer_consistency", "layer_exchange_study",
           "max_unit_mem", "parse_analyses", "restore_units", "run_analyses", "spearman", "top_k_overlap",
           "unit_module"]
