"""Calibration of the monitor's view check (``check_views``): the gaps it sees, pipeline by pipeline.

For real images (CIFAR-10, the digits) the script computes the per-channel statistics of
"training batches" (4 batches of 128 images × 2 views, as the monitor's pre-hook sees them) for
several SimCLR pipelines, and those of the monitor's views of N held-out candidates (the first
64 at most, K = 10 views, as the check does) for several monitor settings, then the two gaps of
:mod:`lightning_memloc.view_stats` (std ratio, mean shift in std) over ``--reps`` candidate draws.
Pairs fall in four kinds:

- ``same``: the monitor's views are made like the training batches (same transform, or the
  default views normalised like a batched training augmentation);
- ``same space``: both in [0, 1], or both normalised, but other augmentation strengths, blur,
  crop scale, or CIFAR-10 vs ImageNet normalisation;
- ``[0,1] vs ImageNet``: one side in [0, 1], the other ImageNet-normalised (the issue's case);
- ``[0,1] vs [-1,1]``.

It prints, per kind, the largest and smallest gaps and the share of pairs the check flags with
the library's tolerances (the figures of docs/definitions.md, "Views"):

    OMP_NUM_THREADS=2 python benchmarks/view_check_calibration.py --data ../shared/data/cifar10-train-10k.npz --reps 10
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from lightning_memloc import BatchedSimCLRAugment
from lightning_memloc.view_stats import (SCALE_TOLERANCE, SHIFT_TOLERANCE, ViewStatistics, channel_sums, gaps,
                                         sample_statistics, statistics_from_sums)
from lightning_memloc.views import SeededViews

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def training_statistics(images: torch.Tensor, pipeline: Tuple[str, Any], steps: int = 4, batch: int = 128,
                        seed: int = 0) -> ViewStatistics:
    """What the encoder receives in the first ``steps`` batches: two views of ``batch`` random images."""
    gen = torch.Generator().manual_seed(seed)
    sums = squares = None
    count = 0
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        kind, transform = pipeline
        if kind == "lightly":
            views = torch.stack([v for i in idx for v in transform(images[i])])
        else:
            x = images[idx].float() / 255
            views = torch.cat([transform(x, torch.randint(0, 2**62, (batch,), generator=gen)) for _ in range(2)])
        s, q, c = channel_sums(views)
        sums, squares, count = (s, q, c) if sums is None else (sums + s, squares + q, count + c)
    return statistics_from_sums(sums, squares, count)


def pipelines(side: int) -> Dict[str, Tuple[str, Any]]:
    from lightly.transforms import SimCLRTransform

    return {
        "lightly-imagenet": ("lightly", SimCLRTransform(input_size=side)),
        "lightly-01": ("lightly", SimCLRTransform(input_size=side, normalize=None)),
        "lightly-01-weak": ("lightly", SimCLRTransform(input_size=side, normalize=None, cj_strength=0.5,
                                                       gaussian_blur=0.0, min_scale=0.2)),
        "batched-01": ("batched", BatchedSimCLRAugment(side)),
        "batched-imagenet": ("batched", BatchedSimCLRAugment(side, mean=IMAGENET[0], std=IMAGENET[1])),
        "batched-cifar10": ("batched", BatchedSimCLRAugment(side, mean=CIFAR10[0], std=CIFAR10[1])),
        "batched-pm1": ("batched", BatchedSimCLRAugment(side, mean=(0.5,) * 3, std=(0.5,) * 3)),
    }


def monitors(side: int) -> Dict[str, Dict[str, Any]]:
    from lightly.transforms import SimCLRTransform

    return {
        "default": {},
        "default+imagenet": {"normalize": "imagenet"},
        "lightly-imagenet-view": {"transform": SimCLRTransform(input_size=side).transforms[0]},
        "lightly-01-view": {"transform": SimCLRTransform(input_size=side, normalize=None).transforms[0]},
    }


#: (monitor, training pipeline) -> kind; the value space of each side decides, "same" pairs are listed.
SAME = {("default", "batched-01"), ("default+imagenet", "batched-imagenet"),
        ("lightly-imagenet-view", "lightly-imagenet"), ("lightly-01-view", "lightly-01")}
SPACE = {"default": "01", "default+imagenet": "imagenet", "lightly-imagenet-view": "imagenet", "lightly-01-view": "01",
         "lightly-imagenet": "imagenet", "lightly-01": "01", "lightly-01-weak": "01", "batched-01": "01",
         "batched-imagenet": "imagenet", "batched-cifar10": "imagenet", "batched-pm1": "pm1"}


def kind(monitor: str, training: str) -> str:
    if (monitor, training) in SAME:
        return "same"
    spaces = {SPACE[monitor], SPACE[training]}
    if len(spaces) == 1:
        return "same space"
    return "[0,1] vs ImageNet" if spaces == {"01", "imagenet"} else ("[0,1] vs [-1,1]" if spaces == {"01", "pm1"}
                                                                      else "other")


def load(name: str, path: str) -> torch.Tensor:
    if name == "digits":
        from lightning_memloc.data import load_digits

        return load_digits(size=32)[0]
    return torch.from_numpy(np.load(path)["x"]).permute(0, 3, 1, 2).contiguous()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cifar10-train-10k.npz", help=".npz with uint8 x (N×H×W×3)")
    parser.add_argument("--datasets", default="cifar10,digits")
    parser.add_argument("--candidates", default="8,64", help="candidate counts N (the check uses min(N, 64))")
    parser.add_argument("--reps", type=int, default=10, help="candidate draws per N")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for name in args.datasets.split(","):
        images = load(name, args.data)
        split = int(0.8 * len(images))
        side = images.shape[-1]
        train = {k: training_statistics(images[:split], p) for k, p in pipelines(side).items()}
        rows: Dict[str, List[Tuple[float, float]]] = {}
        for n in (int(c) for c in args.candidates.split(",")):
            for rep in range(args.reps):
                rest = images[split:]
                cands = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(100 + rep))[:n]]
                for mk, kw in monitors(side).items():
                    views = sample_statistics(SeededViews(cands, views=10, seed=rep, **kw))
                    for tk, ts in train.items():
                        ratio, shift = gaps(views, ts)
                        rows.setdefault(f"{kind(mk, tk)} (N={n})", []).append((float(ratio.max()), float(shift.max())))
        print(f"\n{name}: {len(images)} images, tolerances: std ratio {SCALE_TOLERANCE}, mean shift {SHIFT_TOLERANCE} std")
        print(f"{'kind':28s} {'pairs':>5s} {'ratio min':>9s} {'ratio max':>9s} {'shift min':>9s} {'shift max':>9s} "
              f"{'flagged':>7s}")
        for key in sorted(rows):
            values = np.array(rows[key])
            flagged = np.mean((values[:, 0] > SCALE_TOLERANCE) | (values[:, 1] > SHIFT_TOLERANCE))
            print(f"{key:28s} {len(values):5d} {values[:, 0].min():9.2f} {values[:, 0].max():9.2f} "
                  f"{values[:, 1].min():9.2f} {values[:, 1].max():9.2f} {flagged:7.0%}")


if __name__ == "__main__":
    main()
