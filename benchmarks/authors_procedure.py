"""The authors' measurement procedure, as a timing baseline for ``measure()``.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024), released one
script per metric. Both run **one layer per run** (an ``IntermediateLayerGetter`` returning that
layer's output, so every forward stops at the layer), **batch size 1** and **one view per
forward**:

- UnitMem: per layer, per candidate, ``unit_views`` (10) augmented views through ``f``; each
  unit's activation is its spatial mean, averaged over the views;
- LayerMem: per layer, per candidate, ``anchor_views`` (5) times the un-augmented image and one
  augmented view through ``f`` and through ``g`` (4 forwards), the distance of the two
  L2-normalised representations, averaged over the views (the anchor pairing).

Per candidate and layer that is ``unit_views + 4 * anchor_views`` = 30 forwards truncated at the
layer. Truncation here is a forward hook on the layer that stops the forward by raising, which
runs exactly the modules an ``IntermediateLayerGetter`` would run (the rest of the network is
never computed). :func:`forward_ceiling` gives the speed-up a one-pass batched measurement can
reach from forward counts alone (see ``docs/performance.md``).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["authors_procedure", "forward_ceiling", "truncation_fractions"]


class _Stop(Exception):
    """Raised by the truncation hook once the layer's output is captured."""


def truncated_forward(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """Output of ``layer`` for input ``x``, running ``model`` only up to that layer."""
    grabbed: List[Tensor] = []

    def hook(module: nn.Module, inputs: object, output: Tensor) -> None:
        grabbed.append(output)
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return grabbed[0]


@torch.no_grad()
def authors_procedure(encoder: nn.Module, reference: nn.Module, images: Tensor, views: Tensor,
                      layers: Sequence[str], candidates: Sequence[int], unit_views: int = 10,
                      anchor_views: int = 5) -> Dict[str, Dict[str, np.ndarray]]:
    """Run both scripts' loops (UnitMem, then LayerMem; layer by layer) on ``candidates``.

    Args:
        encoder, reference: ``f`` and ``g`` (eval mode is the caller's).
        images: un-augmented images (N, C, H, W), float.
        views: augmented views (N, K, C, H, W) with K >= max(unit_views, anchor_views).
        layers: module names, one run each.
        candidates: positions of the candidates to measure.

    Returns:
        Per layer: ``mu`` (n, U) view-averaged unit activations of ``f`` and ``sslmem_raw`` (n,)
        = mean anchor distance under ``g`` minus under ``f``.
    """
    out: Dict[str, Dict[str, np.ndarray]] = {}
    mods = {id(m): dict(m.named_modules()) for m in (encoder, reference)}
    for name in layers:  # UnitMem script: one run per layer
        lf = mods[id(encoder)][name]
        mus = []
        for i in candidates:
            acc = None
            for v in range(unit_views):
                act = truncated_forward(encoder, lf, views[i, v:v + 1])
                unit = act.mean(dim=tuple(range(2, act.ndim))) if act.ndim > 2 else act
                acc = unit if acc is None else acc + unit
            mus.append((acc / unit_views)[0].double().numpy())
        out[name] = {"mu": np.stack(mus)}
    for name in layers:  # LayerMem script: one run per layer
        dist = {}
        for model in (encoder, reference):
            layer = mods[id(model)][name]
            per = []
            for i in candidates:
                total = 0.0
                for v in range(anchor_views):
                    a = truncated_forward(model, layer, images[i:i + 1]).flatten(1)
                    b = truncated_forward(model, layer, views[i, v:v + 1]).flatten(1)
                    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
                    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
                    total += float((a - b).norm())
                per.append(total / anchor_views)
            dist[id(model)] = np.asarray(per)
        out[name]["sslmem_raw"] = dist[id(reference)] - dist[id(encoder)]
    return out


def truncation_fractions(model: nn.Module, layers: Sequence[str], example: Tensor) -> Dict[str, float]:
    """Multiply-accumulates of the convs / linears run up to each layer, over a full forward."""
    macs: List[tuple] = []

    def count(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            macs.append((module, output.numel() * k))
        elif isinstance(module, nn.Linear):
            macs.append((module, output.numel() * module.in_features))

    order: List[str] = []
    named = dict(model.named_modules())
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks += [named[n].register_forward_hook(lambda m, i, o, n=n: order.append((n, len(macs)))) for n in layers]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    total = sum(m for _, m in macs)
    return {n: sum(m for _, m in macs[:upto]) / total for n, upto in order}


def forward_ceiling(fractions: Dict[str, float], views: int = 10, unit_views: int = 10, anchor_views: int = 5,
                    batch1_factor: float = 1.0) -> Dict[str, float]:
    """Speed-up of a one-pass measurement over the authors' procedure, from forward counts alone.

    Per candidate the procedure runs ``(unit_views + 4 * anchor_views) * sum_l fraction_l`` full
    forwards (each at batch 1, ``batch1_factor`` times the per-sample cost of a batched forward);
    the one pass runs ``2 * views`` (f and g). Returns both counts and their ratio (the ceiling).
    """
    procedure = (unit_views + 4 * anchor_views) * sum(fractions.values())
    one_pass = 2 * views
    return {"procedure_forwards": procedure, "pass_forwards": one_pass, "batch1_factor": batch1_factor,
            "ceiling": procedure * batch1_factor / one_pass}
