"""Calibration of the evidence on synthetic data (no model): false-positive rates of every test and
of the overall verdict when candidates, control and unseen images come from one distribution, and
the coverage of the intervals by group size. Prints the markdown tables of docs/evidence.md.

    python benchmarks/evidence_calibration.py            # the documented run (about 10 CPU minutes)
    python benchmarks/evidence_calibration.py --quick    # a smoke test (seconds)

Designs (each trial: 8 layers, 16 units per layer, ``bootstrap=1000``, through ``compute_evidence``
with every family: control, unseen, f's alignments for ``align_gap``; 8 x 5 = 40 tests):
normal or lognormal values; equal groups (40 / 40 / 40) or 8:1 (80 candidates / 10 control /
10 unseen); tied units (30 % of the units constant over every image); ``negative="shift"`` on
activations that can be negative (60 seen / 20 unseen). In every design 5 % of the images,
placed at random in any group, are atypical: their activations are 3x and their raw SSLMem is
1 sd higher (and f's alignment 0.1 higher), so one image can win many units. Rates are per layer (8 independent layers a trial;
the SE is taken over trials, whose layers share permutations) and per trial for the verdict, with
their Monte Carlo standard error.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from typing import Callable, Dict, List, Tuple

import torch
from scipy import stats
from scipy.special import ndtr, ndtri
from torch import Tensor

from lightning_memloc.report.evidence import EvidenceOptions, VERDICT_TESTS, compute_evidence
from lightning_memloc.functional.statistics import (bootstrap_indices, holm, percentile_interval,
                                                  standard_error_interval, weighted_mean_unitmem)
from lightning_memloc.functional.two_sample import (bootstrap_t_interval, permutation_lower_bound,
                                                    studentized_permutation_test)
from lightning_memloc.functional.unitmem import unitmem

ALPHA = 0.05
LAYERS = [f"l{i}" for i in range(8)]


def _rate(hits: float, n: int) -> str:
    rate = hits / n
    return f"{rate:.3f} ± {math.sqrt(max(rate * (1 - rate), 1e-12) / n):.3f}"


def _clustered(per_trial: List[float]) -> str:
    """Mean of per-trial rates ± SE over trials (a trial's layers share its permutations)."""
    x = torch.tensor(per_trial, dtype=torch.float64)
    se = float(x.std(unbiased=True)) / math.sqrt(len(per_trial)) if len(per_trial) > 1 else float("nan")
    return f"{float(x.mean()):.3f} ± {se:.3f}"


# ------------------------------------------------------------------------ designs through compute_evidence
def _draw(g: torch.Generator, shape: Tuple[int, ...], kind: str) -> Tensor:
    z = torch.randn(*shape, generator=g, dtype=torch.float64)
    return torch.exp(z) if kind == "lognormal" else z


def _inputs(g: torch.Generator, kind: str, sizes: Tuple[int, int, int], ties: float, signed: bool) -> Dict:
    """One trial's inputs: every group from one distribution, atypical images placed at random."""
    n_c, n_s, n_u = sizes
    total = n_c + n_s + n_u
    atypical = (torch.rand(total, generator=g) < 0.05).double()  # any group, at random
    raw_all = {layer: 0.2 * i + _draw(g, (total,), kind) + atypical for i, layer in enumerate(LAYERS)}
    align_all = {layer: 0.8 + 0.1 * (_draw(g, (total,), kind) + atypical) for layer in LAYERS}  # f's view alignments
    pool = n_c + n_u  # images with unit means: candidates and unseen
    mu_all = {}
    for layer in LAYERS:
        mu = torch.randn(pool, 16, generator=g, dtype=torch.float64) if signed else _draw(g, (pool, 16), "lognormal")
        mu = mu * (1 + 2 * atypical[:pool, None]) if not signed else mu + 2 * atypical[:pool, None]
        mu[:, : int(round(ties * 16))] = 1.0  # constant units: every image ties at the max
        mu_all[layer] = mu
    return dict(sslmem_raw={k: v[:n_c] for k, v in raw_all.items()},
                control_raw={k: v[n_c:n_c + n_s] for k, v in raw_all.items()},
                unseen_raw={k: v[n_c + n_s:] for k, v in raw_all.items()},
                unit_means={k: v[:n_c] for k, v in mu_all.items()},
                unseen_unit_means={k: v[n_c:] for k, v in mu_all.items()},
                align={k: v[:n_c] for k, v in align_all.items()},
                unseen_align={k: v[n_c + n_s:] for k, v in align_all.items()},
                negative="shift" if signed else "clamp")


DESIGNS: List[Tuple[str, str, Tuple[int, int, int], float, bool]] = [
    ("normal, 40 / 40 / 40", "normal", (40, 40, 40), 0.0, False),
    ("lognormal, 40 / 40 / 40", "lognormal", (40, 40, 40), 0.0, False),
    ("normal, 80 / 10 / 10 (8:1)", "normal", (80, 10, 10), 0.0, False),
    ("lognormal, 80 / 10 / 10 (8:1)", "lognormal", (80, 10, 10), 0.0, False),
    ("lognormal, 30 % tied units", "lognormal", (40, 40, 40), 0.3, False),
    ('normal, negative="shift", 60 / 20 / 20', "normal", (60, 20, 20), 0.0, True),
]


def null_rates(trials: int, bootstrap: int, designs=DESIGNS) -> List[List[str]]:
    """One row per design: per-layer rate of each test, the verdict's rate and the old OR's rate."""
    rows = []
    for d, (name, kind, sizes, ties, signed) in enumerate(designs):
        hits: Dict[str, List[float]] = {test: [] for test in VERDICT_TESTS}
        verdict = old_or = unattainable = 0
        for t in range(trials):
            g = torch.Generator().manual_seed(100_000 * d + t)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # small groups of the 8:1 design warn by design
                ev = compute_evidence(LAYERS, top_k=5, options=EvidenceOptions(bootstrap=bootstrap, seed=t),
                                      **_inputs(g, kind, sizes, ties, signed))
            for test in VERDICT_TESTS:
                hits[test].append(sum(rec[f"{test}_p"] <= ALPHA for rec in ev.layers.values()) / len(LAYERS))
            verdict += bool(ev.shows_memorization)
            unattainable += ev.meta["verdict"]["attainable"] is False
            old_or += any(p is not None and p < ALPHA for test in VERDICT_TESTS  # each family Holm-corrected alone
                          for p in holm([rec[f"{test}_p"] for rec in ev.layers.values()]))
        row = [name, str(bootstrap)] + [_clustered(hits[test]) for test in VERDICT_TESTS]
        row += [_rate(verdict, trials) + (" (unattainable)" if unattainable == trials else ""), _rate(old_or, trials)]
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------- the excess test alone
def excess_test_rates(trials: int, n_perm: int) -> List[List[str]]:
    """Welch vs permutation of the plain difference vs the studentized permutation test (vectorised)."""
    g = torch.Generator().manual_seed(3)
    rows = []
    for kind, (na, nb), spread in (("lognormal", (80, 10), 1.0), ("lognormal", (40, 2), 1.0), ("normal", (80, 10), 1.0),
                                   ("normal", (80, 10), 3.0), ("normal", (40, 40), 3.0)):
        a, b = _draw(g, (trials, na), kind), _draw(g, (trials, nb), kind)
        centre = math.exp(0.5) if kind == "lognormal" else 0.0
        b = centre + spread * (b - centre)  # same mean; spread 3: unequal variances (the weak null)
        welch = stats.ttest_ind(a.numpy(), b.numpy(), axis=1, equal_var=False, alternative="greater").pvalue
        pooled, diff = torch.cat([a, b], 1), a.mean(1) - b.mean(1)
        pick = torch.rand(n_perm, na + nb, generator=g).argsort(1)[:, :na]
        first = torch.zeros(n_perm, na + nb, dtype=torch.float64).scatter_(1, pick, 1.0)
        perm_diff = pooled @ first.T / na - (pooled.sum(1, keepdim=True) - pooled @ first.T) / nb
        plain = (1 + (perm_diff >= diff[:, None] - 1e-12).sum(1)) / (n_perm + 1)
        stud = studentized_permutation_test(a, b, n_perm, seed=5)["p"]
        what = f"{kind}, {na} vs {nb}" + (f", sd x{spread:g}" if spread != 1 else "")
        rows.append([what, _rate(float((welch <= ALPHA).sum()), trials), _rate(float((plain <= ALPHA).sum()), trials),
                     _rate(float((stud <= ALPHA).sum()), trials)])
    return rows


# ------------------------------------------------------------------------------------------ coverage
def _bca(x: Tensor, n_boot: int, level: float, g: torch.Generator) -> Tuple[Tensor, Tensor]:
    """BCa interval of the mean (rows of ``x``): the alternative to the bootstrap-t considered."""
    n = x.shape[1]
    counts = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
        1, torch.randint(0, n, (n_boot, n), generator=g), torch.ones(n_boot, n, dtype=torch.float64))
    means = x @ counts.T / n
    est = x.mean(1, keepdim=True)
    z0 = torch.as_tensor(ndtri(((means < est).double().mean(1)).clamp(1 / n_boot, 1 - 1 / n_boot).numpy()))
    jack = (x.sum(1, keepdim=True) - x) / (n - 1)
    d = jack.mean(1, keepdim=True) - jack
    acc = (d**3).sum(1) / (6 * (d**2).sum(1) ** 1.5)
    ordered = means.sort(dim=1).values
    out = []
    for q in ((1 - level) / 2, (1 + level) / 2):
        z = z0 + (z0 + ndtri(q)) / (1 - acc * (z0 + ndtri(q)))
        pos = torch.as_tensor(ndtr(z.numpy())) * (n_boot - 1)  # adjusted quantile per row, linear interpolation
        low = pos.floor().long().clamp(0, n_boot - 1)
        frac = (pos - low)[:, None]
        pair = ordered.gather(1, torch.stack([low, (low + 1).clamp(max=n_boot - 1)], 1))
        out.append((pair[:, :1] * (1 - frac) + pair[:, 1:] * frac).squeeze(1))
    return out[0], out[1]


