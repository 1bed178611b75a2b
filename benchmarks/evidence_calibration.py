"""Calibration of the evidence statistics on synthetic data (no model): false-positive rates of
the tests when candidates, control and unseen images come from one distribution, and coverage of
the 95 % intervals. Prints the figures recorded in docs/evidence.md.

    python benchmarks/evidence_calibration.py [--seeds 200]
"""

from __future__ import annotations

import argparse

import torch

from lightning_memloc.evidence import EvidenceOptions, compute_evidence
from lightning_memloc.functional.evidence import (bootstrap_indices, bootstrap_mean_interval, standard_error_interval,
                                                  weighted_mean_unitmem)
from lightning_memloc.functional.unitmem import unitmem


def null_rates(seeds: int, n: int = 40, layers: int = 8) -> dict:
    names = [f"l{i}" for i in range(layers)]
    hits = {"excess (per layer)": 0, "excess (any layer, Holm)": 0, "membership (per layer)": 0,
            "membership (any layer, Holm)": 0, "UnitMem seen-unseen (per layer)": 0}
    for seed in range(seeds):
        g = torch.Generator().manual_seed(10_000 + seed)
        raw = lambda: {k: 0.2 * i + torch.randn(n, generator=g) for i, k in enumerate(names)}  # noqa: E731
        # one atypical image in the pool wins many units: what a binomial over units gets wrong
        def mu():
            m = torch.exp(0.8 * torch.randn(n, 32, generator=g))
            m[0] *= 3.0
            return {k: m for k in names}
        ev = compute_evidence(names, unit_means=mu(), sslmem_raw=raw(), control_raw=raw(), unseen_unit_means=mu(),
                              options=EvidenceOptions(bootstrap=200, seed=seed))
        hits["excess (per layer)"] += ev.layers["l0"]["excess_p"] < 0.05
        hits["excess (any layer, Holm)"] += bool(ev.significant_layers("excess"))
        hits["membership (per layer)"] += ev.layers["l0"]["membership_p"] < 0.05
        hits["membership (any layer, Holm)"] += bool(ev.significant_layers("membership"))
        hits["UnitMem seen-unseen (per layer)"] += ev.layers["l0"]["unit_mem_excess_p"] < 0.05
    return {k: v / seeds for k, v in hits.items()}


def coverage(reps: int, n: int = 40) -> dict:
    g = torch.Generator().manual_seed(7)
    mean_hits = 0
    for r in range(reps):
        lo, hi = bootstrap_mean_interval(0.4 + 0.3 * torch.randn(1, n, generator=g), 500, seed=r)
        mean_hits += float(lo) <= 0.4 <= float(hi)
    draw = lambda: torch.exp(0.7 * torch.randn(n, 16, generator=g)).double()  # noqa: E731
    truth = float(torch.stack([unitmem(draw()).mean() for _ in range(3000)]).mean())
    um_hits = 0
    for r in range(reps):
        m = draw()
        idx = bootstrap_indices(n, 500, r)
        w = torch.zeros(500, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
        lo, hi = standard_error_interval(weighted_mean_unitmem(m, w), float(unitmem(m).mean()))
        um_hits += lo <= truth <= hi
    return {"LayerMem-type mean (percentile)": mean_hits / reps, "mean UnitMem (bootstrap SE)": um_hits / reps}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("false-positive rate at alpha = 0.05 (null: one distribution for every group)")
    for name, rate in null_rates(args.seeds).items():
        print(f"  {name:<34} {rate:.3f}")
    print("coverage of 95 % intervals")
    for name, rate in coverage(args.seeds).items():
        print(f"  {name:<34} {rate:.3f}")
