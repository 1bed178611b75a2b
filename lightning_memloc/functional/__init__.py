"""Pure tensor functions behind the memorization metrics (no state, no Lightning)."""

from lightning_memloc.functional.classmem import class_means, classmem
from lightning_memloc.functional.statistics import (bootstrap_difference_interval, bootstrap_mean_interval,
                                                    bootstrap_topk_interval, holm, membership_test,
                                                    samples_for_halfwidth, weighted_mean_unitmem, welch_greater)
from lightning_memloc.functional.sslmem import alignment, delta_layermem, layermem, sslmem, top_least_indices
from lightning_memloc.functional.two_sample import (bootstrap_t_interval, permutation_lower_bound,
                                                    studentized_permutation_test)
from lightning_memloc.functional.unitmem import apply_negative_policy, dead_units, unit_argmax, unitmem

__all__ = ["alignment", "bootstrap_difference_interval", "bootstrap_mean_interval", "bootstrap_t_interval",
           "bootstrap_topk_interval", "holm", "membership_test", "permutation_lower_bound", "samples_for_halfwidth",
           "studentized_permutation_test", "weighted_mean_unitmem", "welch_greater", "apply_negative_policy",
           "class_means", "classmem", "dead_units", "delta_layermem", "layermem", "sslmem", "top_least_indices",
           "unit_argmax", "unitmem"]