def coverage(reps: int, n_boot: int, sizes=(10, 20, 40, 80)) -> Tuple[List[List[str]], List[List[str]]]:
    """Coverage of 95 % intervals of a mean and of a difference of means, by n; and of the bound."""
    g = torch.Generator().manual_seed(7)
    rows = []
    for kind, truth in (("normal", 0.0), ("lognormal", math.exp(0.5))):
        for n in sizes:
            x = _draw(g, (reps, n), kind)
            idx = bootstrap_indices(n, n_boot, seed=n)
            lo, hi = percentile_interval(x[:, idx].mean(-1).T, 0.95)
            cells = [_rate(float(((lo <= truth) & (truth <= hi)).sum()), reps)]
            lo, hi = _bca(x, n_boot, 0.95, g)
            cells.append(_rate(float(((lo <= truth) & (truth <= hi)).sum()), reps))
            lo, hi = bootstrap_t_interval(x, None, n_boot, 0.95, seed=n)
            cells.append(_rate(float(((lo <= truth) & (truth <= hi)).sum()), reps))
            a, b = _draw(g, (reps, 8 * n), kind), _draw(g, (reps, n), kind)
            lo, hi = bootstrap_t_interval(a, b, n_boot, 0.95, seed=n)
            cells.append(_rate(float(((lo <= 0) & (0 <= hi)).sum()), reps))
            rows.append([kind, str(n)] + cells)
    bound_rows = []
    level = ALPHA / 40  # the verdict's 8 layers x 5 tests
    for kind in ("normal", "lognormal"):
        for delta in (0.0, 0.5, 1.0):
            a, b = _draw(g, (reps, 80), kind) + delta, _draw(g, (reps, 10), kind)
            out = studentized_permutation_test(a, b, n_boot, seed=11)
            bound = permutation_lower_bound(out["estimate"], out["se"], out["null"], level)
            bound_rows.append([kind, f"{delta:g}", _rate(float((bound > delta).sum()), reps), f"{level:.4f}"])
    return rows, bound_rows


