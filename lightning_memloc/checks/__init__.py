"""Argument checks shared by the whole package: one home for choice / int / finite / seed / id checks.

Every check runs before any work (no forward pass, no file written) and raises a standard error
(``TypeError``, ``ValueError``, ``MemoryError``) whose message names the argument and the fix, so
that a bad input never turns into a silent wrong result (Wang et al., *Localizing Memorization in
SSL Vision Encoders*, NeurIPS 2024, compare the same views of the same candidates across encoders:
the identity of candidates, the seed and the value range of the images all change the numbers).
See ``docs/reliability.md`` for the table of cases.
"""

from __future__ import annotations

import math
import operator
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "SEED_RANGE",
    "as_python_number",
    "check_candidate_ids",
    "check_choice",
    "check_finite",
    "check_image_layout",
    "check_image_range",
    "check_index_values",
    "check_int",
    "check_labels_layout",
    "check_memory_limit",
    "check_meta",
    "check_reference",
    "check_report_values",
    "check_seed",
    "check_views_memory",
    "unwrap_compiled",
]

#: Seeds are taken modulo 2**64 by the counter-based view seeds: only [0, 2**64) is one-to-one.
SEED_RANGE = (0, 1 << 64)
#: Float images may exceed [0, 1] by this much (resampling overshoot) before they are refused.
RANGE_TOLERANCE = 0.01


def check_int(name: str, value: Any, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """``value`` as a Python ``int`` (NumPy / 0-d integer tensors accepted; bools and floats refused).

    Example:
        >>> check_int("views", np.int64(4), 1)
        4
    """
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (float, np.floating)):
        raise ValueError(f"`{name}` must be an int{_bounds(low, high)}, got {value!r}.")
    try:
        out = operator.index(value)
    except TypeError:
        raise ValueError(f"`{name}` must be an int{_bounds(low, high)}, got {value!r} ({type(value).__name__}).") from None
    if (low is not None and out < low) or (high is not None and out >= high):
        raise ValueError(f"`{name}` must be an int{_bounds(low, high)}, got {out!r}.")
    return int(out)


def _bounds(low: Optional[int], high: Optional[int]) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high})"
    return f" >= {low}" if low is not None else (f" < {high}" if high is not None else "")


def as_python_number(value: Any) -> Any:
    """NumPy integer / floating scalars as Python ``int`` / ``float``; anything else unchanged (bools included)."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """``value`` if it is one of ``allowed`` (strings), else a ``ValueError`` listing them."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"`{name}` must be one of {tuple(allowed)}, got {value!r}.")
    return value


