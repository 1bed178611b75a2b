"""Benchmark of the frozen-reference cache: a monitor pass with a cached reference vs f + g.

One run, one process, the same seeded views (made per pass, as the monitor does), repeats
interleaved (uncached, cached, f only) so that load from other jobs hits all alike:

- ``f + g``: today's pass, :func:`~lightning_memloc.measurement.run_pass` with the reference run;
- ``cached``: the same pass with a :class:`~lightning_memloc.ReferenceCache` filled by a
  first pass (g's weights hashed every pass, every batch's input hashed and looked up);
- ``f only``: the pass without a reference (no alignment under f either): a lower bound.

Also prints where the time of the f + g pass goes (``cost_split.py``: views, forwards of f
and g, hook reductions, checks, metric updates, compute) and checks that the cached pass gives the same reports as the uncached one (exactly).
Target of issue 19: cached / (f + g) <= 0.55. Run ``python benchmarks/bench_cache.py --help``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_measure import build_model, load_images  # noqa: E402
from cost_split import cost_split, format_split  # noqa: E402
from lightning_memloc import ReferenceCache  # noqa: E402
from lightning_memloc.measurement import run_pass  # noqa: E402
from lightning_memloc.taps.probe import probe_layers  # noqa: E402
from lightning_memloc.states.meter import MemorizationMeter  # noqa: E402
from lightning_memloc.views.seeded import SeededViews  # noqa: E402


def one_pass(f, g, views, specs, num_units, batch_size, cache=None) -> Dict[str, Any]:
    meter = MemorizationMeter(specs, num_units, len(views), reference=g is not None, labels=False)
    start = time.perf_counter()
    run_pass(f, g, views, specs, meter, batch_size=batch_size, reference_cache=cache)
    elapsed = time.perf_counter() - start
    report = meter.compute_report(torch.arange(len(views)), {}, evidence=None)
    return {"time": elapsed, "report": json.dumps(report.to_dict(), sort_keys=True)}


def bench(width: int, n: int, views_k: int, batch_size: int, repeats: int, data: str) -> Dict[str, Any]:
    torch.manual_seed(0)
    f, g = build_model("resnet9", width, torch.device("cpu"), 0), build_model("resnet9", width, torch.device("cpu"), 1)
    images, source = load_images(data, n, 32)
    views = SeededViews(images, views=views_k, seed=0)
    specs, num_units = probe_layers(f, g, "auto", views.example_batch(torch.device("cpu")))
    cache = ReferenceCache()
    fill = one_pass(f, g, views, specs, num_units, batch_size, cache)  # warm-up and cache fill
    times: Dict[str, List[float]] = {"f + g": [], "cached": [], "f only": []}
    same = True
    for _ in range(repeats):
        plain = one_pass(f, g, views, specs, num_units, batch_size)
        cached = one_pass(f, g, views, specs, num_units, batch_size, cache)
        alone = one_pass(f, None, views, specs, num_units, batch_size)
        same &= plain["report"] == cached["report"] == fill["report"]
        for key, value in (("f + g", plain), ("cached", cached), ("f only", alone)):
            times[key].append(value["time"])
    split = cost_split(f, g, views, specs, num_units, batch_size, torch.device("cpu"))  # where f + g's time goes
    ratios = [c / p for c, p in zip(times["cached"], times["f + g"])]
    return {"width": width, "candidates": n, "views": views_k, "batch_size": batch_size, "data": source,
            "layers": [s.name for s in specs], "fill_pass_s": fill["time"], "times_s": times,
            "median_s": {k: statistics.median(v) for k, v in times.items()},
            "cached_over_fg": ratios, "cached_over_fg_median": statistics.median(ratios),
            "f_only_over_fg_median": statistics.median(a / p for a, p in zip(times["f only"], times["f + g"])),
            "cost_split_s": split, "hits": cache.hits, "misses": cache.misses, "identical_reports": same}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="8:1000:256,64:64:32",
                   help="comma-separated width:candidates:batch_size (ResNet9) [monitor's (d) setting, paper's width]")
    p.add_argument("--views", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default="auto", help="npz path, 'auto' (../shared/data/...) or 'random'")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for config in args.configs.split(","):
        width, n, batch = (int(v) for v in config.split(":"))
        row = bench(width, n, args.views, batch, args.repeats, args.data)
        rows.append(row)
        med = row["median_s"]
        print(f"ResNet9 width {width}, N={n}, K={args.views}, batch {batch}, {args.threads} thread(s): "
              f"f+g {med['f + g']:.3f} s, cached {med['cached']:.3f} s, f only {med['f only']:.3f} s; "
              f"cached/(f+g) = {row['cached_over_fg_median']:.3f} (per repeat "
              f"{', '.join(f'{r:.3f}' for r in row['cached_over_fg'])}); f only/(f+g) = "
              f"{row['f_only_over_fg_median']:.3f}; fill pass {row['fill_pass_s']:.3f} s; "
              f"identical reports: {row['identical_reports']}", flush=True)
        print(f"  cost split of the f + g pass: {format_split(row['cost_split_s'])}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
