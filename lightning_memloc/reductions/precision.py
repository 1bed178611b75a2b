"""Optional mixed precision (``autocast``) for the forwards; reductions stay float32 / float64."""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import ContextManager, Dict, Optional, Union

import torch
from torch import nn
from torch.nn import functional as F

from lightning_memloc.checks import check_choice

#: The ``autocast`` choices and their dtypes (off by default: bf16's error exceeds 1e-3, docs/performance.md §4).
AUTOCAST_DTYPES: Dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
AUTOCASTS = tuple(AUTOCAST_DTYPES)


@functools.lru_cache(maxsize=None)
def autocast_runs(device_type: str, device: str, dtype: torch.dtype) -> Optional[str]:
    """``None`` if a conv and a linear layer run in ``dtype`` under autocast on ``device``, else why not (cached)."""
    if not torch.amp.is_autocast_available(device_type):
        return f"torch has no autocast for device type {device_type!r}"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # constant weights: the probe draws nothing from the global RNG (training randomness is untouched)
            x, w_conv, w_linear = (torch.ones(shape, device=device) for shape in ((1, 3, 4, 4), (4, 3, 3, 3), (2, 4)))
            with torch.no_grad(), torch.autocast(device_type=device_type, dtype=dtype):
                out = F.linear(F.conv2d(x, w_conv).mean(dim=(2, 3)), w_linear)
    except (RuntimeError, TypeError, ValueError) as err:  # unsupported dtype or device
        return f"{type(err).__name__}: {err}"
    if out.dtype != dtype:  # torch disabled autocast with a warning
        return "; ".join(str(w.message) for w in caught) or f"the forward ran in {out.dtype}"
    return None


def check_autocast(autocast: Optional[str], *models: Optional[nn.Module]) -> Optional[torch.dtype]:
    """The dtype of ``autocast`` if every model can run under it, else ``ValueError`` (before any work).

    Models must be float32 (autocast lowers nothing else) on a device that runs a conv and a linear in that dtype.
    """
    if autocast is None:
        return None
    dtype = AUTOCAST_DTYPES[check_choice("autocast", autocast, AUTOCASTS)]
    first = (next(iter(model.parameters()), None) for model in models if model is not None)
    for param in (p for p in first if p is not None):
        if param.dtype != torch.float32:
            raise ValueError(f"`autocast={autocast!r}` lowers float32 forwards, but the model is {param.dtype}: "
                             "pass a float32 model, or autocast=None.")
        why = autocast_runs(param.device.type, str(param.device), dtype)
        if why is not None:
            other = "" if autocast == "bf16" else " or autocast='bf16'"
            raise ValueError(f"`autocast={autocast!r}` cannot run on {param.device} ({why}): pass autocast=None "
                             f"(float32){other}.")
    return dtype


def forward_autocast(device: Union[torch.device, str], dtype: Optional[torch.dtype]) -> ContextManager:
    """``torch.autocast`` for a forward on ``device`` in ``dtype``; a no-op for ``None``."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(torch.device(device).type, dtype=dtype)


def reduce_in_float32(device: Union[torch.device, str], dtype: Optional[torch.dtype]) -> ContextManager:
    """Switch autocast off inside a forward hook so that reductions run in float32 / float64."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(torch.device(device).type, enabled=False)
