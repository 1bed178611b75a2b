"""Benchmark of one measurement pass: ``measure()`` against a bare forward and a per-candidate loop.

Measures, in one run (see ``benchmarks/README.md`` and ``docs/performance.md``):

(a) the bare batched forward of precomputed views through the encoder and the reference (no
    hooks, eval mode, ``no_grad``), batch by batch as ``measure`` does;
(b) ``measure()`` over all auto-selected layers with a reference, on the same precomputed views;
(c0) the authors' procedure (``authors_procedure.py``): batch size 1, one view per forward, one
    layer per run (forwards truncated at the layer), UnitMem and LayerMem separately, timed on
    a subset of candidates and extrapolated, against its forward-count ceiling;
(c) a per-candidate loop: one candidate (its K views, batched) and one hooked layer per
    forward, Python-level reductions (timed on a subset of candidates and extrapolated
    linearly to all candidates × layers);
(d) the share of a :class:`~lightning_memloc.MemorizationMonitor` (every epoch) in a co-trained
    SimCLR run of a narrow ResNet9;
(e) view generation: :class:`~lightning_memloc.BatchedSimCLRAugment` (the library's batched,
    seeded path) vs lightly's per-image ``SimCLRViewTransform``.

Also: peak memory of (a), (b) and (c), the metric state size (O(N·U)), and the accuracy of
LayerMem / UnitMem from ``measure`` against a float64 computation on a subset of candidates.

Times are the median (and min) of ``--repeats`` runs after a warm-up; (a) and (b) are
interleaved so that load from other processes hits both alike. Peak memory on CPU is the
growth of the resident set over the phase: the process's high-water mark (``VmHWM``) is reset
through ``/proc/self/clear_refs`` before each phase (Linux), else the ``ru_maxrss`` delta is
reported (which only shows growth above the previous peak). On CUDA it is
``torch.cuda.max_memory_allocated`` over the phase minus the memory allocated at its start.

Run ``python benchmarks/bench_measure.py --help``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:  # run from a checkout without installing
        sys.path.insert(0, str(_path))

from lightning_memloc import BatchedSimCLRAugment, measure  # noqa: E402
from timing import sync  # noqa: E402
from lightning_memloc.taps.probe import eval_mode, probe_layers  # noqa: E402
from lightning_memloc.states.meter import MemorizationMeter, state_bytes  # noqa: E402
from lightning_memloc.models import ResNet9  # noqa: E402
from lightning_memloc.views.seeded import SeededViews, make_views  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-train-10k.npz"


# ----------------------------------------------------------------------------- utilities
def _status_kib(field: str) -> Optional[int]:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.M)
    return int(match.group(1)) if match else None


class PeakMemory:
    """Peak memory growth over a ``with`` block, in bytes (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""
        self.peak = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated"
            return self
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
            self.base = _status_kib("VmRSS") * 1024  # type: ignore[operator]
            self.method = "VmHWM - VmRSS at start"
        except (OSError, TypeError):
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.method = "ru_maxrss delta"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        elif self.method.startswith("VmHWM"):
            self.peak = (_status_kib("VmHWM") or 0) * 1024 - self.base
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base
        self.peak = max(0, int(self.peak))


#: CPU seconds of this process (all threads) per timed call, in call order (see :func:`run_timed`).
CPU_TIMES: List[float] = []


def run_timed(fn: Callable[[], Any], device: torch.device) -> Tuple[float, int, Any]:
    """(wall seconds, peak memory bytes, result) of one call; its CPU time goes to ``CPU_TIMES``.

    Wall time is the figure reported; the process CPU time (user + system, all threads) is kept
    as a cross-check on a loaded machine, where wall time also counts time spent descheduled.
    """
    with PeakMemory(device) as mem:
        sync(device)
        cpu0 = time.process_time()
        start = time.perf_counter()
        out = fn()
        sync(device)
        elapsed = time.perf_counter() - start
        CPU_TIMES.append(time.process_time() - cpu0)
    return elapsed, mem.peak, out


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def fmt_s(x: float) -> str:
    return f"{x:.3f} s" if x < 100 else f"{x:.1f} s"


class Results:
    """Collects rows for the final table and the JSON dump."""

    def __init__(self) -> None:
        self.rows: List[Dict[str, Any]] = []
        self.info: Dict[str, Any] = {}

    def add(self, **row: Any) -> Dict[str, Any]:
        self.rows.append(row)
        return row


def median_min(times: Sequence[float]) -> Tuple[float, float]:
    return statistics.median(times), min(times)


# ----------------------------------------------------------------------------- models and data
def build_model(name: str, width: int, device: torch.device, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if name == "resnet9":
        model = ResNet9(width=width)
    elif name == "resnet18":
        import torchvision

        model = torchvision.models.resnet18()
        model.fc = nn.Identity()  # an SSL backbone: the 512-d pooled features
    else:
        raise ValueError(f"unknown model {name!r}: use resnet9 or resnet18")
    # Random (not identity) BatchNorm statistics, so that eval mode is a generic encoder.
    gen = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
    return model.to(device).eval()


def load_images(spec: str, n: int, size: int, seed: int = 0) -> Tuple[Tensor, str]:
    """``n`` uint8 images (n, 3, size, size): from an npz (``x`` N×H×W×3) or random."""
    path = None
    if spec == "auto":
        path = DEFAULT_DATA if DEFAULT_DATA.is_file() else None
    elif spec != "random":
        path = Path(spec)
    if path is not None:
        x = np.load(path)["x"]
        if x.ndim == 4 and x.shape[-1] in (1, 3):
            x = x.transpose(0, 3, 1, 2)
        images = torch.from_numpy(np.ascontiguousarray(x[: min(n, len(x))]))
        if images.shape[-1] != size:
            images = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear",
                                                     antialias=True).round().clamp(0, 255).to(torch.uint8)
        if len(images) < n:  # tile to the requested count
            images = images.repeat((math.ceil(n / len(images)), 1, 1, 1))[:n]
        return images, f"{path} ({len(x)} images)"
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen), "random uint8"


