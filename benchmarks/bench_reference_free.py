"""Cost of the reference-free evidence: a pass of f alone with unseen images against today's f + g pass.

One run, one process, the same seeded views of N candidates followed by M unseen images, repeats
interleaved so that load from other jobs hits every variant alike:

- ``f + g``: :func:`~lightning_memloc.measurement.run_pass` with the reference (LayerMem, C − unseen);
- ``f only, align``: no reference, the encoder's own alignments kept for ``align_gap``;
- ``f only``: no reference, no alignment (UnitMem and its membership test only: what such a pass
  cost before the reference-free evidence, and still costs without an unseen set).

Wall time (``perf_counter``) and process CPU time per pass, medians, and the ratios within each
repeat; then the time of the ``align_gap`` statistics alone (``bootstrap=1000``) after the pass.
Run ``python benchmarks/bench_reference_free.py --help``.
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
from lightning_memloc.report.layer_evidence import reference_free_evidence  # noqa: E402
from lightning_memloc.measurement import run_pass  # noqa: E402
from lightning_memloc.taps.probe import probe_layers  # noqa: E402
from lightning_memloc.states.meter import MemorizationMeter  # noqa: E402
from lightning_memloc.views.seeded import SeededViews  # noqa: E402

VARIANTS = ("f + g", "f only, align", "f only")


def one_pass(variant: str, f, g, views, specs, num_units, n: int, m: int, batch_size: int) -> Dict[str, Any]:
    meter = MemorizationMeter(specs, num_units, n, reference=variant == "f + g", labels=False, groups={"unseen": m},
                              alignment=variant != "f only")
    wall, cpu = time.perf_counter(), time.process_time()
    run_pass(f, g if variant == "f + g" else None, views, specs, meter, batch_size=batch_size)
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "meter": meter}


def bench(width: int, n: int, m: int, views_k: int, batch_size: int, repeats: int, data: str) -> Dict[str, Any]:
    torch.manual_seed(0)
    f, g = build_model("resnet9", width, torch.device("cpu"), 0), build_model("resnet9", width, torch.device("cpu"), 1)
    images, source = load_images(data, n + m, 32)
    views = SeededViews(images[:n], views=views_k, seed=0).pooled([images[n:]])
    specs, num_units = probe_layers(f, g, "auto", views.example_batch(torch.device("cpu")))
    one_pass("f + g", f, g, views, specs, num_units, n, m, batch_size)  # warm-up
    times: Dict[str, Dict[str, List[float]]] = {v: {"wall": [], "cpu": []} for v in VARIANTS}
    last: Dict[str, Any] = {}
    for _ in range(repeats):
        for variant in VARIANTS:
            out = one_pass(variant, f, g, views, specs, num_units, n, m, batch_size)
            times[variant]["wall"].append(out["wall"])
            times[variant]["cpu"].append(out["cpu"])
            last[variant] = out["meter"]
    meter = last["f only, align"]
    names = [s.name for s in specs]
    start = time.perf_counter()
    reference_free_evidence(names, meter.encoder_alignment(), meter.groups["unseen"].encoder_alignment(),
                            {k: {} for k in names}, {}, bootstrap=1000)
    stats_s = time.perf_counter() - start
    with_g = last["f + g"].encoder_alignment()  # the same alignments of f, read from LayerMem's states
    same = all(torch.equal(with_g[k], meter.encoder_alignment()[k]) for k in names)
    ratio = {f"{v} / (f + g)": {kind: statistics.median(a / b for a, b in zip(times[v][kind], times["f + g"][kind]))
                                for kind in ("wall", "cpu")} for v in VARIANTS[1:]}
    return {"width": width, "candidates": n, "unseen": m, "views": views_k, "batch_size": batch_size, "data": source,
            "layers": names, "times_s": times,
            "median_s": {v: {k: statistics.median(t) for k, t in kinds.items()} for v, kinds in times.items()},
            "ratios": ratio, "align_gap_statistics_s": stats_s, "same_alignments_as_with_g": same}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="8:1000:1000:256,64:64:64:32",
                   help="comma-separated width:candidates:unseen:batch_size (ResNet9)")
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
        width, n, m, batch = (int(v) for v in config.split(":"))
        row = bench(width, n, m, args.views, batch, args.repeats, args.data)
        rows.append(row)
        med, ratio = row["median_s"], row["ratios"]
        print(f"ResNet9 width {width}, N={n} + M={m} unseen, K={args.views}, batch {batch}, {args.threads} thread(s), "
              f"{row['data']}:", flush=True)
        for v in VARIANTS:
            extra = "" if v == "f + g" else (f"  ({ratio[f'{v} / (f + g)']['wall']:.3f} of f + g wall, "
                                             f"{ratio[f'{v} / (f + g)']['cpu']:.3f} CPU)")
            print(f"  {v:>14}: wall {med[v]['wall']:.3f} s, CPU {med[v]['cpu']:.3f} s{extra}", flush=True)
        print(f"  align_gap statistics after the pass (bootstrap 1000): {row['align_gap_statistics_s']:.3f} s; "
              f"f's alignments identical with and without g: {row['same_alignments_as_with_g']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
