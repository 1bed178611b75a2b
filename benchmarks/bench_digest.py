"""Benchmark of the reference cache's model key: the structure digest vs the whole key.

``ReferenceCache.bind`` digests g at the start of every pass: its tensors (``model_digest``) and,
since issue 23, its structure (``structure_digest``: classes, method code, settings, hooks).
Prints the process CPU time of each, median of ``--repeats``, for the paper's ResNet9 (width
64), torchvision's resnet50 and ViT-B/16. Run ``python benchmarks/bench_digest.py --help``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List

import torch
import torchvision

from lightning_memloc.models import ResNet9
from lightning_memloc.checks.module_digest import structure_digest
from lightning_memloc.states.reference_cache import model_digest


def cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median process CPU time of ``fn()`` in milliseconds."""
    times: List[float] = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append((time.process_time() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {"ResNet9(width=64)": ResNet9(width=64), "resnet50": torchvision.models.resnet50(),
              "vit_b_16": torchvision.models.vit_b_16()}
    print(f"{'model':<20} {'structure_digest':>18} {'model_digest (all)':>20}   (CPU ms, median of {args.repeats})")
    for name, model in models.items():
        structure = cpu_ms(lambda: structure_digest(model), args.repeats)
        whole = cpu_ms(lambda: model_digest(model), args.repeats)
        print(f"{name:<20} {structure:>18.1f} {whole:>20.1f}")


if __name__ == "__main__":
    main()
