"""Where the time of one measurement pass goes: views, forwards of f and g, hook reductions, checks, metric updates.

Runs the steps of :func:`lightning_memloc.measure.run_pass` one by one with a timer around each
(and a device sync on CUDA), on the same batches:

- ``views``: the DataLoader and :meth:`SeededViews.finalize` (view generation, device copy);
- ``forward f`` / ``forward g``: a bare forward of the batch (no hooks);
- ``hooks f`` / ``hooks g``: the hooked forward (:func:`~lightning_memloc.reductions.forward_reduce`)
  minus the bare one, i.e. the per-layer reductions (unit means, alignment);
- ``checks``: the per-batch NaN/inf checks of the reductions (one device sync);
- ``metric updates``: :meth:`MemorizationMeter.update`;
- ``compute``: :meth:`MemorizationMeter.compute_report` (once per pass; no DDP sync here:
  ``sync`` is zero in one process).

Each batch's forwards run twice (bare and hooked), so the split is an estimate of a real
pass, which runs only the hooked ones: ``pass ≈ views + forward + hooks + checks + updates +
compute``. Wang et al., *Localizing Memorization in SSL Vision Encoders*, NeurIPS 2024.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from lightning_memloc.measure import eval_mode
from lightning_memloc.meter import MemorizationMeter
from lightning_memloc.reductions import forward_reduce
from lightning_memloc.taps import LayerSpec
from lightning_memloc.views import SeededViews

__all__ = ["cost_split"]


def cost_split(encoder: nn.Module, reference: Optional[nn.Module], views: SeededViews, specs: Sequence[LayerSpec],
               num_units: Dict[str, int], batch_size: int, device: torch.device) -> Dict[str, float]:
    """Seconds per part of one pass over ``views`` (see the module docstring)."""
    names = [s.name for s in specs]
    meter = MemorizationMeter(specs, num_units, len(views), reference=reference is not None, labels=False).to(device)
    times: Dict[str, float] = defaultdict(float)

    def timed(part: str, fn):  # type: ignore[no-untyped-def]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times[part] += time.perf_counter() - start
        return out

    loader = iter(views.dataloader(batch_size=batch_size))
    with eval_mode(encoder, reference), torch.no_grad():
        while True:
            def next_batch():  # type: ignore[no-untyped-def]
                try:
                    index, x, _ = next(loader)
                except StopIteration:
                    return None
                index = torch.as_tensor(index, dtype=torch.long)
                return index, views.finalize(x, index, device)

            batch = timed("views", next_batch)
            if batch is None:
                break
            index, bv = batch
            b, k = bv.shape[:2]
            inputs = bv.reshape(b * k, *bv.shape[2:])
            timed("forward f", lambda: encoder(inputs))
            units, align_f = timed("hooked f", lambda: forward_reduce(encoder, inputs, names, b, k, units=True,
                                                                      align=reference is not None, anchor=False))
            align_g = None
            if reference is not None:
                timed("forward g", lambda: reference(inputs))
                align_g = timed("hooked g", lambda: forward_reduce(reference, inputs, names, b, k, units=False,
                                                                   align=True, anchor=False)[1])
            timed("checks", lambda: bool(torch.stack([torch.isfinite(u).all() for u in units.values()]
                                                     + [torch.isfinite(a).all() for a in (align_f or {}).values()]
                                                     + [torch.isfinite(a).all() for a in (align_g or {}).values()]).all()))
            timed("metric updates", lambda: meter.update(index.to(device), units, align_f, align_g, None))
    timed("compute", lambda: meter.compute_report(torch.arange(len(views)), {}, evidence=None))
    out = {"views": times["views"], "forward f": times["forward f"], "forward g": times["forward g"],
           "hooks f": times["hooked f"] - times["forward f"], "hooks g": times["hooked g"] - times["forward g"],
           "checks": times["checks"], "metric updates": times["metric updates"], "compute": times["compute"],
           "sync": 0.0}
    out["pass (estimated)"] = sum(out.values())
    return out


def format_split(split: Dict[str, float]) -> str:
    """One line: each part in seconds and as a share of the estimated pass."""
    total = split["pass (estimated)"]
    parts = [f"{k} {v:.3f} s ({v / total:.0%})" for k, v in split.items() if k != "pass (estimated)"]
    return f"pass ≈ {total:.3f} s = " + ", ".join(parts)
