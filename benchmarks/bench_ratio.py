"""Issue 27's target in one run: ``measure()`` with its defaults over the bare batched forward, (b)/(a).

For each model (torchvision's resnet18, the paper's ResNet9; random weights, as
``bench_measure.py``), the same N × K precomputed views go (a) through f and g bare (no hooks,
eval, ``no_grad``, batches of ``--batch-size`` candidates) and (b) through ``measure(f, views,
reference=g)`` with its defaults (bootstrap = 1000). After a warm-up (which also fills the probe
cache, as any second call finds it), ``--repeats`` rounds run interleaved, a, b, a, b, ... so
that load from other jobs hits both alike; the best (min) wall and process CPU time of each is
kept. Targets (issue 27): resnet18 ≤ 1.10, ResNet9 width 64 ≤ 1.05. Not a test::

    python benchmarks/bench_ratio.py --models resnet18,resnet9 --candidates 64 --views 8 --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench_measure import bare_forward, build_model, load_images  # noqa: E402
from lightning_memloc import measure  # noqa: E402
from lightning_memloc.views.seeded import make_views  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,resnet9")
    p.add_argument("--candidates", type=int, default=64)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    n, bs = args.candidates, args.batch_size
    views = make_views(load_images("random", n, 32)[0], args.views, None, 0)
    print(f"N={n}, K={args.views}, batches of {bs}, {torch.get_num_threads()} threads, load average {os.getloadavg()}")
    for name in args.models.split(","):
        f, g = build_model(name, 64, cpu, seed=1), build_model(name, 64, cpu, seed=2)
        rows = {"(a) bare f+g": lambda: bare_forward(f, g, views, bs, cpu, False),
                "(b) measure()": lambda: measure(f, views, reference=g, batch_size=bs, top_k=min(50, n))}
        wall = {row: [] for row in rows}
        cpu_s = {row: [] for row in rows}
        for fn in rows.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for row, fn in rows.items():
                start, cpu0 = time.perf_counter(), time.process_time()
                fn()
                wall[row].append(time.perf_counter() - start)
                cpu_s[row].append(time.process_time() - cpu0)
        (a, b) = rows
        print(f"{name}: (a) {min(wall[a]):.3f} s, (b) {min(wall[b]):.3f} s, (b)/(a) best of {args.repeats} "
              f"{min(wall[b]) / min(wall[a]):.3f} (CPU {min(cpu_s[b]) / min(cpu_s[a]):.3f}); per round "
              + ", ".join(f"{y / x:.3f}" for x, y in zip(wall[a], wall[b])) + f"; load average {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
