"""Argument checks shared by the package: each runs before any work and names the argument and the fix."""

from lightning_memloc.checks.modules import (check_layers_exist, check_reference, check_views_memory, named_module,
                                             unwrap_compiled)
from lightning_memloc.checks.tensors import (RANGE_TOLERANCE, as_label_tensor, as_long_tensor, check_candidate_ids,
                                             check_dense, check_finite_tensor, check_float_tensor, check_has_weights,
                                             check_id_vector, check_image_layout, check_image_range, check_index_values,
                                             check_json_meta, check_labels_layout, check_mean_activations,
                                             check_report_values)
from lightning_memloc.checks.values import (NEGATIVE_POLICIES, PAIRINGS, REDUCTIONS, as_python_number, check_choice,
                                            check_int, check_memory_limit, check_meta, check_seed)

__all__ = ["NEGATIVE_POLICIES", "PAIRINGS", "RANGE_TOLERANCE", "REDUCTIONS", "as_label_tensor", "as_long_tensor",
           "as_python_number", "check_candidate_ids", "check_choice", "check_dense", "check_finite_tensor",
           "check_float_tensor", "check_has_weights", "check_id_vector", "check_image_layout", "check_image_range",
           "check_index_values", "check_int", "check_json_meta", "check_labels_layout", "check_layers_exist",
           "check_mean_activations", "check_memory_limit", "check_meta", "check_reference", "check_report_values",
           "check_seed", "check_views_memory", "named_module", "unwrap_compiled"]