# ----------------------------------------------------------------------------- (a) bare forward
def bare_forward(encoder: nn.Module, reference: nn.Module, views: Tensor, batch_size: int,
                 device: torch.device, channels_last: bool) -> None:
    """The same batches as ``measure``: ``batch_size`` candidates × K views, through f and g."""
    n = views.shape[0]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with eval_mode(encoder, reference), torch.no_grad():
        for start in range(0, n, batch_size):
            x = views[start:start + batch_size]
            x = x.reshape(-1, *x.shape[2:]).to(device, non_blocking=True).contiguous(memory_format=fmt)
            encoder(x)
            reference(x)


# ----------------------------------------------------------------------------- (c) per-candidate loop
def per_candidate_pass(encoder: nn.Module, reference: nn.Module, views: Tensor, layers: Sequence[str],
                       candidates: Sequence[int], device: torch.device, dtype: torch.dtype = torch.float32,
                       one_layer_per_forward: bool = True) -> Dict[str, Dict[str, Any]]:
    """The straightforward procedure of the authors' scripts.

    For every layer and every candidate: forward the candidate's K views through ``f`` with one
    forward hook on that layer, average each unit over space and views, L2-normalise every
    view's flattened output and average the distances of all view pairs in a Python loop (one
    ``.item()`` per pair); the same for ``g``. With ``one_layer_per_forward=False`` every layer is
    hooked in one forward per candidate (used for the float64 accuracy reference only).

    Returns per layer: ``mu`` (n, U) mean unit activations, ``align_f`` / ``align_g`` (n,) lists.
    """
    modules = {id(m): dict(m.named_modules()) for m in (encoder, reference)}
    out: Dict[str, Dict[str, Any]] = {name: {"mu": [], "align_f": [], "align_g": []} for name in layers}
    groups = [[name] for name in layers] if one_layer_per_forward else [list(layers)]
    with eval_mode(encoder, reference), torch.no_grad():
        for group in groups:
            for i in candidates:
                x = views[i].to(device=device, dtype=dtype)  # (K, C, H, W): one candidate
                for model, key in ((encoder, "align_f"), (reference, "align_g")):
                    grabbed: Dict[str, Tensor] = {}
                    hooks = [modules[id(model)][name].register_forward_hook(
                        lambda mod, inp, o, name=name: grabbed.__setitem__(name, o.detach())) for name in group]
                    try:
                        model(x)
                    finally:
                        for hook in hooks:
                            hook.remove()
                    for name in group:
                        act = grabbed[name]
                        if model is encoder:
                            unit = act.mean(dim=tuple(range(2, act.ndim))) if act.ndim > 2 else act
                            out[name]["mu"].append(unit.mean(dim=0).cpu().double().numpy())
                        reps = act.flatten(1)
                        reps = reps / reps.norm(dim=1, keepdim=True).clamp_min(1e-12)
                        k = reps.shape[0]
                        dists = [(reps[a] - reps[b]).norm().item() for a in range(k) for b in range(a + 1, k)]
                        out[name][key].append(sum(dists) / len(dists))
    for name in layers:
        out[name]["mu"] = np.stack(out[name]["mu"])
    return out


def scores_from_pass(result: Dict[str, Dict[str, Any]], layers: Sequence[str]) -> Dict[str, Any]:
    """UnitMem (mean reduction, clamp) and LayerMem in float64 numpy from a per-candidate pass."""
    unit_mem, layer_mem, raw = {}, {}, {}
    for name in layers:
        mu = np.clip(result[name]["mu"], 0, None)
        n = mu.shape[0]
        top = mu.max(axis=0)
        rest = (mu.sum(axis=0) - top) / (n - 1)
        denom = top + rest
        unit_mem[name] = np.where(denom == 0, 0.0, (top - rest) / np.where(denom == 0, 1.0, denom)).clip(0, 1)
        m = np.asarray(result[name]["align_g"]) - np.asarray(result[name]["align_f"])
        span = m.max() - m.min()
        raw[name] = m
        layer_mem[name] = float(np.mean(m / span)) if span > 0 else 0.0
    return {"unit_mem": unit_mem, "layer_mem": layer_mem, "sslmem_raw": raw}