def check_finite(name: str, value: Any, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a finite ``float`` in ``[low, high]`` (bools and strings refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{name}` must be a number, got {value!r} ({type(value).__name__}).")
    out = float(value)
    if not math.isfinite(out) or not low <= out <= high:
        raise ValueError(f"`{name}` must be a finite number in [{low}, {high}], got {value!r}.")
    return out


def check_seed(seed: Any, name: str = "seed") -> int:
    """A seed in ``[0, 2**64)``: outside it, seeds alias others (they are used modulo 2**64).

    Example:
        >>> check_seed(np.int32(7))
        7
    """
    if isinstance(seed, (bool, np.bool_)) or isinstance(seed, (float, np.floating)):
        raise TypeError(f"`{name}` must be an int, got {seed!r}.")
    try:
        value = operator.index(seed)
    except TypeError:
        raise TypeError(f"`{name}` must be an int, got {seed!r} ({type(seed).__name__}).") from None
    if not SEED_RANGE[0] <= value < SEED_RANGE[1]:
        raise ValueError(
            f"`{name}` must be in [0, 2**64), got {value}: seeds are used modulo 2**64, so {value} would give the "
            f"same views as seed={value % (1 << 64)}; pass a seed in that range."
        )
    return int(value)


def check_memory_limit(value: Any) -> Optional[int]:
    """``memory_limit`` in bytes: ``None`` or an int >= 1 (a string such as ``"1GB"`` is refused)."""
    if value is None:
        return None
    if isinstance(value, str):
        raise TypeError(f"`memory_limit` must be a number of bytes (int) or None, got the string {value!r}: "
                        "pass e.g. memory_limit=2**30 for 1 GiB.")
    return check_int("memory_limit", value, 1)


def check_candidate_ids(candidate_ids: Any, n: int, name: str = "candidate_ids") -> Tensor:
    """(N,) distinct non-negative integer ids (``None``: ``0..N-1``); floats and duplicates are refused.

    A duplicated id would compare an image with its own copy (UnitMem's μ-max) and report two
    candidates under one name; a float id would be truncated. Negative ids are reserved (-1 marks
    a unit without μ-max candidate in a report).

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
    """Float images must lie in [0, 1] (the SimCLR augmentation clamps everything else).

    One ``aminmax`` over the tensor. ``strict``: raise a ``ValueError`` (the default augmentation
    would saturate the views); otherwise warn (a custom transform may expect another range).
    """
    if not images.is_floating_point() or images.numel() == 0:
        return
    low, high = (float(v) for v in torch.aminmax(images.detach().float()))
    if low >= -RANGE_TOLERANCE and high <= 1 + RANGE_TOLERANCE:
        return
    if not (math.isfinite(low) and math.isfinite(high)):
        return  # non-finite pixels are reported, by layer, by the measurement pass (NonFiniteActivationError)
    kind = "0-255 values" if high > 2.5 and low >= -RANGE_TOLERANCE else "normalised values"
    message = (f"`{name}` is a float tensor with values in [{low:.3g}, {high:.3g}] ({kind}), but float images must "
               "be in [0, 1]: the SimCLR augmentation clamps to [0, 1] and most view pixels would saturate. Pass "
               "images in [0, 1] (divide 0-255 values by 255, or pass a uint8 tensor) and normalise inside the "
               "augmentation, e.g. BatchedSimCLRAugment(size, mean=..., std=...), not before it.")
    if strict:
        raise ValueError(message)
    import warnings

    warnings.warn(message + " (A custom `transform` gets the images as they are: ignore this if it expects them.)",
                  UserWarning, stacklevel=3)


def check_labels_layout(labels: Tensor, n: int) -> None:
    """Refuse one-hot (N, C) labels with a message saying what they look like."""
    if labels.ndim == 2 and labels.shape[0] == n and labels.shape[1] > 1:
        raise ValueError(f"`labels` has shape {tuple(labels.shape)}: it looks one-hot (N, classes); pass one class id "
                         "per candidate, e.g. labels.argmax(1).")


def check_views_memory(batch_size: int, views: int, view_shape: Sequence[int], device: torch.device,
                       itemsize: int = 4) -> None:
    """Refuse a forward batch of views that cannot fit in memory, before it is allocated.

    One step holds ``max(batch_size, 2) · views`` views (the probe uses 2 candidates); the input
    alone may take at most half of the device's memory (the host's RAM on the CPU).
    """
    per_view = int(np.prod([int(s) for s in view_shape])) * itemsize
    need = max(batch_size, 2) * views * per_view
    total = _memory_of(device)
    if total is not None and need > total // 2:
        raise MemoryError(
            f"one forward step holds batch_size·views = {max(batch_size, 2)}·{views} views of shape {tuple(view_shape)}: "
            f"{need / 2**30:.1f} GiB for the input alone, over half of the {total / 2**30:.1f} GiB of {device}: "
            "lower `views` (10 is the paper's K) or `batch_size`."
        )


def _memory_of(device: torch.device) -> Optional[int]:
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return None


def unwrap_compiled(module: Any) -> Any:
    """The eager module inside a ``torch.compile`` wrapper (its layer names are the user's names).

    Measuring the original module runs the same weights eagerly: forward hooks work and nothing is
    recompiled. Anything else is returned as is.
    """
    inner = getattr(module, "_orig_mod", None)
    return inner if isinstance(module, nn.Module) and isinstance(inner, nn.Module) else module


def check_reference(encoder: nn.Module, reference: Optional[nn.Module], argument: str = "reference",
                    same_weights: bool = True) -> None:
    """Refuse a reference that cannot show memorization: the encoder, one sharing its layers, or a copy.

    SSLMem compares the encoder with a reference trained without the candidates; a reference that
    shares parameters with the encoder, or holds exactly its weights, gives LayerMem 0 silently.

    Args:
        encoder: the encoder ``f``.
        reference: the reference ``g`` (``None``: nothing to check).
        argument: the argument name for the messages.
        same_weights: also refuse a reference whose weights equal the encoder's.
    """
    if reference is None:
        return
    if reference is encoder:
        raise ValueError(f"`{argument}` is the encoder itself: pass an encoder trained without the candidates.")
    mine = {id(p): n for n, p in encoder.named_parameters()}
    shared = [n for n, p in reference.named_parameters() if id(p) in mine]
    if shared:
        raise ValueError(f"`{argument}` shares {len(shared)} parameter(s) with the encoder (e.g. {shared[0]!r}): "
                         "SSLMem would be 0 in those layers; pass a separately trained reference, not a module "
                         "built from the encoder's layers.")
    if same_weights and _same_weights(encoder, reference):
        raise ValueError(f"`{argument}` has exactly the encoder's weights (a copy?): SSLMem would be 0 everywhere; "
                         "pass an encoder trained without the candidates (e.g. its own checkpoint).")


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Same parameters (buffers such as BatchNorm statistics may differ: a copy trained with lr 0 is still a copy)."""
    sa, sb = dict(a.named_parameters()), dict(b.named_parameters())
    if sa.keys() != sb.keys() or not sa:
        return False
    return all(x.shape == y.shape and torch.equal(x.detach().cpu(), y.detach().cpu()) for x, y in
               ((sa[k], sb[k]) for k in sa))


def check_meta(meta: Optional[Mapping[str, Any]], settings: Mapping[str, Any]) -> Dict[str, Any]:
    """``meta`` merged after ``settings``; a key that would change a recorded setting is refused."""
    if meta is None:
        return dict(settings)
    if not isinstance(meta, Mapping):
        raise TypeError(f"`meta` must be a dict or None, got {type(meta).__name__}.")
    clash = {k: (settings[k], v) for k, v in meta.items() if k in settings and v != settings[k]}
    if clash:
        raise ValueError(f"`meta` would overwrite the recorded settings {sorted(clash)} "
                         f"(recorded, given: {clash}): rename these keys (e.g. 'note_views').")
    return {**settings, **meta}


def check_report_values(report: Any) -> None:
    """Values a report can hold: UnitMem in [0, 1], μ-max ids among the candidates (or -1 for a dead unit),
    distinct candidate ids, top / least ids among the candidates. Raises ``ReportFormatError``."""
    from lightning_memloc.errors import ReportFormatError

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
    """Integer indices read from a file (JSON / text / ``.npy``): non-integers and duplicates are refused.

    Integral floats (``3.0``) are accepted; ``1.5``, ``true`` or ``"a"`` are not (a float would be
    truncated onto another image), and a repeated index would measure one image twice.

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
