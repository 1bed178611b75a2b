"""One verdict per measurement: Holm over every test × layer of :data:`VERDICT_TESTS`, at a stated error rate.

Example:
    >>> records = {"a": {"excess_p": 0.001, "membership_p": 0.2}, "b": {"excess_p": 0.03, "membership_p": 0.5}}
    >>> v = overall_verdict(records, alpha=0.05, bootstrap=999)
    >>> v["memorization"], v["family_size"], v["layers"], records["a"]["excess_p_holm"]
    (True, 4, {'excess': ['a'], 'membership': []}, 0.004)
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Sequence, Tuple

from lightning_memloc.functional.statistics import holm

__all__ = ["VERDICT_TESTS", "min_bootstrap_for", "overall_verdict"]

#: Every test family of the verdict, by record key prefix (``<test>_p`` in; ``<test>_p_holm`` out).
VERDICT_TESTS: Tuple[str, ...] = ("excess", "excess_unseen", "membership", "unit_mem_excess", "align_gap")


def overall_verdict(records: Mapping[str, MutableMapping[str, Optional[float]]], alpha: float, bootstrap: int,
                    tests: Sequence[str] = VERDICT_TESTS) -> Dict[str, Any]:
    """Holm over every ``<test>_p`` of ``records`` (None / NaN left out); writes each ``<test>_p_holm`` in place.

    Returns:
        ``{"memorization" (None: nothing tested), "method", "alpha", "family_size", "tests", "layers": test ->
        significant layers, "min_p_holm", "min_attainable_p_holm" (from ``bootstrap``), "attainable"}``.
    """
    keys: List[Tuple[str, str]] = []
    for test in tests:
        for layer, rec in records.items():
            if f"{test}_p" in rec:
                rec[f"{test}_p_holm"] = None
                if rec[f"{test}_p"] is not None and not math.isnan(float(rec[f"{test}_p"])):
                    keys.append((test, layer))
    adjusted = holm([float(records[layer][f"{test}_p"]) for test, layer in keys])  # type: ignore[arg-type]
    for (test, layer), p in zip(keys, adjusted):
        records[layer][f"{test}_p_holm"] = p
    present = [test for test in tests if any(t == test for t, _ in keys)]
    layers = {test: [layer for (t, layer), p in zip(keys, adjusted) if t == test and p is not None and p < alpha]
              for test in present}
    m = len(keys)
    floor = min(1.0, m / (bootstrap + 1)) if m and bootstrap else None
    return {"memorization": any(layers.values()) if m else None,
            "method": f"Holm over every test x layer ({m} tests), family-wise error <= {alpha:g}",
            "alpha": alpha, "family_size": m, "tests": present, "layers": layers,
            "min_p_holm": min((p for p in adjusted if p is not None), default=None),
            "min_attainable_p_holm": floor, "attainable": None if floor is None else floor <= alpha}


def min_bootstrap_for(family_size: int, alpha: float) -> int:
    """Smallest ``bootstrap`` whose smallest Holm p over ``m`` tests, ``m / (B + 1)``, reaches ``alpha``.

    Example:
        >>> min_bootstrap_for(32, 0.05)
        639
    """
    return max(0, math.ceil(family_size / alpha - 1 - 1e-9))