def unitmem_coverage(reps: int, n_boot: int, sizes=(10, 20, 40, 80)) -> List[List[str]]:
    """Mean UnitMem's interval (estimate ± z · bootstrap SD) against the mean over fresh sets, by n."""
    g = torch.Generator().manual_seed(13)
    rows = []
    for n in sizes:
        draw: Callable[[], Tensor] = lambda: torch.exp(0.7 * torch.randn(n, 16, generator=g, dtype=torch.float64))  # noqa: E731
        truth = float(torch.stack([unitmem(draw()).mean() for _ in range(3000)]).mean())
        hits = 0
        for r in range(reps):
            m = draw()
            w = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
                1, bootstrap_indices(n, n_boot, r), torch.ones(n_boot, n, dtype=torch.float64))
            lo, hi = standard_error_interval(weighted_mean_unitmem(m, w), float(unitmem(m).mean()))
            hits += lo <= truth <= hi
        rows.append([str(n), _rate(hits, reps)])
    return rows


def _markdown(head: List[str], rows: List[List[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300, help="trials per design through compute_evidence")
    parser.add_argument("--reps", type=int, default=2000, help="trials of the vectorised tables")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2 trials, 60 reps, two designs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    trials, reps, designs = (2, 60, DESIGNS[::3]) if args.quick else (args.trials, args.reps, DESIGNS)
    started = time.perf_counter()
    print(f"## false-positive rates at alpha = {ALPHA} (rate ± Monte Carlo SE; per layer, verdict per trial)\n")
    head = ["design", "bootstrap"] + [f"{t} (layer)" for t in VERDICT_TESTS] + ["verdict (Holm, all tests)", "old: OR of families"]
    rows = null_rates(trials, 1000, designs)
    rows += null_rates(max(1, trials // 3), 200, designs[:1]) + null_rates(trials, 800, designs[:1])
    print(_markdown(head, rows))
    print("\n## the excess test alone: Welch vs permutation tests (same data; vectorised)\n")
    print(_markdown(["null design", "Welch t", "permutation, plain difference", "studentized permutation (used)"],
                    excess_test_rates(4 * reps, 1000 if not args.quick else 200)))
    cover, bounds = coverage(reps, 1000 if not args.quick else 200)
    print("\n## coverage of 95 % intervals by n\n")
    print(_markdown(["values", "n", "mean: percentile", "mean: BCa", "mean: bootstrap-t (used)",
                     "difference 8n vs n: bootstrap-t (used)"], cover))
    print(f"\n## the excess bound at alpha/40: rate of bound > true excess (80 vs 10; nominal {ALPHA / 40:.4f})\n")
    print(_markdown(["values", "true excess (sd)", "bound above the truth", "nominal"], bounds))
    print("\n## mean UnitMem interval (estimate ± 1.96 bootstrap SD), coverage by n\n")
    print(_markdown(["n", "coverage"], unitmem_coverage(reps // 4, 500 if not args.quick else 200)))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
