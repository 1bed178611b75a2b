"""CPU time of the hook's all-pairs alignment per layer shape: float32 centred Gram vs float64 Gram.

``view_sq_distances`` (float32 Gram of the centred normalised views, float64 for flagged
candidates) against ``sq_distances_from_gram(view_gram(...))`` (the float64 Gram) on ReLU
activations ``(N, K, D)`` of the sizes of torchvision resnet18's tapped layers at 32 × 32 (D =
16,384, 4,096, 2,048); best of 3 rounds of ``--repeats`` calls, process CPU time. Not a test::

    python benchmarks/bench_gram_speed.py --threads 1
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from lightning_memloc.reductions.hook import sq_distances_from_gram, view_gram, view_sq_distances


def cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for _ in range(repeats):
            fn()
        best = min(best, (time.process_time() - start) / repeats)
    return 1e3 * best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", type=int, default=32)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--dims", default="16384,4096,2048")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"| D | float32 centred (ms CPU) | float64 (ms CPU) | ratio |  ({torch.get_num_threads()} threads)\n|---:|---:|---:|---:|")
    for d in (int(v) for v in args.dims.split(",")):
        x = torch.randn(args.candidates, args.views, d, generator=torch.Generator().manual_seed(d)).relu()
        a = cpu_ms(lambda: view_sq_distances(x), args.repeats)
        b = cpu_ms(lambda: sq_distances_from_gram(view_gram(x)), args.repeats)
        print(f"| {d} | {a:.2f} | {b:.2f} | {a / b:.2f} |", flush=True)


if __name__ == "__main__":
    main()
