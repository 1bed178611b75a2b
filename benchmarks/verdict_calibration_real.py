"""The overall verdict's false-positive rate on real, skewed images through real encoders.

``evidence_calibration.py`` calibrates every test on synthetic values. Here the values come from
a real measurement pass. A pool of natural images (CIFAR-10 by default) that neither encoder
trained on is measured once by each pair (f, g): per image, its raw SSLMem, f's view alignment and
every unit's mean activation. Each random split of the pool into candidates, control and unseen
images then goes through ``compute_evidence`` with every family: excess, excess_unseen,
membership, unit_mem_excess and align_gap, 8 layers each, so 40 tests. Nothing is memorized by
construction, because the groups are exchangeable, so the verdict should fire in at most
α = 0.05 of the splits.

Pairs: untrained ResNet9s (seeds 100 + i and 200 + i), and SimCLR ResNet9s trained for
``--steps`` on two disjoint halves of the images outside the pool. The trained pairs give real
offsets between f and g, and atypical images that win many units.

    python benchmarks/verdict_calibration_real.py --data ../shared/data/cifar10-train-10k.npz
    python benchmarks/verdict_calibration_real.py --data digits --quick     # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor

from lightning_memloc.data import load_data
from lightning_memloc.measurement import build_views, run_pass
from lightning_memloc.models import ResNet9
from lightning_memloc.report.evidence import EvidenceOptions, compute_evidence
from lightning_memloc.states.meter import MemorizationMeter
from lightning_memloc.taps.probe import probe_layers
from reference_free_calibration import train_simclr  # the same SimCLR recipe (benchmarks/ is on sys.path)

Measured = Tuple[List[str], Dict[str, Tensor], Dict[str, Tensor], Dict[str, Tensor]]  # layers, mu, raw, align_f
FAMILIES = ("excess", "excess_unseen", "membership", "unit_mem_excess", "align_gap")


def measure_pool(f: torch.nn.Module, g: torch.nn.Module, pool: Tensor, views: int) -> Measured:
    """One pass of the pool through f and g: unit means (before the negative policy), raw SSLMem, f's alignment."""
    view_set = build_views(pool, views, None, 0, None)
    specs, units = probe_layers(f, g, "auto", view_set.example_batch(torch.device("cpu")))
    meter = MemorizationMeter(specs, units, len(view_set), reference=True, labels=False)
    run_pass(f, g, view_set, specs, meter, batch_size=64)
    raw, align = meter.alignments(sslmem=True, encoder=True)
    return [s.name for s in specs], meter.unit_means(raw=True), raw, align  # type: ignore[return-value]


def null_rates(measured: Measured, sizes: Tuple[int, int, int], splits: int, bootstrap: int,
               seed: int) -> Dict[str, float]:
    """Share of random splits in which the verdict fires, and each family's per-layer rate (Holm'd in the verdict)."""
    layers, mu, raw, align = measured
    n, s, m = sizes
    pool = len(raw[layers[0]])
    gen = torch.Generator().manual_seed(seed)
    fired, per_family = 0, {family: 0 for family in FAMILIES}
    for i in range(splits):
        order = torch.randperm(pool, generator=gen)
        c, ctrl, u = order[:n], order[n:n + s], order[n + s:n + s + m]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small groups warn by design
            ev = compute_evidence(layers, unit_means={k: v[c] for k, v in mu.items()},
                                  sslmem_raw={k: v[c] for k, v in raw.items()},
                                  control_raw={k: v[ctrl] for k, v in raw.items()},
                                  unseen_raw={k: v[u] for k, v in raw.items()},
                                  unseen_unit_means={k: v[u] for k, v in mu.items()},
                                  align={k: v[c] for k, v in align.items()},
                                  unseen_align={k: v[u] for k, v in align.items()},
                                  options=EvidenceOptions(bootstrap=bootstrap, seed=seed + i))
        fired += bool(ev.meta["verdict"]["memorization"])
        for family in FAMILIES:  # uncorrected one-sided p per layer, the rate each test holds by itself
            per_family[family] += sum(float(rec.get(f"{family}_p", math.nan)) < 0.05 for rec in ev.layers.values())
    out = {"verdict": fired / splits}
    out.update({family: count / (splits * len(layers)) for family, count in per_family.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cifar10-train-10k.npz", help="digits | file.npz | ...")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--pool", type=int, default=480, help="images neither encoder trains on")
    parser.add_argument("--splits", type=int, default=300, help="random splits per design and pair")
    parser.add_argument("--untrained", type=int, default=2, help="untrained (f, g) pairs")
    parser.add_argument("--trained", type=int, default=1, help="SimCLR (f, g) pairs on disjoint other images")
    parser.add_argument("--steps", type=int, default=300, help="training steps of each trained encoder")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny pool, few splits, no training")
    args = parser.parse_args()
    if args.quick:
        args.pool, args.splits, args.untrained, args.trained, args.views, args.size = 120, 3, 1, 0, 4, 16
    started = time.perf_counter()
    torch.set_num_threads(2)
    images, _ = load_data(args.data, size=args.size)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    pool, rest = images[order[:args.pool]], images[order[args.pool:]]
    half = len(rest) // 2
    pairs: List[Tuple[str, Callable[[], Tuple[torch.nn.Module, torch.nn.Module]]]] = [
        (f"untrained ResNet9 pair #{i}", lambda i=i: tuple((torch.manual_seed(s), ResNet9(3, args.width).eval())[1]
                                                           for s in (100 + i, 200 + i)))
        for i in range(args.untrained)]
    pairs += [(f"SimCLR ResNet9 pair #{i} ({args.steps} steps, disjoint halves of {len(rest)} other images)",
               lambda i=i: (train_simclr(rest[:half], args.width, args.steps, 300 + i),
                            train_simclr(rest[half:], args.width, args.steps, 400 + i)))
              for i in range(args.trained)]
    designs = ((40, 40, 40), (80, 10, 10))
    print(f"data {args.data} at {args.size} px, pool {args.pool}, K = {args.views}, bootstrap {args.bootstrap}, "
          f"{args.splits} splits per row (Monte Carlo SE about {math.sqrt(0.05 * 0.95 / args.splits):.3f} at 0.05)\n")
    print("| pair | candidates / control / unseen | verdict (Holm, 40 tests) | " + " | ".join(FAMILIES) + " |")
    print("|---|---|---|" + "---|" * len(FAMILIES))
    for name, make in pairs:
        measured = measure_pool(*make(), pool, args.views)
        for sizes in designs:
            r = null_rates(measured, sizes, args.splits, args.bootstrap, seed=sum(sizes))
            print(f"| {name} | {' / '.join(map(str, sizes))} | {r['verdict']:.3f} | "
                  + " | ".join(f"{r[f]:.3f}" for f in FAMILIES) + " |", flush=True)
    print(f"\n[{time.perf_counter() - started:.0f} s wall]")


if __name__ == "__main__":
    main()
