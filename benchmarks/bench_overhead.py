"""Overhead of ``measure()`` over the bare forward, split into its parts; the float32 vs float64 Gram of the hooks.

For each model (the paper's ResNet9 width 64, torchvision's resnet18; auto layers), on the same
precomputed views (N candidates × K views, steps of ``--batch-size`` candidates, as
``bench_measure.py`` (a)/(b)), in one run with the repeats interleaved (a, b, b0, p, u, a, b, ...)
so that load from other jobs hits every row alike:

- ``(a)``  the bare forward of the views through f and g (no hooks, eval, ``no_grad``);
- ``(b)``  ``measure()`` with its defaults (bootstrap = 1000: the report's evidence intervals);
- ``(b0)`` ``measure(bootstrap=0)``: the same without resampling;
- ``(p)``  the pass alone: :func:`~lightning_memloc.measurement.run_pass` with the hook reductions
  of :mod:`lightning_memloc.reductions.hook` (layers probed once, outside the timing; no report);
- ``(p64)`` the same pass with the float64 Gram in the hooks (the path before issue 27);
- ``(u)``  the same pass with the former, unfused per-layer reductions
  (:func:`cost_split.unfused_forward_reduce`).

Wall time and process CPU time (``time.process_time``) are both given: on a machine shared with
other jobs, wall time also counts time spent descheduled. (b)/(a) is issue 19's target (≤ 1.10
for resnet18, ≤ 1.05 for ResNet9); (p)/(a) is the overhead of the pass (hook reductions, checks,
metric updates), (b) − (b0) the cost of the evidence, (b0) − (p) the fixed cost of a call (probe,
checks, report). Then, per layer, the median time of each hook reduction on one batch
(:func:`cost_split.reduction_split`): unit means, the float64 Gram (casts + ``baddbmm``), the
finishing per layer or stacked, against the bare forward; and the pass's cost split
(:func:`cost_split.cost_split`: views, forwards of f and g, hook reductions, checks, metric
updates, compute). Last, one line per model with the ratios over (a): median of the per-repeat
ratios, min over min, and process CPU time. Wang et al., *Localizing Memorization in SSL Vision Encoders*, NeurIPS 2024. Not a test; ``python benchmarks/bench_overhead.py --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench_measure import bare_forward, build_model, load_images  # noqa: E402
from cost_split import cost_split, format_split, reduction_split, unfused_forward_reduce  # noqa: E402
from lightning_memloc import measure  # noqa: E402
from lightning_memloc.measurement import run_pass  # noqa: E402
from lightning_memloc.taps.probe import probe_layers  # noqa: E402
from lightning_memloc.states.meter import MemorizationMeter  # noqa: E402
from lightning_memloc.views.seeded import SeededViews, make_views  # noqa: E402
from lightning_memloc.taps.probe import clear_probe_cache  # noqa: E402
from lightning_memloc.reductions.hook import sq_distances_from_gram, view_gram  # noqa: E402

ROWS = ("(a) bare f+g", "(b) measure()", "(b0) measure(bootstrap=0)", "(p) pass, fused", "(u) pass, unfused",
        "(p64) pass, float64 Gram")


@contextmanager
def float64_gram() -> Iterator[None]:
    """Run the hooks with the float64 Gram on CPU too (the path before issue 27)."""
    module = sys.modules["lightning_memloc.reductions.hook"]
    centred = module.view_sq_distances
    module.view_sq_distances = lambda reps: sq_distances_from_gram(view_gram(reps))
    try:
        yield
    finally:
        module.view_sq_distances = centred


@contextmanager
def unfused_reductions() -> Iterator[None]:
    """Run :func:`run_pass` with the former per-layer reductions (the name ``measure`` module uses)."""
    module = sys.modules["lightning_memloc.measurement"]
    fused = module.forward_reduce
    module.forward_reduce = unfused_forward_reduce
    try:
        yield
    finally:
        module.forward_reduce = fused


@contextmanager
def memoised_forwards() -> Iterator[None]:
    """``run_pass`` with each model's first reductions replayed: no forward, only a call's own bookkeeping."""
    module = sys.modules["lightning_memloc.measurement"]
    real = module.forward_reduce
    memo: Dict[Any, Any] = {}

    def replay(model: Any, inputs: torch.Tensor, names: Sequence[str], b: int, k: int, **kwargs: Any) -> Any:
        key = (id(model), kwargs["units"], b)
        if key not in memo:
            memo[key] = real(model, inputs, names, b, k, **kwargs)
        return memo[key]

    module.forward_reduce = replay
    try:
        yield
    finally:
        module.forward_reduce = real


def fixed_costs(call: Callable[[], Any], repeats: int) -> Dict[str, float]:
    """CPU seconds of a ``measure()`` call without its forwards (min over repeats): probe cached, and probed anew."""
    out: Dict[str, List[float]] = {"probe cached": [], "probe each call": []}
    with memoised_forwards():
        call()
        for _ in range(max(3, repeats)):
            for key in out:
                if key == "probe each call":
                    clear_probe_cache()
                start = time.process_time()
                call()
                out[key].append(time.process_time() - start)
    return {key: min(values) for key, values in out.items()}


def bench_model(name: str, args: argparse.Namespace, images: torch.Tensor) -> Dict[str, Any]:
    cpu = torch.device("cpu")
    f = build_model(name, args.resnet9_width, cpu, seed=1)
    g = build_model(name, args.resnet9_width, cpu, seed=2)
    n, k, bs = args.candidates, args.views, args.batch_size
    views = make_views(images[:n], k, None, 0)
    view_set = SeededViews(views, views=None)
    specs, num_units = probe_layers(f, g, "auto", view_set.example_batch(cpu))
    names = [s.name for s in specs]

    def run_pass_only() -> None:
        meter = MemorizationMeter(specs, num_units, n, reference=True, labels=False)
        run_pass(f, g, view_set, specs, meter, batch_size=bs)

    def run_unfused() -> None:
        with unfused_reductions():
            run_pass_only()

    def run_float64() -> None:
        with float64_gram():
            run_pass_only()

    fns: Dict[str, Callable[[], Any]] = {
        ROWS[0]: lambda: bare_forward(f, g, views, bs, cpu, False),
        ROWS[1]: lambda: measure(f, views, reference=g, batch_size=bs, top_k=min(50, n)),
        ROWS[2]: lambda: measure(f, views, reference=g, batch_size=bs, top_k=min(50, n), bootstrap=0),
        ROWS[3]: run_pass_only,
        ROWS[4]: run_unfused,
        ROWS[5]: run_float64,
    }
    for fn in fns.values():  # warm-up: kernel selection, allocator
        fn()
    times: Dict[str, List[float]] = {row: [] for row in fns}
    cpu_times: Dict[str, List[float]] = {row: [] for row in fns}
    for r in range(args.repeats):
        for row, fn in fns.items():
            start, cpu0 = time.perf_counter(), time.process_time()
            fn()
            times[row].append(time.perf_counter() - start)
            cpu_times[row].append(time.process_time() - cpu0)
        print(f"  repeat {r + 1}/{args.repeats}: " + ", ".join(f"{row.split()[0]} {t[-1]:.3f} s"
                                                              for row, t in times.items()), flush=True)
    a, a_cpu = times[ROWS[0]], cpu_times[ROWS[0]]
    rows = {}
    for row, values in times.items():
        ratios = sorted(v / x for v, x in zip(values, a))
        rows[row] = {"median_s": statistics.median(values), "min_s": min(values),
                     "over_a": statistics.median(values) / statistics.median(a), "per_repeat_over_a": ratios,
                     "median_ratio": statistics.median(ratios), "min_over_min": min(values) / min(a),
                     "cpu_min_over_min": min(cpu_times[row]) / min(a_cpu),
                     "cpu_s": statistics.median(cpu_times[row]),
                     "cpu_over_a": statistics.median(cpu_times[row]) / statistics.median(a_cpu)}
    x = views[:bs].reshape(-1, *views.shape[2:])
    split = reduction_split(f, x, names, min(bs, n), k, repeats=args.repeats)
    parts = [cost_split(f, g, view_set, specs, num_units, bs, cpu) for _ in range(args.repeats)]
    pass_split = {key: statistics.median(p[key] for p in parts) for key in parts[0]}
    fixed = fixed_costs(lambda: measure(f, views, reference=g, batch_size=bs, top_k=min(50, n), bootstrap=0),
                        args.repeats)
    return {"model": name, "layers": names, "rows": rows, "split": split, "pass_split": pass_split, "fixed": fixed}


def print_model(result: Dict[str, Any]) -> None:
    print(f"\n{result['model']}: {len(result['layers'])} layers")
    print(f"| {'row':28s} | {'median':>9s} | {'min':>9s} | {'/(a)':>6s} | {'CPU s':>8s} | {'CPU /(a)':>8s} | per repeat /(a)")
    for row, r in result["rows"].items():
        print(f"| {row:28s} | {r['median_s']:8.3f}s | {r['min_s']:8.3f}s | {r['over_a']:6.3f} | {r['cpu_s']:7.3f}s | "
              f"{r['cpu_over_a']:8.3f} | " + ", ".join(f"{x:.3f}" for x in r["per_repeat_over_a"]))
    rows = result["rows"]
    b, b0, p = (rows[r]["median_s"] for r in (ROWS[1], ROWS[2], ROWS[3]))
    print(f"evidence (b - b0) {b - b0:.3f} s, fixed cost of a call (b0 - p) {b0 - p:.3f} s, "
          f"hook reductions (p - a) {p - rows[ROWS[0]]['median_s']:.3f} s; "
          f"fused / unfused pass {p / rows[ROWS[4]]['median_s']:.3f}; "
          f"float32 / float64 Gram pass {p / rows[ROWS[5]]['median_s']:.3f}")
    print("where the pass's time goes (cost_split.py, medians over the repeats): " + format_split(result["pass_split"]))
    fixed = result["fixed"]
    print(f"fixed cost of a measure(bootstrap=0) call without its forwards (CPU, min): {fixed['probe cached'] * 1e3:.1f} ms "
          f"with the probe cached (a second call), {fixed['probe each call'] * 1e3:.1f} ms probing anew")
    split = result["split"]
    forward = split["all layers"]["forward"]
    print(f"hook reductions of f on one batch (bare forward of f {forward * 1e3:.1f} ms), ms:")
    print(f"| {'layer':14s} | {'units':>7s} | {'gram':>7s} | {'finish':>7s} | {'unfused':>7s} | {'gram32':>7s}")
    total = {"units": 0.0, "gram": 0.0, "finish": 0.0, "unfused": 0.0, "gram32": 0.0}
    for layer in result["layers"]:
        parts = split[layer]
        for key in total:
            total[key] += parts[key]
        print(f"| {layer:14s} | " + " | ".join(f"{parts[key] * 1e3:7.2f}" for key in total))
    print(f"| {'sum':14s} | " + " | ".join(f"{total[key] * 1e3:7.2f}" for key in total))
    fused = total["units"] + total["gram"] + split["all layers"]["finish stacked"]
    print(f"fused = units + gram + one stacked finish ({split['all layers']['finish stacked'] * 1e3:.2f} ms) = "
          f"{fused * 1e3:.2f} ms = {fused / forward:.1%} of f's forward; unfused {total['unfused'] * 1e3:.2f} ms = "
          f"{total['unfused'] / forward:.1%}; the float64 Gram alone {total['gram'] / forward:.1%}, the float32 "
          f"centred Gram with its check {total['gram32'] / forward:.1%}", flush=True)


def ratio_line(result: Dict[str, Any]) -> str:
    """``model: (b)/(a) = median of per-repeat ratios, min/min, CPU min/min`` and the same for (p)."""
    parts = []
    for row in (ROWS[1], ROWS[2], ROWS[3], ROWS[5]):
        r = result["rows"][row]
        parts.append(f"{row.split()[0]}/(a) {r['median_ratio']:.3f} (min/min {r['min_over_min']:.3f}, "
                     f"CPU {r['cpu_min_over_min']:.3f})")
    return f"RATIO {result['model']}: " + "; ".join(parts)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default="resnet9,resnet18", help="comma-separated: resnet9, resnet18")
    p.add_argument("--candidates", type=int, default=64, help="N")
    p.add_argument("--views", type=int, default=10, help="K")
    p.add_argument("--batch-size", type=int, default=32, help="candidates per step")
    p.add_argument("--resnet9-width", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed repeats after a warm-up")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--data", default="random", help="'random' uint8 images (timings do not depend on pixels), 'auto' or an npz")
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = p.parse_args(argv)
    if args.candidates < 2:
        p.error("--candidates must be >= 2")
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out: Dict[str, Any] = {"args": vars(args), "threads": torch.get_num_threads(), "loadavg_start": os.getloadavg()}
    print(f"args: {json.dumps(vars(args))}; torch threads {torch.get_num_threads()}; load average {os.getloadavg()}")
    images, source = load_images(args.data, args.candidates, 32)
    print(f"candidates: {source}")
    out["models"] = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        print(f"\n=== {name}: N={args.candidates} x K={args.views}, steps of {args.batch_size} candidates; "
              f"load average {os.getloadavg()} ===", flush=True)
        result = bench_model(name, args, images)
        result["loadavg_end"] = os.getloadavg()
        print_model(result)
        out["models"].append(result)
    out["loadavg_end"] = os.getloadavg()
    print(f"\nload average at start / end: {out['loadavg_start']} / {out['loadavg_end']}; torch threads "
          f"{torch.get_num_threads()}; repeats {args.repeats}")
    for result in out["models"]:
        print(ratio_line(result))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
