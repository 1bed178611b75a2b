"""One verdict per measurement: is there memorization, at a stated family-wise error rate?

Every evidence family tests "no memorization" at every layer (LayerMem excess over a control,
over an unseen set, the argmax-membership of units, UnitMem seen − unseen; Wang et al.,
*Localizing Memorization in SSL Vision Encoders*, NeurIPS 2024). Reading "memorization" off
whichever of them is significant at any layer multiplies the error: each family Holm-corrected
over layers, their OR fired in 15.5 % of pure-null runs at α = 0.05. Here Holm's step-down
correction runs once over **every test × layer** of :data:`VERDICT_TESTS` the evidence holds:
each ``<test>_p_holm`` is adjusted over that whole family, a layer is significant when it is
below α, and the verdict is "memorization" when any is. The probability that a memorization-free
encoder is called memorizing is then at most α, whatever the dependence between the tests.

Every test here is a permutation test with ``B`` resamples, whose p-value is at least
``1 / (B + 1)``: with ``m`` tests the smallest attainable Holm p is ``m / (B + 1)``, and when it
exceeds α no layer can pass — the verdict records it (``attainable``) instead of staying silent.

Example:
    >>> records = {"a": {"excess_p": 0.001, "membership_p": 0.2}, "b": {"excess_p": 0.03, "membership_p": 0.5}}
    >>> v = overall_verdict(records, alpha=0.05, bootstrap=999)
    >>> v["memorization"], v["family_size"], v["layers"], records["a"]["excess_p_holm"]
    (True, 4, {'excess': ['a'], 'membership': []}, 0.004)
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Sequence, Tuple

from lightning_memloc.functional.evidence import holm

__all__ = ["VERDICT_TESTS", "min_bootstrap_for", "overall_verdict"]

#: Every test family of the verdict, by record key prefix (``<test>_p`` in; ``<test>_p_holm`` out).
#: A new family of :class:`~lightning_memloc.evidence.Evidence` joins the verdict by its name here.
VERDICT_TESTS: Tuple[str, ...] = ("excess", "excess_unseen", "membership", "unit_mem_excess", "align_gap")


def _valid(p: Any) -> bool:
    return p is not None and not math.isnan(float(p))


def overall_verdict(records: Mapping[str, MutableMapping[str, Optional[float]]], alpha: float, bootstrap: int,
                    tests: Sequence[str] = VERDICT_TESTS) -> Dict[str, Any]:
    """Holm over every ``<test>_p`` of ``records`` (layer -> record); writes each ``<test>_p_holm``.

    Args:
        records: layer -> record holding ``<test>_p`` (raw one-sided p-values; ``None`` / NaN:
            not tested, left out of the family); updated in place with ``<test>_p_holm``.
        alpha: family-wise error rate of the verdict.
        bootstrap: permutations behind each p-value (for the attainable minimum); 0: none.
        tests: the families of the verdict.

    Returns:
        ``{"memorization": True / False (None when nothing was tested), "method", "alpha",
        "family_size": m, "tests": families present, "layers": test -> significant layers,
        "min_p_holm": smallest adjusted p, "min_attainable_p_holm": m / (B + 1),
        "attainable": whether that is ≤ α}``.
    """
    keys: List[Tuple[str, str]] = []
    for test in tests:
        for layer, rec in records.items():
            if f"{test}_p" in rec:
                rec[f"{test}_p_holm"] = None
                if _valid(rec[f"{test}_p"]):
                    keys.append((test, layer))
    adjusted = holm([float(records[layer][f"{test}_p"]) for test, layer in keys])  # type: ignore[arg-type]
    for (test, layer), p in zip(keys, adjusted):
        records[layer][f"{test}_p_holm"] = p
    present = [test for test in tests if any(t == test for t, _ in keys)]
    layers = {test: [layer for (t, layer), p in zip(keys, adjusted) if t == test and p is not None and p < alpha]
              for test in present}
    m = len(keys)
    floor = min(1.0, m / (bootstrap + 1)) if m and bootstrap else None
    return {
        "memorization": any(layers.values()) if m else None,
        "method": f"Holm over every test x layer ({m} tests), family-wise error <= {alpha:g}",
        "alpha": alpha,
        "family_size": m,
        "tests": present,
        "layers": layers,
        "min_p_holm": min((p for p in adjusted if p is not None), default=None),
        "min_attainable_p_holm": floor,
        "attainable": None if floor is None else floor <= alpha,
    }


def min_bootstrap_for(family_size: int, alpha: float) -> int:
    """Smallest ``bootstrap`` whose smallest Holm p, ``m / (B + 1)``, reaches ``alpha``.

    Example:
        >>> min_bootstrap_for(32, 0.05)
        639
    """
    return max(0, math.ceil(family_size / alpha - 1 - 1e-9))

