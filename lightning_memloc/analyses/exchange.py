"""Layer exchange, a causal check of LayerMem: SSLMem left after swapping layers of ``f`` for ``g``'s."""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from lightning_memloc.analyses.consistency import chosen_layers
from lightning_memloc.checks import check_int, named_module
from lightning_memloc.errors import ArchitectureMismatchError
from lightning_memloc.report.report import MemorizationReport


def exchange_layers(f: nn.Module, g: nn.Module, layers: Sequence[str]) -> nn.Module:
    """A copy of ``f`` whose ``layers`` (and their children) carry ``g``'s parameters and buffers.

    Example:
        >>> from lightning_memloc.models import TinyCNN
        >>> f, g = TinyCNN(width=2), TinyCNN(width=2)
        >>> h = exchange_layers(f, g, ["conv2"])
        >>> torch.equal(h.conv2.conv.weight, g.conv2.conv.weight), torch.equal(h.conv1.conv.weight, f.conv1.conv.weight)
        (True, True)
    """
    if not isinstance(f, nn.Module) or not isinstance(g, nn.Module):
        raise TypeError(f"`f` and `g` must be torch.nn.Module encoders, got {type(f).__name__} and {type(g).__name__}.")
    if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
        raise TypeError(f"`layers` must be a sequence of module names (e.g. ['conv1', 'res2.conv2']), got {layers!r}.")
    sources = {}
    for name in layers:  # validate everything before copying anything
        src, dst = named_module(g, name, "g").state_dict(), named_module(f, name, "f").state_dict()
        if set(src) != set(dst) or any(src[key].shape != dst[key].shape for key in dst):
            detail = sorted(set(src) ^ set(dst)) or [
                f"{key}: {tuple(dst[key].shape)} in f, {tuple(src[key].shape)} in g" for key in dst if src[key].shape != dst[key].shape
            ]
            raise ArchitectureMismatchError(f"layer {name!r} differs between `f` and `g` ({detail}): exchange needs "
                                            "encoders of the same architecture.")
        sources[name] = src
    hybrid = copy.deepcopy(f)
    with torch.no_grad():
        for name, source in sources.items():
            for key, tensor in hybrid.get_submodule(name).state_dict(keep_vars=True).items():
                tensor.copy_(source[key].to(device=tensor.device, dtype=tensor.dtype))
    return hybrid


def _mean_raw(encoder: nn.Module, reference: nn.Module, candidates: Any, layer: str, measure_kwargs: Dict[str, Any]) -> Dict[str, float]:
    from lightning_memloc.measurement import measure

    a, b = encoder.state_dict(), reference.state_dict()
    if a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a):
        # every layer exchanged: the hybrid *is* g, so both alignments are equal and SSLMem is 0 by
        # definition (measure() refuses such a reference, which elsewhere would be a mistake)
        return {"sslmem_raw_mean": 0.0, "range": 0.0}
    raw = measure(encoder, candidates, reference=reference, layers=[layer], **measure_kwargs).sslmem_raw[layer].double()
    return {"sslmem_raw_mean": float(raw.mean()), "range": float(raw.max() - raw.min())}


def layer_exchange_study(f: nn.Module, g: nn.Module, candidates: Any, report: MemorizationReport, *, k: int = 2,
                         layers: Optional[Sequence[str]] = None, measure_layer: Optional[str] = None,
                         random_draws: int = 3, seed: int = 0, control: Any = None,
                         **measure_kwargs: Any) -> Dict[str, Any]:
    """SSLMem of the candidates after exchanging layers of ``f`` with ``g``'s, against unmodified ``f``.

    Measured at ``measure_layer`` (default: the last) with the same views for each single layer, the
    top-``k`` layers by LayerMem and by ΔLayerMem (from ``report``), ``random_draws`` random ``k``-sets and the
    last ``k``; ``**measure_kwargs`` go to ``measure``. With ``control`` images, entries add ``control_drop`` and
    ``drop_minus_control`` (exchanging layers also moves SSLMem of images never memorized).

    Returns:
        ``{"measure_layer", "k", "baseline", "control_baseline", "single": {layer: entry}, "groups":
        {"top_layer_mem" | "top_delta_layer_mem" | "last": entry, "random": [entry]}, "random_mean_drop"}``,
        an entry ``{"layers", "sslmem_raw_mean", "drop", "drop_normalised", "relative_drop"}``.
    """
    if not isinstance(report, MemorizationReport) or not report.has_reference:
        raise ValueError("layer_exchange_study needs a MemorizationReport measured with `reference=...` "
                         "(it ranks layers by LayerMem / ΔLayerMem).")
    chosen = chosen_layers(report, layers)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(chosen):
        raise ValueError(f"`k` must be an int in [1, {len(chosen)}] (the number of exchangeable layers), got {k!r}.")
    check_int("random_draws", random_draws, 0)
    measure_layer = report.layers[-1] if measure_layer is None else measure_layer
    if measure_layer not in report.layers:
        raise ValueError(f"`measure_layer` {measure_layer!r} is not in the report; its layers are {report.layers}.")
    for name in chosen:  # fail on a bad name before the first (slow) measurement
        named_module(f, name, "f"), named_module(g, name, "g")
    kwargs = dict(measure_kwargs, seed=seed)
    base = _mean_raw(f, g, candidates, measure_layer, kwargs)
    control_base = None if control is None else _mean_raw(f, g, control, measure_layer, kwargs)
    cache: Dict[tuple, Any] = {}

    def run(group: List[str]) -> Dict[str, Any]:
        key = tuple(sorted(group))
        if key not in cache:
            hybrid = exchange_layers(f, g, group)
            cache[key] = (_mean_raw(hybrid, g, candidates, measure_layer, kwargs)["sslmem_raw_mean"],
                          None if control is None else _mean_raw(hybrid, g, control, measure_layer, kwargs)["sslmem_raw_mean"])
        drop = base["sslmem_raw_mean"] - cache[key][0]
        entry = {"layers": list(group), "sslmem_raw_mean": cache[key][0], "drop": drop,
                 # in the units of LayerMem: divided by the unmodified f's range of SSLMem over the candidates
                 "drop_normalised": drop / base["range"] if base["range"] > 0 else 0.0,
                 "relative_drop": drop / base["sslmem_raw_mean"] if base["sslmem_raw_mean"] > 0 else None}
        if control_base is not None:
            entry["control_drop"] = control_base["sslmem_raw_mean"] - cache[key][1]
            entry["drop_minus_control"] = entry["drop"] - entry["control_drop"]
        return entry

    single = {name: run([name]) for name in chosen}
    by_lm = [n for n in report.top_layers(len(report.layers), by="layer_mem") if n in chosen][:k]
    by_dlm = [n for n in report.top_layers(len(report.layers), by="delta_layer_mem") if n in chosen][:k]
    groups: Dict[str, Any] = {"top_layer_mem": run(by_lm), "top_delta_layer_mem": run(by_dlm), "last": run(chosen[-k:])}
    generator = torch.Generator().manual_seed(seed)
    picks = [sorted(torch.randperm(len(chosen), generator=generator)[:k].tolist()) for _ in range(random_draws)]
    groups["random"] = draws = [run([chosen[i] for i in pick]) for pick in picks]
    return {"measure_layer": measure_layer, "k": k, "baseline": base, "control_baseline": control_base,
            "single": single, "groups": groups,
            "random_mean_drop": float(sum(d["drop"] for d in draws) / len(draws)) if draws else None}
