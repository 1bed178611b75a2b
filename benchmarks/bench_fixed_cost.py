"""The fixed cost of a ``measure()`` call, step by step: what a call pays besides its forwards.

For a model pair (torchvision's resnet18 or the paper's ResNet9, random weights) and N × K
precomputed views, each step ``measure()`` takes before and after its pass is timed alone
(process CPU time, median of ``--repeats``, after a warm-up): the checks, the probe (cached, as
on a second call, and uncached), eval mode, the meter, the pass's per-batch bookkeeping without
its forwards (hooks registered, reductions replayed), the report without and with the evidence.
Last, a whole second ``measure(bootstrap=0)`` call with its forwards replayed. Wang et al.,
*Localizing Memorization in SSL Vision Encoders*, NeurIPS 2024. Not a test::

    python benchmarks/bench_fixed_cost.py --model resnet18 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import torch

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench_measure import build_model, load_images  # noqa: E402
from bench_overhead import memoised_forwards  # noqa: E402
from lightning_memloc import measure  # noqa: E402
from lightning_memloc.checks import check_reference  # noqa: E402
from lightning_memloc.measurement import check_models, run_pass  # noqa: E402
from lightning_memloc.states.meter import MemorizationMeter  # noqa: E402
from lightning_memloc.options import MeasureOptions  # noqa: E402
from lightning_memloc.taps.probe import clear_probe_cache, eval_mode, probe_key, probe_layers  # noqa: E402
from lightning_memloc.views.seeded import SeededViews, make_views  # noqa: E402


def cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18", choices=["resnet18", "resnet9"])
    p.add_argument("--candidates", type=int, default=64)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    f, g = build_model(args.model, 64, cpu, seed=1), build_model(args.model, 64, cpu, seed=2)
    n, bs = args.candidates, args.batch_size
    images, _ = load_images("random", n, 32)
    views = make_views(images, args.views, None, 0)
    view_set = SeededViews(views, views=None)
    example = view_set.example_batch(cpu)
    specs, units = probe_layers(f, g, "auto", example)
    options = MeasureOptions(views=args.views, batch_size=bs, with_reference=True, top_k=min(50, n))

    def meter() -> MemorizationMeter:
        return MemorizationMeter(specs, units, n, reference=True, labels=False, view_shape=view_set.view_shape,
                                 **options.meter_kwargs())

    def uncached_probe() -> None:
        clear_probe_cache()
        probe_layers(f, g, "auto", example)

    def eval_modes() -> None:
        with eval_mode(f, g):
            pass

    full = meter()
    with memoised_forwards():
        run_pass(f, g, view_set, specs, full, batch_size=bs)
    ids = torch.arange(n)
    steps: Dict[str, Callable[[], object]] = {
        "check_models (types, weights)": lambda: check_models(f, g),
        "check_reference (shared layers, a copy)": lambda: check_reference(f, g),
        "probe key (structure digests, shapes)": lambda: probe_key(f, g, "auto", example),
        "probe, cached (a second call)": lambda: probe_layers(f, g, "auto", example),
        "probe, uncached (3 forwards on 2 rows)": uncached_probe,
        "eval mode in and out": eval_modes,
        "meter (torchmetrics states)": meter,
        "compute_report, bootstrap=0": lambda: full.compute_report(ids, {}, evidence=options.replace(bootstrap=0).evidence),
        "compute_report, bootstrap=1000": lambda: full.compute_report(ids, {}, evidence=options.evidence),
    }
    with memoised_forwards():
        steps["pass without forwards (hooks, checks, updates)"] = lambda: run_pass(f, g, view_set, specs, meter(),
                                                                                    batch_size=bs)
        steps["second measure(bootstrap=0), forwards replayed"] = lambda: measure(
            f, views, reference=g, batch_size=bs, top_k=min(50, n), bootstrap=0)
        print(f"{args.model}, N={n}, K={args.views}, batches of {bs}, {torch.get_num_threads()} thread(s); "
              "CPU ms, median of repeats")
        print("| step | CPU ms |\n|---|---:|")
        for name, fn in steps.items():
            print(f"| {name} | {cpu_ms(fn, args.repeats):.2f} |", flush=True)


if __name__ == "__main__":
    main()
