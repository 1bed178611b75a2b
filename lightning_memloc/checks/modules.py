"""Checks of the modules and devices a measurement runs on: the reference, compiled wrappers, memory."""

from __future__ import annotations

import difflib
import os
from contextlib import suppress
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from lightning_memloc.errors import LayerNotFoundError


def check_views_memory(batch_size: int, views: int, view_shape: Sequence[int], device: torch.device) -> None:
    """Refuse a step of ``max(batch_size, 2) · views`` float32 views over half the device's (host's) memory."""
    per_view = int(np.prod([int(s) for s in view_shape])) * 4
    need = max(batch_size, 2) * views * per_view
    total = None
    if device.type == "cuda" and torch.cuda.is_available():
        total = int(torch.cuda.get_device_properties(device).total_memory)
    else:
        with suppress(AttributeError, ValueError, OSError):  # not POSIX
            total = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    if total is not None and need > total // 2:
        raise MemoryError(f"one forward step holds batch_size·views = {max(batch_size, 2)}·{views} views of shape "
                          f"{tuple(view_shape)}: {need / 2**30:.1f} GiB for the input alone, over half of the "
                          f"{total / 2**30:.1f} GiB of {device}: lower `views` (10 is the paper's K) or `batch_size`.")


def unwrap_compiled(module: Any) -> Any:
    """The eager module inside a ``torch.compile`` wrapper (the user's layer names, hooks fire)."""
    inner = getattr(module, "_orig_mod", None)
    return inner if isinstance(module, nn.Module) and isinstance(inner, nn.Module) else module


def check_reference(encoder: nn.Module, reference: Optional[nn.Module], argument: str = "reference",
                    same_weights: bool = True) -> None:
    """Refuse a reference that cannot show memorization: the encoder, one sharing its layers, or a copy.

    Any of these gives LayerMem 0 silently; ``same_weights`` also refuses a copy of the encoder's weights.
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
    """Same parameters (buffers such as BatchNorm statistics may differ: trained with lr 0 is a copy)."""
    sa, sb = dict(a.named_parameters()), dict(b.named_parameters())
    return bool(sa) and sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k].detach().cpu(), sb[k].detach().cpu()) for k in sa)


def named_module(model: nn.Module, name: str, argument: str) -> nn.Module:
    """The submodule of ``model`` called ``name``, or a :class:`LayerNotFoundError` suggesting close names."""
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise LayerNotFoundError(f"`{argument}` has no module named {name!r}.{hint} Pass names from `named_modules()`.")
    return modules[name]


def check_layers_exist(encoder: nn.Module, layers: Sequence[str]) -> None:
    """Raise :class:`LayerNotFoundError` listing report layers that are not modules of ``encoder``."""
    names = {name for name, _ in encoder.named_modules()}
    missing = [layer for layer in layers if layer not in names]
    if missing:
        known = sorted(n for n in names if n)[:30]
        raise LayerNotFoundError(f"the report's layers {missing} are not modules of the encoder "
                                 f"({type(encoder).__name__}), whose modules include {known}: point `encoder=` at the "
                                 "module the report was measured on.")
