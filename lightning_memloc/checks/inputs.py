"""Checks of the data a user hands over: tensors that hold values, class-id labels, JSON-storable ``meta``."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor


def check_dense(value: Tensor, name: str) -> None:
    """Refuse sparse and nested tensors (``TypeError``) and meta-device tensors (``ValueError``).

    Example:
        >>> check_dense(torch.zeros(2, 3).to_sparse(), "candidates")
        Traceback (most recent call last):
        ...
        TypeError: `candidates` is a sparse_coo tensor: pass a dense one, `candidates.to_dense()`.
    """
    if value.layout != torch.strided or value.is_nested:
        layout = "nested" if value.is_nested else str(value.layout).replace("torch.", "")
        fix = "e.g. torch.stack(list(t.unbind()))" if value.is_nested else f"`{name}.to_dense()`"
        raise TypeError(f"`{name}` is a {layout} tensor: pass a dense one, {fix}.")
    if value.is_meta:
        raise ValueError(f"`{name}` is on the meta device, which holds shapes but no values: pass a tensor with "
                         "data (created or loaded on 'cpu' or a GPU).")


def check_has_weights(model: torch.nn.Module, name: str) -> None:
    """Refuse a model with parameters or buffers on the meta device.

    Example:
        >>> check_has_weights(torch.nn.Linear(2, 2, device="meta"), "encoder")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: `encoder` has parameters or buffers on the meta device (shapes, no weights), ...
    """
    meta = next((key for key, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta), None)
    if meta is not None:
        raise ValueError(f"`{name}` has parameters or buffers on the meta device (shapes, no weights), e.g. {meta!r}: "
                         "materialise it first, e.g. `model.to_empty(device='cpu')` then `model.load_state_dict(...)`.")


def as_label_tensor(labels: Any) -> Tensor:
    """``labels`` (a tensor, an array or a sequence) as a tensor; class names and ragged lists are refused.

    Example:
        >>> as_label_tensor([2, 0, 1]).tolist()
        [2, 0, 1]
    """
    if isinstance(labels, Tensor):
        check_dense(labels, "labels")
        return labels
    try:
        array = np.asarray(labels)
    except (TypeError, ValueError) as err:  # ragged nesting
        raise TypeError(f"`labels` must be a sequence of integer class ids, one per candidate ({err}).") from None
    if array.dtype.kind in "USO":
        first = array.reshape(-1)[0] if array.size else None
        first = first.item() if isinstance(first, np.generic) else first
        kind = "object" if array.dtype.kind == "O" else "string"
        raise TypeError(f"`labels` must be integer class ids, got {kind} values (e.g. {first!r}): map "
                        "class names to ids, e.g. `names, ids = numpy.unique(labels, return_inverse=True)` and pass "
                        "`labels=torch.as_tensor(ids)`.")
    return torch.as_tensor(array)


def _first_unstorable(value: Any, where: str) -> tuple[str, str] | None:
    """``(where, why)`` of the first part of ``value`` that JSON cannot hold as it is, or ``None``."""
    if isinstance(value, (str, int, float, bool, type(None))):  # np.float64 is a float: JSON writes it
        return None
    if isinstance(value, (Mapping, list, tuple)):
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        for key, item in items:
            if isinstance(value, Mapping) and not isinstance(key, str):
                return where, f"has the key {key!r} ({type(key).__name__}; it would come back as a string)"
            found = _first_unstorable(item, f"{where}[{key!r}]")
            if found:
                return found
        return None
    hint = " (use .item() or .tolist())" if isinstance(value, (np.generic, np.ndarray, Tensor)) else ""
    return where, f"is a {type(value).__name__}{hint}"


def check_json_meta(meta: Mapping[str, Any], name: str = "meta") -> None:
    """Refuse (``TypeError``) a ``meta`` the report's JSON cannot store (NaN and inf are allowed).

    Example:
        >>> check_json_meta({"lr": torch.tensor(0.1)})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: `meta['lr']` is a Tensor (use .item() or .tolist()), which the report's JSON ...
    """
    found = _first_unstorable(dict(meta), f"`{name}")
    if found:
        where, why = found
        raise TypeError(f"{where}` {why}, which the report's JSON cannot store: pass plain numbers, strings, "
                        "bools, None, lists and dicts.")