# ----------------------------------------------------------------------------- (a)-(c) per model
def bench_model(name: str, args: argparse.Namespace, device: torch.device, images: Tensor,
                results: Results) -> None:
    n, k, bs = args.candidates, args.views, args.batch_size
    width = args.resnet9_width if name == "resnet9" else 0
    label = f"resnet9(width={width})" if name == "resnet9" else "resnet18 (torchvision)"
    print(f"\n=== {label}: N={n} candidates x K={k} views at {args.image_size}x{args.image_size}, "
          f"batch {bs} candidates ({bs * k} views) ===", flush=True)
    encoder = build_model(name, width, device, seed=1)
    reference = build_model(name, width, device, seed=2)
    if args.channels_last:
        encoder.to(memory_format=torch.channels_last)
        reference.to(memory_format=torch.channels_last)
    cand = images[:n]

    # View generation (timed separately; (a) and (b) both get these exact views).
    t_views, peak_views, views = run_timed(lambda: make_views(cand, k, None, 0), torch.device("cpu"))
    print(f"views: make_views (BatchedSimCLRAugment, seeded) {n * k} views in {fmt_s(t_views)} "
          f"= {n * k / t_views:,.0f} views/s, {mib(views.numel() * views.element_size())} of views", flush=True)
    results.add(phase="views", model=label, median_s=t_views, min_s=t_views, views_per_s=n * k / t_views,
                peak_bytes=peak_views, note="make_views, CPU")

    example = views[:2].reshape(-1, *views.shape[2:]).to(device)
    specs, num_units = probe_layers(encoder, reference, "auto", example)
    layers = [s.name for s in specs]
    print(f"layers (auto, {len(layers)}): {', '.join(layers)}; units: {sum(num_units.values())}", flush=True)

    def run_a() -> None:
        bare_forward(encoder, reference, views, bs, device, args.channels_last)

    def run_b() -> Any:
        return measure(encoder, views, reference=reference, batch_size=bs, top_k=min(50, n))

    # Warm-up on one batch (kernel selection, allocator), then interleaved repeats.
    run_timed(lambda: bare_forward(encoder, reference, views[:bs], bs, device, args.channels_last), device)
    run_timed(lambda: measure(encoder, views[:max(2, bs)], reference=reference, batch_size=bs,
                              top_k=min(50, n)), device)
    times_a, times_b, peaks_a, peaks_b, cpu_a, cpu_b = [], [], [], [], [], []
    report = None
    for r in range(args.repeats):
        t, p, _ = run_timed(run_a, device)
        times_a.append(t)
        peaks_a.append(p)
        cpu_a.append(CPU_TIMES[-1])
        t, p, report = run_timed(run_b, device)
        times_b.append(t)
        peaks_b.append(p)
        cpu_b.append(CPU_TIMES[-1])
        print(f"  repeat {r + 1}/{args.repeats}: (a) bare {fmt_s(times_a[-1])}, (b) measure {fmt_s(times_b[-1])}",
              flush=True)
    (ma, mina), (mb, minb) = median_min(times_a), median_min(times_b)
    nv = 2 * n * k  # view forwards (f and g)
    ra = results.add(phase="(a) bare forward f+g", model=label, median_s=ma, min_s=mina, views_per_s=nv / ma,
                     peak_bytes=max(peaks_a), note=f"{len(layers)} layers, no hooks")
    rb = results.add(phase="(b) measure()", model=label, median_s=mb, min_s=minb, views_per_s=nv / mb,
                     peak_bytes=max(peaks_b), note="all layers, reference")
    ratio_ba = mb / ma
    ratios = sorted(b / a for a, b in zip(times_a, times_b))
    cpu_ratio = statistics.median(cpu_b) / statistics.median(cpu_a)
    ra["cpu_s"], rb["cpu_s"] = statistics.median(cpu_a), statistics.median(cpu_b)
    rb["ratio"] = f"b/a = {ratio_ba:.3f} (per-repeat {', '.join(f'{x:.2f}' for x in ratios)}; CPU-time {cpu_ratio:.3f})"
    print(f"(a) bare forward : median {fmt_s(ma)} (min {fmt_s(mina)}), {nv / ma:,.0f} view-forwards/s, "
          f"peak +{mib(max(peaks_a))}")
    print(f"(b) measure()    : median {fmt_s(mb)} (min {fmt_s(minb)}), {nv / mb:,.0f} view-forwards/s, "
          f"peak +{mib(max(peaks_b))}")
    print(f"    b/a = {ratio_ba:.3f} (median of medians; per-repeat ratios {', '.join(f'{x:.3f}' for x in ratios)}); "
          f"process CPU time: a {statistics.median(cpu_a):.2f} s, b {statistics.median(cpu_b):.2f} s, "
          f"b/a = {cpu_ratio:.3f}", flush=True)

    # Metric state size: O(N * U), independent of K and of the activation size.
    meter = MemorizationMeter(specs, num_units, n, reference=True, labels=False)
    held = 0
    for module in meter.modules():
        for state in getattr(module, "_defaults", {}):
            value = getattr(module, state)
            if isinstance(value, Tensor):
                held += value.numel() * value.element_size()
    formula = state_bytes(n, num_units, reference=True, labels=False)
    acts = sum(int(np.prod(s)) for s in _layer_shapes(encoder, layers, example[:1]).values())
    results.info.setdefault("state_bytes", {})[label] = {
        "state_bytes": formula, "held_bytes": held, "N": n, "sum_units": sum(num_units.values()),
        "layers": len(layers), "all_activations_bytes": n * k * acts * 4}
    print(f"metric states: state_bytes = {formula:,} B ({mib(formula)}) = N*(sum U + L) + 3*N*L floats "
          f"[N={n}, sum U={sum(num_units.values())}, L={len(layers)}]; tensors held {held:,} B; keeping all "
          f"activations would take N*K*sum D*4 = {mib(n * k * acts * 4)}", flush=True)

    # (c) per-candidate, per-layer loop on a subset, extrapolated.
    sub_n = min(args.naive_candidates, n)
    sub_layers = layers if args.naive_layers <= 0 else layers[:: max(1, len(layers) // args.naive_layers)][
        :args.naive_layers]
    per_candidate_pass(encoder, reference, views, sub_layers[:1], [0], device)  # warm-up
    t_c, peak_c, naive = run_timed(
        lambda: per_candidate_pass(encoder, reference, views, sub_layers, list(range(sub_n)), device), device)
    cpu_c = CPU_TIMES[-1]
    pairs_timed = sub_n * len(sub_layers)
    t_c_full = t_c / pairs_timed * n * len(layers)
    extrapolated = pairs_timed < n * len(layers)
    rc = results.add(phase="(c) per-candidate loop", model=label, median_s=t_c_full, min_s=t_c_full,
                     views_per_s=nv / t_c_full, peak_bytes=peak_c,
                     note=(f"extrapolated from {sub_n} cand x {len(sub_layers)} layers ({fmt_s(t_c)})"
                           if extrapolated else "measured"))
    rc["ratio"] = f"c/b = {t_c_full / mb:.1f}"
    # Consistency: the loop's raw SSLMem (align_g - align_f) equals measure's on the subset.
    diffs = [abs(float(report.sslmem_raw[layer][i]) - (naive[layer]["align_g"][i] - naive[layer]["align_f"][i]))
             for layer in sub_layers for i in range(sub_n)]
    print(f"(c) per-candidate loop: {fmt_s(t_c)} for {sub_n} candidates x {len(sub_layers)} layers "
          f"-> {'extrapolated' if extrapolated else 'measured'} {fmt_s(t_c_full)} for {n} x {len(layers)}, "
          f"peak +{mib(peak_c)}; c/b = {t_c_full / mb:.1f}; max |raw SSLMem(loop) - raw SSLMem(measure)| = "
          f"{max(diffs):.2e}", flush=True)

    bench_authors(encoder, reference, cand, views, layers, args, device, label, mb, results)

    # Accuracy: LayerMem / UnitMem of measure (float32) vs a float64 computation on a subset.
    n_acc = min(args.accuracy_candidates, n)
    acc_report = measure(encoder, views[:n_acc], reference=reference, batch_size=bs, top_k=min(50, n_acc))
    f64, g64 = copy.deepcopy(encoder).double(), copy.deepcopy(reference).double()
    exact = scores_from_pass(per_candidate_pass(f64, g64, views[:n_acc], layers, list(range(n_acc)), device,
                                                dtype=torch.float64, one_layer_per_forward=False), layers)
    del f64, g64
    err_lm = max(abs(acc_report.layer_mem[layer] - exact["layer_mem"][layer]) for layer in layers)
    err_raw = max(float(np.abs(acc_report.sslmem_raw[layer].double().numpy() - exact["sslmem_raw"][layer]).max())
                  for layer in layers)
    err_um = max(float(np.abs(acc_report.unit_mem[layer].double().numpy() - exact["unit_mem"][layer]).max())
                 for layer in layers)
    ok = err_lm <= 1e-4
    results.info.setdefault("accuracy", {})[label] = {"candidates": n_acc, "layer_mem_max_abs_err": err_lm,
                                                      "sslmem_raw_max_abs_err": err_raw,
                                                      "unit_mem_max_abs_err": err_um, "pass": ok}
    print(f"accuracy vs float64 on {n_acc} candidates, {len(layers)} layers: max |LayerMem err| = {err_lm:.2e} "
          f"({'PASS' if ok else 'FAIL'} <= 1e-4), max |raw SSLMem err| = {err_raw:.2e}, "
          f"max |UnitMem err| = {err_um:.2e}", flush=True)
    results.info.setdefault("ratios", {})[label] = {"b/a": ratio_ba, "c/b": t_c_full / mb,
                                                    "b/a_per_repeat": ratios, "b/a_cpu_time": cpu_ratio,
                                                    "c/b_cpu_time": cpu_c / pairs_timed * n * len(layers)
                                                    / statistics.median(cpu_b),
                                                    "view_generation_s": t_views, "bare_s": ma, "measure_s": mb}


def bench_authors(encoder: nn.Module, reference: nn.Module, images: Tensor, views: Tensor, layers: Sequence[str],
                  args: argparse.Namespace, device: torch.device, label: str, t_measure: float,
                  results: Results) -> None:
    """(c0) the authors' procedure (batch 1, one view per forward, one layer per run, UnitMem and
    LayerMem separately; see ``authors_procedure.py``), timed on a slice and extrapolated, with its
    forward-count ceiling: truncation fractions measured as the time of a batch-1 forward truncated
    at each layer over a batch-1 full forward (also by multiply-accumulates, for reference), and
    the batch-1 factor as the per-sample time of batch-1 over batched full forwards."""
    from authors_procedure import authors_procedure, forward_ceiling, truncated_forward, truncation_fractions

    n, k, bs = len(views), views.shape[1], args.batch_size
    sub = list(range(min(args.naive_candidates, n)))
    anchors = images.to(device=device, dtype=torch.float32) / (255.0 if not images.is_floating_point() else 1.0)
    v = views.to(device)
    unit_views, anchor_views = min(10, k), min(5, k)
    with eval_mode(encoder, reference), torch.no_grad():
        authors_procedure(encoder, reference, anchors, v, layers[:1], [0], unit_views, anchor_views)  # warm-up
        t, _, _ = run_timed(lambda: authors_procedure(encoder, reference, anchors, v, layers, sub, unit_views,
                                                      anchor_views), device)
        # batch-1 factor: per-sample cost of a full forward at batch 1 over that of a batched one
        # (per sample, against the batch of bs x K views that (a) and (b) use)
        xb = v[:bs].reshape(-1, *v.shape[2:])
        x = xb[:40]
        named = dict(encoder.named_modules())
        for name in layers:  # warm-up of every truncation point and of both batch sizes
            truncated_forward(encoder, named[name], x[:1])
        encoder(x[:1]), encoder(xb)
        t1, _, _ = run_timed(lambda: [encoder(x[j:j + 1]) for j in range(len(x))], device)
        tb, _, _ = run_timed(lambda: encoder(xb), device)
        tb = tb * len(x) / len(xb)  # the batched forward's time for as many samples as t1
        macs = truncation_fractions(encoder, layers, x[:1])
        # time fractions: a batch-1 forward truncated at each layer over a batch-1 full forward
        fractions = {name: run_timed(lambda name=name: [truncated_forward(encoder, named[name], x[j:j + 1])
                                                        for j in range(len(x))], device)[0] / t1 for name in layers}
    ceiling = forward_ceiling(fractions, views=k, unit_views=unit_views, anchor_views=anchor_views,
                              batch1_factor=t1 / tb)
    t_full = t / len(sub) * n
    speedup = t_full / t_measure
    row = results.add(phase="(c0) authors' procedure", model=label, median_s=t_full, min_s=t_full,
                      views_per_s=None, peak_bytes=None,
                      note=(f"extrapolated from {len(sub)} cand x {len(layers)} layers ({fmt_s(t)}); batch 1, "
                            f"{unit_views}+4x{anchor_views} truncated forwards per candidate and layer"))
    row["ratio"] = (f"c0/b = {speedup:.2f}; forward-count ceiling {ceiling['ceiling']:.2f} "
                    f"({ceiling['procedure_forwards']:.1f} full forwards x batch-1 factor {t1 / tb:.2f} vs "
                    f"{ceiling['pass_forwards']}); {speedup / ceiling['ceiling']:.0%} of the ceiling")
    results.info.setdefault("authors", {})[label] = {"time_fractions": fractions, "mac_fractions": macs, **ceiling, "speedup": speedup,
                                                     "of_ceiling": speedup / ceiling["ceiling"], "timed_s": t,
                                                     "timed_candidates": len(sub), "extrapolated_s": t_full}
    print(f"(c0) authors' procedure: {fmt_s(t)} for {len(sub)} candidates x {len(layers)} layers -> extrapolated "
          f"{fmt_s(t_full)} for {n}; c0/b = {speedup:.2f}; truncation fractions (time) "
          f"{', '.join(f'{f:.2f}' for f in fractions.values())}, (MACs) {', '.join(f'{f:.2f}' for f in macs.values())}; ceiling {ceiling['ceiling']:.2f} = "
          f"{ceiling['procedure_forwards']:.1f} x {t1 / tb:.2f} / {ceiling['pass_forwards']}; "
          f"{speedup / ceiling['ceiling']:.0%} of the ceiling", flush=True)


def _layer_shapes(model: nn.Module, layers: Sequence[str], x: Tensor) -> Dict[str, Tuple[int, ...]]:
    shapes: Dict[str, Tuple[int, ...]] = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:])))
             for n in layers]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return shapes


