"""Checks of the data a user hands over: tensors that hold values, candidate ids, index files, image layout and range,
class-id labels, report values, JSON-storable ``meta``."""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from lightning_memloc.errors import NonFiniteActivationError, ReportFormatError


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


#: Float images may exceed [0, 1] by this much (resampling overshoot) before they are refused.
RANGE_TOLERANCE = 0.01


def check_candidate_ids(candidate_ids: Any, n: int, name: str = "candidate_ids") -> Tensor:
    """``(N,)`` distinct integer ids >= 0 (``None``: ``0..N-1``); floats and duplicates are refused.

    Example:
        >>> check_candidate_ids([4, 2, 9], 3).tolist()
        [4, 2, 9]
    """
    if candidate_ids is None:
        return torch.arange(n)
    ids = torch.as_tensor(np.asarray(candidate_ids) if not isinstance(candidate_ids, Tensor) else candidate_ids)
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"`{name}` must hold integer ids, got dtype {ids.dtype}: pass e.g. ids.long() "
                        "(floats would be truncated onto other candidates).")
    ids = ids.to(torch.long)
    if ids.shape != (n,):
        raise ValueError(f"`{name}` must have shape ({n},), got {tuple(ids.shape)}: one id per candidate.")
    if n and int(ids.min()) < 0:
        raise ValueError(f"`{name}` must be ids >= 0, got {int(ids.min())}: -1 is reserved for 'no candidate'.")
    unique, counts = torch.unique(ids, return_counts=True)
    if bool((counts > 1).any()):
        dup = unique[counts > 1][:5].tolist()
        raise ValueError(f"`{name}` has duplicated ids {dup}: each candidate needs its own id (a duplicate would "
                         "compare an image with its own copy); drop the duplicates.")
    return ids


