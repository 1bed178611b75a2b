"""Cost of the reliability checks of docs/reliability.md rows 35-58, and the error they prevent.

Times, on N candidates (default: the 10k CIFAR-10 images of ``../shared/data/cifar10-train-10k.npz``
when present, random images otherwise):

- the value-range check of float candidates (one ``aminmax``, row 35);
- the candidate digest of the monitor's fingerprint (SHA-256 of the tensor, row 39), computed once;
- the probe with the reproducibility check (the first two candidates' views made twice, row 49),
  against one view generation of the probe candidates;

and prints what the range check prevents: the share of view pixels that the default SimCLR
augmentation saturates (exactly 0 or 1) for images in [0, 1], on a 0-255 scale, and normalised.

Run: ``python benchmarks/bench_checks.py [--data PATH] [--views 10] [--repeats 5]``.
Wang et al., *Localizing Memorization in SSL Vision Encoders*, NeurIPS 2024.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lightning_memloc.views.augment import BatchedSimCLRAugment
from lightning_memloc.callbacks.monitor_checks import candidates_digest
from lightning_memloc.checks import check_image_range
from lightning_memloc.views.seeded import SeededViews


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _images(path: str) -> torch.Tensor:
    source = Path(path)
    if source.is_file():
        with np.load(source) as f:
            return torch.from_numpy(f["x"]).permute(0, 3, 1, 2).contiguous()
    return torch.randint(0, 256, (10_000, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-train-10k.npz"))
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    uint8 = _images(args.data)
    floats = uint8.float() / 255
    print(f"{len(uint8)} candidates {tuple(uint8.shape[1:])}, K={args.views}, 1 thread")
    print(f"range check (aminmax, float):      {_median_ms(lambda: check_image_range(floats), args.repeats):8.2f} ms")
    views = SeededViews(uint8, views=args.views)
    print(f"candidate digest (sha256, uint8):  {_median_ms(lambda: candidates_digest(views), args.repeats):8.2f} ms")

    def probe() -> None:
        views._reproducible_checked = False
        views.example_batch("cpu")

    def one_generation() -> None:
        views._reproducible_checked = True
        views.example_batch("cpu")

    print(f"probe views + reproducibility:     {_median_ms(probe, args.repeats):8.2f} ms "
          f"(views alone {_median_ms(one_generation, args.repeats):.2f} ms)")
    augment = BatchedSimCLRAugment(uint8.shape[-1])
    sample = floats[:256]
    seeds = torch.arange(len(sample))
    mean, std = sample.mean(dim=(0, 2, 3), keepdim=True), sample.std(dim=(0, 2, 3), keepdim=True)
    for name, x in (("[0, 1]", sample), ("0-255 floats", sample * 255), ("normalised", (sample - mean) / std)):
        out = augment(x, seeds)
        saturated = float(((out == 0) | (out == 1)).float().mean())
        print(f"saturated view pixels, {name:<13} {saturated:6.1%}")


if __name__ == "__main__":
    main()