# ----------------------------------------------------------------------------- (e) view generation
def bench_views(args: argparse.Namespace, device: torch.device, images: Tensor, results: Results) -> None:
    n, k = args.view_candidates, args.views
    print(f"\n=== (e) view generation, {args.image_size}x{args.image_size}, K={k} ===", flush=True)
    cand = images[:n]
    make_views(cand[:4], k, None, 0)  # warm-up
    times: List[float] = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        make_views(cand, k, None, 0)
        times.append(time.perf_counter() - start)
    t_b = statistics.median(times)
    results.add(phase="(e) views: BatchedSimCLRAugment", model="-", median_s=t_b, min_s=min(times),
                views_per_s=n * k / t_b, peak_bytes=None, note=f"make_views, {n}x{k} views, CPU, seeded")
    aug = BatchedSimCLRAugment(args.image_size)
    flat = cand.float().div(255).repeat_interleave(k, 0)
    seeds = torch.arange(flat.shape[0])
    times_raw = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        aug(flat, seeds)
        times_raw.append(time.perf_counter() - start)
    t_raw = statistics.median(times_raw)
    results.add(phase="(e) views: BatchedSimCLRAugment raw", model="-", median_s=t_raw, min_s=min(times_raw),
                views_per_s=n * k / t_raw, peak_bytes=None, note="one (N*K) batch, no seeding/DataLoader")
    print(f"BatchedSimCLRAugment via make_views: {n * k / t_b:,.0f} views/s; raw module on one batch: "
          f"{n * k / t_raw:,.0f} views/s", flush=True)
    if device.type == "cuda":  # measure() makes the views on the model's device
        flat_dev, seeds_dev = flat.to(device), seeds
        aug(flat_dev, seeds_dev)
        times_dev = [run_timed(lambda: aug(flat_dev, seeds_dev), device)[0] for _ in range(args.repeats)]
        t_dev = statistics.median(times_dev)
        results.add(phase="(e) views: BatchedSimCLRAugment on GPU", model="-", median_s=t_dev, min_s=min(times_dev),
                    views_per_s=n * k / t_dev, peak_bytes=None, note="one (N*K) batch on the device")
        print(f"BatchedSimCLRAugment on {device}: {n * k / t_dev:,.0f} views/s", flush=True)
    try:
        from lightly.transforms import SimCLRViewTransform
        from PIL import Image
    except ImportError:
        print("lightly / PIL not installed: skipping the per-image comparison")
        return
    import warnings

    warnings.filterwarnings("ignore", message=".*to_tensor.*")
    view = SimCLRViewTransform(input_size=args.image_size)
    m = min(n, args.lightly_images)
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in cand[:m]]
    view(pil[0])
    start = time.perf_counter()
    for img in pil:
        for _ in range(k):
            view(img)
    t_l = time.perf_counter() - start
    results.add(phase="(e) views: lightly SimCLRViewTransform", model="-", median_s=t_l, min_s=t_l,
                views_per_s=m * k / t_l, peak_bytes=None, note=f"per PIL image, {m}x{k} views, unseeded")
    seeded = SeededViews(cand[:m], views=k, transform=view, seed=0)
    start = time.perf_counter()
    for i in range(m):
        seeded[i]
    t_s = time.perf_counter() - start
    results.add(phase="(e) views: lightly via SeededViews", model="-", median_s=t_s, min_s=t_s,
                views_per_s=m * k / t_s, peak_bytes=None, note="per uint8 tensor, seeded per view")
    print(f"lightly SimCLRViewTransform per image (PIL): {m * k / t_l:,.0f} views/s; through SeededViews "
          f"(seeded per view, uint8 tensors): {m * k / t_s:,.0f} views/s; batched / lightly = "
          f"{(n * k / t_b) / (m * k / t_l):.1f}x", flush=True)
    results.info["views_per_s"] = {"batched_make_views": n * k / t_b, "batched_raw": n * k / t_raw,
                                   "lightly": m * k / t_l, "lightly_seeded": m * k / t_s}


