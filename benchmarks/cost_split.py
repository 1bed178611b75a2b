"""Where the time of one measurement pass goes: views, forwards of f and g, hook reductions, checks, metric updates.

Runs the steps of :func:`lightning_memloc.measurement.run_pass` one by one with a timer around each
(and a device sync on CUDA), on the same batches:

- ``views``: the DataLoader and :meth:`SeededViews.finalize` (view generation, device copy);
- ``forward f`` / ``forward g``: a bare forward of the batch (no hooks);
- ``hooks f`` / ``hooks g``: the hooked forward (:func:`~lightning_memloc.reductions.hook.forward_reduce`)
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

import statistics
import time
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from lightning_memloc.taps.probe import eval_mode, model_device_dtype
from lightning_memloc.states.meter import MemorizationMeter
from lightning_memloc.functional.sslmem import pairwise_alignment
from lightning_memloc.reductions.hook import (alignment_from_gram, flat_view, forward_autocast, forward_reduce,
                                              reduce_in_float32, view_gram, view_sq_distances, view_unit_means)
from lightning_memloc.taps.hooks import LayerSpec, LayerTaps, unit_activations
from lightning_memloc.views.seeded import SeededViews

__all__ = ["cost_split", "reduction_split", "unfused_forward_reduce"]


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


def unfused_forward_reduce(model: nn.Module, inputs: torch.Tensor, names: Sequence[str], batch: int, views: int, *,
                           units: bool, align: bool, anchor: bool, autocast: Optional[torch.dtype] = None
                           ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """The hook reductions before issue 19's round 2 (commit 411fac2): every layer finished in its own hook.

    Per layer: ``unit_activations`` then the mean over views, and
    :func:`~lightning_memloc.functional.sslmem.pairwise_alignment` (slices, float64 Gram and its
    dozen finishing operations). Kept here to time the fused reductions against it in one run.
    """
    unit_means: Dict[str, torch.Tensor] = {}
    aligns: Dict[str, torch.Tensor] = {}
    n_views = batch * views

    def reduce(name: str, output: Any) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        with reduce_in_float32(out.device, autocast):
            if out.dtype not in (torch.float32, torch.float64):
                out = out.float()
            if units:
                unit_means[name] = unit_activations(out[:n_views]).reshape(batch, views, -1).mean(dim=1)
            if align:
                rep = flat_view(out)
                aligns[name] = pairwise_alignment(rep[:n_views].reshape(batch, views, -1), rep[n_views:] if anchor else None)

    device, dtype = model_device_dtype(model)
    with LayerTaps(model, names, reduce), forward_autocast(device, autocast):
        model(inputs.to(device=device, dtype=dtype, non_blocking=True))
    return unit_means, aligns


def reduction_split(model: nn.Module, inputs: torch.Tensor, names: Sequence[str], batch: int, views: int,
                    repeats: int = 5) -> Dict[str, Dict[str, float]]:
    """Median seconds of each hook reduction per layer on one batch, and the bare forward's.

    Per layer (outputs captured once, then each step repeated ``repeats`` times, steps
    interleaved): ``units`` (:func:`view_unit_means`), ``gram`` (:func:`view_gram`: the float64
    casts and ``baddbmm`` over slices, the hook's path before issue 27), ``gram32``
    (:func:`view_sq_distances`: the float32 centred Gram and its float64 check, the hook's path on
    CPU), ``finish`` (:func:`alignment_from_gram` of this layer alone, as the unfused hook did) and
    ``unfused`` (the former per-layer path: unit means and ``pairwise_alignment``). Key
    ``"all layers"`` adds ``finish stacked`` (one :func:`alignment_from_gram` for all layers) and
    ``forward`` (the bare forward of ``inputs``). Wang et al., NeurIPS 2024 (the reductions).
    """
    outputs: Dict[str, torch.Tensor] = {}
    with torch.no_grad(), eval_mode(model), LayerTaps(model, names, lambda n, o: outputs.__setitem__(n, o)):
        model(inputs)
    n_views = batch * views
    reps = {n: flat_view(o[:n_views]).reshape(batch, views, -1) for n, o in outputs.items()}
    steps = {}
    for n, o in outputs.items():
        steps[(n, "units")] = lambda o=o: view_unit_means(o[:n_views], batch, views)
        steps[(n, "gram")] = lambda n=n: view_gram(reps[n])
        steps[(n, "gram32")] = lambda n=n: view_sq_distances(reps[n])
        gram = view_gram(reps[n])
        steps[(n, "finish")] = lambda gram=gram: alignment_from_gram(gram)
        steps[(n, "unfused")] = lambda o=o, n=n: (unit_activations(o[:n_views]).reshape(batch, views, -1).mean(dim=1),
                                                  pairwise_alignment(reps[n]))
    grams = torch.stack([view_gram(r) for r in reps.values()])
    steps[("all layers", "finish stacked")] = lambda: alignment_from_gram(grams)
    steps[("all layers", "forward")] = lambda: model(inputs)
    times: Dict[Tuple[str, str], List[float]] = defaultdict(list)
    with torch.no_grad(), eval_mode(model):
        for _ in range(max(1, repeats)):
            for key, fn in steps.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
    out: Dict[str, Dict[str, float]] = defaultdict(dict)
    for (layer, part), values in times.items():
        out[layer][part] = statistics.median(values)
    return dict(out)
