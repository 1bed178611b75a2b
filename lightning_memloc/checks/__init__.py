"""Argument checks shared by the whole package: one home for choice / int / finite / seed / id checks.

Every check runs before any work (no forward pass, no file written) and raises a standard error
(``TypeError``, ``ValueError``, ``MemoryError``) whose message names the argument and the fix, so
that a bad input never turns into a silent wrong result (Wang et al., *Localizing Memorization in
SSL Vision Encoders*, NeurIPS 2024, compare the same views of the same candidates across encoders:
the identity of candidates, the seed and the value range of the images all change the numbers).
See ``docs/reliability.md`` for the table of cases.

Import every check from here (``from lightning_memloc.checks import check_int``); the package keeps
them in three files by what they check: :mod:`~lightning_memloc.checks.values` (ints, choices and
the tuples of allowed choices, finite numbers, seeds, recorded settings),
:mod:`~lightning_memloc.checks.tensors` (id vectors, activation matrices, images, labels, index
files, report values) and :mod:`~lightning_memloc.checks.modules` (the reference, compiled wrappers,
device memory) and :mod:`~lightning_memloc.checks.inputs` (dense tensors, label sequences, JSON ``meta``).
"""

from lightning_memloc.checks.inputs import as_label_tensor, check_dense, check_has_weights, check_json_meta
from lightning_memloc.checks.modules import (
    check_layers_exist,
    check_reference,
    check_views_memory,
    named_module,
    unwrap_compiled,
)
from lightning_memloc.checks.tensors import (
    RANGE_TOLERANCE,
    as_long_tensor,
    check_candidate_ids,
    check_finite_tensor,
    check_float_tensor,
    check_id_vector,
    check_image_layout,
    check_image_range,
    check_index_values,
    check_labels_layout,
    check_mean_activations,
    check_report_values,
)
from lightning_memloc.checks.values import (
    NEGATIVE_POLICIES,
    PAIRINGS,
    REDUCTIONS,
    SEED_RANGE,
    as_python_number,
    check_choice,
    check_finite,
    check_int,
    check_memory_limit,
    check_meta,
    check_seed,
)

__all__ = [
    "NEGATIVE_POLICIES",
    "PAIRINGS",
    "RANGE_TOLERANCE",
    "REDUCTIONS",
    "SEED_RANGE",
    "as_label_tensor",
    "as_long_tensor",
    "as_python_number",
    "check_candidate_ids",
    "check_choice",
    "check_dense",
    "check_finite",
    "check_finite_tensor",
    "check_float_tensor",
    "check_has_weights",
    "check_id_vector",
    "check_image_layout",
    "check_image_range",
    "check_index_values",
    "check_int",
    "check_json_meta",
    "check_labels_layout",
    "check_layers_exist",
    "check_mean_activations",
    "check_memory_limit",
    "check_meta",
    "check_reference",
    "check_report_values",
    "check_seed",
    "check_views_memory",
    "named_module",
    "unwrap_compiled",
]