# ----------------------------------------------------------------------------- (d) monitor share
def bench_training(args: argparse.Namespace, device: torch.device, results: Results) -> None:
    import pytorch_lightning as pl
    from fit_timing import EpochTimer, TimedMonitor  # the timers need Lightning: loaded for (d) only

    from lightning_memloc import CoTrainedPair, cotraining_loader
    from lightning_memloc.data import split_candidates
    from lightning_memloc.measurement import run_pass
    from lightning_memloc.models.ssl import SimCLR

    n_img, n_cand, k, w = args.train_images, args.train_candidates, args.train_views, args.train_width
    images, source = load_images(args.data, n_img, args.image_size)
    n_ind = n_cand
    split = split_candidates(n_img, shared=n_img - n_cand - n_ind, candidates=n_cand, independent=n_ind, seed=0)
    print(f"\n=== (d) monitor share: co-trained SimCLR, ResNet9(width={w}), {n_img} images ({source}), "
          f"{len(split.shared) + n_cand} per model, batch {args.train_batch_size}, monitor N={n_cand} K={k} "
          f"every epoch, {args.train_epochs} epochs each ===", flush=True)

    def fit(with_monitor: bool) -> Tuple[float, EpochTimer, Optional[TimedMonitor], CoTrainedPair]:
        pl.seed_everything(0, verbose=False)
        make = lambda: SimCLR(ResNet9(width=w), feature_dim=8 * w, hidden_dim=args.train_head,
                              out_dim=min(128, args.train_head), augment=BatchedSimCLRAugment(args.image_size))
        model = CoTrainedPair(make(), make(), lr=0.06, warmup_epochs=1, max_epochs=args.train_epochs)
        timer = EpochTimer(device)
        callbacks: List[Any] = []
        monitor = None
        if with_monitor:
            monitor = TimedMonitor(images[split.candidates], every_n_epochs=1, views=k, encoder="encoder.backbone",
                                   reference="reference.backbone", batch_size=args.batch_size, progress=False,
                                   grid_size=0, log_histograms=False, device=device)
            callbacks.append(monitor)
        callbacks.append(timer)  # after the monitor: its epoch time includes the measurement
        trainer = pl.Trainer(max_epochs=args.train_epochs, accelerator=device.type, devices=1, callbacks=callbacks,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0)
        loader = cotraining_loader(images, split, batch_size=args.train_batch_size)
        sync(device)
        start = time.perf_counter()
        trainer.fit(model, loader)
        sync(device)
        return time.perf_counter() - start, timer, monitor, model

    total_without, timer_without, _, _ = fit(False)
    print(f"without monitor: fit {fmt_s(total_without)}, epochs {', '.join(fmt_s(t) for t in timer_without.times)}",
          flush=True)
    total_with, timer_with, monitor, model = fit(True)
    assert monitor is not None
    print(f"with monitor:    fit {fmt_s(total_with)}, epochs {', '.join(fmt_s(t) for t in timer_with.times)}, "
          f"monitor passes {', '.join(fmt_s(t) for t in monitor.pass_times)}", flush=True)
    share = sum(monitor.pass_times) / total_with
    e_without, e_with = statistics.median(timer_without.times), statistics.median(timer_with.times)
    p = statistics.median(monitor.pass_times)
    share_epochs = (e_with - e_without) / e_with

    # The same pass with the views generated once (precomputed views tensor given to the monitor).
    encoder, reference = model.encoder.backbone, model.reference.backbone
    pre_views = make_views(images[split.candidates], k, None, 0)
    view_set = SeededViews(pre_views, views=None)
    specs, num_units = probe_layers(encoder, reference, "auto", view_set.example_batch(device))
    times_pre = []
    for _ in range(max(1, min(2, args.repeats))):
        meter = MemorizationMeter(specs, num_units, n_cand, reference=True, labels=False).to(device)
        t, _, _ = run_timed(lambda: run_pass(encoder, reference, view_set, specs, meter, batch_size=args.batch_size),
                            device)
        meter.compute_report(torch.arange(n_cand))
        times_pre.append(t)
    p_pre = statistics.median(times_pre)
    # The bare forward of the same N*K views through both encoders: the floor of any pass.
    times_bare = [run_timed(lambda: bare_forward(encoder, reference, pre_views, args.batch_size, device, False),
                            device)[0] for _ in range(max(1, min(2, args.repeats)))]
    p_bare = statistics.median(times_bare)
    share_pre = p_pre / (e_without + p_pre)
    forward_floor = 2 * n_cand * k / (2 * (len(split.shared) + n_cand) * 2 * 3)
    # Measuring every n epochs: share = p / (n * epoch + p); the smallest n for <= 5 %.
    every_n_5pct = max(1, math.ceil(p * 0.95 / (0.05 * e_without)))
    results.add(phase="(d) epoch without monitor", model=f"resnet9(width={w})", median_s=e_without,
                min_s=min(timer_without.times), views_per_s=None, peak_bytes=None, note=f"{args.train_epochs} epochs")
    results.add(phase="(d) epoch with monitor", model=f"resnet9(width={w})", median_s=e_with,
                min_s=min(timer_with.times), views_per_s=None, peak_bytes=None,
                note="monitor every epoch", ratio=f"epoch-time share {share_epochs:.1%}")
    results.add(phase="(d) monitor pass", model=f"resnet9(width={w})", median_s=p, min_s=min(monitor.pass_times),
                views_per_s=2 * n_cand * k / p, peak_bytes=None, note=f"N={n_cand}, K={k}, views made per pass",
                ratio=f"monitor/total = {share:.1%}")
    results.add(phase="(d) monitor pass, precomputed views", model=f"resnet9(width={w})", median_s=p_pre,
                min_s=min(times_pre), views_per_s=2 * n_cand * k / p_pre, peak_bytes=None,
                note="run_pass on make_views output", ratio=f"share {share_pre:.1%}")
    results.add(phase="(d) bare forward of the pass's views", model=f"resnet9(width={w})", median_s=p_bare,
                min_s=min(times_bare), views_per_s=2 * n_cand * k / p_bare, peak_bytes=None,
                note="f+g, no hooks", ratio=f"share {p_bare / (e_without + p_bare):.1%}")
    results.info["monitor"] = {"fit_without_s": total_without, "fit_with_s": total_with,
                               "epochs_without_s": timer_without.times, "epochs_with_s": timer_with.times,
                               "passes_s": monitor.pass_times, "share_monitor_over_total": share,
                               "share_from_epoch_times": share_epochs, "pass_precomputed_views_s": times_pre,
                               "share_precomputed_views": share_pre, "bare_forward_of_pass_s": times_bare,
                               "forward_count_ratio": forward_floor, "every_n_epochs_for_5pct": every_n_5pct}
    print(f"monitor share: sum(monitor passes) / fit = {share:.1%}; (epoch with - without) / epoch with = "
          f"{share_epochs:.1%}; with precomputed views a pass takes {fmt_s(p_pre)} -> {share_pre:.1%}; the bare "
          f"forward of its views {fmt_s(p_bare)} -> {p_bare / (e_without + p_bare):.1%}. "
          f"View forwards of a pass / training view forward-equivalents per epoch (fwd+bwd = 3 fwd) = "
          f"{forward_floor:.1%}; every_n_epochs >= {every_n_5pct} keeps the monitor <= 5 %", flush=True)