def check_image_layout(shape: Sequence[int], name: str = "candidates") -> None:
    """Refuse channels-last images (…, H, W, C) with a message about the layout, not about channels."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3:
        return
    c_first, c_last = shape[-3], shape[-1]
    if c_last in (1, 3, 4) and c_first not in (1, 2, 3, 4) and shape[-2] > 4 and c_first > 4:
        lead = "N, " if len(shape) == 4 else ""
        perm = "permute(0, 3, 1, 2)" if len(shape) == 4 else "permute(2, 0, 1)"
        raise ValueError(f"`{name}` has shape {shape}, which looks channels-last ({lead}H, W, C): the library takes "
                         f"channels-first ({lead}C, H, W) images; pass `{name}.{perm}`.")


def check_image_range(images: Tensor, name: str = "candidates", *, strict: bool = True) -> None:
    """Float images must lie in [0, 1]: else raise (``strict``) or warn; NaN or inf pixels raise either way."""
    if not images.is_floating_point() or images.numel() == 0:
        return
    low, high = (float(v) for v in torch.aminmax(images.detach().float()))
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = int((~torch.isfinite(images)).sum())
        raise ValueError(f"`{name}` holds {bad} NaN or inf pixel value(s): every view and activation of those images "
                         f"would be non-finite; pass finite images (e.g. drop them, or torch.nan_to_num({name})).")
    if low >= -RANGE_TOLERANCE and high <= 1 + RANGE_TOLERANCE:
        return
    kind = "0-255 values" if high > 2.5 and low >= -RANGE_TOLERANCE else "normalised values"
    message = (f"`{name}` is a float tensor with values in [{low:.3g}, {high:.3g}] ({kind}), but float images must "
               "be in [0, 1]: the SimCLR augmentation clamps to [0, 1] and most view pixels would saturate. Pass "
               "images in [0, 1] (divide 0-255 values by 255, or pass a uint8 tensor) and normalise inside the "
               "augmentation, e.g. BatchedSimCLRAugment(size, mean=..., std=...), not before it.")
    if strict:
        raise ValueError(message)
    warnings.warn(message + " (A custom `transform` gets the images as they are: ignore this if it expects them.)",
                  UserWarning, stacklevel=3)


def check_labels_layout(labels: Tensor, n: int) -> None:
    """Refuse one-hot (N, C) labels with a message saying what they look like."""
    if labels.ndim == 2 and labels.shape[0] == n and labels.shape[1] > 1:
        raise ValueError(f"`labels` has shape {tuple(labels.shape)}: it looks one-hot (N, classes); pass one class id "
                         "per candidate, e.g. labels.argmax(1).")


def check_report_values(report: Any) -> None:
    """Raise ``ReportFormatError`` for UnitMem outside [0, 1] or unknown / duplicate candidate ids."""
    ids = report.candidate_ids
    if torch.unique(ids).numel() != ids.numel():
        raise ReportFormatError("`candidate_ids` has duplicated ids: each candidate needs its own id.")
    known = set(ids.tolist())
    for layer in report.layers:
        um = report.unit_mem[layer].float()
        if um.numel() and not (bool(torch.isfinite(um).all()) and float(um.min()) >= 0 and float(um.max()) <= 1):
            raise ReportFormatError(f"`unit_mem[{layer!r}]` has values outside [0, 1] (UnitMem's range): "
                                    f"[{float(um.min()):.3g}, {float(um.max()):.3g}].")
        argmax, dead = report.unit_argmax[layer].long(), report.dead_units[layer].bool()
        unknown = argmax[~(torch.isin(argmax, ids) | ((argmax == -1) & dead))].tolist()
        if unknown:
            raise ReportFormatError(f"`unit_argmax[{layer!r}]` points to candidate ids {unknown[:5]} that are not "
                                    "in `candidate_ids` (-1 is allowed for dead units only).")
    for name in ("top_ids", "least_ids"):
        value = getattr(report, name)
        if value is not None and not set(value.tolist()) <= known:
            raise ReportFormatError(f"`{name}` holds ids that are not in `candidate_ids`.")


def check_index_values(values: Any, name: str = "--indices") -> Tensor:
    """Integer indices read from a file (JSON / text / ``.npy``); non-integers and duplicates are refused.

    Example:
        >>> check_index_values(["4", "2"]).tolist()
        [4, 2]
    """
    arr = np.asarray(values)
    if arr.dtype.kind in "US":
        try:
            arr = arr.astype(np.int64)
        except ValueError:
            try:
                arr = arr.astype(np.float64)
            except ValueError:
                raise ValueError(f"`{name}` holds values that are not numbers: pass integer indices.") from None
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"`{name}` must hold integer indices, got {arr.dtype.name} values: pass integers.")
    if arr.dtype.kind == "f":
        bad = arr[~np.isfinite(arr) | (arr != np.round(arr))] if arr.size else arr
        if bad.size:
            raise ValueError(f"`{name}` holds non-integer values (e.g. {bad.reshape(-1)[0]!r}): indices must be "
                             "integers (a fraction would be truncated onto another image).")
    ids = torch.as_tensor(arr.astype(np.int64)).reshape(-1)
    unique, counts = torch.unique(ids, return_counts=True)
    if bool((counts > 1).any()):
        raise ValueError(f"`{name}` repeats indices {unique[counts > 1][:5].tolist()}: each image may be a candidate "
                         "once (a duplicate would be compared with its own copy); drop the duplicates.")
    return ids


def as_long_tensor(value: Any, name: str) -> Tensor:
    """``value`` (integers) as a ``LongTensor``; floats, bools refused.

    Example:
        >>> as_long_tensor([3, 1], "index")
        tensor([3, 1])
    """
    t = torch.as_tensor(value)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"`{name}` must hold integers, got dtype {t.dtype}")
    return t.to(torch.long)


def check_id_vector(name: str, value: object, length: int, rows_of: str, what: str) -> Tensor:
    """``value`` as an integer tensor of shape ``(length,)``: one ``what`` per row of ``rows_of``."""
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of {what}s, got {type(value).__name__}.")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"`{name}` must be an integer tensor of {what}s, got dtype {value.dtype}.")
    if value.ndim != 1 or value.shape[0] != length:
        raise ValueError(f"`{name}` must have shape ({length},), one {what} per row of `{rows_of}`, got shape "
                         f"{tuple(value.shape)}.")
    return value


def check_float_tensor(name: str, value: object, ndim: int, shape_hint: str) -> Tensor:
    """``value`` as a floating tensor with ``ndim`` dims (integer and bool tensors converted)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape {shape_hint}, got {type(value).__name__}.")
    if value.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimension(s) {shape_hint}, got shape {tuple(value.shape)}.")
    if not value.is_floating_point():
        if value.is_complex():
            raise TypeError(f"`{name}` must be a real tensor, got dtype {value.dtype}.")
        value = value.to(torch.get_default_dtype())
    return value


def check_finite_tensor(name: str, value: Tensor) -> None:
    """Raise :class:`NonFiniteActivationError` (a ``ValueError``) if ``value`` has NaN or inf."""
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise NonFiniteActivationError(f"`{name}` contains {bad} NaN/inf value(s); check the layer outputs (e.g. a "
                                       "diverged model or a mixed-precision overflow) before computing memorization "
                                       "scores.")


def check_mean_activations(mean_activations: object, min_candidates: int = 1) -> Tensor:
    """Validate a ``(N, U)`` matrix of mean activations and return it as a floating tensor."""
    mu = check_float_tensor("mean_activations", mean_activations, 2, "(N candidates, U units)")
    if mu.shape[0] < min_candidates:
        raise ValueError(f"`mean_activations` needs at least {min_candidates} candidate(s) (rows), got "
                         f"{mu.shape[0]}: UnitMem compares the most activating candidate against the other N-1, "
                         "so N = 1 is undefined. Measure more candidates.")
    check_finite_tensor("mean_activations", mu)
    return mu
