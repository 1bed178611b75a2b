"""Cost of ``compute_evidence`` (intervals, tests, verdict) after a pass: CPU seconds on one thread.

Synthetic inputs shaped like the ResNet9's 8 tapped layers (64-512 units, 2,240 in all), N
candidates and as many control images, with or without as many unseen images, ``bootstrap=1000``.
CPU time (``time.process_time``) is reported because wall time on a shared machine is not the
code's; the best of ``--repeats`` runs.

    python benchmarks/bench_evidence.py [--sizes 64 1000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from lightning_memloc.evidence import EvidenceOptions, compute_evidence

WIDTHS = (64, 128, 128, 128, 256, 512, 512, 512)


def cost(n: int, unseen: bool, repeats: int, bootstrap: int = 1000) -> float:
    g = torch.Generator().manual_seed(0)
    layers = [f"l{i}" for i in range(len(WIDTHS))]

    def raw():
        return {layer: torch.randn(n, generator=g) for layer in layers}

    def means():
        return {layer: torch.exp(torch.randn(n, w, generator=g)) for layer, w in zip(layers, WIDTHS)}

    kwargs = dict(unit_means=means(), sslmem_raw=raw(), control_raw=raw())
    if unseen:
        kwargs.update(unseen_raw=raw(), unseen_unit_means=means())
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compute_evidence(layers, options=EvidenceOptions(bootstrap=bootstrap), **kwargs)
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 1000])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| N (candidates = control) | no unseen set | with N unseen images |\n|---|---|---|")
    for n in args.sizes:
        print(f"| {n} | {cost(n, False, args.repeats):.2f} s | {cost(n, True, args.repeats):.2f} s |", flush=True)


if __name__ == "__main__":
    main()