# ----------------------------------------------------------------------------- main
def machine_info(device: torch.device) -> Dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "nproc": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small smoke run (seconds): tiny sizes everywhere")
    p.add_argument("--models", default="resnet9,resnet18", help="comma-separated: resnet9, resnet18")
    p.add_argument("--candidates", type=int, default=None, help="N for (a)-(c) [cpu 64, cuda 1000]")
    p.add_argument("--views", type=int, default=10, help="K views per candidate")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32, help="candidates per forward step (x K views)")
    p.add_argument("--resnet9-width", type=int, default=64, help="ResNet9 width for (a)-(c) (paper: 64)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats after a warm-up (median reported)")
    p.add_argument("--naive-candidates", type=int, default=None,
                   help="candidates timed in (c), then extrapolated [cpu 2, cuda 20]")
    p.add_argument("--naive-layers", type=int, default=0, help="layers timed in (c) (0: all)")
    p.add_argument("--accuracy-candidates", type=int, default=None,
                   help="subset for the float64 check [cpu 6, cuda 32]")
    p.add_argument("--channels-last", action="store_true", help="models and inputs in channels_last (a, b)")
    p.add_argument("--view-candidates", type=int, default=None, help="images for (e) [cpu 64, cuda 1000]")
    p.add_argument("--lightly-images", type=int, default=32, help="images for the lightly per-image timing")
    p.add_argument("--data", default="auto",
                   help="npz with x uint8 (N,H,W,3) for (d)/(e); 'auto': ../shared/data/cifar10-train-10k.npz if "
                        "present, else random; 'random'")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: models, views, training")
    p.add_argument("--train-images", type=int, default=10_000)
    p.add_argument("--train-candidates", type=int, default=1000)
    p.add_argument("--train-views", type=int, default=10)
    p.add_argument("--train-width", type=int, default=8)
    p.add_argument("--train-head", type=int, default=128, help="projection head hidden size")
    p.add_argument("--train-epochs", type=int, default=2, help="epochs with and without the monitor")
    p.add_argument("--train-batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", default=None, help="write all figures to this JSON file")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if args.quick:
        defaults = dict(candidates=8, views=4, naive_candidates=2, accuracy_candidates=4, view_candidates=16,
                        resnet9_width=8, repeats=2, train_images=400, train_candidates=40, train_views=4,
                        train_epochs=1, train_batch_size=64, lightly_images=4, batch_size=4, train_head=32)
        for key, value in defaults.items():
            if getattr(args, key) == p.get_default(key) or getattr(args, key) is None:
                setattr(args, key, value)
    if args.candidates is None:
        args.candidates = 1000 if cuda else 64
    if args.naive_candidates is None:
        args.naive_candidates = 20 if cuda else 2
    if args.accuracy_candidates is None:
        args.accuracy_candidates = 32 if cuda else 6
    if args.view_candidates is None:
        args.view_candidates = 1000 if cuda else 64
    if args.candidates < 2:
        p.error("--candidates must be >= 2")
    return args


