"""CPU time of the report's evidence (bootstrap intervals, permutation tests) after a pass, by N and layers.

A :class:`~lightning_memloc.meter.MemorizationMeter` is filled with random per-unit means and
alignments (the evidence's cost does not depend on the values) for N candidates and the layer
widths of ResNet9 (width 64: 64, 128, 128, 128, 256, 512, 512, 512 units) or resnet18, optionally
with control and unseen groups, then ``compute_report`` runs without and with the evidence
(``MeasureOptions.evidence``, ``--bootstrap`` resamples); the difference is the evidence's cost,
what ``measure()`` pays after its pass. Repeats interleaved, CPU time, min and median.

Wang et al., *Localizing Memorization in SSL Vision Encoders*, NeurIPS 2024 (the metrics). Not a test::

    python benchmarks/bench_evidence.py --candidates 64,1000 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lightning_memloc.meter import MemorizationMeter  # noqa: E402
from lightning_memloc.options import MeasureOptions  # noqa: E402
from lightning_memloc.taps import LayerSpec  # noqa: E402

UNITS = {"resnet9": [64, 128, 128, 128, 256, 512, 512, 512], "resnet18": [64, 64, 64, 128, 128, 256, 256, 512, 512]}


def filled_meter(n: int, units: Sequence[int], groups: Dict[str, int], seed: int = 0) -> MemorizationMeter:
    specs = [LayerSpec(f"layer{i}", "conv") for i in range(len(units))]
    num_units = {s.name: u for s, u in zip(specs, units)}
    meter = MemorizationMeter(specs, num_units, n, reference=True, labels=False, groups=groups or None)
    gen = torch.Generator().manual_seed(seed)
    total = n + sum(groups.values())
    for start in range(0, total, 256):
        index = torch.arange(start, min(total, start + 256))
        b = len(index)
        meter.update(index, {s.name: torch.rand(b, u, generator=gen) for s, u in zip(specs, units)},
                     {s.name: torch.rand(b, generator=gen) for s in specs},
                     {s.name: torch.rand(b, generator=gen) + 0.1 for s in specs})
    return meter


def time_evidence(n: int, units: Sequence[int], groups: Dict[str, int], bootstrap: int, repeats: int) -> Dict[str, float]:
    meter = filled_meter(n, units, groups)
    ids = torch.arange(n)
    options = MeasureOptions(bootstrap=bootstrap, with_reference=True)
    none = options.replace(bootstrap=0)
    times: Dict[str, List[float]] = {"report, bootstrap=0": [], f"report, bootstrap={bootstrap}": []}
    meter.compute_report(ids, {}, evidence=options.evidence)  # warm-up
    for _ in range(repeats):
        for key, evidence in zip(times, (none.evidence, options.evidence)):
            start = time.process_time()
            meter.compute_report(ids, {}, evidence=evidence)
            times[key].append(time.process_time() - start)
    out = {f"{key} (min)": min(v) for key, v in times.items()}
    out.update({f"{key} (median)": statistics.median(v) for key, v in times.items()})
    out["evidence (min difference)"] = out[f"report, bootstrap={bootstrap} (min)"] - out["report, bootstrap=0 (min)"]
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--candidates", default="64,1000", help="comma-separated N")
    p.add_argument("--model", default="resnet9", choices=sorted(UNITS), help="layer widths")
    p.add_argument("--groups", type=int, default=0, help="control and unseen images each (0: none)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    units = UNITS[args.model]
    groups = {"control": args.groups, "unseen": args.groups} if args.groups else {}
    print(f"{args.model}: {len(units)} layers, ΣU = {sum(units)}; groups {groups or 'none'}; "
          f"bootstrap {args.bootstrap}; torch threads {torch.get_num_threads()}; CPU seconds")
    for n in (int(v) for v in args.candidates.split(",")):
        res = time_evidence(n, units, groups, args.bootstrap, args.repeats)
        print(f"N = {n}: " + ", ".join(f"{k} {v:.3f} s" for k, v in res.items()), flush=True)


if __name__ == "__main__":
    main()
