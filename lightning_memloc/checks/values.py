"""Checks of scalar arguments: ints, choices, finite numbers, seeds, byte limits and recorded settings."""

from __future__ import annotations

import operator
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

#: How negative mean activations are made non-negative for UnitMem / ClassMem (``negative=``).
NEGATIVE_POLICIES = ("clamp", "shift", "error")
#: μ-max over the other candidates: the paper's mean or the authors' code's median (``reduction=``).
REDUCTIONS = ("mean", "median")
#: View pairs of SSLMem's alignment: all pairs (the paper) or each view with the anchor (``pairing=``).
PAIRINGS = ("all", "anchor")


def check_int(name: str, value: Any, low: Optional[int] = None, high: Optional[int] = None, *,
              type_error: bool = False) -> int:
    """``value`` as an ``int`` in ``[low, high)`` (NumPy / 0-d integer tensors accepted; bools, floats refused:
    ``ValueError``, or ``TypeError`` with ``type_error``).

    Example:
        >>> check_int("views", np.int64(4), 1)
        4
    """
    wrong_type = TypeError if type_error else ValueError
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (float, np.floating)):
        raise wrong_type(f"`{name}` must be an int{_bounds(low, high)}, got {value!r}.")
    try:
        out = operator.index(value)
    except TypeError:
        raise wrong_type(f"`{name}` must be an int{_bounds(low, high)}, got {value!r} ({type(value).__name__}).") from None
    if (low is not None and out < low) or (high is not None and out >= high):
        raise ValueError(f"`{name}` must be an int{_bounds(low, high)}, got {out!r}.")
    return int(out)


def _bounds(low: Optional[int], high: Optional[int]) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high})"
    return f" >= {low}" if low is not None else (f" < {high}" if high is not None else "")


def as_python_number(value: Any) -> Any:
    """NumPy integer / floating scalars as Python ``int`` / ``float``; anything else unchanged."""
    if isinstance(value, np.integer):
        return int(value)
    return float(value) if isinstance(value, np.floating) else value


def check_choice(name: str, value: Any, allowed: Sequence[str], *, as_tuple: bool = True) -> str:
    """``value`` if it is one of ``allowed``, else a ``ValueError`` listing them (``as_tuple``: as a tuple).

    Example:
        >>> check_choice("reduction", "median", REDUCTIONS)
        'median'
    """
    if not isinstance(value, str) or value not in allowed:
        options = tuple(allowed) if as_tuple else ", ".join(map(repr, allowed))
        raise ValueError(f"`{name}` must be one of {options}, got {value!r}.")
    return value


def check_seed(seed: Any, name: str = "seed") -> int:
    """A seed in ``[0, 2**64)``: the counter-based view seeds use it modulo 2**64, so others alias.

    Example:
        >>> check_seed(np.int32(7))
        7
    """
    value = check_int(name, seed, type_error=True)
    if not 0 <= value < 1 << 64:
        raise ValueError(f"`{name}` must be in [0, 2**64), got {value}: seeds are used modulo 2**64, so {value} would "
                         f"give the same views as seed={value % (1 << 64)}; pass a seed in that range.")
    return value


def check_memory_limit(value: Any) -> Optional[int]:
    """``memory_limit`` in bytes: ``None`` or an int >= 1 (a string such as ``"1GB"`` is refused)."""
    if value is None:
        return None
    if isinstance(value, str):
        raise TypeError(f"`memory_limit` must be a number of bytes (int) or None, got the string {value!r}: "
                        "pass e.g. memory_limit=2**30 for 1 GiB.")
    return check_int("memory_limit", value, 1)


def check_meta(meta: Optional[Mapping[str, Any]], settings: Mapping[str, Any]) -> Dict[str, Any]:
    """``meta`` merged after ``settings``; refused if it changes a setting or JSON cannot store it."""
    if meta is None:
        return dict(settings)
    if not isinstance(meta, Mapping):
        raise TypeError(f"`meta` must be a dict or None, got {type(meta).__name__}.")
    from lightning_memloc.checks.tensors import check_json_meta
    check_json_meta(meta)  # before the pass, not when `save` fails after it
    clash = {k: (settings[k], v) for k, v in meta.items() if k in settings and v != settings[k]}
    if clash:
        raise ValueError(f"`meta` would overwrite the recorded settings {sorted(clash)} "
                         f"(recorded, given: {clash}): rename these keys (e.g. 'note_views').")
    return {**settings, **meta}