def print_table(results: Results) -> None:
    print("\n=== summary ===")
    print(f"| {'phase':38s} | {'model':24s} | {'median':>10s} | {'min':>10s} | {'views/s':>10s} "
          f"| {'peak mem':>11s} | notes")
    print("|" + "|".join("-" * w for w in (40, 26, 12, 12, 12, 13, 6)))
    for row in results.rows:
        vps = f"{row['views_per_s']:,.0f}" if row.get("views_per_s") else "-"
        peak = mib(row["peak_bytes"]) if row.get("peak_bytes") is not None else "-"
        cpu = f"process CPU {row['cpu_s']:.2f} s" if row.get("cpu_s") is not None else None
        note = "; ".join(x for x in (row.get("ratio"), cpu, row.get("note")) if x)
        print(f"| {row['phase']:38s} | {row['model']:24s} | {fmt_s(row['median_s']):>10s} | {fmt_s(row['min_s']):>10s} "
              f"| {vps:>10s} | {peak:>11s} | {note}")


def main(argv: Optional[Sequence[str]] = None) -> Results:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    results = Results()
    results.info["machine"] = machine_info(device)
    results.info["args"] = vars(args)
    print("machine:", json.dumps(results.info["machine"]))
    print("args:", json.dumps(vars(args)))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    start = time.perf_counter()
    if "models" not in skip:
        images, source = load_images(args.data, args.candidates, args.image_size)
        print(f"candidates: {source}")
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            bench_model(name, args, device, images, results)
    if "views" not in skip:
        images, _ = load_images(args.data, args.view_candidates, args.image_size)
        bench_views(args, device, images, results)
    if "training" not in skip:
        bench_training(args, device, results)
    results.info["wall_s"] = time.perf_counter() - start
    try:
        results.info["machine"]["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    print_table(results)
    print(f"\ntotal wall time {fmt_s(results.info['wall_s'])}; load average at start/end "
          f"{results.info['machine'].get('loadavg_start')} / {results.info['machine'].get('loadavg_end')}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": results.rows, **results.info}, indent=1, default=str))
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
